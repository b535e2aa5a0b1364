"""Network namespaces without forked helpers.

pyroute2 0.9.7 forks a helper process for ``netns.create()`` and for every ``IPRoute(netns=...)``.
We avoid that: a namespace is made by a short-lived thread that calls ``unshare(CLONE_NEWNET)``
(namespace membership is per thread on Linux) and bind-mounts ``/proc/thread-self/ns/net`` onto a
file; the thread then ends, so no other thread ever runs in the wrong namespace. A netlink socket
for a namespace is opened the same way: a throw-away thread enters the namespace, creates the
socket (a socket stays bound to the namespace it was born in) and hands back its file descriptor.

Namespaces are addressed by path: ``/run/netns/NAME`` for the lab (so that ``ip netns`` sees
them) and ``<run dir>/netns/<container>`` for the agent's containers.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import socket
import struct
import threading
from collections.abc import Callable
from typing import TypeVar

CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWNET = 0x40000000
#: Namespace kinds a sandbox pins, with their clone flag (the name is the /proc/PID/ns entry).
SANDBOX_KINDS = {"net": CLONE_NEWNET, "uts": CLONE_NEWUTS, "ipc": CLONE_NEWIPC}
MS_BIND = 4096
MS_REC = 16384
MS_SHARED = 1 << 20
MNT_DETACH = 2
NETLINK_ROUTE = 0
SIOCGIFFLAGS, SIOCSIFFLAGS = 0x8913, 0x8914
IFREQ_FLAGS = "16sH22x"  # struct ifreq: name, ifr_flags, padding to its 40 bytes
IFF_UP = 0x1
NETNS_RUN_DIR = "/run/netns"

libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                       ctypes.c_void_p]
libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
libc.unshare.argtypes = [ctypes.c_int]
libc.sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]

T = TypeVar("T")


class NetnsError(OSError):
    pass


def check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise NetnsError(err, f"{what}: {os.strerror(err)}")


def in_thread(fn: Callable[[], T]) -> T:
    """Run ``fn`` in a fresh thread and return its result (or raise its exception).

    The thread may switch its own namespace freely: it ends right after ``fn``.
    """
    result: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            result.append(fn())
        except BaseException as e:  # handed to the caller below
            failure.append(e)

    thread = threading.Thread(target=run, name="ns-helper", daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


def setns_path(path: str) -> None:
    """Move the *calling thread* into the network namespace at ``path``."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        check(libc.setns(fd, CLONE_NEWNET), f"setns {path}")
    finally:
        os.close(fd)


def netns_path(name: str) -> str:
    """The path of a named namespace as ``ip netns`` knows it."""
    return os.path.join(NETNS_RUN_DIR, name)


def is_netns(path: str) -> bool:
    """True when ``path`` is a mounted network namespace (an nsfs file)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        # NS_GET_NSTYPE would be exact; an nsfs bind mount has st_dev of nsfs, not of its dir.
        return os.fstat(fd).st_dev != os.stat(os.path.dirname(path) or ".").st_dev
    finally:
        os.close(fd)


def netns_inode(path: str) -> int:
    """The namespace's inode number: equal for two paths iff they are the same namespace."""
    return os.stat(path).st_ino


def create_netns(path: str) -> bool:
    """Make a new network namespace (``lo`` up) and pin it at ``path``.

    Returns False if one is there already.
    """
    return bool(create_sandbox({"net": path}, ""))


def create_sandbox(paths: dict[str, str], hostname: str) -> list[str]:
    """Pin new namespaces of the kinds in ``paths`` (``net``, ``uts``, ``ipc`` -> file path).

    This is the agent's "pause container": a container's network, UTS and IPC namespaces exist
    apart from its processes, so a container joined to it keeps them when its owner restarts.
    Kinds already pinned are left alone (idempotent); the new UTS namespace is named
    ``hostname``, a new network namespace has ``lo`` up. Returns the kinds it created. On
    failure nothing of this call is left behind.
    """
    missing = {kind: path for kind, path in paths.items() if not is_netns(path)}
    if not missing:
        return []
    for path in missing.values():
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        if os.path.dirname(path) == NETNS_RUN_DIR:
            _run_dir_mounted()

    def make() -> None:
        flags = 0
        for kind in missing:
            flags |= SANDBOX_KINDS[kind]
        check(libc.unshare(flags), f"unshare({'|'.join(missing)})")
        if "uts" in missing:
            name = hostname.encode()
            check(libc.sethostname(name, len(name)), f"sethostname {hostname!r}")
        if "net" in missing:
            _loopback_up()
            # As Docker sets them: ping without CAP_NET_RAW (ICMP datagram sockets), and low
            # ports without CAP_NET_BIND_SERVICE over the namespace (a user-namespaced root has
            # it only in its own user namespace, not over this network namespace).
            for key, value in (("ipv4/ping_group_range", "0 2147483647"),
                               ("ipv4/ip_unprivileged_port_start", "0"), *_IPV6_DEFAULTS):
                with open(f"/proc/sys/net/{key}", "w") as f:
                    f.write(value)
        pinned: list[str] = []
        try:
            for kind, path in missing.items():
                fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
                os.close(fd)
                pinned.append(path)
                check(libc.mount(f"/proc/thread-self/ns/{kind}".encode(), path.encode(),
                                 None, MS_BIND, None), f"bind-mount {kind} namespace on {path}")
        except BaseException:
            for path in pinned:
                remove_netns(path)
            raise

    try:
        in_thread(make)
    except FileExistsError as e:
        raise NetnsError(errno.EEXIST, f"{e.filename} exists and is not a namespace") from e
    return list(missing)


