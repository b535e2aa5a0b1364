"""An overlay over an IPv6 underlay (issue 20), end to end with real packets.

Three lab hosts with ``lab: {underlay6: true}``: each agent registers its 2001:db8::/32 address
as its VXLAN endpoint, the VXLAN devices send from it and their FDB entries point at the peers'
IPv6 addresses. The overlay's MTU is the underlay's minus 70 (the IPv6 header is 20 bytes
longer than IPv4's): a DF ping of exactly that size crosses to another host in each family,
one byte more does not leave the container. ``sdnctl trace`` finds the probe inside VXLAN in the
outer IPv6 packets, and under a policy names the policy that drops a probe (after a probe the
policy allows was seen crossing).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.cli import Cli, lab_cli, nsexec

from agent.names import vxlan_name
from sdnctl.api.model import DEFAULT_MTU, VXLAN_OVERHEAD6

pytestmark = pytest.mark.netns

TOPOLOGY = """
name: under6
lab: {underlay6: true}
hosts:
  - {name: h1, lab: true}
  - {name: h2, lab: true}
  - {name: h3, lab: true}
networks:
  - {name: ov, driver: overlay, subnet: 10.91.0.0/16, subnet6: "fd00:91::/48"}
containers:
  - {name: c1, host: h1, network: ov}
  - {name: c2, host: h2, network: ov}
  - {name: c3, host: h3, network: ov}
"""


@pytest.fixture(scope="module")
def under6(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cli]:
    path = tmp_path_factory.mktemp("under6") / "under6.yaml"
    path.write_text(TOPOLOGY)
    with lab_cli("v6u" + os.urandom(2).hex()) as cli:
        cli.run("up", str(path), "--timeout", "90")
        yield cli


def ping(ctr: dict[str, Any], address: str, *extra: str) -> subprocess.CompletedProcess:
    return nsexec(ctr["netns"], "ping", "-n", "-c", "1", "-W", "2", *extra, address)


def test_vxlan_runs_over_the_hosts_ipv6_addresses(under6: Cli) -> None:
    hosts = {name: under6.host(name) for name in ("h1", "h2", "h3")}
    assert all(h["underlay_ip"].startswith("2001:db8:") for h in hosts.values()), hosts
    h1 = hosts["h1"]
    device = vxlan_name("ov")
    shown = nsexec(h1["netns"], "ip", "-d", "link", "show", "dev", device).stdout
    assert f"local {h1['underlay_ip']} " in shown, shown
    fdb = sorted(line.split(" dst ")[1].split()[0] for line in nsexec(
        h1["netns"], "bridge", "fdb", "show", "dev", device).stdout.splitlines()
        if " dst " in line)
    assert fdb == sorted(hosts[n]["underlay_ip"] for n in ("h2", "h3")), fdb  # one per peer
    rules = nsexec(h1["netns"], "nft", "list", "chain", "inet", "sdnctl", "input").stdout
    assert "ip6 saddr . udp dport . @th,96,24 @vxlan6 accept" in rules, rules
    members = json.loads(nsexec(h1["netns"], "nft", "-j", "list", "set", "inet", "sdnctl",
                                "vxlan6_hosts").stdout)["nftables"][1]["set"]["elem"]
    assert sorted(e["concat"][0] for e in members) == \
        sorted(hosts[n]["underlay_ip"] for n in ("h2", "h3")), members  # only members send


def test_the_mtu_rule_takes_70_bytes_and_a_df_ping_of_that_size_crosses(under6: Cli) -> None:
    c1, c2, c3 = (under6.container(n) for n in ("c1", "c2", "c3"))
    mtu = DEFAULT_MTU - VXLAN_OVERHEAD6
    assert f"mtu {mtu} " in nsexec(c1["netns"], "ip", "link", "show", "eth0").stdout
    for size, address, family in ((mtu - 28, c2["ip"], "-4"), (mtu - 48, c3["ip6"], "-6")):
        fits = ping(c1, address, family, "-M", "do", "-s", str(size))
        assert fits.returncode == 0, fits.stdout + fits.stderr
        too_big = ping(c1, address, family, "-M", "do", "-s", str(size + 1))
        assert too_big.returncode != 0
        assert "message too long" in (too_big.stdout + too_big.stderr).lower(), too_big.stdout
    assert ping(c3, c2["ip6"], "-6").returncode == 0 and ping(c2, c3["ip"]).returncode == 0


def test_trace_follows_the_probe_through_vxlan_over_ipv6(under6: Cli) -> None:
    """`trace` reads the probe inside VXLAN in an IPv6 outer packet too, in each family of the
    probe, and names both underlay addresses and the VNI."""
    vni = under6.json("inspect", "network", "ov")["vni"]
    h1, h2 = (under6.host(h)["underlay_ip"] for h in ("h1", "h2"))
    for extra in ((), ("-6",)):
        done = under6.run("trace", "c1", "c2", *extra, check=False, timeout=60)
        assert done.returncode == 0 and not done.stderr.strip(), done.stdout + done.stderr
        hops = [line.strip() for line in done.stdout.splitlines() if line.startswith("  ")]
        assert all(h.startswith("✓") for h in hops), done.stdout
        assert f"✓ h1  VXLAN out of eth0: {h1} → {h2} udp/4789 vni {vni}" in hops, hops
        assert f"✓ h2  peer host: VXLAN in on eth0: {h1} → {h2} udp/4789 vni {vni}" in hops
        assert any(h.startswith("✓ h2  decapsulated on sdnx") for h in hops), hops


# Every container of ov isolated for ingress: TCP to port 7000 from ov allowed, nothing else.
ONLY_7000 = {"name": "ov-7000-only", "network": "ov", "select": {},
             "ingress": [{"from": [{"network": "ov"}], "ports": ["7000/tcp"]}]}


def _create_policies(cli: Cli, path: Path, policies: list[dict[str, Any]]) -> None:
    """Create them, then wait until every host's agent has realised the last one."""
    path.write_text(json.dumps({"policies": policies}))
    cli.run("policy", "create", "-f", str(path))
    revision = max(p["revision"] for p in cli.json("policy", "ls"))
    deadline = time.monotonic() + 30
    while not all(cli.host(h)["observed_revision"] >= revision for h in ("h1", "h2", "h3")):
        assert time.monotonic() < deadline, "the agents did not realise the policies"
        time.sleep(0.1)


