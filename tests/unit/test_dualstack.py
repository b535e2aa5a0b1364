"""Dual-stack (issue 20), the pure and API side: IPv6 subnets and addresses validated with the
field named, the topology file's errors with file and line, overlaps per family, IPv6 IPAM
that never enumerates a /64, and the address in each family reaching the API's JSON."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from apitest import TIMEOUT, Api, details, rpc_error, unchanged
from dnslib import DNSRecord
from netaddr import IPAddress

from agent import dns
from agent import plan as p
from agent.desired import DesiredName, DesiredNetwork, DesiredPeer, DesiredState, LocalHost
from agent.kernel.fakes import FakeLinks
from agent.names import vxlan_alias, vxlan_name
from agent.nftrules import BridgeNet, FirewallSpec, PortRule, localnet_bridges, render
from agent.observed import ObservedPeers
from agent.reconcile import peers_after_set
from sdnctl.api.fields import host_ips_overlap, parse_port
from sdnctl.api.model import Container, Invalid, Network
from sdnctl.api.validate import validate_container, validate_network
from sdnctl.cli import graph
from sdnctl.cli.cli import build_parser
from sdnctl.cli.output import container_json
from sdnctl.cli.verbs import container_from_args, network_from_args
from sdnctl.controller import ipam, ipam_report
from sdnctl.controller.errors import AlreadyExists, FailedPrecondition
from sdnctl.controller.store.base import Put
from sdnctl.controller.store.memory import MemoryStore
from sdnctl.topology.topology import TopologyError, parse
from sdnctl.v1 import sdnctl_pb2 as pb


def net(**fields: Any) -> Network:
    return Network(**{"name": "front", "subnet": "10.88.0.0/16", **fields})


@pytest.mark.parametrize(
    ("subnet6", "needle"),
    [
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("fe80::/64", "link-local"),
        ("fe90::/16", "link-local"),  # a pool inside fe80::/10
        ("ff02::/16", "multicast"),
        ("::ffff:0:0/96", "IPv4-mapped"),
        ("fd00:88::1/64", "host bits"),
        ("fd00:88::/300", "not an IPv6 CIDR"),
        ("10.99.0.0/16", "not an IPv6 CIDR"),
        ("fd00::/8", "too large"),
        ("fd00:88::/127", "no room"),
    ],
)
def test_bad_ipv6_subnets_name_the_field(subnet6: str, needle: str) -> None:
    with pytest.raises(Invalid) as info:
        validate_network(net(subnet6=subnet6), "networks[0]")
    assert info.value.field == "networks[0].subnet6", info.value
    assert needle in info.value.message


def test_ipv6_host_prefix_is_checked_and_a_good_network_passes() -> None:
    with pytest.raises(Invalid) as info:
        validate_network(net(subnet6="fd00:88::/48", host_prefix6=127), "network")
    assert info.value.field == "network.host_prefix6"
    assert validate_network(net(subnet6="fd00:88::/48")).subnet6 == "fd00:88::/48"


def test_fixed_ip6_must_be_ipv6_and_bridged() -> None:
    with pytest.raises(Invalid) as info:
        validate_container(Container("a", "h1", "front", fixed_ip6="10.88.0.9"), "c")
    assert info.value.field == "c.fixed_ip6"
    with pytest.raises(Invalid) as info:
        validate_container(Container("a", "h1", "none", fixed_ip6="fd00:88::9"), "c")
    assert info.value.field == "c.fixed_ip6"


HEAD = "name: t\nhosts:\n  - {name: h1, lab: true}\nnetworks:\n"  # lines 1-4


def test_topology_errors_name_file_line_and_field() -> None:
    text = (HEAD + "  - {name: a, subnet: 10.88.0.0/16, subnet6: 'fd00:88::/48'}\n"
            "  - {name: b, subnet: 10.89.0.0/16, subnet6: 'fd00:88:0:1::/64'}\n")
    with pytest.raises(TopologyError) as info:
        parse(text, "x.yaml")
    assert str(info.value).startswith("x.yaml:6: networks[1].subnet6: fd00:88:0:1::/64 overlaps "
                                      "fd00:88::/48"), info.value
    text = (HEAD + "  - {name: a, subnet: 10.88.0.0/16, subnet6: 'fe80::/64'}\n")
    with pytest.raises(TopologyError) as info:
        parse(text, "x.yaml")
    assert str(info.value).startswith("x.yaml:5: networks[0].subnet6:"), info.value
    text = (HEAD + "  - {name: a, subnet: 10.88.0.0/16, subnet6: 'fd00:88::/48'}\n"
            "containers:\n  - {name: c, host: h1, network: a, ip6: 'nope'}\n")
    with pytest.raises(TopologyError) as info:
        parse(text, "x.yaml")
    assert str(info.value).startswith("x.yaml:7: containers[0].ip6:"), info.value


def test_topology_reads_subnet6_and_ip6() -> None:
    topo = parse(HEAD + "  - {name: a, subnet: 10.88.0.0/16, subnet6: 'fd00:88::/48',"
                 " host_prefix6: 80}\ncontainers:\n"
                 "  - {name: c, host: h1, network: a, ip6: 'fd00:88::9'}\n", "x.yaml")
    assert (topo.networks[0].subnet6, topo.networks[0].host_prefix6) == ("fd00:88::/48", 80)
    assert topo.containers[0].fixed_ip6 == "fd00:88::9"


# -- IPAM ----------------------------------------------------------------------------------------

DUAL = Network("front", "10.88.0.0/16", subnet6="fd00:88::/48")


class CountingStore(MemoryStore):
    """A memory store that counts point reads: what an allocation costs, without a clock."""

    def __init__(self) -> None:
        super().__init__()
        self.gets = 0

    def get(self, key: str) -> Any:
        self.gets += 1
        return super().get(key)


def test_pick_subnet6_skips_taken_spans_of_its_family_only() -> None:
    taken = {"fd00:88::/64", "fd00:88:0:2::/63", "fd00:88:0:1::/64", "10.88.0.0/24"}
    assert ipam.pick_subnet("fd00:88::/48", 64, taken) == "fd00:88:0:4::/64"
    assert ipam.pick_subnet("fd00:88::/48", 64, {"fd00:88::/48"}) is None
    assert ipam.gateway_of("fd00:88:0:3::/64") == "fd00:88:0:3::1"


def test_a_dual_stack_lease_and_allocation_share_one_transaction() -> None:
    store = MemoryStore()
    lease = ipam.ensure_lease(store, DUAL, "h1")
    assert (lease.subnet, lease.gateway) == ("10.88.0.0/24", "10.88.0.1")
    assert (lease.subnet6, lease.gateway6) == ("fd00:88::/64", "fd00:88::1")
    second = ipam.ensure_lease(store, DUAL, "h2")
    assert second.subnet6 == "fd00:88:0:1::/64"
    a = ipam.allocate_address(store, DUAL, lease, "a", "eth0")
    b = ipam.allocate_address(store, DUAL, lease, "b", "eth0", fixed_ip6="fd00:88::beef")
    c = ipam.allocate_address(store, DUAL, lease, "c", "eth0")
    assert (a.address, a.address6, a.prefixlen6) == ("10.88.0.2", "fd00:88::2", 64)
    assert b.address6 == "fd00:88::beef"
    assert c.address6 == "fd00:88::3"
    guard_kinds = (ipam_report.DUPLICATE_GUARD, ipam_report.STRAY_GUARD,
                   ipam_report.MISSING_GUARD)  # (no hosts or containers in this store)
    assert [p for p in ipam_report.check(store) if p.kind in guard_kinds] == []
    with pytest.raises(AlreadyExists):
        ipam.allocate_address(store, DUAL, lease, "d", "eth0", fixed_ip6="fd00:88::beef")
    for bad in ("fd00:99::5", "fd00:88::1", "fd00:88::"):  # outside, gateway, anycast
        with pytest.raises(Invalid) as info:
            ipam.allocate_address(store, DUAL, lease, "d", "eth0", fixed_ip6=bad)
        assert info.value.field == "fixed_ip6", info.value


def test_a_freed_ipv6_address_is_quarantined_and_its_lease_released_whole() -> None:
    store = MemoryStore()
    lease = ipam.ensure_lease(store, DUAL, "h1")
    ipam.allocate_address(store, DUAL, lease, "a", "eth0")
    freed = ipam.release_address(store, DUAL, "a", "eth0")
    assert freed is not None and freed.address6 == "fd00:88::2"
    b = ipam.allocate_address(store, DUAL, lease, "b", "eth0")
    assert b.address6 == "fd00:88::3"  # fd00:88::2 is quarantined for "a"
    with pytest.raises(FailedPrecondition):
        ipam.allocate_address(store, DUAL, lease, "c", "eth0", fixed_ip6="fd00:88::2")
    again = ipam.allocate_address(store, DUAL, lease, "a", "eth0", fixed_ip6="fd00:88::2")
    assert again.address6 == "fd00:88::2"  # its own container may take it back
    history = [e for e in ipam.list_history(store) if e.kind in ("allocate", "free")]
    assert "fd00:88::2" in {e.address for e in history}
    ipam.release_address(store, DUAL, "a", "eth0")
    ipam.release_address(store, DUAL, "b", "eth0")
    store.txn([], ipam.lease_release_ops(lease, quarantine=60))
    left = {kv.key for kv in store.range("/ipam/front/")[0]}
    assert not any(k.startswith(("/ipam/front/subnet/", "/ipam/front/addr/",
                                 "/ipam/front/used/")) for k in left), left
    assert "/ipam/front/quarantine/fd00:88::_64" in left
    # the host comes back: it gets both of its previous subnets
    assert ipam.ensure_lease(store, DUAL, "h1").subnet6 == "fd00:88::/64"


def test_a_slash_64_is_never_enumerated() -> None:
    """The index says the lowest 2^40 addresses of the /64 are used (a walk would never end):
    the next allocation skips the span in one step, and each allocation costs the same few
    store reads at 1 container as at 100."""
    store = CountingStore()
    lease = ipam.ensure_lease(store, DUAL, "h1")
    ipam.allocate_address(store, DUAL, lease, "first", "eth0")
    reads = []
    for i in range(100):
        before = store.gets
        ipam.allocate_address(store, DUAL, lease, f"c{i}", "eth0")
        reads.append(store.gets - before)
    assert max(reads) == min(reads), reads
    index = store.get("/ipam/front/used/fd00:88::_64")
    assert index is not None and len(json.loads(index.value)) == 1  # one range: ::2-::66
    low = int(IPAddress("fd00:88::2"))
    store.txn([], [Put("/ipam/front/used/fd00:88::_64",
                       json.dumps([[low, low + 2**40]]).encode())])
    far = ipam.allocate_address(store, DUAL, lease, "far", "eth0")
    assert IPAddress(far.address6) == IPAddress(low + 2**40 + 1, 6)
    fixed = ipam.allocate_address(store, DUAL, lease, "top", "eth0",
                                  fixed_ip6="fd00:88::ffff:ffff:ffff:ffff")
    assert fixed.address6 == "fd00:88::ffff:ffff:ffff:ffff"


# -- through the API -----------------------------------------------------------------------------


def test_the_api_gives_a_container_an_address_in_each_family(mem_api: Api) -> None:
    api = mem_api
    made = api.network("front", subnet6="fd00:88::/48")
    assert (made.subnet6, made.host_prefix6) == ("fd00:88::/48", 64)
    api.container("a")
    api.container("b", fixed_ip6="fd00:88::b")
    a, b = api.get_container("a"), api.get_container("b")
    shown = container_json(a)
    assert (shown["ip"], shown["prefixlen"], shown["gateway"]) == ("10.88.0.2", 24, "10.88.0.1")
    assert (shown["ip6"], shown["prefixlen6"], shown["gateway6"]) == ("fd00:88::2", 64,
                                                                       "fd00:88::1")
    assert b.ip6 == "fd00:88::b"
    report = api.ctl.GetIpam(pb.GetIpamRequest(network="front"), timeout=TIMEOUT)
    assert [(x.subnet6, x.gateway6) for x in report.leases] == [("fd00:88::/64", "fd00:88::1")]
    assert {x.address6 for x in report.allocations} == {"fd00:88::2", "fd00:88::b"}
    check = api.ctl.CheckIpam(pb.GetIpamRequest(), timeout=TIMEOUT)
    assert list(check.problems) == []
    api.delete("Container", "a")
    assert list(api.ctl.CheckIpam(pb.GetIpamRequest(), timeout=TIMEOUT).problems) == []


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda api: api.network("bad", "10.90.0.0/16", subnet6="fe80::/64"), "network.subnet6"),
        (lambda api: api.network("dup", "10.90.0.0/16", subnet6="fd00:88:0:5::/64"),
         "network.subnet6"),
        (lambda api: api.network("big", "10.90.0.0/16", subnet6="fd00:90::/48",
                                 host_prefix6=127), "network.host_prefix6"),
        (lambda api: api.container("c", fixed_ip6="fd00:99::1"), "container.fixed_ip6"),
        (lambda api: api.container("c", network="v4only", fixed_ip6="fd00:88::7"),
         "container.fixed_ip6"),
        (lambda api: api.container("c", network="v4only", ports=["[::]:8080:80"]),
         "container.ports[0]"),
        (lambda api: api.container("c", ports=["[fe80::1]:8080:80"]), "container.ports[0]"),
        (lambda api: api.container("c", ports=["::1:8080:80"]), "container.ports[0]"),
        (lambda api: api.container("c", ports=["8080:80", "[::]:8080:81"]), "container.ports[1]"),
    ],
    ids=["link-local", "overlap", "host-prefix6", "outside", "no-subnet6", "port6-no-subnet6",
         "port6-link-local", "port6-no-brackets", "port6-taken"],
)
def test_bad_ipv6_input_is_invalid_argument_naming_the_field(
        mem_api: Api, call: Callable[[Api], object], field: str) -> None:
    mem_api.network("front", subnet6="fd00:88::/48")
    mem_api.network("v4only", "10.89.0.0/16")
    with unchanged(mem_api.store):
        e = rpc_error(lambda: call(mem_api), grpc.StatusCode.INVALID_ARGUMENT)
    assert details(e).startswith(field + ":"), details(e)


# -- the overlay's peers in both families (planner and fakes) ------------------------------------

PEER6 = DesiredPeer("h2", "10.70.2.0/24", "192.0.2.2", "0e:00:00:00:00:02", "10.70.2.0",
                    "fd00:70:0:2::/64", "fd00:70:0:2::")


def test_a_dual_stack_peer_is_one_fdb_entry_and_a_route_and_neighbour_per_family() -> None:
    net = DesiredNetwork("ov", "overlay", "10.70.1.0/24", "10.70.1.1", 24, 1450, True,
                         cidr="10.70.0.0/16", vni=4096, peers=(PEER6,),
                         subnet6="fd00:70:0:1::/64", gateway6="fd00:70:0:1::1",
                         cidr6="fd00:70::/48")
    assert net.vtep_cidrs == ("10.70.1.0/32", "fd00:70:0:1::/128")
    local = LocalHost("192.0.2.1", "eth0", "0e:00:00:00:00:01")
    state = DesiredState(synced=True, local=local)
    links = FakeLinks()
    device = vxlan_name(net.name)
    for action in p.plan_overlay(net, state, p.Observed()):
        if isinstance(action, p.EnsureVxlan):
            links.ensure_vxlan(device, vxlan_alias(net.name), net.vni, local.underlay_ip,
                               net.vxlan_port, "eth0", net.mtu, local.vtep_mac, net.vtep_cidr,
                               net.vtep6_cidr)
        elif isinstance(action, p.SetPeer):
            links.ensure_peers(device, [action.peer.entries()])
    have = links.peers[device]
    assert have.routes == (("10.70.2.0/24", "10.70.2.0"), ("fd00:70:0:2::/64", "fd00:70:0:2::"))
    assert have.neighbours == (("10.70.2.0", PEER6.vtep_mac), ("fd00:70:0:2::", PEER6.vtep_mac))
    assert have.fdb == ((PEER6.vtep_mac, "192.0.2.2"),)
    assert peers_after_set(ObservedPeers(), PEER6) == have
    vx = links.observe_vxlan(device)
    actions = p.plan_overlay(net, state, p.Observed(vxlans={device: vx} if vx else {},
                                                    peers={device: have}))
    assert actions == []  # converged: nothing more
    # the peer leaves the dual-stack network's IPv6 side: its IPv6 route and neighbour go
    v4only = dataclasses.replace(net, peers=(dataclasses.replace(PEER6, subnet6="",
                                                                 vtep_ip6=""),))
    actions = p.plan_overlay(v4only, state, p.Observed(vxlans={device: vx} if vx else {},
                                                       peers={device: have}))
    assert p.RemovePeerRoute(device, "fd00:70:0:2::/64") in actions
    assert p.RemoveNeighbour(device, "fd00:70:0:2::") in actions


# -- the CLI: flags in, both addresses out -------------------------------------------------------


def test_cli_flags_and_status_rows_carry_both_families() -> None:
    args = build_parser().parse_args(["network", "create", "front", "--subnet", "10.88.0.0/16",
                                      "--subnet6", "fd00:88::/48", "--host-prefix6", "80"])
    net = network_from_args(args)
    assert (net.subnet6, net.host_prefix6) == ("fd00:88::/48", 80)
    args = build_parser().parse_args(["run", "--name", "a", "--host", "h1", "--network", "front",
                                      "--ip6", "fd00:88::9"])
    assert container_from_args(args).fixed_ip6 == "fd00:88::9"
    web = {"name": "web", "host": "h1", "network": "front", "mode": "bridge", "owner": "sdnctl",
           "shares_netns_of": "", "ip": "10.88.0.2", "prefixlen": 24, "ip6": "fd00:88::2",
           "prefixlen6": 64, "state": "running", "pid": 7, "ports": []}
    side = {**web, "name": "side", "mode": "container", "shares_netns_of": "web", "ip": "",
            "ip6": "", "network": "container:web"}
    rows = graph._rows_containers(graph.Live(containers={"web": web, "side": side}))
    assert rows[0][4] == "(10.88.0.2 fd00:88::2)"  # side: its donor's
    assert rows[1][4] == "10.88.0.2/24 fd00:88::2/64"


# -- DNS: AAAA for a dual-stack container --------------------------------------------------------


def test_aaaa_answers_a_dual_stack_containers_ipv6_address_and_alias() -> None:
    net = DesiredNetwork("front", "bridge", "10.1.0.0/24", "10.1.0.1", 24, 1500, True,
                         cidr="10.1.0.0/16", dns_domain="svc.lab",
                         names=(DesiredName("db", ("pg",), "10.1.0.5", (), "fd00:1::5"),
                                DesiredName("web", (), "10.1.0.7")))
    zone = dns.zones_from([net])["10.1.0.1"]

    def ask(name: str, qtype: str) -> list[str]:
        reply = dns.answer_local(zone, DNSRecord.question(name, qtype))
        assert reply is not None
        return [str(rr.rdata) for rr in reply.rr]

    assert ask("db", "AAAA") == ["fd00:1::5"]
    assert ask("pg.svc.lab", "AAAA") == ["fd00:1::5"]
    assert ask("db", "A") == ["10.1.0.5"]
    assert ask("web", "AAAA") == []  # IPv4 only: NODATA


# -- ports published on IPv6 host addresses ------------------------------------------------------


@pytest.mark.parametrize(("spec", "host_ip", "ports"), [
    ("[::]:8080:80/udp", "::", (8080, 80)),
    ("[0:0::0]:53:5353", "::", (53, 5353)),
    ("[fd00:88::1]:80:80", "fd00:88::1", (80, 80)),
    ("[::1]:8080:80", "::1", (8080, 80)),  # served by the agent's userland proxy
    ("[FD00:88:0:0::1]:80:80", "fd00:88::1", (80, 80)),  # as the kernel prints it
])
def test_ipv6_host_addresses_parse(spec: str, host_ip: str, ports: tuple[int, int]) -> None:
    m = parse_port(spec, "ports[0]")
    assert (m.host_ip, m.host_port, m.container_port) == (host_ip, *ports)


@pytest.mark.parametrize(("spec", "needle"), [
    ("::1:8080:80", "in brackets"),
    ("[::]8080:80", "[ADDRESS]:HOST_PORT"),
    ("[::]:8080", "is not [HOST_IP]"),
    ("[10.0.0.1]:8080:80", "not an IPv6 address"),
    ("[::zz]:8080:80", "not an IPv6 address"),
    ("[ff02::1]:8080:80", "multicast"),
    ("[fe80::1]:8080:80", "link-local"),
    ("[::ffff:10.0.0.1]:8080:80", "IPv4-mapped"),
    ("[fd00:88::1%eth0]:8080:80", "not an IPv6 address"),  # a zone
    ("[::]:0:80", "not a port"),
])
def test_bad_ipv6_host_addresses_name_the_field(spec: str, needle: str) -> None:
    with pytest.raises(Invalid) as info:
        parse_port(spec, "ports[0]")
    assert info.value.field == "ports[0]" and needle in str(info.value), info.value


def test_ipv6_host_addresses_overlap_as_the_kernel_delivers() -> None:
    assert host_ips_overlap("", "::1") and host_ips_overlap("::", "::1")
    assert host_ips_overlap("::", "fd00::1") and host_ips_overlap("::1", "::1")
    assert not host_ips_overlap("::1", "127.0.0.1") and not host_ips_overlap("::", "10.0.0.1")
    assert not host_ips_overlap("::1", "fd00::1")
    validate_container(Container("c", "h1", "front", ports=("[fd00::1]:8080:80",
                                                            "127.0.0.1:8080:80",
                                                            "10.0.0.1:8080:80")))


def test_ports_on_ipv6_host_addresses_render_in_ip6_only() -> None:
    def rendered(host_ip: str, ip6: str = "fd00:1::2") -> list[str]:
        port = PortRule("web", "sdnbf", "10.1.0.2", "tcp", host_ip, 8080, 80, ip6)
        spec = FirewallSpec(networks=(BridgeNet("front", "sdnbf", "10.1.0.0/24"),),
                            ports=(port,))
        return [line.strip() for line in render(spec).splitlines() if "/port/" in line
                or "localnet" in line]

    dnat = "tcp dport 8080 dnat ip6 to [fd00:1::2]:80"
    every = rendered("::")
    assert [line.split()[4] for line in every] == ["prerouting", "output"]
    assert all(f"ip6 daddr != ::1 fib daddr type local {dnat}" in line for line in every), every
    assert not any("ip daddr" in line or "dnat ip to" in line for line in every), every
    assert rendered("::1") == []  # refused by the API: the answer could not come back
    one = rendered("fd00:9::1")
    assert len(one) == 2 and all(f"ip6 daddr fd00:9::1 {dnat}" in x for x in one), one
    assert rendered("::", ip6="") == []  # nothing to DNAT to
    assert localnet_bridges(FirewallSpec(
        networks=(BridgeNet("front", "sdnbf", "10.1.0.0/24"),),
        ports=(PortRule("web", "sdnbf", "10.1.0.2", "tcp", "::", 8080, 80, "fd00:1::2"),))) == []


# -- NAT66 only when asked ------------------------------------------------------------------------


def test_masquerade6_is_off_by_default_and_renders_in_ip6_only_when_asked() -> None:
    def postrouting(**fields: Any) -> list[str]:
        net = BridgeNet("front", "sdnbf", "10.1.0.0/24", subnet6="fd00:1::/64",
                        cidr6="fd00:1::/48", **fields)
        return [line for line in render(FirewallSpec(networks=(net,))).splitlines()
                if " postrouting " in line and "add rule" in line]

    assert not any("ip6" in line for line in postrouting())  # routed by default
    rules = [line for line in postrouting(masquerade6=True) if "ip6" in line]
    assert len(rules) == 1, rules
    assert ('ip6 saddr fd00:1::/64 ip6 daddr != fd00:1::/48 oifname != "sdnbf" masquerade '
            'comment "sdnctl:net/front/ip6"') in rules[0]
    assert not any("ip6" in line for line in postrouting(masquerade6=True, internal=True))
    assert Network("n", "10.0.0.0/16").masquerade6 is False
    with pytest.raises(Invalid, match="masquerade6"):
        validate_network(net(masquerade6=True))
    assert validate_network(net(subnet6="fd00:88::/48", masquerade6=True)).masquerade6
    parsed = parse(HEAD + "  - {name: a, subnet: 10.88.0.0/16, subnet6: 'fd00:88::/48', "
                   "masquerade6: true}\n")
    assert parsed.networks[0].masquerade6
    args = build_parser().parse_args(["network", "create", "n", "--subnet", "10.9.0.0/16",
                                      "--subnet6", "fd00:9::/48", "--masquerade6"])
    assert network_from_args(args).masquerade6
