"""Reaping container processes (agent/kernel/procs.py) against real child processes.

A process that exits drops its namespaces before it becomes a zombie, and closing its files
(deferred work of the exit path) comes in between: for that instant it no longer looks alive,
yet it cannot be reaped. The agent saw a container in that instant and reported it exited with
an unknown code (-1 instead of 7). Many open pipes widen the instant to something a loop sees.

The children are forked by a fresh interpreter of their own: a test worker that ran other tests
before may hold state (threads, signal dispositions) that this must not depend on.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.kernel import procfs, procs
from agent.runtime import OciRuntime

REPO = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import os, sys
from agent.kernel import procfs, procs

def exiting_child(code, pipes):
    pid = os.fork()
    if pid == 0:  # the child: only system calls, then out
        try:
            for _ in range(pipes):
                os.pipe()
        finally:
            os._exit(code)
    return procs.ProcInfo(pid, procfs.start_time(pid))

def seen_exiting():
    # What the agent does: look until it is not alive, then ask how it ended.
    info = exiting_child(7, 400)  # closing the pipes is the exit work that widens the window
    while procs.is_alive(info, {"net": "/proc/self/ns/net"}):
        pass
    code = procs.reap(info)
    if code is None:
        os.waitpid(info.pid, 0)
    return code

def running_then_exited():
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(w)
        os.read(r, 1)  # runs until the parent closes its end
        os._exit(3)
    os.close(r)
    info = procs.ProcInfo(pid, procfs.start_time(pid))
    codes = [procs.reap(info), procs.reap(procs.ProcInfo(1, procfs.start_time(1)))]
    os.close(w)
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped
    return codes + [procs.reap(info)]

print(*[seen_exiting() for _ in range(int(sys.argv[1]))])
print(*running_then_exited())
"""


def run(trials: int) -> list[str]:
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(trials)], cwd=REPO, text=True,
                          capture_output=True, timeout=60, check=True)
    return done.stdout.splitlines()


def test_the_code_of_a_child_seen_exiting_is_never_lost() -> None:
    assert run(10)[0].split() == ["7"] * 10


def test_a_running_child_is_not_reaped_and_a_stranger_has_no_code() -> None:
    # running: no code (and no wait); PID 1, not our child: none; once it exited: its code
    assert run(0)[1].split() == ["None", "None", "3"]


def test_only_the_runtimes_exited_children_are_reaped(tmp_path: Path) -> None:
    """``procs.reap_strays``: our zombie children named like the runtime go; one of that name
    still running is counted, not touched; another name's zombie (a container's, whose exit
    code ``reap`` collects) stays."""
    stray = tmp_path / "fakecrun"
    stray.symlink_to("/bin/sleep")  # (the command name is the executable's file name)
    done = subprocess.Popen([str(stray), "0"])
    running = subprocess.Popen([str(stray), "30"])
    other = subprocess.Popen(["/bin/sleep", "0"])
    try:
        deadline = time.monotonic() + 10
        while {procfs.comm_and_state(p.pid) for p in (done, other)} != \
                {("fakecrun", "Z"), ("sleep", "Z")}:
            assert time.monotonic() < deadline, "the children did not exit"
            time.sleep(0.01)
        assert procs.reap_strays("fakecrun", keep=os.getpid()) == (1, 1)
        assert procfs.comm_and_state(done.pid) is None  # reaped
        still = procfs.comm_and_state(running.pid)
        assert still is not None and still[0] == "fakecrun" and still[1] != "Z"
        assert procfs.comm_and_state(other.pid) == ("sleep", "Z")  # left to its reaper
        assert procs.reap_strays("fakecrun", keep=running.pid) == (0, 0)
    finally:
        running.kill()
        for p in (done, running, other):
            p.wait()


def test_a_waited_child_gives_its_status_once_it_exits_and_is_reaped() -> None:
    """``procs.wait_child`` (how the agent waits for its OCI runtime): a child still running
    when the time is up is a TimeoutExpired and is left running; once it exits, its status,
    and it is reaped."""
    read_end, write_end = os.pipe()
    child = subprocess.Popen(["/bin/sh", "-c", "read line; exit 5"], stdin=read_end)
    os.close(read_end)
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            procs.wait_child(child, 0.05)  # it waits for its line
        assert child.returncode is None and procfs.comm_and_state(child.pid) is not None
        os.write(write_end, b"go\n")
        assert procs.wait_child(child, 10) == 5
        assert child.returncode == 5 and procfs.comm_and_state(child.pid) is None
    finally:
        os.close(write_end)
        if child.returncode is None:
            child.kill()
            child.wait()


def test_the_runtime_reaps_no_stray_while_another_of_its_calls_is_under_way(
        tmp_path: Path) -> None:
    """A pass's starts run in parallel: a runtime process another call still waits for (or a
    start's container process not yet read from its pidfile) must not be reaped from under
    it. The zombie stays until no call is under way, then goes."""
    binary = tmp_path / "fakecrun"
    binary.symlink_to("/bin/sleep")
    runtime = OciRuntime(str(binary), str(tmp_path / "state"), layout="unified")
    done = subprocess.Popen([str(binary), "0"])
    try:
        deadline = time.monotonic() + 10
        while procfs.comm_and_state(done.pid) != ("fakecrun", "Z"):
            assert time.monotonic() < deadline, "the child did not exit"
            time.sleep(0.01)
        with runtime._busy():  # another thread's call of the runtime
            assert runtime.reap_strays() == 0
            assert procfs.comm_and_state(done.pid) == ("fakecrun", "Z")
        assert runtime.reap_strays() == 1
        assert procfs.comm_and_state(done.pid) is None
    finally:
        done.wait()
