"""Reading /proc/PID/stat: a process's state and start time (identity = PID + start time)."""

from __future__ import annotations


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
