"""Where sdnctl keeps things. Every path can be moved with an environment variable, which is how
tests and parallel runs keep out of each other's way.

    SDNCTL_RUN_DIR     /run/sdnctl          sockets, pidfiles, lab state, agents' namespaces
    SDNCTL_STATE_DIR   /var/lib/sdnctl      the controller's SQLite file, agents' data
    SDNCTL_CONTROLLER  unix:<run dir>/controller.sock   what the CLI dials

A daemon that must run once per socket (the controller) holds an exclusive ``flock`` on a lock
file that names its PID, from before it binds until after it has removed what it made
(:func:`hold_lock`, :func:`lock_holder`): the lock ends with the process, however it ends.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile


def run_dir() -> str:
    return os.environ.get("SDNCTL_RUN_DIR", "/run/sdnctl")


def state_dir() -> str:
    return os.environ.get("SDNCTL_STATE_DIR", "/var/lib/sdnctl")


def controller_socket() -> str:
    return os.path.join(run_dir(), "controller.sock")


def controller_address() -> str:
    return os.environ.get("SDNCTL_CONTROLLER", f"unix:{controller_socket()}")


def controller_db() -> str:
    return os.path.join(state_dir(), "controller.db")


def write_atomic(path: str, text: str, mode: int = 0o644) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the new one, never half."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def hold_lock(path: str) -> int | None:
    """Take the exclusive lock of ``path`` (created if missing) without waiting and write our
    PID in it. Returns the descriptor, to keep open for as long as the lock is to be held, or
    None when another process holds it."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        # The holder removed the file between our open and our lock: that lock guards nothing.
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def release_lock(path: str, fd: int) -> None:
    """Remove the lock file ``fd`` holds (unless another file has taken its name), then let go."""
    with contextlib.suppress(FileNotFoundError):
        if os.stat(path).st_ino == os.fstat(fd).st_ino:
            os.unlink(path)
    os.close(fd)


def lock_holder(path: str) -> int | None:
    """The PID of the process holding the lock of ``path`` (0 when it has not written it yet),
    or None when nobody holds it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 64).decode(errors="replace").split()
            return int(text[0]) if text and text[0].isdigit() else 0
        return None
    finally:
        os.close(fd)
