"""Reading /proc/PID/stat: a process's state and start time (identity = PID + start time);
and /proc/self/task/TID/children: our children."""

from __future__ import annotations

import os


def stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat from field 3 (state) on, or None if there is no such process.

    The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    """
    if pid <= 0:
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return data[data.rindex(b")") + 2:].decode().split()


def comm_and_state(pid: int) -> tuple[str, str] | None:
    """Field 2 (the command name, at most 15 bytes) and field 3 (the state letter)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read(512)
    except (FileNotFoundError, ProcessLookupError):
        return None
    close = data.rindex(b")")
    return data[data.index(b"(") + 1:close].decode(errors="replace"), chr(data[close + 2])


def children() -> list[int]:
    """This process's children, whichever of its threads they belong to (an orphan re-parented
    to a subreaper joins one of its threads' lists)."""
    found: list[int] = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/children") as f:
                found += [int(pid) for pid in f.read().split()]
        except FileNotFoundError:  # (the thread ended meanwhile)
            continue
    return found


def start_time(pid: int) -> int | None:
    """Field 22 (clock ticks after boot), or None if there is no such process."""
    fields = stat_fields(pid)
    return int(fields[22 - 3]) if fields else None


def is_running(pid: int, started: int | None = None) -> bool:
    """``pid`` exists, is not a zombie and, when ``started`` is given, started then."""
    fields = stat_fields(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return False
    return started is None or int(fields[22 - 3]) == started