_run_dir_ready = False

#: Dual-stack (issue 20): what every interface born in a sandbox inherits (``default``) and the
#: namespace's own (``all``): no router advertisements, SLAAC addresses or redirects taken, and
#: no duplicate address detection (IPAM made the address unique; DAD would hold it tentative
#: for a second, so a container could not bind it at once). Empty without IPv6 in the kernel.
_IPV6_DEFAULTS = tuple(
    (f"ipv6/conf/{scope}/{key}", "0")
    for scope in ("all", "default")
    for key in ("accept_ra", "autoconf", "accept_dad", "accept_redirects")
) if os.path.isdir("/proc/sys/net/ipv6/conf") else ()


def _run_dir_mounted() -> None:
    """Make /run/netns a shared mount point of its own, as ``ip netns add`` does, before the
    first namespace is pinned there. Otherwise the first ``ip netns add`` anyone runs later
    bind-mounts the directory onto itself and so hides every namespace pinned before it: their
    mounts stay on the directory below, where no ``umount /run/netns/X`` reaches them, and the
    files cannot be unlinked (EBUSY) until the machine restarts."""
    global _run_dir_ready
    if _run_dir_ready:
        return
    target = NETNS_RUN_DIR.encode()
    if libc.mount(b"none", target, None, MS_SHARED | MS_REC, None) != 0:
        if ctypes.get_errno() != errno.EINVAL:  # EINVAL: not a mount point yet
            check(-1, f"make {NETNS_RUN_DIR} shared")
        check(libc.mount(target, target, None, MS_BIND | MS_REC, None),
              f"bind-mount {NETNS_RUN_DIR} on itself")
        check(libc.mount(b"none", target, None, MS_SHARED | MS_REC, None),
              f"make {NETNS_RUN_DIR} shared")
    _run_dir_ready = True


def _loopback_up() -> None:
    """``lo`` up in the calling thread's namespace: two ioctls (a pyroute2 IPRoute for one
    request cost more than the rest of making the namespace)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        got = fcntl.ioctl(s, SIOCGIFFLAGS, struct.pack(IFREQ_FLAGS, b"lo", 0))
        flags = struct.unpack(IFREQ_FLAGS, got)[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack(IFREQ_FLAGS, b"lo", flags | IFF_UP))


def remove_netns(path: str) -> bool:
    """Unpin and delete the namespace at ``path``. Returns False if nothing was there.

    The namespace itself ends when its last process and last reference go; devices in it go with
    it (a veth's peer included).
    """
    if not os.path.lexists(path):
        return False
    if libc.umount2(path.encode(), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOENT):  # EINVAL: not a mount point
            raise NetnsError(err, f"umount {path}: {os.strerror(err)}")
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    return True


def open_netlink_fd(path: str | None) -> int:
    """A NETLINK_ROUTE socket born in the namespace at ``path`` (None: the caller's), as an fd."""

    def make() -> int:
        if path is not None:
            setns_path(path)
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE)
        return sock.detach()

    return in_thread(make) if path is not None else make()


def open_netlink_fds(paths: list[str]) -> dict[str, int | OSError]:
    """A NETLINK_ROUTE socket born in each namespace of ``paths``, as fds, all opened by ONE
    throw-away thread that enters the namespaces in turn (a thread per namespace cost more
    than the socket). A path that cannot be entered maps to its error."""

    def make() -> dict[str, int | OSError]:
        fds: dict[str, int | OSError] = {}
        try:
            for path in paths:
                try:
                    setns_path(path)
                except OSError as e:
                    fds[path] = e
                    continue
                fds[path] = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM,
                                          NETLINK_ROUTE).detach()
        except BaseException:
            for fd in fds.values():
                if isinstance(fd, int):
                    os.close(fd)
            raise
        return fds

    return in_thread(make) if paths else {}


def run_in_netns(path: str, fn: Callable[[], T]) -> T:
    """Call ``fn`` in a thread that has entered the namespace at ``path``; return its result."""

    def enter_and_run() -> T:
        setns_path(path)
        return fn()

    return in_thread(enter_and_run)
