"""End to end: `sdnctl up` / `down` on lab hosts, through the real CLI, controller and agents.

We act through the CLI (a subprocess, exactly as a user runs it) and assert through other layers:
raw netlink dumps, nft listings, real packets (ping, tcpdump in the external namespace).
Every path and name carries the test's run prefix, so concurrent runs never collide, and the
autouse leak check in conftest.py proves `down` left nothing behind.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.kernel.netns import iproute_in
from sdnctl import topology
from sdnctl.lab import EXTERNAL_IP

pytestmark = pytest.mark.netns

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(glob.glob(str(REPO / "topology-examples" / "*.yaml")))


@dataclass
class Cli:
    env: dict[str, str]
    run_dir: Path

    def run(self, *args: str, check: bool = True,
            timeout: float = 120) -> subprocess.CompletedProcess:
        done = subprocess.run([sys.executable, "-m", "sdnctl.cli", *args], env=self.env,
                              capture_output=True, text=True, timeout=timeout, check=False)
        if check and done.returncode != 0:
            raise AssertionError(f"sdnctl {' '.join(args)} failed ({done.returncode}):\n"
                                 f"{done.stdout}\n{done.stderr}")
        return done

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "--json").stdout)

    def controller_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int((self.run_dir / "controller.pid").read_text().split()[0])
        return None


@pytest.fixture
def cli(tmp_path: Path, run_prefix: str) -> Iterator[Cli]:
    run_dir = tmp_path / run_prefix  # the prefix appears in every process's command line
    env = dict(os.environ, SDNCTL_RUN_DIR=str(run_dir), SDNCTL_STATE_DIR=str(run_dir / "state"),
               SDNCTL_LAB_PREFIX=run_prefix, PYTHONPATH=str(REPO))
    env.pop("SDNCTL_CONTROLLER", None)
    yield Cli(env, run_dir)
    # A failed test may leave its topology up: bring it down, then end the controller if alive.
    for path in EXAMPLES:
        if (run_dir / "lab" / f"{topology.load(path).name}.json").exists():
            Cli(env, run_dir).run("down", path, check=False)
    pid = Cli(env, run_dir).controller_pid()
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)


def nsexec(netns: str, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(["nsenter", f"--net={netns}", *argv], capture_output=True, text=True,
                          timeout=timeout, check=False)


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
    return nsexec(netns, "nft", "-a", "list", "ruleset").stdout


def capture_source(ext_netns: str, send: Any) -> str:
    """Run ``send()`` while tcpdump listens in the external namespace; the ICMP source seen."""
    dump = subprocess.Popen(
        ["nsenter", f"--net={ext_netns}", "tcpdump", "-l", "-n", "-i", "eth0", "-c", "1",
         "icmp[icmptype] == icmp-echo"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    try:
        assert dump.stderr is not None
        deadline = time.monotonic() + 10
        while "listening on" not in dump.stderr.readline():
            assert time.monotonic() < deadline, "tcpdump did not start"
        send()
        out, _ = dump.communicate(timeout=10)
    finally:
        if dump.poll() is None:
            dump.kill()
            dump.wait()
    match = re.search(r"IP (\d+\.\d+\.\d+\.\d+) > ", out)
    assert match, f"no ICMP echo seen in the external namespace: {out!r}"
    return match.group(1)


def test_single_host_walkthrough(cli: Cli, run_prefix: str) -> None:
    example = str(REPO / "topology-examples" / "single-host.yaml")
    up = cli.run("up", example)
    assert "2 container(s) running" in up.stderr

    ps = {c["name"]: c for c in cli.json("ps")}
    assert set(ps) == {"web", "db"}
    web, db = cli.json("inspect", "container", "web"), cli.json("inspect", "container", "db")
    host = cli.json("inspect", "host", "h1")
    for c in (web, db):
        assert c["state"] == "running" and c["pid"] > 0 and c["host"] == "h1"
        assert c["network"] == "front" and c["ip"].startswith("10.88.")
        # the container's PID 1 really lives in the namespace we report
        assert os.stat(f"/proc/{c['pid']}/ns/net").st_ino == os.stat(c["netns"]).st_ino
    assert host["netns"] == f"/run/netns/{run_prefix}h1"
    assert host["agent_pid"] > 0 and host["underlay_ip"].startswith("192.0.2.")
    assert [s["subnet"] for s in host["subnets"]] == ["10.88.0.0/24"]

    # web reaches db and its gateway; the outside world sees h1's underlay address
    assert ping(web["netns"], db["ip"], count=2)
    assert ping(web["netns"], web["gateway"])
    ext = f"/run/netns/{run_prefix}ext"
    source = capture_source(ext, lambda: ping(web["netns"], EXTERNAL_IP))
    assert source == host["underlay_ip"]

    # SIGKILL the agent; `up` starts a new one; the kernel does not change and web keeps
    # reaching db throughout.
    before = {ns: kernel_state(ns) for ns in (host["netns"], web["netns"], db["netns"])}
    rules_before = nft_ruleset(host["netns"])
    pinger = subprocess.Popen(
        ["nsenter", f"--net={web['netns']}", "ping", "-n", "-q", "-i", "0.05", "-w", "4",
         db["ip"]], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)
        os.kill(host["agent_pid"], signal.SIGKILL)
        again = cli.run("up", example)
        assert "agent for h1 started" in again.stderr
        assert "0 object(s) created" in again.stderr
        out, _ = pinger.communicate(timeout=15)
    finally:
        if pinger.poll() is None:
            pinger.kill()
            pinger.wait()
    assert " 0% packet loss" in out, out
    restarted = cli.json("inspect", "host", "h1")
    assert restarted["agent_pid"] not in (0, host["agent_pid"])
    assert restarted["agent_synced"]  # `up` waited for the new agent's first pass
    assert {ns: kernel_state(ns) for ns in before} == before
    assert nft_ruleset(host["netns"]) == rules_before
    assert cli.json("inspect", "container", "web")["pid"] == web["pid"]

    # a third `up` with everything healthy changes nothing at all
    third = cli.run("up", example)
    assert "agent for h1 started" not in third.stderr
    assert {ns: kernel_state(ns) for ns in before} == before

    controller = cli.controller_pid()
    cli.run("down", example)
    assert controller is not None and not os.path.exists(f"/proc/{controller}")
    for c in (web, db):
        assert not os.path.exists(f"/proc/{c['pid']}")
    assert not any(n.startswith(run_prefix) for n in os.listdir("/run/netns"))


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: os.path.basename(p))
def test_every_example_builds_and_connects(cli: Cli, run_prefix: str, example: str) -> None:
    """Each example comes up; containers on one host and network reach each other and the
    outside world; `down` removes it all (the leak check verifies)."""
    topo = topology.load(example)
    cli.run("up", example)
    containers = {c["name"]: c for c in cli.json("ps")}
    assert {c.name for c in topo.containers} == set(containers)
    for a in topo.containers:
        src = containers[a.name]
        assert src["state"] == "running"
        assert ping(src["netns"], EXTERNAL_IP), f"{a.name} cannot reach {EXTERNAL_IP}"
        for b in topo.containers:
            if b.name != a.name and (b.host, b.network) == (a.host, a.network):
                assert ping(src["netns"], containers[b.name]["ip"]), f"{a.name} -> {b.name}"
    cli.run("down", example)


def test_up_rejects_a_bad_topology_and_changes_nothing(cli: Cli, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nhosts:\n  - {name: h1, lab: true}\nnetworks:\n"
                   "  - {name: front, subnet: 10.88.0.1/16}\n")
    done = cli.run("up", str(bad), check=False)
    assert done.returncode == 2
    assert f"{bad}:5: networks[0].subnet:" in done.stderr and "host bits set" in done.stderr
    assert not (cli.run_dir / "controller.pid").exists()  # nothing was started
