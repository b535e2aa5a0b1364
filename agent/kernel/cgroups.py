"""cgroups as the OCI runtime leaves them: which layout the host has, live usage, tidying up.

The runtime creates and removes each container's cgroup; we only read it and remove the parent
directories we asked for once they are empty. Three layouts exist:

    v2      /sys/fs/cgroup is cgroup2 (most hosts today)
    hybrid  v1 controllers, plus cgroup2 at /sys/fs/cgroup/unified. crun refuses it unless that
            mount is hidden, which the runtime wrapper does in a private mount namespace
    v1      v1 controllers only

Which layout, and which v1 hierarchies, is read from the filesystems' types (``statfs`` of
``/sys/fs/cgroup`` and of the directories in it), not from the mount table: the table holds a
pin for every namespace of every container, and a container's removal read it twice (about
12 ms of CPU at 3,100 mounts; 1,000 removals in a 100-host lab's ``down``, issue 21).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
from dataclasses import dataclass

from agent.kernel.netns import libc

ROOT = "/sys/fs/cgroup"
UNIFIED = "/sys/fs/cgroup/unified"
V1_USAGE = {"memory": "memory.usage_in_bytes", "pids": "pids.current",
            "cpuacct": "cpuacct.usage"}
CGROUP_SUPER_MAGIC = 0x27E0EB  # a v1 hierarchy (linux/magic.h)
CGROUP2_SUPER_MAGIC = 0x63677270
#: Room for ``struct statfs`` (120 bytes on x86_64 and aarch64, 64-84 on 32-bit ABIs, under 128
#: everywhere), with a margin; f_type, its first field, is a long.
STATFS_SIZE = 256
libc.statfs.argtypes = [ctypes.c_char_p, ctypes.c_void_p]


@dataclass(frozen=True)
class Usage:
    memory: int = 0  # bytes
    pids: int = 0
    cpu_usec: int = 0


def fs_type(path: str) -> int:
    """The type of the filesystem mounted at (or holding) ``path``, its ``statfs`` f_type; 0
    when ``path`` cannot be read."""
    buf = ctypes.create_string_buffer(STATFS_SIZE)
    if libc.statfs(path.encode(), buf) != 0:
        return 0
    return ctypes.c_long.from_buffer(buf).value


def layout() -> str:
    if fs_type(ROOT) == CGROUP2_SUPER_MAGIC:
        return "v2"
    if fs_type(UNIFIED) == CGROUP2_SUPER_MAGIC:
        return "hybrid"
    return "v1"


def hierarchies(kind: str | None = None) -> list[str]:
    """Directories under which a cgroup path exists: the cgroup2 root, or each v1 hierarchy
    (a directory of ``/sys/fs/cgroup`` holding a v1 cgroup filesystem; the links beside them,
    ``cpu`` -> ``cpu,cpuacct``, left out)."""
    kind = kind or layout()
    if kind == "v2":
        return [ROOT]
    try:
        names = os.listdir(ROOT)
    except OSError:
        return []
    paths = (os.path.join(ROOT, name) for name in names)
    return sorted(path for path in paths
                  if not os.path.islink(path) and fs_type(path) == CGROUP_SUPER_MAGIC)


def _read_int(path: str) -> int:
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def usage(path: str, kind: str | None = None) -> Usage:
    """What the cgroup at ``path`` (relative to each hierarchy) uses now; zeros if gone."""
    kind = kind or layout()
    rel = path.lstrip("/")
    if kind == "v2":
        base = os.path.join(ROOT, rel)
        cpu = 0
        with contextlib.suppress(OSError), open(os.path.join(base, "cpu.stat")) as f:
            for line in f:
                key, _, value = line.partition(" ")
                if key == "usage_usec":
                    cpu = int(value)
        return Usage(_read_int(os.path.join(base, "memory.current")),
                     _read_int(os.path.join(base, "pids.current")), cpu)
    values = {c: _read_int(os.path.join(ROOT, c, rel, f)) for c, f in V1_USAGE.items()}
    return Usage(values["memory"], values["pids"], values["cpuacct"] // 1000)


def exists(path: str, kind: str | None = None) -> bool:
    rel = path.lstrip("/")
    return any(os.path.isdir(os.path.join(h, rel)) for h in hierarchies(kind))


def remove(path: str, keep_parents_of: str = "/") -> None:
    """Remove the (empty) cgroup ``path`` and its parents up to ``keep_parents_of``, in every
    hierarchy. Busy or non-empty directories are left alone: someone else still uses them."""
    stop = keep_parents_of.rstrip("/")
    for root in hierarchies():
        current = path.rstrip("/")
        while current and current != stop:
            try:
                os.rmdir(os.path.join(root, current.lstrip("/")))
            except OSError as e:
                if e.errno not in (errno.ENOENT, errno.EBUSY, errno.ENOTEMPTY):
                    raise
                if e.errno != errno.ENOENT:
                    break
            current = os.path.dirname(current)


def remove_tree(parent: str) -> None:
    """Remove ``parent`` and every (empty) cgroup below it, then its empty ancestors: what a
    stopped agent's containers left once their processes are gone."""
    rel = parent.strip("/")
    for root in hierarchies():
        base = os.path.join(root, rel)
        for dirpath, _, _ in sorted(os.walk(base), key=lambda w: -len(w[0])):
            with contextlib.suppress(OSError):
                os.rmdir(dirpath)
    remove(parent)
