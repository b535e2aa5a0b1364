"""The OCI runtime seam: the agent writes a bundle, a runtime (crun by default, or runc) runs it.

Every runtime call runs in the runtime's private mount namespace (``agent/kernel/mountns.py``:
a copy of the host's taken once, without the namespace pins that make the host's table grow
with every container; no helper process), where

  - ``/sys/fs/cgroup/unified`` is hidden on a hybrid-cgroup host (crun refuses hybrid layouts),
    and
  - for ``run``, in a copy of that namespace of the start's own (a pass's starts run at
    once, and what one mounts no other may see), the namespaces the spec joins are bound at
    their paths and the container's root filesystem is mounted on ``<bundle>/rootfs`` (an
    overlay of the image's layers under the container's upper directory, or a read-only bind
    of ``/``), then ``run --detach`` runs, and the mounts are detached again: the container
    keeps its own copy.

Nothing is ever mounted in the host's mount namespace. ``kill``, ``delete`` and ``state`` need
no namespace of their own on a host that hides nothing. ``sdnctl exec`` runs the runtime from
another process: :meth:`OciRuntime.exec_argv` gives it a small wrapper, ``unshare --mount`` and
a shell that hides the same path. crun and runc share one command-line, so one class serves
both.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from agent.kernel import cgroups, mountns, procfs, procs
from agent.kernel.errors import KernelError

RUNTIMES = ("crun", "runc")
TIMEOUT = 30.0
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

#: ``sdnctl exec``'s wrapper, in a private mount namespace (the path to hide comes in the
#: environment, never in the script).
WRAPPER = r"""
set -e
if [ -n "$SDNCTL_HIDE" ]; then umount -l "$SDNCTL_HIDE"; fi
exec "$@"
"""


@dataclass(frozen=True)
class Rootfs:
    """What to mount on the bundle's rootfs before the runtime starts."""

    kind: str  # "overlay" | "host"
    lower: tuple[str, ...] = ()  # layer directories, top first (overlayfs order)
    upper: str = ""
    work: str = ""

    def options(self) -> str:
        if self.kind != "overlay":
            return ""
        lower = ":".join(self.lower)
        return f"lowerdir={lower},upperdir={self.upper},workdir={self.work}"


class Runtime(Protocol):
    name: str
    root: str

    def run(self, cid: str, bundle: str, rootfs: Rootfs, log: str) -> tuple[int, int]:
        """Start the bundle detached; return the host PID of its process and its start time."""
        ...

    def kill(self, cid: str, sig: int = signal.SIGTERM) -> None: ...

    def delete(self, cid: str) -> None:
        """Forget the container (and its cgroup); a container never created is success."""
        ...

    def exec_argv(self, cid: str, argv: Sequence[str], tty: bool = False) -> list[str]:
        """The command line that runs ``argv`` inside the container (for sdnctl exec)."""
        ...

    def reap_strays(self, keep: int = 0) -> int:
        """Reap the runtime's own orphaned processes that came to us (not a container's, nor
        ``keep``); how many."""
        ...

    def refresh(self) -> None:
        """Between passes: catch up with what the host mounted since the runtime's mount
        namespace was taken."""
        ...


