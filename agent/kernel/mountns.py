"""The OCI runtime's mount namespace: a private copy of the host's, taken once, kept small.

Every runtime call needs a mount namespace of its own: crun refuses this kind of host's hybrid
cgroup layout unless ``/sys/fs/cgroup/unified`` is hidden, and a container's root filesystem is
mounted where only the container sees it. Making one per start (``unshare(CLONE_NEWNS)``) copies
the whole mount table, and so does the runtime's own ``clone`` for the container, and the table
holds a pin for every namespace of every container (three per container: about 3,100 mounts in a
100-host lab). Measured here, a copy of 3,000 mounts takes 7.8 ms of CPU, a read of the table
5.9 ms: O(containers) per start, O(containers²) for an ``up`` (issue 21).

So the agent takes one copy, a :class:`Snapshot`: a throw-away thread calls
``unshare(CLONE_FS | CLONE_NEWNS)``, makes every mount private (nothing done there propagates
back to the host, nothing of the host's propagates in), detaches the hidden paths and every
namespace pin (``nsfs``), and keeps the namespace by a file descriptor; no process lives in it.
It is taken at the agent's first pass, when the host's table holds the fewest pins to detach.
A runtime call is a throw-away thread that ``setns``-es into it (0.1 ms) and spawns the runtime
there; a start first takes a copy of the copy for itself (``unshare``: the starts of a pass run
at once, and one that binds the host's mounts for a host-root container must not find another's
root filesystem there), mounts what it needs in it (the namespaces its spec joins, bound from
descriptors opened on the host; its root filesystem) and detaches them once the runtime has
returned, so the copy stays at about twenty mounts, and so does the runtime's copy of it.

A copy does not see what the host mounts later. A start therefore first compares each host
path it relies on (bundle, layers, bind sources, the directories of the pins it joins: their
filesystem and inode) with what the copy sees there, and retakes the copy when one differs; and
:meth:`Snapshot.refresh`, called between passes, retakes it when the host's mounts other than
namespace pins have changed (a new filesystem reaches a host-root container that way). It reads
that table only when the kernel says it changed (``poll`` on an open ``/proc/self/mountinfo``
wakes with ``POLLPRI`` after any mount or unmount): an idle agent in a 100-host lab read 3,100
lines for nothing every 30 s. The
other way round, a filesystem the host unmounts stays referenced by the copy until that
refresh (at most 30 s, at the next pass after it): its device is busy for that long.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

from agent.kernel.netns import MNT_DETACH, MS_BIND, MS_REC, check, in_thread, libc

T = TypeVar("T")

CLONE_FS = 0x00000200
CLONE_NEWNS = 0x00020000
MS_RDONLY = 1
MS_REMOUNT = 32
MS_PRIVATE = 1 << 18
#: Seconds between two looks at the host's mount table (:meth:`Snapshot.refresh`).
REFRESH = 30.0


def _mount(source: str | None, target: str, fstype: str | None, flags: int,
           data: str = "", what: str = "") -> None:
    check(libc.mount(source.encode() if source is not None else None, target.encode(),
                      fstype.encode() if fstype is not None else None, flags,
                      data.encode() if data else None), what or f"mount {target}")


def detach(path: str) -> None:
    """``umount -l``: ``path``'s mount and every mount below it, from this namespace."""
    check(libc.umount2(path.encode(), MNT_DETACH), f"umount {path}")


def mount_overlay(target: str, options: str) -> None:
    """An overlay (``lowerdir=...,upperdir=...,workdir=...``) on ``target``."""
    _mount("overlay", target, "overlay", 0, options, f"mount overlay on {target}")


def bind(source: str, target: str, readonly: bool = False) -> None:
    """A non-recursive bind of ``source`` on ``target`` (``mount --bind [-o ro]``: a bind
    becomes read-only by a remount of the bind)."""
    _mount(source, target, None, MS_BIND, what=f"bind {source} on {target}")
    if readonly:
        _mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY,
               what=f"make {target} read-only")


def bind_host_root(target: str, mounts: Sequence[str]) -> None:
    """``/`` on ``target``, and each of ``mounts`` (the host's other filesystems, parents
    first) read-only at its place below it when the directory is there."""
    bind("/", target)
    for point in mounts:
        if point and os.path.isdir(target + point):
            bind(point, target + point, readonly=True)


def bind_namespace(fd: int, target: str) -> None:
    """Pin the namespace open on ``fd`` (a descriptor of this process) at ``target``."""
    bind(f"/proc/self/fd/{fd}", target)


def _table(mountinfo: str) -> list[tuple[list[str], bool]]:
    """A mount table's lines: (fields before the separator, whether it is a namespace pin)."""
    with open(mountinfo) as f:
        text = f.read()
    found = []
    for line in text.splitlines():
        left, _, right = line.partition(" - ")
        found.append((left.split(" ", 5), right.startswith("nsfs ")))
    return found


def host_signature(mountinfo: str = "/proc/self/mountinfo") -> frozenset[str]:
    """The mounts of a table that a copy of it keeps: their IDs, namespace pins left out."""
    return frozenset(fields[0] for fields, pin in _table(mountinfo) if not pin)


