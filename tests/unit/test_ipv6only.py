"""IPv6-only networks (issue 20), the pure and API side: a network with a ``subnet6`` and no
``subnet`` is validated with the IPv4-only fields refused by name, leases an IPv6 prefix and
hands out IPv6 addresses only (ipam check clean, released whole), and the agent's planner,
firewall, resolver and check's matrix see a container with no IPv4 address."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from apitest import TIMEOUT, Api, details, rpc_error, unchanged
from dnslib import DNSRecord

from agent import dns
from agent.desired import DesiredContainer, DesiredName, DesiredNetwork, DesiredPeer
from agent.names import container_mac
from agent.nftrules import BridgeNet, FirewallSpec, PortGuard, PortRule, render
from sdnctl.api.model import Container, Invalid, Network
from sdnctl.api.validate import validate_network
from sdnctl.controller import ipam, ipam_report
from sdnctl.controller.store.memory import MemoryStore
from sdnctl.topology import check
from sdnctl.topology.topology import TopologyError, parse
from sdnctl.v1 import sdnctl_pb2 as pb

ONLY6 = Network("only6", "", subnet6="fd00:93::/48")


@pytest.mark.parametrize(("fields", "field"), [
    ({}, "network.subnet"),
    ({"subnet6": "fd00:93::/48", "gateway": "10.0.0.1"}, "network.gateway"),
    ({"subnet6": "fd00:93::/48", "ip_range": "10.0.0.0/24"}, "network.ip_range"),
])
def test_an_ipv6_only_network_refuses_what_only_ipv4_has(fields: dict[str, Any],
                                                         field: str) -> None:
    with pytest.raises(Invalid) as info:
        validate_network(Network("n", "", **fields))
    assert info.value.field == field, info.value
    assert validate_network(ONLY6) == ONLY6
    assert validate_network(Network("o", "", driver="overlay", mtu=0, subnet6="fd00:92::/48"))


def test_its_lease_and_addresses_are_ipv6_only_and_released_whole() -> None:
    store = MemoryStore()
    lease = ipam.ensure_lease(store, ONLY6, "h1")
    assert (lease.subnet, lease.gateway, lease.subnet6, lease.gateway6) == \
        ("", "", "fd00:93::/64", "fd00:93::1")
    assert ipam.ensure_lease(store, ONLY6, "h2").subnet6 == "fd00:93:0:1::/64"
    a = ipam.allocate_address(store, ONLY6, lease, "a", "eth0")
    b = ipam.allocate_address(store, ONLY6, lease, "b", "eth0", fixed_ip6="fd00:93::b")
    assert (a.address, a.prefixlen, a.address6, a.prefixlen6) == ("", 0, "fd00:93::2", 64)
    assert b.address6 == "fd00:93::b"
    with pytest.raises(Invalid) as info:
        ipam.allocate_address(store, ONLY6, lease, "c", "eth0", fixed_ip="10.0.0.5")
    assert info.value.field == "fixed_ip" and "IPv6-only" in info.value.message
    assert [x.address6 for x in ipam.list_allocations(store, ONLY6)] == ["fd00:93::2",
                                                                        "fd00:93::b"]
    guard_kinds = (ipam_report.DUPLICATE_GUARD, ipam_report.STRAY_GUARD,
                   ipam_report.MISSING_GUARD)
    assert [p for p in ipam_report.check(store) if p.kind in guard_kinds] == []
    for name in ("a", "b"):
        ipam.release_address(store, ONLY6, name, "eth0")
    store.txn([], ipam.lease_release_ops(lease, quarantine=60))
    left = {kv.key for kv in store.range("/ipam/only6/")[0]}
    assert not any(k.startswith(("/ipam/only6/subnet/fd00:93::_", "/ipam/only6/addr/"))
                   for k in left), left
    assert ipam.ensure_lease(store, ONLY6, "h1").subnet6 == "fd00:93::/64"  # its previous one


def test_the_api_runs_an_ipv6_only_network(mem_api: Api) -> None:
    made = mem_api.network("only6", "", subnet6="fd00:93::/48")
    assert (made.subnet, made.subnet6) == ("", "fd00:93::/48")
    mem_api.container("a", network="only6", ports=["8080:80", "[::]:8081:80"])
    a = mem_api.get_container("a")
    assert (a.ip, a.gateway, a.ip6, a.gateway6) == ("", "", "fd00:93::2", "fd00:93::1")
    assert list(mem_api.ctl.CheckIpam(pb.GetIpamRequest(), timeout=TIMEOUT).problems) == []


@pytest.mark.parametrize(("call", "field"), [
    (lambda api: api.container("c", network="only6", fixed_ip="10.0.0.5"),
     "container.fixed_ip"),
    (lambda api: api.container("c", network="only6", ports=["127.0.0.1:8080:80"]),
     "container.ports[0]"),
], ids=["fixed-ipv4", "port-on-ipv4"])
def test_ipv4_on_an_ipv6_only_network_is_invalid_argument(
        mem_api: Api, call: Callable[[Api], object], field: str) -> None:
    mem_api.network("only6", "", subnet6="fd00:93::/48")
    with unchanged(mem_api.store):
        e = rpc_error(lambda: call(mem_api), grpc.StatusCode.INVALID_ARGUMENT)
    assert details(e).startswith(field + ":"), details(e)


NET6 = DesiredNetwork("only6", "bridge", "", "", 0, 1500, True, cidr="",
                      subnet6="fd00:93::/64", gateway6="fd00:93::1", cidr6="fd00:93::/48",
                      names=(DesiredName("db", ("pg",), "", (), "fd00:93::5"),))


def test_the_agent_sees_no_ipv4_side() -> None:
    assert (NET6.gateway_cidr, NET6.vtep_cidr) == ("", "")
    assert NET6.gateway_cidrs == ("fd00:93::1/64",)
    ctr = DesiredContainer("db", "only6", (), ip6="fd00:93::5", prefixlen6=64,
                           gateway6="fd00:93::1")
    assert ctr.addressed and ctr.address_cidrs == ("fd00:93::5/64",)
    assert ctr.mac == container_mac("fd00:93::5") and ctr.mac.startswith("02:43:")
    assert container_mac("fd00:93::5") != container_mac("fd00:93::1:0:0:5")
    peer = DesiredPeer("h2", "", "192.0.2.2", "0e:00:00:00:00:02", "", "fd00:93:0:1::/64",
                       "fd00:93:0:1::")
    assert peer.entries().routes() == (("fd00:93:0:1::/64", "fd00:93:0:1::"),)
    assert peer.entries().neighbours() == (("fd00:93:0:1::", "0e:00:00:00:00:02"),)


def test_its_firewall_drops_all_ipv4_and_arp_and_publishes_over_ipv6_only() -> None:
    spec = FirewallSpec(
        networks=(BridgeNet("only6", "sdnb6", "", subnet6="fd00:93::/64",
                            cidr6="fd00:93::/48"),),
        ports=(PortRule("db", "sdnb6", "", "tcp", "", 8080, 80, "fd00:93::5"),),
        guards=(PortGuard("db", "sdnvdb", container_mac("fd00:93::5"), "", "fd00:93::5"),))
    text = render(spec)
    assert 'ether type ip counter drop comment "sdnctl:ctr/db/spoof-ip"' in text
    assert 'ether type arp counter drop comment "sdnctl:ctr/db/spoof-arp-ip"' in text
    assert "dnat ip6 to [fd00:93::5]:80" in text
    assert "dnat ip to" not in text
    # no IPv4 masquerade, no IPv6 egress NAT: only the hairpin to its IPv6 port is masqueraded
    assert [line for line in text.splitlines() if " masquerade" in line] == [
        'add rule inet sdnctl postrouting oifname "sdnb6" ct status dnat ip6 saddr '
        'fd00:93::/64 masquerade comment "sdnctl:net/only6/hairpin/ip6"']


def test_its_resolver_answers_aaaa_only_and_ptr_in_ip6_arpa() -> None:
    zones = dns.zones_from([NET6])
    assert list(zones) == ["fd00:93::1"]
    zone = zones["fd00:93::1"]

    def ask(name: str, qtype: str) -> tuple[int, list[str]]:
        reply = dns.answer_local(zone, DNSRecord.question(name, qtype))
        assert reply is not None
        return reply.header.rcode, [str(rr.rdata) for rr in reply.rr]

    assert ask("db", "AAAA") == (0, ["fd00:93::5"])
    assert ask("pg", "AAAA") == (0, ["fd00:93::5"])
    assert ask("db", "A") == (0, [])  # the name exists: NODATA
    assert ask("nobody", "AAAA")[0] == 3  # NXDOMAIN
    assert ask(ipaddress.ip_address("fd00:93::5").reverse_pointer, "PTR") == (0, ["db."])
    unknown = ipaddress.ip_address("fd00:93::9").reverse_pointer
    assert ask(unknown, "PTR")[0] == 3  # ours, unknown: NXDOMAIN
    assert dns.resolv_conf(NET6).startswith("nameserver fd00:93::1\n")
    assert zone.holds("fd00:93:0:7::1") and not zone.holds("10.0.0.1")


TOPO = """name: t
hosts:
  - {name: h1, lab: true}
