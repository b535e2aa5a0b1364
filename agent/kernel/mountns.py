"""Private mount namespaces without forked helpers: where the OCI runtime runs.

Every runtime call needs a mount namespace of its own: crun refuses this kind of host's hybrid
cgroup layout unless ``/sys/fs/cgroup/unified`` is hidden, and a container's root filesystem is
mounted where only the container sees it. That took ``unshare --mount`` and a shell running
``umount`` and ``mount`` before the runtime: four programs for each start. On a virtual machine
each ``exec`` costs about a millisecond of trapped CPUID in the dynamic loader, and ``mount`` and
``umount`` read the whole mount table (about 3,000 lines in a 100-host lab): at 100 hosts x 10
containers those four programs took 16 s of CPU, more than the runtime itself (issue 21).

Now a throw-away thread does it with system calls, as ``netns.py`` makes network namespaces:
``unshare(CLONE_FS | CLONE_NEWNS)`` (a mount namespace, like a network namespace, belongs to a
thread), every mount made private (nothing done here propagates back to the host), the hidden
paths detached, the root filesystem mounted; then the caller's function runs in that thread, and
what it spawns inherits the namespace. The thread ends with the call, and the namespace with the
last process in it: the container keeps the copy it was made from (its root pivoted into the
overlay), and nothing is ever mounted in the host's mount namespace.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TypeVar

from agent.kernel.netns import MNT_DETACH, MS_BIND, MS_REC, check, in_thread, libc

T = TypeVar("T")

CLONE_FS = 0x00000200
CLONE_NEWNS = 0x00020000
MS_RDONLY = 1
MS_REMOUNT = 32
MS_PRIVATE = 1 << 18


def _mount(source: str | None, target: str, fstype: str | None, flags: int,
           data: str = "", what: str = "") -> None:
    check(libc.mount(source.encode() if source is not None else None, target.encode(),
                      fstype.encode() if fstype is not None else None, flags,
                      data.encode() if data else None), what or f"mount {target}")


def in_private_mounts(fn: Callable[[], T], hide: Sequence[str] = ()) -> T:
    """Call ``fn`` in a thread with a private copy of the mount namespace, ``hide``'s paths
    detached there; return its result (or raise its exception)."""

    def enter_and_run() -> T:
        check(libc.unshare(CLONE_FS | CLONE_NEWNS), "unshare(CLONE_NEWNS)")
        _mount(None, "/", None, MS_REC | MS_PRIVATE, what="make / private")
        for path in hide:
            check(libc.umount2(path.encode(), MNT_DETACH), f"umount {path}")
        return fn()

    return in_thread(enter_and_run)


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