def _detach_pin(path: str) -> None:
    """Detach a namespace pin from the copy being made; one gone already is success. Its owner
    may remove it on the host between our reading of the table and this: unlinking a mount
    point takes the mounts on it away in every namespace (ENOENT here), and a file made again
    at that path is no mount point (EINVAL). Two test workers each removing their lab's
    containers while the other's agent started one met it."""
    try:
        detach(path)
    except OSError as e:
        if e.errno not in (errno.ENOENT, errno.EINVAL):
            raise


def _pins(mountinfo: str) -> list[str]:
    """Mount points of the namespace pins in a table, last mounted first."""
    return [fields[4] for fields, pin in reversed(_table(mountinfo)) if pin]


def identities(paths: Iterable[str]) -> list[tuple[int, int]]:
    """What each path is as the calling thread sees it, (filesystem, inode): a mount on it,
    even a bind of the same filesystem, changes it; (-1, -1): not there."""
    found = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            found.append((-1, -1))
        else:
            found.append((st.st_dev, st.st_ino))
    return found


class Stale(Exception):
    """A path a call relies on is something else in the copy than on the host."""


class Snapshot:
    """The runtime's private mount namespace (see the module's note); taken at the first
    refresh or the first use, whichever comes first."""

    def __init__(self, hide: Sequence[str] = (), interval: float = REFRESH) -> None:
        self.hide = tuple(hide)
        self.interval = interval
        self.taken = 0  # how many copies were taken
        self._held = [-1]  # the copy's descriptor, closed with us at the latest
        #: the host's mount table, open: it polls with POLLPRI once the table changed
        self._watch: list[int] = [-1]
        self._host: frozenset[str] = frozenset()
        self._next = 0.0
        self._lock = threading.Lock()
        weakref.finalize(self, _close, self._held)
        weakref.finalize(self, _close, self._watch)

    def _take(self) -> None:
        """A new copy (the caller holds the lock): private, hidden paths and pins detached."""

        def make() -> int:
            check(libc.unshare(CLONE_FS | CLONE_NEWNS), "unshare(CLONE_NEWNS)")
            _mount(None, "/", None, MS_REC | MS_PRIVATE, what="make / private")
            for path in self.hide:
                detach(path)
            for pin in _pins("/proc/thread-self/mountinfo"):
                _detach_pin(pin)
            return os.open("/proc/thread-self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)

        if self._watch[0] < 0:
            self._watch[0] = os.open("/proc/self/mountinfo", os.O_RDONLY | os.O_CLOEXEC)
        _changed(self._watch[0])  # (a change from here on is seen by the next refresh)
        host = host_signature()
        fd = in_thread(make)
        _close(self._held)
        self._held[0], self._host = fd, host
        self.taken += 1
        self._next = time.monotonic() + self.interval

    def _entry(self) -> int:
        """A descriptor of the copy (taken now if there is none) for one call to enter."""
        with self._lock:
            if self._held[0] < 0:
                self._take()
            return os.dup(self._held[0])

    def refresh(self, now: float | None = None) -> bool:
        """Between passes, at most once per ``interval``: drop the copy if the host's mounts
        (pins aside) changed since it was taken; the next call takes a new one.

        The first refresh takes the first copy. A copy costs a detach per pin, more than
        linearly (30 pins: 2.4 ms of CPU, 1,000: 23 ms, 3,000: 93 ms), and at an agent's
        start, its first pass, the host's table holds the fewest: in a 100 x 10 ``up`` each
        agent took its one copy at its first container start, with the other hosts' pins
        already there."""
        now = time.monotonic() if now is None else now
        with self._lock:
            if not self.taken:
                with contextlib.suppress(OSError):  # the first call takes it, or says why not
                    self._take()
                return False
            if self._held[0] < 0 or now < self._next:
                return False
            self._next = now + self.interval
            if not _changed(self._watch[0]) or host_signature() == self._host:
                return False
            _close(self._held)
            return True

    def run(self, fn: Callable[[], T], paths: Sequence[str] = (), own: bool = False) -> T:
        """Call ``fn`` in a thread inside the copy and return its result (what it spawns is
        in the copy too). ``paths``: host paths ``fn`` relies on; if one is something else in
        the copy than on the host (a mount since the copy was taken), it is taken again.
        ``own``: in a copy of the copy for this call alone (``unshare`` of its twenty-odd
        mounts, about 0.1 ms), where what ``fn`` mounts no other call sees: starts that run
        at once each mount a root filesystem, and one that binds the host's mounts must not
        find another's there."""
        want = identities(paths)

        def inside(fd: int, check_paths: bool) -> T:
            try:
                check(libc.unshare(CLONE_FS), "unshare(CLONE_FS)")
                check(libc.setns(fd, CLONE_NEWNS), "setns(mount namespace)")
            finally:
                os.close(fd)
            if own:
                check(libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
            if check_paths and identities(paths) != want:
                raise Stale
            return fn()

        fd = self._entry()
        try:
            return in_thread(lambda: inside(fd, bool(paths)))
        except Stale:
            with self._lock:
                self._take()
        fd = self._entry()
        return in_thread(lambda: inside(fd, False))

    def close(self) -> None:
        with self._lock:
            _close(self._held)
            _close(self._watch)


def _changed(fd: int) -> bool:
    """Whether the mount table open on ``fd`` changed since the last call (or its opening)."""
    poller = select.poll()
    poller.register(fd, select.POLLPRI)
    return bool(poller.poll(0))


def _close(held: list[int]) -> None:
    """Close the descriptor ``held`` holds, if any, once."""
    if held[0] >= 0:
        os.close(held[0])
        held[0] = -1
