"""`sdnctl trace` on lab hosts: one real probe, followed hop by hop.

Two lab hosts; two bridge networks on h1 that are isolated from each other, and an overlay
across both hosts. Asserted: the isolation drop is named with its rule, the overlay probe is seen
leaving h1 inside VXLAN with the network's VNI and arriving at the peer host, a probe that
arrives shows every hop ✓, and a trace leaves no table, tcpdump or nft monitor behind.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.cli import Cli, lab_cli, nsexec

pytestmark = pytest.mark.netns

TOPOLOGY = """\
name: tracing
hosts:
  - {name: h1, lab: true}
  - {name: h2, lab: true}
networks:
  - {name: red, subnet: 10.64.0.0/16}
  - {name: blue, subnet: 10.65.0.0/16}
  - {name: ov, driver: overlay, subnet: 10.66.0.0/16}
containers:
  - {name: r1, host: h1, network: red}
  - {name: r2, host: h1, network: red}
  - {name: b1, host: h1, network: blue}
  - {name: o1, host: h1, network: ov}
  - {name: o2, host: h2, network: ov}
"""

#: A trace must end by itself (observers start, one probe, a short wait for its answer): a
#: generous safety bound only; how long it takes is measured by bench/reliability.py.
BOUND = 60.0


@pytest.fixture
def cli(tmp_path: Path, run_prefix: str) -> Iterator[Cli]:
    path = tmp_path / "tracing.yaml"
    path.write_text(TOPOLOGY)
    with lab_cli(run_prefix) as c:
        c.run("up", str(path))
        yield c


def run_trace(cli: Cli, *args: str) -> tuple[int, str]:
    done = cli.run("trace", *args, check=False, timeout=BOUND)
    assert not done.stderr.strip(), done.stderr
    return done.returncode, done.stdout


def hop_lines(out: str) -> list[str]:
    return [line.strip() for line in out.splitlines() if line.startswith("  ")]


def assert_clean(run_prefix: str) -> None:
    """No trace table in any lab host, and no tcpdump or nft left running in one."""
    hosts = [f"/run/netns/{run_prefix}h1", f"/run/netns/{run_prefix}h2"]
    for netns in hosts:
        tables = nsexec(netns, "nft", "list", "tables").stdout
        assert "sdnctl_trace_" not in tables, tables
    lab = {os.stat(ns).st_ino for ns in hosts}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as f:
                comm = f.read().strip()
            inode = os.stat(f"/proc/{entry}/ns/net").st_ino
        except OSError:
            continue
        assert not (comm in ("tcpdump", "nft") and inode in lab), f"{comm} {entry} left behind"


def test_isolation_drop_is_named(cli: Cli, run_prefix: str) -> None:
    code, out = run_trace(cli, "r1", "b1")
    assert code == 1
    hops = hop_lines(out)
    assert hops[0].startswith("✓ h1  veth ") and "(r1)" in hops[0]
    assert hops[1].startswith("✓ h1  bridge ") and "(red)" in hops[1]
    assert hops[2] == '✗ h1  nftables inet sdnctl forward: drop (rule "sdnctl:net/red/isolation")'
    assert all(h.startswith("·") for h in hops[3:])
    assert out.splitlines()[-1].startswith("died at h1 nftables inet sdnctl forward: drop")

    as_json = cli.run("trace", "r1", "b1", "--json", check=False)
    assert as_json.returncode == 1  # exit 1: the probe did not arrive
    data = json.loads(as_json.stdout)
    assert not data["reached"]
    assert data["died_at"]["kind"] == "nftables" and "isolation" in data["died_at"]["detail"]
    assert_clean(run_prefix)


def test_overlay_names_the_vxlan_hop_and_the_peer(cli: Cli, run_prefix: str) -> None:
    vni = cli.json("inspect", "network", "ov")["vni"]
    h1, h2 = (cli.json("inspect", "host", h)["underlay_ip"] for h in ("h1", "h2"))
    code, out = run_trace(cli, "o1", "o2")
    assert code == 0, out
    hops = hop_lines(out)
    assert all(h.startswith("✓") for h in hops), out
    assert f"✓ h1  VXLAN out of eth0: {h1} → {h2} udp/4789 vni {vni}" in hops
    assert f"✓ h2  peer host: VXLAN in on eth0: {h1} → {h2} udp/4789 vni {vni}" in hops
    assert any(h.startswith("✓ h2  decapsulated on sdnx") for h in hops)
    assert any(h.startswith("✓ h2  nftables accept") for h in hops)
    assert hops[-1].startswith("✓ h2  o2 (10.66.") and "echo reply" in hops[-1]

    data = cli.json("trace", "o1", "o2", "--port", "80")  # TCP: closed, but it got there
    assert data["reached"] and data["probe"]["proto"] == "tcp"
    kinds = [(h["host"], h["kind"], h["status"]) for h in data["hops"]]
    assert ("h1", "vxlan", "ok") in kinds and ("h2", "underlay", "ok") in kinds
    assert "closed (RST)" in data["hops"][-1]["detail"]
    assert_clean(run_prefix)


def test_a_probe_that_arrives_shows_every_hop(cli: Cli, run_prefix: str) -> None:
    code, out = run_trace(cli, "r1", "r2")
    assert code == 0, out
    hops = hop_lines(out)
    assert [h[0] for h in hops] == ["✓"] * 5, out
    assert "switched" in hops[2] and "echo reply" in hops[-1]
    assert out.splitlines()[-1] == "reached r2"
    # an address works as well as a name: the outside world, through masquerade
    code, out = run_trace(cli, "r1", "203.0.113.1")
    assert code == 0 and "out of eth0: 192.0.2." in out, out  # masqueraded
    assert_clean(run_prefix)
