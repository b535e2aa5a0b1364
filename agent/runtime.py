"""The OCI runtime seam: the agent writes a bundle, a runtime (crun by default, or runc) runs it.

Every runtime call goes through one small wrapper: ``unshare --mount --propagation private``,
then a shell that

  - hides ``/sys/fs/cgroup/unified`` on a hybrid-cgroup host (crun refuses hybrid layouts), and
  - for ``run``, mounts the container's root filesystem on ``<bundle>/rootfs``: an overlay of the
    image's layers under the container's upper directory, or a read-only bind of ``/``,

and execs the runtime (for ``run``: ``create``, then ``start`` from the same shell). The mounts
exist only in that private mount namespace and in the container's own (a copy of it): when the
container ends, they end with it, and nothing is ever mounted in the host's mount namespace.
crun and runc share one command-line, so one class serves both.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from agent.kernel import cgroups, procfs
from agent.kernel.errors import KernelError

RUNTIMES = ("crun", "runc")
TIMEOUT = 30.0

#: Runs in the private mount namespace; data comes in environment variables, never in the script.
WRAPPER = r"""
set -e
if [ -n "$SDNCTL_HIDE" ]; then umount -l "$SDNCTL_HIDE"; fi
case "$SDNCTL_ROOTFS_KIND" in
  overlay) mount -t overlay overlay -o "$SDNCTL_ROOTFS_OPTS" "$SDNCTL_ROOTFS" ;;
  host) mount --bind / "$SDNCTL_ROOTFS"
        printf '%s\n' "$SDNCTL_HOST_MOUNTS" | while IFS= read -r m; do
          if [ -n "$m" ] && [ -d "$SDNCTL_ROOTFS$m" ]; then
            mount --bind -o ro "$m" "$SDNCTL_ROOTFS$m"
          fi
        done ;;
esac
if [ -n "$SDNCTL_START" ]; then
  "$@"
  exec "$1" --root "$3" start "$SDNCTL_START"
fi
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


class OciRuntime:
    def __init__(self, binary: str, root: str, layout: str | None = None,
                 create: bool = True) -> None:
        self.name = os.path.basename(binary)
        self.binary = binary
        self.root = root
        self.layout = layout or cgroups.layout()
        if create:
            os.makedirs(root, mode=0o700, exist_ok=True)

    def _argv(self, *args: str) -> list[str]:
        return ["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", WRAPPER,
                "sdnctl-runtime", self.binary, "--root", self.root, *args]

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The wrapper's environment (also for callers that run :meth:`exec_argv` themselves)."""
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
               "SDNCTL_HIDE": cgroups.UNIFIED if self.layout == "hybrid" else ""}
        env.update(extra or {})
        return env

    def _call(self, what: str, args: Sequence[str], extra: Mapping[str, str] | None = None,
              output: int | None = None) -> subprocess.CompletedProcess[bytes]:
        """Run the runtime. ``output``: a file for its stdout and stderr, which the container
        inherits (a pipe would stay open as long as the container runs)."""
        pipe = subprocess.PIPE if output is None else output
        try:
            return subprocess.run(self._argv(*args), env=self.env(extra), check=False,
                                  stdin=subprocess.DEVNULL, stdout=pipe, stderr=pipe,
                                  timeout=TIMEOUT, start_new_session=True)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise KernelError(f"{self.name} {what}: {e}") from e

    def run(self, cid: str, bundle: str, rootfs: Rootfs, log: str) -> tuple[int, int]:
        """``create``, then ``start``, in one wrapper process (one process fewer than two
        calls: ~12 ms of every start). Once ``create`` has exited, the container's process,
        blocked before exec, is our child (we are a subreaper), so however fast the command
        exits, its exit code comes to us; and until we reap it, it stays a zombie with its
        /proc/PID/stat, so the (PID, start time) pair read afterwards names the right process."""
        pidfile = os.path.join(bundle, "runtime.pid")
        extra = {"SDNCTL_ROOTFS_KIND": rootfs.kind, "SDNCTL_ROOTFS_OPTS": rootfs.options(),
                 "SDNCTL_ROOTFS": os.path.join(bundle, "rootfs"), "SDNCTL_START": cid,
                 "SDNCTL_HOST_MOUNTS": "\n".join(host_mounts()) if rootfs.kind == "host" else ""}
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
        try:
            offset = os.lseek(fd, 0, os.SEEK_END)
            done = self._call("run", ["create", "--pid-file", pidfile, "--bundle", bundle,
                                      cid], extra, output=fd)
        finally:
            os.close(fd)
        if done.returncode != 0:
            with open(log, "rb") as f:
                f.seek(offset)
                done.stderr = f.read()[-4096:]
            self.delete(cid)  # created but not started, if it got that far
            raise KernelError(f"{self.name} run {cid}: {_message(done)}")
        try:
            with open(pidfile) as f:
                pid = int(f.read().strip())
        except (OSError, ValueError) as e:
            self.delete(cid)
            raise KernelError(f"{self.name} run {cid}: no PID in {pidfile}") from e
        return pid, procfs.start_time(pid) or 0

    def kill(self, cid: str, sig: int = signal.SIGTERM) -> None:
        self._call("kill", ["kill", cid, str(int(sig))])

    def delete(self, cid: str) -> None:
        if not os.path.lexists(os.path.join(self.root, cid)):
            # crun and runc keep a container's state in <root>/<id>: with none there is nothing
            # to delete, and no runtime process to spawn (it cost ~8 ms of every start).
            return
        done = self._call("delete", ["delete", "--force", cid])
        if done.returncode != 0 and self.state(cid) is not None:
            raise KernelError(f"{self.name} delete {cid}: {_message(done)}")

    def state(self, cid: str) -> dict[str, object] | None:
        done = self._call("state", ["state", cid])
        if done.returncode != 0:
            return None
        try:
            state: dict[str, object] = json.loads(done.stdout)
        except ValueError:
            return None
        return state

    def exec_argv(self, cid: str, argv: Sequence[str], tty: bool = False) -> list[str]:
        return self._argv("exec", *(["--tty"] if tty else []), cid, *argv)


#: Filesystems a host-root container does not get from the host: the runtime mounts its own
#: /proc, /sys and /dev, and namespace pins are nobody's business.
PSEUDO_FS = frozenset({"proc", "sysfs", "devtmpfs", "devpts", "cgroup", "cgroup2", "nsfs",
                       "mqueue", "securityfs", "debugfs", "tracefs", "bpf", "pstore",
                       "configfs", "fusectl", "hugetlbfs", "binfmt_misc", "autofs"})
PRIVATE_TREES = ("/proc", "/sys", "/dev", "/run")


def host_mounts(mountinfo: str = "/proc/self/mountinfo") -> list[str]:
    """The host's filesystems below ``/`` that a host-root container sees, read-only, besides
    the root one (a non-recursive bind of ``/`` leaves them out): parents before children."""
    found = []
    with open(mountinfo) as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = left.split()
            if len(fields) < 5 or not right:
                continue
            point = fields[4]
            if point == "/" or "\\" in point or right.split()[0] in PSEUDO_FS:
                continue
            if any(point == t or point.startswith(t + "/") for t in PRIVATE_TREES):
                continue
            found.append(point)
    return sorted(set(found), key=lambda p: (p.count("/"), p))


def _message(done: subprocess.CompletedProcess[bytes]) -> str:
    text = (done.stderr or b"").decode(errors="replace").strip()
    return text.splitlines()[-1] if text else f"exit status {done.returncode}"
