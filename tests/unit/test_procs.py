"""Reaping container processes (agent/kernel/procs.py) against real child processes.

A process that exits drops its namespaces before it becomes a zombie, and closing its files
(deferred work of the exit path) comes in between: for that instant it no longer looks alive,
yet it cannot be reaped. The agent saw a container in that instant and reported it exited with
an unknown code (-1 instead of 7). Many open pipes widen the instant to something a loop sees.
"""

from __future__ import annotations

import os

from agent.kernel import procfs, procs

PIPES = 400  # closing them is the deferred exit work that widens the window
TRIALS = 10


def _exiting_child(code: int) -> procs.ProcInfo:
    pid = os.fork()
    if pid == 0:  # the child: only system calls, then out
        try:
            for _ in range(PIPES):
                os.pipe()
        finally:
            os._exit(code)
    started = procfs.start_time(pid)
    assert started is not None  # our unreaped child has /proc/PID/stat, zombie or not
    return procs.ProcInfo(pid, started)


def test_the_code_of_a_child_seen_exiting_is_never_lost() -> None:
    lost = []
    for _ in range(TRIALS):
        info = _exiting_child(7)
        try:
            # What the agent does: look until it is not alive, then ask how it ended.
            while procs.is_alive(info, {"net": "/proc/self/ns/net"}):
                pass
            lost.append(procs.reap(info))
        finally:
            try:
                os.waitpid(info.pid, 0)  # reap it if reap() did not
            except ChildProcessError:
                pass
    assert lost == [7] * TRIALS


def test_a_running_child_is_not_reaped_and_a_stranger_has_no_code() -> None:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(w)
        os.read(r, 1)  # runs until the parent closes its end
        os._exit(3)
    os.close(r)
    info = procs.ProcInfo(pid, procfs.start_time(pid) or 0)
    try:
        assert procs.reap(info) is None  # running: no code, no wait
        assert procs.reap(procs.ProcInfo(1, procfs.start_time(1) or 0)) is None  # not ours
    finally:
        os.close(w)
    while (code := procs.reap(info)) is None:
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
    assert code == 3
