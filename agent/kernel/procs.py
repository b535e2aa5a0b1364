"""Container processes (started by the OCI runtime): checking them, stopping them, reaping them.

Identity is the pair (PID, start time), and liveness also demands that the process sits in the
network namespace we gave it; together they guard against a reused PID. The agent is a child
subreaper, so a container's process becomes its child when the runtime exits: :func:`reap`
collects its exit code.

PID 1 of a PID namespace gets no signal from outside that it has no handler for, SIGKILL apart:
``stop`` therefore always ends with SIGKILL after the grace period.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from agent.kernel import procfs
from agent.kernel.errors import KernelError
from agent.kernel.netns import netns_inode

KILL_WAIT = 5.0  # seconds to wait for a process after SIGKILL
EXITING_WAIT = 1.0  # seconds to wait for an exiting process to become a zombie
PF_EXITING = 0x4  # include/linux/sched.h


@dataclass(frozen=True)
class ProcInfo:
    pid: int  # in the agent's PID namespace
    start_time: int  # field 22 of /proc/PID/stat


def read_pidfile(path: str) -> ProcInfo | None:
    """The ProcInfo in a pidfile written by the launcher; None if missing or malformed."""
    try:
        with open(path) as f:
            pid, start_time = (int(field) for field in f.read().split())
    except (OSError, ValueError):
        return None
    return ProcInfo(pid, start_time)


def is_running(pid: int, start_time: int | None = None) -> bool:
    """``pid`` runs (a zombie is dead) and, when given, started at ``start_time``."""
    return procfs.is_running(pid, start_time)


def _is_running(info: ProcInfo) -> bool:
    """Same process (PID and start time) and not a zombie awaiting its reaper."""
    return procfs.is_running(info.pid, info.start_time)


def is_alive(info: ProcInfo, namespaces: str | Mapping[str, str]) -> bool:
    """True when the process runs and is in every namespace of ``namespaces`` (kind as in
    /proc/PID/ns -> path of the namespace; a string is a network namespace's path).

    What cannot be read proves nothing: a namespace path that is gone, or a process whose
    namespaces cannot be read (it is exiting, or is not set up yet), is not alive. A container
    is reported running, with its PID, only once its process is where it belongs."""
    wanted = {"net": namespaces} if isinstance(namespaces, str) else namespaces
    if not _is_running(info):
        return False
    try:
        for kind, path in wanted.items():
            if os.stat(f"/proc/{info.pid}/ns/{kind}").st_ino != netns_inode(path):
                return False
    except OSError:
        return False
    return _is_running(info)  # re-check: the PID may have changed hands meanwhile


def _pidfd(info: ProcInfo) -> int | None:
    """A pidfd of the process of ``info``, or None when it is gone or its PID is another's now.
    Signals through it never hit a process that took the PID over later."""
    try:
        fd = os.pidfd_open(info.pid)
    except ProcessLookupError:
        return None
    if not _is_running(info):  # checked after opening: the fd holds this very process
        os.close(fd)
        return None
    return fd


def _send(fd: int, sig: int) -> bool:
    try:
        signal.pidfd_send_signal(fd, sig)
    except ProcessLookupError:
        return False
    return True


def _wait_exits(fds: dict[int, ProcInfo], timeout: float) -> dict[int, ProcInfo]:
    """Wait up to ``timeout`` seconds for the processes behind ``fds`` to exit (a zombie has);
    the ones still running."""
    left = dict(fds)
    poller = select.poll()
    for fd in left:
        poller.register(fd, select.POLLIN)
    deadline = time.monotonic() + timeout
    while left:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        for fd, _ in poller.poll(int(remaining * 1000) + 1):
            poller.unregister(fd)
            left.pop(fd, None)
    return left


def wait_child(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """Wait for our child ``proc`` to exit and reap it: its exit status. Woken by a pidfd the
    instant it exits, where ``Popen.wait(timeout)`` polls at delays doubling up to 50 ms (a
    runtime that took 17 ms was noticed at 31). TimeoutExpired after ``timeout`` seconds."""
    try:
        fd = os.pidfd_open(proc.pid)
    except OSError:  # reaped already, or a kernel without pidfds
        return proc.wait(timeout)
    try:
        if _wait_exits({fd: ProcInfo(proc.pid, 0)}, timeout):  # still running
            raise subprocess.TimeoutExpired(proc.args, timeout)
    finally:
        os.close(fd)
    return proc.wait()


def stop(info: ProcInfo, grace: float = 1.0) -> None:
    """SIGTERM, wait up to ``grace`` seconds, then SIGKILL. Already gone is success."""
    stop_all([info], grace)


def stop_all(infos: Sequence[ProcInfo], grace: float = 1.0) -> None:
    """Stop several processes at once: SIGTERM to all, one grace period for all, SIGKILL to
    the rest, waited on through pidfds (no polling, no reused PID ever signalled)."""
    fds = {fd: info for info in infos if (fd := _pidfd(info)) is not None}
    try:
        alive = _wait_exits({fd: i for fd, i in fds.items() if _send(fd, signal.SIGTERM)}, grace)
        alive = _wait_exits({fd: i for fd, i in alive.items() if _send(fd, signal.SIGKILL)},
                            KILL_WAIT)
    finally:
        for fd in fds:
            os.close(fd)
    if alive:
        raise KernelError(f"could not stop processes {sorted(i.pid for i in alive.values())}: "
                          "still running after SIGKILL")


def reap(info: ProcInfo) -> int | None:
    """The exit code of our exited child ``info`` (reaping it), as a shell reports it: 128+N
    for death by signal N. None while it runs, or when it is not our child (then its real
    parent reaps it and the code is lost)."""
    if procfs.start_time(info.pid) != info.start_time:
        return None  # gone already, or the PID belongs to someone else now
    try:
        pid, status = os.waitpid(info.pid, os.WNOHANG)
        if pid == 0 and _exiting(info):
            # Between dropping its namespaces (so it no longer looks alive) and becoming a
            # zombie: wait that instant out, or its code would be lost to this pass and the
            # container reported exited with an unknown code.
            _wait_zombie(info, EXITING_WAIT)
            pid, status = os.waitpid(info.pid, os.WNOHANG)
    except ChildProcessError:
        return None
    if pid == 0:
        return None
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def reap_strays(comm: str, keep: int = 0) -> tuple[int, int]:
    """Reap our zombie children named ``comm`` (the OCI runtime's), ``keep`` apart: how many
    were reaped, and how many such children still run. The runtime's intermediate process can
    outlive its detaching command: orphaned, it comes to us (a subreaper) like the container's
    process and, never waited for, stayed a zombie, one per start (1,000 in a 100-host lab of
    10 containers each; churn grew them without bound). A container's own process has exec'd
    its command (another name) and is :func:`reap`'s: its exit code matters."""
    reaped = running = 0
    for pid in procfs.children():
        found = procfs.comm_and_state(pid) if pid != keep else None
        if found is None or found[0] != comm[:15]:
            continue
        if found[1] != "Z":
            running += 1
            continue
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                reaped += 1
    return reaped, running


def _exiting(info: ProcInfo) -> bool:
    """The process runs its exit path (PF_EXITING in the flags of /proc/PID/stat)."""
    fields = procfs.stat_fields(info.pid)
    return fields is not None and int(fields[9 - 3]) & PF_EXITING != 0


def _wait_zombie(info: ProcInfo, timeout: float) -> None:
    fd = _pidfd(info)
    if fd is not None:
        try:
            _wait_exits({fd: info}, timeout)
        finally:
            os.close(fd)


def write_pidfile(path: str, info: ProcInfo) -> None:
    write_atomic(path, f"{info.pid} {info.start_time}\n")


def write_atomic(path: str, text: str) -> None:
    """Write a small file so that readers see the old content or the new, never half."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