class OciRuntime:
    def __init__(self, binary: str, root: str, layout: str | None = None,
                 create: bool = True) -> None:
        self.name = os.path.basename(binary)
        self.binary = binary
        self.root = root
        self.layout = layout or cgroups.layout()
        self._hide = (cgroups.UNIFIED,) if self.layout == "hybrid" else ()
        self.mounts = mountns.Snapshot(self._hide)
        self._strays = True  # (an agent restarted after starts: look once)
        # Calls of the runtime under way in other threads (a pass's starts run in parallel):
        # their runtime processes, once zombies, look like strays (see reap_strays).
        self._calls = 0
        self._lock = threading.Lock()
        if create:
            os.makedirs(root, mode=0o700, exist_ok=True)

    def env(self) -> dict[str, str]:
        """The environment of the runtime (and of :meth:`exec_argv`'s wrapper)."""
        return {"PATH": PATH, "SDNCTL_HIDE": " ".join(self._hide)}

    def _call(self, what: str, args: Sequence[str], output: int | None = None
              ) -> subprocess.CompletedProcess[bytes]:
        """Run the runtime (in the calling thread's mount namespace). ``output``: a file for
        its stdout and stderr, which the container inherits (a pipe would stay open as long as
        the container runs)."""
        pipe = subprocess.PIPE if output is None else output
        argv = [self.binary, "--root", self.root, *args]
        out: bytes | None = None
        err: bytes | None = None
        try:
            with self._busy(), subprocess.Popen(
                    argv, env=self.env(), stdin=subprocess.DEVNULL, stdout=pipe, stderr=pipe,
                    start_new_session=True) as proc:
                try:
                    if output is None:  # its output's end is its exit
                        out, err = proc.communicate(timeout=TIMEOUT)
                    else:  # nothing to read: its pidfd says when it exits (no polling)
                        procs.wait_child(proc, TIMEOUT)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.communicate()
                    raise
        except (OSError, subprocess.TimeoutExpired) as e:
            raise KernelError(f"{self.name} {what}: {e}") from e
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)

    @contextlib.contextmanager
    def _busy(self) -> Iterator[None]:
        """A call of the runtime under way (see reap_strays)."""
        with self._lock:
            self._calls += 1
        try:
            yield
        finally:
            with self._lock:
                self._calls -= 1

    def _private(self, what: str, args: Sequence[str]) -> subprocess.CompletedProcess[bytes]:
        """:meth:`_call`, in the runtime's mount namespace when something must be hidden."""
        if not self._hide:
            return self._call(what, args)
        try:
            return self.mounts.run(lambda: self._call(what, args))
        except OSError as e:
            raise KernelError(f"{self.name} {what}: {e}") from e

    def run(self, cid: str, bundle: str, rootfs: Rootfs, log: str) -> tuple[int, int]:
        """:meth:`_run`, then the runtime's strays reaped (see :meth:`reap_strays`)."""
        with self._busy():
            pid, started = self._run(cid, bundle, rootfs, log)
        self._strays = True
        self.reap_strays(keep=pid)
        return pid, started

    def _run(self, cid: str, bundle: str, rootfs: Rootfs, log: str) -> tuple[int, int]:
        """``run --detach``, from the runtime's mount namespace, where the namespaces the spec
        joins and the root filesystem are mounted for the call (one runtime process: ``create``
        then ``start`` took two, each a few ms of CPU here, much of it the dynamic loader's).
        Once the runtime has exited, the container's process is our child (we are a
        subreaper), so however fast the command exits, its exit code comes to us; and until we
        reap it, it stays a zombie with its /proc/PID/stat, so the (PID, start time) pair read
        afterwards names the right process."""
        pidfile = os.path.join(bundle, "runtime.pid")
        target = os.path.join(bundle, "rootfs")
        joins, sources = spec_paths(os.path.join(bundle, "config.json"))
        relied = [bundle, *rootfs.lower, *(p for p in (rootfs.upper, rootfs.work) if p),
                  *sources, *{os.path.dirname(path) for path in joins}]
        opened: list[int] = []

        def inside(fd: int) -> subprocess.CompletedProcess[bytes]:
            made: list[str] = []
            try:
                for pin, path in zip(opened, joins, strict=True):
                    mountns.bind_namespace(pin, path)
                    made.append(path)
                if rootfs.kind == "overlay":
                    mountns.mount_overlay(target, rootfs.options())
                    made.append(target)
                elif rootfs.kind == "host":
                    made.append(target)
                    mountns.bind_host_root(target, host_mounts("/proc/thread-self/mountinfo"))
                return self._call("run", ["run", "--detach", "--pid-file", pidfile, "--bundle",
                                          bundle, cid], output=fd)
            finally:
                for path in reversed(made):  # the container has its own copy
                    with contextlib.suppress(OSError):
                        mountns.detach(path)

        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
        try:
            offset = os.lseek(fd, 0, os.SEEK_END)
            opened.extend(os.open(path, os.O_RDONLY | os.O_CLOEXEC) for path in joins)
            done = self.mounts.run(lambda: inside(fd), relied, own=True)
        except KernelError:
            self.delete(cid)  # created but not started, if it got that far
            raise
        except OSError as e:  # a namespace or a mount: nothing created
            raise KernelError(f"{self.name} run {cid}: {e}") from e
        finally:
            os.close(fd)
            for pin in opened:
                os.close(pin)
        if done.returncode != 0:
            with open(log, "rb") as f:
                f.seek(offset)
                done.stderr = f.read()[-4096:]
            self.delete(cid)  # created but not started, if it got that far
            raise KernelError(f"{self.name} run {cid}: {_message(done)}")
        try:
            with open(pidfile) as pf:
                pid = int(pf.read().strip())
        except (OSError, ValueError) as e:
            self.delete(cid)
            raise KernelError(f"{self.name} run {cid}: no PID in {pidfile}") from e
        return pid, procfs.start_time(pid) or 0

    def reap_strays(self, keep: int = 0) -> int:
        """``run --detach`` leaves an intermediate runtime process that ends an instant after
        the command: orphaned, it comes to us (a subreaper) as the container's process does
        (``procs.reap_strays``). Reaped at each start and, while one may still be running (it
        can end after its start's command returned), at each pass; a pass after that looks
        at no process. Not while another call of the runtime is under way (a pass's starts
        run in parallel): its runtime process, once a zombie, would be reaped from under it
        (its exit status lost), and so would a start's container process that dies before
        its PID is read."""
        if not self._strays:
            return 0
        with self._lock:
            if self._calls:  # the last call to end, or the next pass, reaps them
                return 0
            reaped, running = procs.reap_strays(self.name, keep)
            self._strays = running > 0
        return reaped

    def refresh(self) -> None:
        self.mounts.refresh()

    def kill(self, cid: str, sig: int = signal.SIGTERM) -> None:
        self._private("kill", ["kill", cid, str(int(sig))])

    def delete(self, cid: str) -> None:
        if not os.path.lexists(os.path.join(self.root, cid)):
            # crun and runc keep a container's state in <root>/<id>: with none there is nothing
            # to delete, and no runtime process to spawn (it cost ~8 ms of every start).
            return
        done = self._private("delete", ["delete", "--force", cid])
        if done.returncode != 0 and self.state(cid) is not None:
            raise KernelError(f"{self.name} delete {cid}: {_message(done)}")

    def state(self, cid: str) -> dict[str, object] | None:
        done = self._private("state", ["state", cid])
        if done.returncode != 0:
            return None
        try:
            state: dict[str, object] = json.loads(done.stdout)
        except ValueError:
            return None
        return state

    def exec_argv(self, cid: str, argv: Sequence[str], tty: bool = False) -> list[str]:
        """For another process (``sdnctl exec``): the runtime behind :data:`WRAPPER`; run it
        with :meth:`env`."""
        return ["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", WRAPPER,
                "sdnctl-runtime", self.binary, "--root", self.root, "exec",
                *(["--tty"] if tty else []), cid, *argv]


