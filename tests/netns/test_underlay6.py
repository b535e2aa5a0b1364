"""An overlay over an IPv6 underlay (issue 20), end to end with real packets.

Three lab hosts with ``lab: {underlay6: true}``: each agent registers its 2001:db8::/32 address
as its VXLAN endpoint, the VXLAN devices send from it and their FDB entries point at the peers'
IPv6 addresses. The overlay's MTU is the underlay's minus 70 (the IPv6 header is 20 bytes
longer than IPv4's): a DF ping of exactly that size crosses to another host in each family,
one byte more does not leave the container.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
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


def test_zz_down_leaves_nothing(under6: Cli) -> None:
    under6.run("down", str(next(iter(under6.files.values()))))
    prefix = under6.env["SDNCTL_LAB_PREFIX"]
    assert not any(n.startswith(prefix) for n in os.listdir("/run/netns"))
