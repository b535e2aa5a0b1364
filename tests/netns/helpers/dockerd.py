"""A private Docker daemon for tests that compare against the real thing (Debian's docker.io).

Design note. The recipe is sdnctl/lab/dockerd.py's, which bench/start.py uses too: dockerd never
runs in the host's namespaces. ``unshare --mount --net`` gives it a private mount namespace and
a network namespace of its own (nothing to name or remove: both go with its last process);
inside, a fresh sysfs (that namespace's), the cgroup v1 hierarchies mounted again, and overlays
on /etc, /run and /opt whose upper directories are ours, so what dockerd and its containerd
write there (key.json, /run/containerd, /opt/containerd) stays in our directory. It gets its own
--data-root, --exec-root, --pidfile and -H socket; with no bridge and no iptables it touches no
firewall at all (a test of image archives needs no network). It is stopped by its PID, then
whatever of ours survives in its mount namespace (containerd) by PID; the directory goes last.

The client is Debian's /usr/bin/docker, matching the 20.10 daemon (not /usr/local/bin/docker).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

from sdnctl.lab import lab
from sdnctl.lab.dockerd import DOCKER, DOCKERD_SH, cgroup_v1, pids_in_mount_ns

DOCKERD_DIRS = "/usr/sbin:/usr/bin"


def dockerd_path() -> str | None:
    """Debian's dockerd, if docker.io is installed (found by path, not by any code of ours)."""
    return shutil.which("dockerd", path=DOCKERD_DIRS)


def installed() -> bool:
    return dockerd_path() is not None and os.access(DOCKER, os.X_OK)


@dataclass
class Dockerd:
    dir: str
    env: dict[str, str]
    proc: subprocess.Popen[bytes]
    log: str

    def docker(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """The client against this daemon; raises with the output when it fails."""
        done = subprocess.run([DOCKER, *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout, check=False)
        if done.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} failed ({done.returncode}):\n"
                                 f"{done.stdout}\n{done.stderr}")
        return done

    def answers(self) -> bool:
        if self.proc.poll() is not None:
            with open(self.log) as f:
                tail = f.read()[-1500:]
            raise AssertionError(f"dockerd exited with {self.proc.returncode}:\n{tail}")
        done = subprocess.run([DOCKER, "version", "--format", "{{.Server.Version}}"],
                              env=self.env, capture_output=True, text=True, timeout=30,
                              check=False)
        return done.returncode == 0


@contextlib.contextmanager
def private_dockerd(prefix: str, timeout: float = 90, netns: str | None = None,
                    etc_files: dict[str, str] | None = None) -> Iterator[Dockerd]:
    """A dockerd in namespaces of its own, ready to answer; stopped and removed afterwards.
    ``netns``: run it in that (lab host's) network namespace instead of a new, empty one, so it
    reaches what the host reaches. ``etc_files``: files it sees under /etc (relative paths: e.g.
    ``docker/certs.d/HOST:PORT/ca.crt``), written in its /etc overlay's upper directory."""
    dockerd = dockerd_path()
    assert dockerd is not None, "docker.io is not installed"
    # On the disk, not in /run: dockerd's image store and our overlays' upper directories.
    workdir = tempfile.mkdtemp(prefix=f"{prefix}-dockerd-", dir="/tmp")
    sock = os.path.join(workdir, "docker.sock")
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
           "DOCKER_CONFIG": os.path.join(workdir, "client"), "DOCKER_HOST": f"unix://{sock}"}
    with open(os.path.join(workdir, "daemon.json"), "w") as f:
        f.write("{}\n")
    for name, text in (etc_files or {}).items():
        path = os.path.join(workdir, "ov", "etc", "upper", name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
    enter = ["nsenter", f"--net={netns}", "unshare", "--mount"] if netns else \
        ["unshare", "--mount", "--net"]
    argv = [*enter, "--propagation", "private", "--",
            "/bin/sh", "-c", DOCKERD_SH, "dockerd-confined", workdir,
            dockerd, "--config-file", os.path.join(workdir, "daemon.json"),
            "--data-root", os.path.join(workdir, "data"),
            "--exec-root", os.path.join(workdir, "exec"),
            "--pidfile", os.path.join(workdir, "docker.pid"),
            "-H", f"unix://{sock}", "--bridge", "none", "--iptables=false",
            "--ip6tables=false", "--ip-masq=false"]
    log = os.path.join(workdir, "dockerd.log")
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                env={**env, "CGROUP_V1": " ".join(cgroup_v1())})
    # unshare and sh exec: proc.pid is dockerd's PID; its mount namespace names what is ours
    mnt_ns = 0
    try:
        with contextlib.suppress(OSError):
            mnt_ns = os.stat(f"/proc/{proc.pid}/ns/mnt").st_ino
        daemon = Dockerd(workdir, env, proc, log)
        deadline = time.monotonic() + timeout
        while not daemon.answers():
            assert time.monotonic() < deadline, f"dockerd did not answer within {timeout}s"
            time.sleep(0.1)
        mnt_ns = os.stat(f"/proc/{proc.pid}/ns/mnt").st_ino
        yield daemon
    finally:
        if proc.poll() is None:
            with contextlib.suppress(lab.LabError):
                lab.stop_process(proc.pid, grace=15)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        if mnt_ns and mnt_ns != os.stat("/proc/self/ns/mnt").st_ino:
            for pid in pids_in_mount_ns(mnt_ns):
                with contextlib.suppress(lab.LabError, ValueError):
                    lab.stop_process(pid, grace=2)
        shutil.rmtree(workdir, ignore_errors=True)