#: Filesystems a host-root container does not get from the host: the runtime mounts its own
#: /proc, /sys and /dev, and namespace pins are nobody's business.
PSEUDO_FS = frozenset({"proc", "sysfs", "devtmpfs", "devpts", "cgroup", "cgroup2", "nsfs",
                       "mqueue", "securityfs", "debugfs", "tracefs", "bpf", "pstore",
                       "configfs", "fusectl", "hugetlbfs", "binfmt_misc", "autofs"})
PRIVATE_TREES = ("/proc", "/sys", "/dev", "/run")
PRIVATE_PREFIXES = tuple(t + "/" for t in PRIVATE_TREES)


def host_mounts(mountinfo: str = "/proc/self/mountinfo") -> list[str]:
    """The host's filesystems below ``/`` that a host-root container sees, read-only, besides
    the root one (a non-recursive bind of ``/`` leaves them out): parents before children.

    Read at each such start, from the runtime's mount namespace (about twenty mounts; the
    host's table has some 3,000 namespace pins in a 100-host lab). A line's filesystem type is
    looked at first (one split of its short tail), so a pin costs little more than the
    kernel's printing it."""
    found = set()
    with open(mountinfo) as f:
        text = f.read()
    for line in text.splitlines():
        left, _, right = line.partition(" - ")
        if right.split(" ", 1)[0] in PSEUDO_FS or not right:
            continue
        fields = left.split(" ", 5)
        if len(fields) < 5:
            continue
        point = fields[4]
        if point == "/" or "\\" in point or point.startswith(PRIVATE_PREFIXES) \
                or point in PRIVATE_TREES:
            continue
        found.add(point)
    return sorted(found, key=lambda p: (p.count("/"), p))


def spec_paths(config: str) -> tuple[list[str], list[str]]:
    """What a bundle's spec names on the host: the namespaces it joins by a path outside
    /proc (the pins a start binds in the runtime's mount namespace) and its bind sources."""
    try:
        with open(config) as f:
            spec = json.load(f)
    except (OSError, ValueError) as e:
        raise KernelError(f"could not read the spec {config}: {e}") from e
    joins = [ns["path"] for ns in spec.get("linux", {}).get("namespaces", ())
             if ns.get("path") and not ns["path"].startswith("/proc/")]
    sources = [m["source"] for m in spec.get("mounts", ()) if m.get("type") == "bind"]
    return joins, sources


def _message(done: subprocess.CompletedProcess[bytes]) -> str:
    text = (done.stderr or b"").decode(errors="replace").strip()
    return text.splitlines()[-1] if text else f"exit status {done.returncode}"