networks:
  - {name: front, subnet: 10.96.0.0/24, subnet6: "fd00:96::/48"}
  - {name: only6, subnet6: "fd00:93::/48"}
  - {name: v4, subnet: 10.97.0.0/24}
containers:
  - {name: a, host: h1, network: front}
  - {name: s, host: h1, network: only6}
  - {name: f, host: h1, network: v4}
  - {name: c, host: h1, network: none}
"""


def test_check_probes_the_families_both_ends_have() -> None:
    topo = parse(TOPO, "t.yaml")
    probes = {(p.src, p.dst, p.family) for p in check.implied_matrix(topo)}
    assert {("a", "s", 6), ("s", "a", 6), ("s", "external", 6), ("c", "s", 6)} <= probes
    assert not {("a", "s", 4), ("s", "a", 4), ("s", "external", 4), ("s", "f", 4),
                ("s", "f", 6), ("f", "s", 4)} & probes
    assert ("a", "f", 4) in probes and ("c", "f", 4) in probes
    assert {p.family for p in check.expected(parse(
        TOPO + "expect:\n  - {from: a, to: s, reach: false}\n", "t.yaml"))} == {6}


def test_a_topology_takes_an_ipv6_only_network_but_not_in_the_labs_ipv6() -> None:
    topo = parse(TOPO, "t.yaml")
    assert [n.subnet for n in topo.networks if n.name == "only6"] == [""]
    with pytest.raises(TopologyError, match=r"t.yaml:6: networks\[1\].subnet6: .*2001:db8::/32"):
        parse(TOPO.replace("fd00:93::/48", "2001:db8:5::/48"), "t.yaml")
    assert Container("x", "h1", "only6").bridge_network == "only6"
