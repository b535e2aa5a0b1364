"""Where sdnctl keeps things. Every path can be moved with an environment variable, which is how
tests and parallel runs keep out of each other's way.

    SDNCTL_RUN_DIR     /run/sdnctl          sockets, pidfiles, lab state, agents' namespaces
    SDNCTL_STATE_DIR   /var/lib/sdnctl      the controller's SQLite file, agents' data
    SDNCTL_CONTROLLER  unix:<run dir>/controller.sock   what the CLI dials
"""

from __future__ import annotations

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
