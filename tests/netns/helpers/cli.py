"""Shared helpers for the end-to-end namespace tests: the CLI as a user runs it, and ways to
look at namespaces from outside (raw netlink dumps, nft listings, real packets)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helpers.capture import capture
from helpers.pyroute import iproute_in
from sdnctl.topology import topology

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = sorted(str(p) for p in (REPO / "topology-examples").glob("*.yaml"))
#: (prefix, run directory) of every ``lab_cli`` opened in this process, in order: the module
#: leak check (conftest.py) looks for what the labs of module-scoped fixtures left.
OPENED_LABS: list[tuple[str, Path]] = []


@dataclass
class Cli:
    env: dict[str, str]
    run_dir: Path
    files: dict[str, str] = field(default_factory=dict)  # topology name -> file brought up

    def run(self, *args: str, check: bool = True,
            timeout: float = 120) -> subprocess.CompletedProcess:
        if args[0] == "up":
            with contextlib.suppress(topology.TopologyError):
                self.files[topology.load(args[1]).name] = args[1]
        done = subprocess.run([sys.executable, "-m", "sdnctl.main", *args], env=self.env,
                              capture_output=True, text=True, timeout=timeout, check=False)
        if check and done.returncode != 0:
            raise AssertionError(f"sdnctl {' '.join(args)} failed ({done.returncode}):\n"
                                 f"{done.stdout}\n{done.stderr}")
        return done

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "--json").stdout)

    def container(self, name: str) -> dict[str, Any]:
        """`sdnctl inspect container NAME --json`."""
        data: dict[str, Any] = self.json("inspect", "container", name)
        return data

    def host(self, name: str) -> dict[str, Any]:
        """`sdnctl inspect host NAME --json`."""
        data: dict[str, Any] = self.json("inspect", "host", name)
        return data

    def controller_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int((self.run_dir / "controller.pid").read_text().split()[0])
        return None


def exited(pid: int) -> bool:
    """True once ``pid`` has exited: gone from /proc, or a zombie its parent has not reaped yet
    (a controller that `up` started is reparented to the machine's init, which reaps it when
    it gets to it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def nsexec(netns: str, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(["nsenter", f"--net={netns}", *argv], capture_output=True, text=True,
                          timeout=timeout, check=False)


def wait_listening(netns: str, port: int, timeout: float = 60) -> None:
    """Until a TCP socket listens on ``port`` in ``netns`` (read with `ss`, not through sdnctl):
    the readiness of a server a test then probes."""
    deadline = time.monotonic() + timeout
    while not nsexec(netns, "ss", "-Hltn", f"sport = :{port}").stdout.strip():
        assert time.monotonic() < deadline, f"nothing listens on tcp/{port} in {netns}"
        time.sleep(0.1)


def ping(netns: str, address: str, count: int = 1) -> bool:
    return nsexec(netns, "ping", "-n", "-q", "-c", str(count), "-W", "1", address).returncode == 0


def kernel_state(netns: str) -> dict[str, Any]:
    """Links, addresses and routes of a namespace from raw netlink dumps (timers left out)."""
    with iproute_in(netns) as ipr:
        links = sorted(
            repr((m.get("ifname"), m["index"], m.get("master"), m.get("mtu"),
                  m.get("operstate"), m.get("address"), m.get("ifalias")))
            for m in ipr.link("dump"))
        addrs = sorted(repr((m["index"], m.get("address"), m["prefixlen"]))
                       for m in ipr.addr("dump"))
        routes = sorted(repr((m.get("dst"), m["dst_len"], m.get("gateway"), m.get("oif"),
                              m["proto"], m["table"])) for m in ipr.route("dump"))
    return {"links": links, "addrs": addrs, "routes": routes}


def nft_ruleset(netns: str) -> str:
    """The namespace's ruleset with handles, without what traffic writes: counters (``-s``) and
    the elements of dynamic sets (the same-bridge flow sets fill as packets pass)."""
    text = nsexec(netns, "nft", "-a", "-s", "list", "ruleset").stdout
    kept: list[str] = []
    dynamic = skipping = False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("set "):
            dynamic = False
        elif stripped.startswith("flags ") and "dynamic" in stripped:
            dynamic = True
        if dynamic and stripped.startswith("elements = {"):
            skipping = not stripped.endswith("}")
            continue
        if skipping:
            skipping = not stripped.endswith("}")
            continue
        kept.append(line)
    return "\n".join(kept)


def capture_source(ext_netns: str, send: Any) -> str:
    """Run ``send()`` while tcpdump (proved ready) listens in the external namespace; the
    source address of the ICMP echo request seen."""
    with capture(ext_netns, "eth0", "icmp[icmptype] == icmp-echo") as cap:
        send()
        line = cap.wait_for("ICMP echo request")
    match = re.search(r"IP (\d+\.\d+\.\d+\.\d+) > ", line)
    assert match, f"no ICMP echo seen in the external namespace: {line!r}"
    return match.group(1)


@contextlib.contextmanager
def lab_cli(prefix: str) -> Iterator[Cli]:
    """A CLI whose every path and name carries ``prefix``; on exit, brings down whatever
    topology is still up and ends the controller it started.

    Its run directory is its own (not under pytest's tmp_path, which a concurrent pytest session
    may garbage-collect while this one still runs).
    """
    run_dir = Path(tempfile.mkdtemp(prefix=f"sdnctl-{prefix}-"))
    OPENED_LABS.append((prefix, run_dir))
    env = dict(os.environ, SDNCTL_RUN_DIR=str(run_dir), SDNCTL_STATE_DIR=str(run_dir / "state"),
               SDNCTL_LAB_PREFIX=prefix, PYTHONPATH=str(REPO))
    env.pop("SDNCTL_CONTROLLER", None)
    cli = Cli(env, run_dir)
    try:
        yield cli
    finally:
        for state in sorted((run_dir / "lab").glob("*.json")):
            if state.stem in cli.files:
                cli.run("down", cli.files[state.stem], check=False)
        pid = cli.controller_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            for _ in range(100):
                if not os.path.exists(f"/proc/{pid}"):
                    break
                time.sleep(0.05)
        shutil.rmtree(run_dir, ignore_errors=True)
