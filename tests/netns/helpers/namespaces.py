"""Small helpers for kernel-level namespace tests: run commands, and a plain uplink veth."""

from __future__ import annotations

import os
import subprocess
import time

#: The two ends of an uplink between a host namespace and an "outside" one.
UPLINK_H, UPLINK_O = "198.51.100.1", "198.51.100.2"


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=30)


def in_ns(path: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``argv`` inside the network namespace at ``path``."""
    return run("nsenter", f"--net={path}", *argv, check=check)


def build_uplink(host: str, outside: str) -> None:
    """A plain veth H<->O with addresses; O knows no route back to the container subnets."""
    h, o = os.path.basename(host), os.path.basename(outside)
    run("ip", "-n", h, "link", "add", "up0", "type", "veth", "peer", "name", "up1", "netns", o)
    run("ip", "-n", h, "addr", "add", f"{UPLINK_H}/24", "dev", "up0")
    run("ip", "-n", h, "link", "set", "up0", "up")
    run("ip", "-n", o, "addr", "add", f"{UPLINK_O}/24", "dev", "up1")
    run("ip", "-n", o, "link", "set", "up1", "up")


def wait_dad_done(paths: list[str], timeout: float = 10.0) -> None:
    """Until no IPv6 address in these namespaces is tentative: the kernel announces each
    link-local address again when its duplicate address detection ends (about a second after
    the link came up), which a test watching for *our* writes would otherwise see."""
    deadline = time.monotonic() + timeout
    while any(in_ns(p, "ip", "-6", "addr", "show", "tentative").stdout.strip() for p in paths):
        if time.monotonic() > deadline:
            raise TimeoutError(f"IPv6 addresses still tentative after {timeout}s in {paths}")
        time.sleep(0.05)
