"""Starting container processes through ``agent.launch``, checking them, stopping them.

A launched process is not our child (the launcher exits at once and the process is reparented),
so its exit code is not knowable here: we can only tell whether it is alive. Identity is the pair
(PID, start time), and liveness also demands that the process sits in the network namespace we
gave it; together they guard against a reused PID.

PID 1 of a PID namespace gets no signal from outside that it has no handler for, SIGKILL apart:
``stop`` therefore always ends with SIGKILL after the grace period.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import agent
from agent.kernel import procfs
from agent.kernel.links import KernelError
from agent.kernel.netns import netns_inode

LAUNCH_TIMEOUT = 10.0
POLL_INTERVAL = 0.01


@dataclass(frozen=True)
class ProcInfo:
    pid: int  # in the agent's PID namespace
    start_time: int  # field 22 of /proc/PID/stat


def _launcher_env() -> dict[str, str]:
    """Make ``-m agent.launch`` importable whatever the working directory."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(agent.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def start(
    netns_path: str | None, hostname: str, command: Sequence[str], pidfile: str, log: str,
    uts: str | None = None, ipc: str | None = None,
) -> ProcInfo:
    """Run ``command`` in a new PID namespace, in the network namespace at ``netns_path`` (None:
    the agent's own, i.e. the host's), the UTS and IPC namespaces at ``uts``/``ipc`` (None: new
    ones; a new UTS namespace is named ``hostname``)."""
    argv = [sys.executable, "-m", "agent.launch", "--hostname", hostname,
            "--pidfile", pidfile, "--log", log]
    for flag, path in (("--netns", netns_path), ("--uts", uts), ("--ipc", ipc)):
        if path:
            argv += [flag, path]
    argv += ["--", *command]
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT, check=False,
            start_new_session=True, stdin=subprocess.DEVNULL, env=_launcher_env(),
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise KernelError(f"could not start {command[0]!r} in {netns_path!r}") from e
    if done.returncode != 0:
        raise KernelError(
            f"could not start {command[0]!r} in {netns_path!r}: {done.stderr.strip()}"
        )
    info = read_pidfile(pidfile)
    if info is None:
        raise KernelError(f"could not start {command[0]!r}: no pidfile {pidfile!r}")
    return info


def read_pidfile(path: str) -> ProcInfo | None:
    """The ProcInfo in a pidfile written by the launcher; None if missing or malformed."""
    try:
        with open(path) as f:
            pid, start_time = (int(field) for field in f.read().split())
    except (OSError, ValueError):
        return None
    return ProcInfo(pid, start_time)


def _is_running(info: ProcInfo) -> bool:
    """Same process (PID and start time) and not a zombie awaiting its reaper."""
    return procfs.is_running(info.pid, info.start_time)


def is_alive(info: ProcInfo, netns_path: str) -> bool:
    """True when the process runs and lives in the network namespace at ``netns_path``."""
    if not _is_running(info):
        return False
    try:
        same_ns = os.stat(f"/proc/{info.pid}/ns/net").st_ino == netns_inode(netns_path)
    except OSError:
        return False
    return same_ns and _is_running(info)  # re-check: the PID may have changed hands meanwhile


def _signal(info: ProcInfo, sig: int) -> bool:
    """Send ``sig`` if the process is still ours; False when it is gone."""
    if not _is_running(info):
        return False
    try:
        os.kill(info.pid, sig)
    except ProcessLookupError:
        return False
    return True


def _wait_gone(info: ProcInfo, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _is_running(info):
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_INTERVAL)
    return True


def stop(info: ProcInfo, grace: float = 1.0) -> None:
    """SIGTERM, wait up to ``grace`` seconds, then SIGKILL. Already gone is success."""
    stop_all([info], grace)


def stop_all(infos: Sequence[ProcInfo], grace: float = 1.0) -> None:
    """Stop several processes at once: one grace period for all, not one each."""
    alive = [info for info in infos if _signal(info, signal.SIGTERM)]
    deadline = time.monotonic() + grace
    while alive and time.monotonic() < deadline:
        time.sleep(POLL_INTERVAL)
        alive = [info for info in alive if _is_running(info)]
    alive = [info for info in alive if _signal(info, signal.SIGKILL)]
    stuck = [info.pid for info in alive if not _wait_gone(info, 5.0)]
    if stuck:
        raise KernelError(f"could not stop processes {stuck}: still running after SIGKILL")


def reap(info: ProcInfo) -> int | None:
    """The exit code of our exited child ``info`` (reaping it), as a shell reports it: 128+N
    for death by signal N. None while it runs, or when it is not our child (then its real
    parent reaps it and the code is lost)."""
    if procfs.start_time(info.pid) != info.start_time:
        return None  # gone already, or the PID belongs to someone else now
    try:
        pid, status = os.waitpid(info.pid, os.WNOHANG)
    except ChildProcessError:
        return None
    if pid == 0:
        return None
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def write_pidfile(path: str, info: ProcInfo) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(f"{info.pid} {info.start_time}\n")
    os.replace(tmp, path)