def _trace(cli: Cli, *args: str) -> dict[str, Any]:
    done = cli.run("trace", *args, "--json", check=False, timeout=60)
    assert not done.stderr.strip(), done.stderr
    data: dict[str, Any] = json.loads(done.stdout)
    assert done.returncode == (0 if data["reached"] else 1), done.stdout
    return data


def test_trace_over_ipv6_names_the_policy_that_drops_the_probe(under6: Cli,
                                                                tmp_path: Path) -> None:
    """Under a policy, across the IPv6 underlay: the port it allows gets there, every hop
    seen (the positive control, in the same state), another port dies in h1's nftables with
    the policy named, and the VXLAN hops after it are not reached; in each probe family."""
    _create_policies(under6, tmp_path / "policies.yaml", [ONLY_7000])
    try:
        for extra in ((), ("-6",)):
            allowed = _trace(under6, "c1", "c2", "--port", "7000", *extra)  # closed: it got
            assert allowed["reached"], json.dumps(allowed["hops"], indent=1)  # there
            kinds = {(h["host"], h["kind"]): h["status"] for h in allowed["hops"]}
            assert kinds[("h1", "vxlan")] == kinds[("h2", "underlay")] == "ok", kinds
            denied = _trace(under6, "c1", "c2", "--port", "7001", *extra)
            died = denied["died_at"]
            assert not denied["reached"] and (died["host"], died["kind"]) == ("h1", "nftables")
            assert 'rule "sdnctl:policy/ov-7000-only/ingress/drop"' in died["detail"], died
            assert "network policy 'ov-7000-only' isolates the destination" in died["detail"]
            after = denied["hops"][denied["hops"].index(died) + 1:]
            assert [h["kind"] for h in after][:2] == ["vxlan", "underlay"], after
            assert all(h["status"] == "not-reached" for h in after), after
            icmp = _trace(under6, "c1", "c2", *extra)  # not allowed either
            assert icmp["died_at"]["kind"] == "nftables", icmp["hops"]
    finally:
        under6.run("policy", "rm", ONLY_7000["name"])


def test_zz_down_leaves_nothing(under6: Cli) -> None:
    under6.run("down", str(next(iter(under6.files.values()))))
    prefix = under6.env["SDNCTL_LAB_PREFIX"]
    assert not any(n.startswith(prefix) for n in os.listdir("/run/netns"))
