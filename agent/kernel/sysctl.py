"""Read and write sysctls of the *calling thread's* network namespace through /proc/sys.

Entries under ``/proc/sys/net`` belong to the network namespace of the task that opens them, so
the agent (which lives inside its host's namespace) changes only its own host. A test driving a
namespace from outside calls these through ``run_in_netns(path, ...)``.
"""

from __future__ import annotations

import os

from agent.kernel.errors import KernelError

PROC_SYS = "/proc/sys"


def sysctl_path(key: str) -> str:
    """``net.ipv4.ip_forward`` -> ``/proc/sys/net/ipv4/ip_forward`` (dots only, no slashes)."""
    if "/" in key or ".." in key or not key:
        raise ValueError(f"invalid sysctl key {key!r}")
    return os.path.join(PROC_SYS, *key.split("."))


def read_sysctl(key: str) -> str:
    try:
        with open(sysctl_path(key)) as f:
            return f.read().strip()
    except OSError as e:
        raise KernelError(f"could not read sysctl {key!r}") from e


def ensure_sysctl(key: str, value: str) -> bool:
    """Set ``key`` to ``value`` unless it already is. Returns True when it wrote."""
    if read_sysctl(key) == value:
        return False
    try:
        with open(sysctl_path(key), "w") as f:
            f.write(value)
    except OSError as e:
        raise KernelError(f"could not set sysctl {key!r} to {value!r}") from e
    return True


def ensure_ip_forward(enabled: bool = True) -> bool:
    return ensure_sysctl("net.ipv4.ip_forward", "1" if enabled else "0")


def user_namespaces() -> bool:
    """Whether this kernel lets the agent make user namespaces (``user.max_user_namespaces``)."""
    try:
        return int(read_sysctl("user.max_user_namespaces")) > 0
    except (KernelError, ValueError):
        return False
