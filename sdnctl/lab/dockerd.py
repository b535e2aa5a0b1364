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
import shutil
import subprocess
import time
from dataclasses import dataclass

from agent.kernel import cgroups, procfs
from sdnctl.lab import lab

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


# -- a lab host's dockerd (issue 18) ---------------------------------------------------------------

@dataclass(frozen=True)
class LabDocker:
    """Where a lab host's dockerd keeps everything: one directory on the disk (its data root,
    exec root, socket, our overlays' upper directories and the plugin's socket)."""

    dir: str

    @property
    def socket(self) -> str:
        return os.path.join(self.dir, "docker.sock")

    @property
    def docker_host(self) -> str:
        return f"unix://{self.socket}"

    @property
    def plugin_socket(self) -> str:
        """The agent's plugin socket: outside dockerd's overlays, so both see the same file."""
        return os.path.join(self.dir, "plugin", "sdnctl.sock")

    @property
    def plugin_spec(self) -> str:
        """Where that dockerd finds the plugin: its /etc/docker/plugins, which is the upper
        directory of our overlay on its /etc."""
        return os.path.join(self.dir, "ov", "etc", "upper", "docker", "plugins", "sdnctl.spec")

    @property
    def cgroup_parent(self) -> str:
        """Its containers' cgroups: named after the host's directory (``<prefix><host>``),
        so that two lab hosts, or two labs, never share one."""
        return "/" + os.path.basename(os.path.dirname(self.dir.rstrip("/"))) + "-docker"

    def argv(self, netns_path: str, dockerd: str = DOCKERD) -> list[str]:
        """dockerd in the lab host's network namespace and a private mount namespace, with
        Docker's defaults otherwise (its bridge and iptables rules, in that host only)."""
        return ["unshare", "--mount", "--propagation", "private", "--",
                "nsenter", f"--net={netns_path}", "--",
                "/bin/sh", "-c", DOCKERD_SH, "dockerd-confined", self.dir,
                dockerd, "--config-file", os.path.join(self.dir, "daemon.json"),
                "--data-root", os.path.join(self.dir, "data"),
                "--exec-root", os.path.join(self.dir, "exec"),
                "--pidfile", os.path.join(self.dir, "docker.pid"),
                "-H", self.docker_host, "--cgroup-parent", self.cgroup_parent]

    def prepare(self) -> None:
        os.makedirs(os.path.join(self.dir, "plugin"), mode=0o700, exist_ok=True)
        os.makedirs(os.path.dirname(self.plugin_spec), exist_ok=True)
        with open(os.path.join(self.dir, "daemon.json"), "w") as f:
            f.write("{}\n")

    def env(self) -> dict[str, str]:
        """The client's environment: Debian's docker against this daemon."""
        return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DOCKER_HOST": self.docker_host,
                "DOCKER_CONFIG": os.path.join(self.dir, "client")}

    def answers(self) -> bool:
        done = subprocess.run([DOCKER, "version", "--format", "{{.Server.Version}}"],
                              env=self.env(), capture_output=True, text=True, timeout=30,
                              check=False)
        return done.returncode == 0


def start_lab_dockerd(docker: LabDocker, netns_path: str, timeout: float = 60.0) -> dict[str, int]:
    """Start a lab host's dockerd, detached, and wait until it answers. Returns what stopping
    it needs: ``{"pid", "start_time", "mnt_ns"}`` (unshare, nsenter and sh exec: the PID is
    dockerd's)."""
    docker.prepare()
    log_path = os.path.join(docker.dir, "dockerd.log")
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(docker.argv(netns_path), stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                env={**docker.env(), "CGROUP_V1": " ".join(cgroup_v1())})
    known = {"pid": proc.pid, "start_time": procfs.start_time(proc.pid) or 0, "mnt_ns": 0}
    deadline = time.monotonic() + timeout
    try:
        while not docker.answers():
            if proc.poll() is not None:
                with open(log_path) as f:
                    tail = f.read()[-1200:]
                raise lab.LabError(f"dockerd exited with {proc.returncode}: {tail}")
            if time.monotonic() > deadline:
                raise lab.LabError(f"dockerd did not answer within {timeout:.0f} s; see "
                                   f"{log_path}")
            time.sleep(0.1)
        known["mnt_ns"] = os.stat(f"/proc/{proc.pid}/ns/mnt").st_ino
    except BaseException:
        with contextlib.suppress(OSError):
            known["mnt_ns"] = known["mnt_ns"] or os.stat(f"/proc/{proc.pid}/ns/mnt").st_ino
        stop_lab_dockerd(docker, known)
        raise
    return known


def stop_lab_dockerd(docker: LabDocker, known: dict[str, int]) -> None:
    """Stop dockerd by PID (it stops its containers first, calling the plugin's Leave and
    ReleaseAddress), then whatever of ours survives in its mount namespace (containerd, shims),
    its containers' cgroups and its directory."""
    pid = int(known.get("pid") or 0)
    if pid > 0 and lab.process_alive(pid, known.get("start_time") or None):
        with contextlib.suppress(lab.LabError):
            lab.stop_process(pid, grace=20, start_time=known.get("start_time") or None)
    mnt_ns = int(known.get("mnt_ns") or 0)
    if mnt_ns and mnt_ns != os.stat("/proc/self/ns/mnt").st_ino:
        for left in pids_in_mount_ns(mnt_ns):
            with contextlib.suppress(lab.LabError, ValueError):
                lab.stop_process(left, grace=2)
    with contextlib.suppress(OSError):
        cgroups.remove_tree(docker.cgroup_parent)
    shutil.rmtree(docker.dir, ignore_errors=True)
    with contextlib.suppress(OSError):
        os.rmdir(os.path.dirname(docker.dir.rstrip("/")))  # the host's directory, if empty
