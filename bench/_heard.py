"""A listener of its own: what netlink sockets hear, each datagram with the moment it came.

Design note. bench/overlay.py's prober notes the moment each host's kernel announced a peer's
entries. Read by a thread of the benchmark's process, those moments came late by up to 175 ms
at N = 100: the thread woke, then waited for the interpreter while the benchmark's other
threads parsed and polled the API. So the sockets are read here, in a process that does
nothing else, at nice -10, and what they hear is passed on to the benchmark, which may parse
it whenever it likes.

Run by the prober as ``python _heard.py FD...`` with the sockets' fds inherited (subscribed,
non-blocking). Records on stdout, each ``RECORD`` (moment: CLOCK_MONOTONIC, as the parent's
``time.monotonic()``; which socket: its place among the fds; a length) then that many bytes.
Length -1: the socket overran and some datagrams are lost. A byte on stdin asks for a *sync*
record (place -1) once everything the sockets held when it came is passed on; stdin closed
ends it. Standard library only, so that it starts in milliseconds.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
import sys
import time

RECORD = struct.Struct("=dii")
LOST, SYNC = -1, -1


def drain(events: socket.socket) -> list[bytes] | None:
    """What ``events`` holds, datagram by datagram; None when some were lost (overrun)."""
    got: list[bytes] | None = []
    while True:
        try:
            data = events.recv(1 << 16)
        except BlockingIOError:
            return got
        except OSError as e:
            if e.errno != errno.ENOBUFS:
                raise
            got = None
            continue
        if got is not None:
            got.append(data)


def listen(fds: list[int], asks: int, out: int) -> None:
    """Pass on what each socket of ``fds`` hears, round by round (a round reads all that epoll
    found ready), with a sync record at the end of a round that read a byte from ``asks``."""
    sockets = [socket.socket(fileno=fd) for fd in fds]
    place = {s.fileno(): i for i, s in enumerate(sockets)}
    poller = select.epoll()
    for fd in [*place, asks]:
        poller.register(fd, select.EPOLLIN)
    while True:
        chunks: list[bytes] = []
        syncs = 0
        for fd, _ in poller.poll():
            if fd == asks:
                asked = os.read(asks, 4096)
                if not asked:
                    return
                syncs += len(asked)
                continue
            datagrams = drain(sockets[place[fd]])
            now = time.monotonic()
            if datagrams is None:
                chunks.append(RECORD.pack(now, place[fd], LOST))
            for data in datagrams or []:
                chunks += [RECORD.pack(now, place[fd], len(data)), data]
        chunks += [RECORD.pack(time.monotonic(), SYNC, 0)] * syncs
        view = memoryview(b"".join(chunks))
        while view:
            view = view[os.write(out, view):]


def main() -> None:
    os.setpriority(os.PRIO_PROCESS, 0, -10)
    try:
        listen([int(fd) for fd in sys.argv[1:]], sys.stdin.fileno(), sys.stdout.fileno())
    except BrokenPipeError:
        pass


if __name__ == "__main__":
    main()
