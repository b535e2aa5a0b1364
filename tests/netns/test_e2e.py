"""End to end: `sdnctl up` / `down` on lab hosts, through the real CLI, controller and agents.

We act through the CLI (a subprocess, exactly as a user runs it) and assert through other layers:
raw netlink dumps, nft listings, real packets (ping, tcpdump in the external namespace).
Every path and name carries the test's run prefix, so concurrent runs never collide, and the
autouse leak check in conftest.py proves `down` left nothing behind.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.capture import start_pinger
from helpers.cli import (
    EXAMPLES,
    REPO,
    Cli,
    capture_source,
    exited,
    kernel_state,
    lab_cli,
    nft_ruleset,
    ping,
    wait_listening,
)

from sdnctl.lab.lab import EXTERNAL_IP
from sdnctl.topology import topology

pytestmark = pytest.mark.netns

@pytest.fixture
def cli(tmp_path: Path, run_prefix: str) -> Iterator[Cli]:
    with lab_cli(run_prefix) as c:  # the prefix is in every cmdline
        yield c


def test_single_host_walkthrough(cli: Cli, run_prefix: str) -> None:
    example = str(REPO / "topology-examples" / "single-host.yaml")
    topo = topology.load(example)
    up = cli.run("up", example)
    assert f"{len(topo.containers)} container(s) running" in up.stderr

    ps = {c["name"]: c for c in cli.json("ps")}
    assert set(ps) == {c.name for c in topo.containers} >= {"web", "db"}
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
    pinger = start_pinger(["nsenter", f"--net={web['netns']}", "ping", "-n", "-i", "0.05", "-w",
                           "4", db["ip"]])
    try:
        os.kill(host["agent_pid"], signal.SIGKILL)
        again = cli.run("up", example)
        assert "agent for h1 started" in again.stderr
        unchanged = len(topo.networks) + len(topo.containers)
        assert f"0 created, 0 updated, {unchanged} unchanged" in again.stderr
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
    assert controller is not None and exited(controller)  # down returns once it has exited
    for c in (web, db):
        assert exited(c["pid"])
    assert not any(n.startswith(run_prefix) for n in os.listdir("/run/netns"))


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: os.path.basename(p))
def test_every_example_builds_and_connects(cli: Cli, example: str,
                                          test_image: tuple[str, str]) -> None:
    """Each example comes up; `sdnctl check` proves with real packets that every container
    reaches exactly what its `expect:` block, its mode and its networks say, no more; `down`
    removes it all (the leak check verifies)."""
    topo = topology.load(example)
    cli.run("up", example, "--image", test_image[0])
    containers = {c["name"]: c for c in cli.json("ps")}
    assert {c.name for c in topo.containers} == set(containers)
    assert all(c["state"] == "running" for c in containers.values()), containers
    for e in topo.expect:  # a server that must answer `open` is listening first
        if e.proto == "tcp" and e.reach == topology.OPEN and e.dst in containers:
            wait_listening(containers[e.dst]["netns"], e.port)
    done = cli.run("check", example, "--json", check=False)
    report = json.loads(done.stdout)
    wrong = [p for p in report["probes"] if not p["match"]]
    assert done.returncode == 0 and report["ok"] and not wrong, wrong
    assert {p["from"] for p in report["probes"]} == {c.name for c in topo.containers}
    # Cross-check `check` through another layer: our own ping of one probe of each verdict.
    for outcome, reached in (("open", True), ("filtered", False)):
        sample = next((p for p in report["probes"] if p["proto"] == "icmp" and p["address"]
                       and p["measured"] == outcome), None)
        if sample is not None:
            netns = containers[sample["from"]]["netns"]
            assert ping(netns, sample["address"]) is reached, sample
    cli.run("down", example)


def test_up_rejects_a_bad_topology_and_changes_nothing(cli: Cli, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nhosts:\n  - {name: h1, lab: true}\nnetworks:\n"
                   "  - {name: front, subnet: 10.88.0.1/16}\n")
    done = cli.run("up", str(bad), check=False)
    assert done.returncode == 2
    assert f"{bad}:5: networks[0].subnet:" in done.stderr and "host bits set" in done.stderr
    assert not (cli.run_dir / "controller.pid").exists()  # nothing was started
