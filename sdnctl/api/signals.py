"""The daemons' stop signals, whichever of their threads the kernel hands them to.

Design note. The kernel delivers a process's signal to any thread that does not block it, and
Python runs a handler in the main thread only: a main thread asleep in a lock (``Event.wait``)
is not woken when one of gRPC's threads took the signal, and a SIGTERM then waited until the
main thread woke for another reason (the controller's never did: a test's controller ignored
its SIGTERM for 60 s; an agent's pass loop wakes at least every ``--flows-interval``).
``signal.set_wakeup_fd`` makes the interpreter write each signal's number into a pipe, from
whatever thread took it: reading that pipe is the wake-up. The handlers still run, in the
main thread, as before.
"""

from __future__ import annotations

import os
import signal
import threading

STOP = frozenset({int(signal.SIGTERM), int(signal.SIGINT)})


def wakeup_pipe() -> int:
    """The read end of a pipe into which the interpreter writes the number of every signal the
    process receives. Call it from the main thread, once."""
    read, write = os.pipe2(os.O_CLOEXEC)
    os.set_blocking(write, False)
    signal.set_wakeup_fd(write, warn_on_full_buffer=False)
    return read


def wait_for_stop(read: int, done: threading.Event | None = None) -> None:
    """Until ``done`` (when given) is set or SIGTERM or SIGINT is read from ``wakeup_pipe``'s
    pipe (then ``done`` is set)."""
    if done is None:
        done = threading.Event()
    while not done.is_set():
        if STOP & set(os.read(read, 64)):
            done.set()
