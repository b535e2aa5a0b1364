"""The recipe for running Debian's dockerd (docker.io 20.10) confined to namespaces of ours.

Design note. dockerd never runs in the host's namespaces: ``unshare --mount --net`` gives it a
private mount namespace and a network namespace of its own. Inside, :data:`DOCKERD_SH` mounts a
fresh sysfs (that namespace's), the cgroup v1 hierarchies again (``ip netns exec``-style sysfs
remounts drop them; :func:`cgroup_v1` names them), and overlays on /etc, /run and /opt whose
upper directories are the caller's, so what dockerd and its containerd write there (key.json,
/run/containerd, /opt/containerd) stays in the caller's directory. Whatever survives dockerd in
that mount namespace (containerd) is found by :func:`pids_in_mount_ns` and stopped by PID.
Shared by the tests (tests/netns/helpers/dockerd.py) and the benchmarks (bench/start.py), and
the base of lab hosts that run Docker. The client is Debian's /usr/bin/docker, matching the
20.10 daemon (not /usr/local/bin/docker).
"""

from __future__ import annotations

import contextlib
import os

DOCKER = "/usr/bin/docker"
DOCKERD = "/usr/sbin/dockerd"

#: Runs as dockerd's parent in its private mount namespace (already in its network namespace):
#: ``sh -c DOCKERD_SH NAME DIR dockerd ARGS...`` with ``CGROUP_V1`` in the environment.
DOCKERD_SH = r"""
set -e
D="$1"; shift
mount -t sysfs sysfs /sys
mount -t tmpfs -o mode=755 cgroup /sys/fs/cgroup
for c in $CGROUP_V1; do
  dir="/sys/fs/cgroup/${c#name=}"
  mkdir -p "$dir"
  case "$c" in
    name=*) mount -t cgroup -o "none,$c" cgroup "$dir" ;;
    *) mount -t cgroup -o "$c" cgroup "$dir" ;;
  esac
done
for dir in /etc /run /opt; do
  name=$(basename "$dir")
  mkdir -p "$D/ov/$name/upper" "$D/ov/$name/work"
  mount -t overlay overlay \
    -o "lowerdir=$dir,upperdir=$D/ov/$name/upper,workdir=$D/ov/$name/work" "$dir"
done
exec "$@"
"""


def cgroup_v1() -> list[str]:
    """The v1 hierarchies mounted here, as mount options name them (``cpu``, ``name=systemd``)."""
    names = []
    with open("/proc/self/mounts") as f:
        for line in f:
            _, where, kind, options = line.split()[:4]
            if kind == "cgroup" and where.startswith("/sys/fs/cgroup/"):
                opts = [o for o in options.split(",") if o not in ("rw", "ro", "relatime",
                                                                   "nosuid", "nodev", "noexec")]
                if len(opts) == 1 and os.path.basename(where) in (opts[0],
                                                                  opts[0].removeprefix("name=")):
                    names.append(opts[0])
    return names


def pids_in_mount_ns(inode: int) -> list[int]:
    """Every process in the mount namespace ``inode`` (none for 0)."""
    if not inode:
        return []
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if os.stat(f"/proc/{entry}/ns/mnt").st_ino == inode:
                    found.append(int(entry))
    return found
