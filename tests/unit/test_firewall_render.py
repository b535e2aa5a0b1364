"""The firewall's pure half: rendering a FirewallSpec into one nft script, and its fingerprint."""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from typing import Any

import pytest

from agent import nftrules
from agent.kernel import firewall
from agent.names import container_mac
from agent.nftrules import (
    BridgeNet,
    FirewallSpec,
    MasqueradeRule,
    PortGuard,
    PortRule,
    VxlanFilter,
    fingerprint,
    localnet_bridges,
    render,
)

FRONT = BridgeNet("front", "sdnbf", "10.1.0.0/24", masquerade=True, internal=False)
BACK = BridgeNet("back", "sdnbb", "10.2.0.0/24", masquerade=True, internal=False)
INSIDE = BridgeNet("inside", "sdnbi", "10.3.0.0/24", masquerade=True, internal=True)
WEB = PortRule("web", "sdnbf", "10.1.0.2", "tcp", "", 8080, 80)
DNS = PortRule("dns", "sdnbf", "10.1.0.3", "udp", "127.0.0.1", 5353, 53)
GUARD = PortGuard("web", "sdnv1", "02:42:0a:01:00:02", "10.1.0.2")
SPEC = FirewallSpec(networks=(FRONT, BACK, INSIDE), allowed=(("front", "back"),),
                    ports=(WEB, DNS), guards=(GUARD,))


def rules(script: str, chain: str, family: str = "inet") -> list[str]:
    prefix = f"add rule {family} sdnctl {chain} "
    return [line[len(prefix):] for line in script.splitlines() if line.startswith(prefix)]


def test_render_is_stable_and_order_free() -> None:
    shuffled = FirewallSpec(networks=(INSIDE, BACK, FRONT), allowed=(("back", "front"),),
                            ports=(DNS, WEB), guards=(GUARD,))
    assert render(SPEC) == render(SPEC)
    assert render(shuffled) == render(SPEC)
    assert fingerprint(shuffled) == fingerprint(SPEC)


def test_one_transaction_tables_chains_flush_then_rules() -> None:
    lines = render(SPEC).splitlines()
    assert lines[:2] == ["add table inet sdnctl", "add table bridge sdnctl"]
    first_rule = next(i for i, line in enumerate(lines) if line.startswith("add rule"))
    assert all(line.startswith("add rule") for line in lines[first_rule:-1])
    assert lines[-1].startswith("add element inet sdnctl fingerprint { ")  # the sha, last
    flushed = {line for line in lines[:first_rule] if line.startswith("flush chain")}
    chains = {" ".join(line.split()[2:5]) for line in lines if line.startswith("add chain")}
    assert flushed == {f"flush chain {c}" for c in chains}


@pytest.mark.parametrize("spec", [SPEC, FirewallSpec(), FirewallSpec(networks=(INSIDE,))])
def test_no_default_drop_anywhere(spec: FirewallSpec) -> None:
    script = render(spec)
    assert "policy drop" not in script
    for line in script.splitlines():
        if "type filter hook" in line:
            assert "policy accept;" in line, line


def test_every_rule_has_a_comment_and_the_fingerprint_set_carries_the_sha() -> None:
    script = render(SPEC)
    lines = [line for line in script.splitlines() if line.startswith("add rule")]
    assert all(re.search(r' comment "sdnctl:[^"]+"$', line) for line in lines), lines
    assert "sdnctl:sha/" not in script
    comments = sorted(re.findall(r'comment "([^"]+)"$', "\n".join(lines), re.M))
    (element,) = re.findall(r"add element inet sdnctl fingerprint \{ (\S+) \}", script)
    assert sorted([*comments, nftrules.sha_item(element)]) == \
        sorted(fingerprint(SPEC).splitlines()[:len(comments) + 1])
    # the set is emptied by every full render, so it holds one element after it
    assert "flush set inet sdnctl fingerprint" in script


def _variants() -> list[tuple[str, FirewallSpec]]:
    """SPEC with one field changed, for every field of every part."""
    out: list[tuple[str, FirewallSpec]] = []
    net_changes: dict[str, Any] = {"network": "front2", "bridge": "sdnbx", "subnet": "10.9.0.0/24",
                                   "masquerade": False, "internal": True}
    for name, value in net_changes.items():
        nets = (dataclasses.replace(FRONT, **{name: value}), BACK, INSIDE)
        ports = tuple(dataclasses.replace(p, bridge=value) for p in SPEC.ports) \
            if name == "bridge" else SPEC.ports
        allowed = (("front2", "back"),) if name == "network" else SPEC.allowed
        out.append((f"network.{name}",
                    dataclasses.replace(SPEC, networks=nets, ports=ports, allowed=allowed)))
    port_changes: dict[str, Any] = {"container": "web2", "bridge": "sdnbb",
                                    "container_ip": "10.1.0.9", "protocol": "udp",
                                    "host_ip": "192.0.2.1", "host_port": 8081,
                                    "container_port": 81}
    for name, value in port_changes.items():
        out.append((f"port.{name}", dataclasses.replace(
            SPEC, ports=(dataclasses.replace(WEB, **{name: value}), DNS))))
    guard_changes = {"container": "web2", "veth": "sdnv2", "mac": "02:42:0a:01:00:09",
                     "ip": "10.1.0.9"}
    for name, value in guard_changes.items():
        out.append((f"guard.{name}", dataclasses.replace(
            SPEC, guards=(dataclasses.replace(GUARD, **{name: value}),))))
    out.append(("allowed", dataclasses.replace(SPEC, allowed=(("inside", "back"),))))
    out.append(("allowed-none", dataclasses.replace(SPEC, allowed=())))
    out.append(("ports-none", dataclasses.replace(SPEC, ports=())))
    out.append(("guards-none", dataclasses.replace(SPEC, guards=())))
    return out


@pytest.mark.parametrize(("what", "variant"), _variants(), ids=[w for w, _ in _variants()])
def test_fingerprint_changes_with_every_field(what: str, variant: FirewallSpec) -> None:
    assert fingerprint(variant) != fingerprint(SPEC), what
    assert render(variant) != render(SPEC), what


def test_isolation_internal_and_allowed_pairs() -> None:
    forward = rules(render(SPEC), "forward")
    assert 'iifname "sdnbi" oifname != "sdnbi" counter drop ' \
           'comment "sdnctl:net/inside/internal-out"' in forward
    assert 'oifname "sdnbi" iifname != "sdnbi" counter drop ' \
           'comment "sdnctl:net/inside/internal-in"' in forward
    assert 'iifname "sdnbf" oifname "sdnbi" counter drop ' \
           'comment "sdnctl:net/front/isolation"' in forward
    assert 'iifname "sdnbb" oifname "sdnbi" counter drop ' \
           'comment "sdnctl:net/back/isolation"' in forward
    # internal drops come before DNAT'd flows pass, which come before isolation
    order = [next(i for i, r in enumerate(forward) if key in r)
             for key in ("internal-out", "ct status dnat accept", "isolation")]
    assert order == sorted(order)
    allowed_inside = dataclasses.replace(SPEC, allowed=(("inside", "front"),))
    forward = rules(render(allowed_inside), "forward")
    assert 'iifname "sdnbi" oifname != { "sdnbf", "sdnbi" } counter drop ' \
           'comment "sdnctl:net/inside/internal-out"' in forward
    # pairs naming a network this host does not have are ignored, as are self-pairs
    assert render(dataclasses.replace(SPEC, allowed=(("front", "back"), ("front", "gone"),
                                                     ("back", "back")))) == render(SPEC)


def test_masquerade_skips_internal_networks_and_our_bridges() -> None:
    post = rules(render(SPEC), "postrouting")
    ours = '{ "sdnbb", "sdnbf", "sdnbi" }'
    assert f'ip saddr 10.1.0.0/24 ip daddr != 10.1.0.0/24 oifname != {ours} masquerade ' \
           f'comment "sdnctl:net/front"' in post
    assert not any("10.3.0.0/24" in r for r in post)
    no_masq = dataclasses.replace(SPEC, networks=(dataclasses.replace(FRONT, masquerade=False),
                                                  BACK, INSIDE))
    assert not any(r.endswith('"sdnctl:net/front"') for r in rules(render(no_masq), "postrouting"))


def test_published_ports() -> None:
    script = render(SPEC)
    pre, out, post = rules(script, "prerouting"), rules(script, "output"), \
        rules(script, "postrouting")
    assert pre == ['ip daddr != 127.0.0.0/8 fib daddr type local tcp dport 8080 '
                   'dnat ip to 10.1.0.2:80 comment "sdnctl:ctr/web/port/tcp/8080"']
    # the 127.0.0.1 port exists for the host itself only: never in prerouting
    assert 'ip daddr 127.0.0.1 udp dport 5353 dnat ip to 10.1.0.3:53 ' \
           'comment "sdnctl:ctr/dns/port/udp/5353"' in out
    assert any("fib daddr type local tcp dport 8080" in r for r in out)
    assert post[0] == 'oifname "sdnbf" ip saddr 127.0.0.0/8 masquerade ' \
                      'comment "sdnctl:net/front/localnet"'
    assert post[1] == 'oifname "sdnbf" ct status dnat ip saddr 10.1.0.0/24 masquerade ' \
                      'comment "sdnctl:net/front/hairpin"'
    assert localnet_bridges(SPEC) == ["sdnbf"]
    assert "sysctl:route_localnet=1:sdnbf" in fingerprint(SPEC).splitlines()
    specific = dataclasses.replace(SPEC, ports=(dataclasses.replace(WEB, host_ip="192.0.2.1"),))
    assert localnet_bridges(specific) == []
    assert rules(render(specific), "prerouting") == [
        'ip daddr 192.0.2.1 tcp dport 8080 dnat ip to 10.1.0.2:80 '
        'comment "sdnctl:ctr/web/port/tcp/8080"']
    # a port on an internal network is not published (as Docker)
    on_inside = dataclasses.replace(SPEC, ports=(dataclasses.replace(WEB, bridge="sdnbi"),))
    assert rules(render(on_inside), "prerouting") == []
    assert "ct status dnat accept" not in render(on_inside)


def test_anti_spoofing_rules() -> None:
    script = render(SPEC)
    bridge = rules(script, "prerouting", family="bridge")
    assert bridge == [
        # the fast path: a frame every rule below would pass, by one lookup
        'ether type ip iifname . ether saddr . ip saddr @ports4 accept '
        'comment "sdnctl:guard/fast/ip"',
        'ether type ip6 meta l4proto != ipv6-icmp iifname . ether saddr . ip6 saddr @ports6 '
        'accept comment "sdnctl:guard/fast/ip6"',
        'iifname "sdnv1" ether saddr != 02:42:0a:01:00:02 counter drop '
        'comment "sdnctl:ctr/web/spoof-mac"',
        'iifname "sdnv1" ether type != { ip, arp, ip6 } counter drop '
        'comment "sdnctl:ctr/web/spoof-ethertype"',
        'iifname "sdnv1" ether type ip ip saddr != 10.1.0.2 counter drop '
        'comment "sdnctl:ctr/web/spoof-ip"',
        'iifname "sdnv1" arp saddr ether != 02:42:0a:01:00:02 counter drop '
        'comment "sdnctl:ctr/web/spoof-arp-mac"',
        'iifname "sdnv1" arp saddr ip != 10.1.0.2 counter drop '
        'comment "sdnctl:ctr/web/spoof-arp-ip"',
        # IPv6 (issue 20): only from its link-local address (no IPv6 one on this network)
        'iifname "sdnv1" ether type ip6 ip6 saddr != fe80::42:aff:fe01:2 counter drop '
        'comment "sdnctl:ctr/web/spoof-ip6"',
        'iifname "sdnv1" icmpv6 type nd-neighbor-advert '
        '@th,64,128 != 0xfe8000000000000000420afffe010002 counter drop '
        'comment "sdnctl:ctr/web/spoof-na"',
        'iifname "sdnv*" icmpv6 type nd-router-advert counter drop '
        'comment "sdnctl:router-advert"',
        'iifname "sdnv*" icmpv6 type nd-redirect counter drop comment "sdnctl:redirect"',
    ]
    # the fast path's sets: declared, emptied and filled by every render
    assert "add set bridge sdnctl ports4 { typeof iifname . ether saddr . ip saddr; }" in script
    assert script.index("flush set bridge sdnctl ports4") < \
        script.index('add element bridge sdnctl ports4 { "sdnv1" . 02:42:0a:01:00:02 . '
                     '10.1.0.2 }')
    assert 'add element bridge sdnctl ports6 { "sdnv1" . 02:42:0a:01:00:02 . ' \
           'fe80::42:aff:fe01:2 }' in script


def test_an_ipv6_only_port_has_no_ipv4_fast_path() -> None:
    script = render(dataclasses.replace(SPEC, guards=(
        dataclasses.replace(GUARD, ip="", ip6="fd00:1::2"),)))
    assert "add element bridge sdnctl ports4" not in script
    assert 'add element bridge sdnctl ports6 { "sdnv1" . 02:42:0a:01:00:02 . fd00:1::2, ' \
           '"sdnv1" . 02:42:0a:01:00:02 . fe80::42:aff:fe01:2 }' in script


def test_dual_stack_guard_allows_its_ipv6_and_link_local_addresses() -> None:
    guard = dataclasses.replace(GUARD, ip6="fd00:1::2")
    script = render(dataclasses.replace(SPEC, guards=(guard,)))
    assert 'add element bridge sdnctl ports6 { "sdnv1" . 02:42:0a:01:00:02 . fd00:1::2, ' \
           '"sdnv1" . 02:42:0a:01:00:02 . fe80::42:aff:fe01:2 }' in script
    bridge = rules(script, "prerouting", family="bridge")
    assert ('iifname "sdnv1" ether type ip6 ip6 saddr != fd00:1::2 '
            'ip6 saddr != fe80::42:aff:fe01:2 counter drop comment "sdnctl:ctr/web/spoof-ip6"'
            ) in bridge
    assert ('iifname "sdnv1" icmpv6 type nd-neighbor-advert '
            '@th,64,128 != 0xfd000001000000000000000000000002 '
            '@th,64,128 != 0xfe8000000000000000420afffe010002 counter drop '
            'comment "sdnctl:ctr/web/spoof-na"') in bridge


def test_masquerade_rules_are_still_accepted() -> None:
    old = [MasqueradeRule("front", "10.1.0.0/24", "sdnbf")]
    assert render(old) == render(FirewallSpec(networks=(FRONT,)))
    assert fingerprint(old) == fingerprint(FirewallSpec.from_masquerade(old))


@pytest.mark.parametrize("bad", [
    dataclasses.replace(SPEC, guards=(dataclasses.replace(GUARD, mac="02:42:zz:01:00:02"),)),
    dataclasses.replace(SPEC, guards=(dataclasses.replace(GUARD, ip="10.1.0.300"),)),
    dataclasses.replace(SPEC, guards=(dataclasses.replace(GUARD, veth='x" accept #'),)),
    dataclasses.replace(SPEC, ports=(dataclasses.replace(WEB, bridge="sdnbz"),)),
    dataclasses.replace(SPEC, ports=(dataclasses.replace(WEB, protocol="sctp"),)),
    dataclasses.replace(SPEC, ports=(dataclasses.replace(WEB, host_port=0),)),
    dataclasses.replace(SPEC, ports=(dataclasses.replace(WEB, host_ip="::zz",
                                                         container_ip6="fd00:1::2"),)),
    FirewallSpec(networks=(dataclasses.replace(FRONT, network='a"b'),)),
])
def test_invalid_specs_are_refused(bad: FirewallSpec) -> None:
    with pytest.raises(ValueError):
        render(bad)


def test_container_mac_is_docker_style() -> None:
    assert container_mac("10.1.0.2") == "02:42:0a:01:00:02"
    assert container_mac("172.17.255.254") == "02:42:ac:11:ff:fe"
    assert firewall.TABLE_NAME == "sdnctl"


# --- overlays -------------------------------------------------------------------------------

OVERLAY = BridgeNet("ov", "sdnbo", "10.70.1.0/24", cidr="10.70.0.0/16", vxlan="sdnxo")
OV_INTERNAL = BridgeNet("ovi", "sdnbq", "10.80.1.0/24", internal=True, cidr="10.80.0.0/16",
                        vxlan="sdnxq")
OV_SPEC = FirewallSpec(
    networks=(FRONT, OVERLAY, OV_INTERNAL),
    vxlan=(VxlanFilter(4789, 100, ("192.0.2.3", "192.0.2.2")),
           VxlanFilter(4789, 200, ("192.0.2.3",)),
           VxlanFilter(8472, 7, ())),
)


def test_masquerade_excludes_the_whole_overlay_and_our_vxlan_devices() -> None:
    post = rules(render(OV_SPEC), "postrouting")
    ours = '{ "sdnbf", "sdnbo", "sdnbq", "sdnxo", "sdnxq" }'
    assert f'ip saddr 10.70.1.0/24 ip daddr != 10.70.0.0/16 oifname != {ours} masquerade ' \
           f'comment "sdnctl:net/ov"' in post
    assert f'ip saddr 10.1.0.0/24 ip daddr != 10.1.0.0/24 oifname != {ours} masquerade ' \
           f'comment "sdnctl:net/front"' in post  # cidr "" = the subnet
    assert not any("10.80." in r for r in post)  # internal: no NAT


def test_bridge_and_own_vxlan_always_forward_even_internal() -> None:
    forward = rules(render(OV_SPEC), "forward")
    for net, bridge, vxlan in (("ov", "sdnbo", "sdnxo"), ("ovi", "sdnbq", "sdnxq")):
        comment = f'comment "sdnctl:net/{net}/overlay"'
        accepts = [f'iifname "{bridge}" oifname "{vxlan}" accept {comment}',
                   f'iifname "{vxlan}" oifname "{bridge}" accept {comment}']
        assert all(a in forward for a in accepts), forward
        # the accepts come before any drop
        assert max(forward.index(a) for a in accepts) < min(
            i for i, r in enumerate(forward) if " drop " in r)
    assert 'iifname { "sdnbq", "sdnxq" } oifname != { "sdnbq", "sdnxq" } counter drop ' \
           'comment "sdnctl:net/ovi/internal-out"' in forward
    assert 'oifname { "sdnbq", "sdnxq" } iifname != { "sdnbq", "sdnxq" } counter drop ' \
           'comment "sdnctl:net/ovi/internal-in"' in forward


def test_isolation_and_allowed_pairs_cover_vxlan_devices() -> None:
    forward = rules(render(OV_SPEC), "forward")
    assert 'iifname { "sdnbo", "sdnxo" } oifname { "sdnbf", "sdnbq", "sdnxq" } counter drop ' \
           'comment "sdnctl:net/ov/isolation"' in forward
    assert 'iifname "sdnbf" oifname { "sdnbo", "sdnbq", "sdnxo", "sdnxq" } counter drop ' \
           'comment "sdnctl:net/front/isolation"' in forward
    allowed = dataclasses.replace(OV_SPEC, allowed=(("ov", "front"), ("ovi", "ov")))
    forward = rules(render(allowed), "forward")
    assert not any(r.endswith('"sdnctl:net/ov/isolation"') for r in forward), forward
    assert 'iifname "sdnbf" oifname { "sdnbq", "sdnxq" } counter drop ' \
           'comment "sdnctl:net/front/isolation"' in forward
    assert 'iifname { "sdnbq", "sdnxq" } oifname != { "sdnbo", "sdnbq", "sdnxo", "sdnxq" } ' \
           'counter drop comment "sdnctl:net/ovi/internal-out"' in forward


def test_vxlan_filter_accepts_members_on_their_vni_and_counts_the_rest() -> None:
    script = render(OV_SPEC)
    assert "add chain inet sdnctl input { type filter hook input priority filter; " \
           "policy accept; }" in script
    assert rules(script, "input") == [
        'udp dport 4789 ip saddr . udp dport . @th,96,24 @vxlan4 accept '
        'comment "sdnctl:vxlan/4789/member"',
        'udp dport 4789 ip saddr . udp dport != @vxlan4_hosts counter drop '
        'comment "sdnctl:vxlan/4789/not-member"',
        'udp dport 4789 counter drop comment "sdnctl:vxlan/4789/wrong-vni"',
        # a lone host: nobody may send to it yet
        'udp dport 8472 counter drop comment "sdnctl:vxlan/8472/wrong-vni"',
    ]
    # who the members are: elements of named sets, each refilled by the render
    lines = script.splitlines()
    assert "flush set inet sdnctl vxlan4" in lines
    assert lines.index("flush set inet sdnctl vxlan4") < lines.index(
        "add element inet sdnctl vxlan4 { 192.0.2.2 . 4789 . 100, 192.0.2.3 . 4789 . 100, "
        "192.0.2.3 . 4789 . 200 }")
    assert "add element inet sdnctl vxlan4_hosts { 192.0.2.2 . 4789, 192.0.2.3 . 4789 }" in lines
    assert not [line for line in lines if line.startswith("add element inet sdnctl vxlan6")]
    # without overlays the chain exists and is empty, and so are the sets
    assert rules(render(SPEC), "input") == []
    assert "add element inet sdnctl vxlan" not in render(SPEC)


def test_vxlan_members_on_an_ipv6_underlay_get_rules_and_sets_of_their_family() -> None:
    spec = FirewallSpec(vxlan=(VxlanFilter(4789, 5, ("2001:db8::0002", "192.0.2.9")),))
    script = render(spec)
    assert rules(script, "input") == [
        'udp dport 4789 ip saddr . udp dport . @th,96,24 @vxlan4 accept '
        'comment "sdnctl:vxlan/4789/member"',
        'udp dport 4789 ip saddr . udp dport != @vxlan4_hosts counter drop '
        'comment "sdnctl:vxlan/4789/not-member"',
        'udp dport 4789 ip6 saddr . udp dport . @th,96,24 @vxlan6 accept '
        'comment "sdnctl:vxlan/4789/member/ip6"',
        'udp dport 4789 ip6 saddr . udp dport != @vxlan6_hosts counter drop '
        'comment "sdnctl:vxlan/4789/not-member/ip6"',
        'udp dport 4789 counter drop comment "sdnctl:vxlan/4789/wrong-vni"',
    ]
    assert "add element inet sdnctl vxlan6 { 2001:db8::2 . 4789 . 5 }" in script.splitlines()
    with pytest.raises(ValueError):
        render(FirewallSpec(vxlan=(VxlanFilter(4789, 5, ("192.0.2.9 } drop",)),)))


def _overlay_variants() -> list[tuple[str, FirewallSpec]]:
    first = OV_SPEC.vxlan[0]
    filter_changes: dict[str, Any] = {"port": 4790, "vni": 101, "members": ("192.0.2.9",)}
    out = [(f"vxlan.{name}", dataclasses.replace(
        OV_SPEC, vxlan=(dataclasses.replace(first, **{name: value}), *OV_SPEC.vxlan[1:])))
        for name, value in filter_changes.items()]
    net_changes: dict[str, Any] = {"cidr": "10.70.0.0/17", "vxlan": "sdnxz"}
    out += [(f"network.{name}", dataclasses.replace(
        OV_SPEC, networks=(FRONT, dataclasses.replace(OVERLAY, **{name: value}), OV_INTERNAL)))
        for name, value in net_changes.items()]
    out.append(("vxlan-none", dataclasses.replace(OV_SPEC, vxlan=())))
    return out


@pytest.mark.parametrize(("what", "variant"), _overlay_variants(),
                         ids=[w for w, _ in _overlay_variants()])
def test_fingerprint_changes_with_every_overlay_field(what: str, variant: FirewallSpec) -> None:
    assert fingerprint(variant) != fingerprint(OV_SPEC), what
    assert render(variant) != render(OV_SPEC), what


def test_overlay_render_is_order_free_and_has_no_default_drop() -> None:
    shuffled = dataclasses.replace(OV_SPEC, networks=OV_SPEC.networks[::-1],
                                   vxlan=OV_SPEC.vxlan[::-1])
    assert render(shuffled) == render(OV_SPEC)
    assert "policy drop" not in render(OV_SPEC)


@pytest.mark.parametrize("bad", [
    dataclasses.replace(OV_SPEC, vxlan=(VxlanFilter(4789, 1 << 24, ()),)),
    dataclasses.replace(OV_SPEC, vxlan=(VxlanFilter(0, 100, ()),)),
    dataclasses.replace(OV_SPEC, vxlan=(VxlanFilter(4789, 100, ("192.0.2.300",)),)),
    dataclasses.replace(OV_SPEC, networks=(dataclasses.replace(OVERLAY, vxlan='x" accept'),)),
    dataclasses.replace(OV_SPEC, networks=(dataclasses.replace(OVERLAY, cidr="10.70.0.0/33"),)),
])
def test_invalid_overlay_specs_are_refused(bad: FirewallSpec) -> None:
    with pytest.raises(ValueError):
        render(bad)


# --- incremental guards (render_delta) ------------------------------------------------------

GUARD2 = PortGuard("db", "sdnv2", "02:42:0a:01:00:03", "10.1.0.3")
GUARD0 = PortGuard("api", "sdnv0", "02:42:0a:01:00:04", "10.1.0.4")


def handles_of(spec: FirewallSpec) -> dict[str, int]:
    """Handles as nft would number a fresh full render: 1, 2, ... in script order."""
    comments = re.findall(r'comment "([^"]+)"$', render(spec), re.M)
    return {c: i for i, c in enumerate(comments, 1) if comments.count(c) == 1}


def sha_element(spec: FirewallSpec, generation: int = 0) -> str:
    """The fingerprint set's element that ``render(spec)`` adds, of ``generation`` (a full
    render's is 0, a delta's the installed one's plus one)."""
    first = re.findall(r"add element inet sdnctl fingerprint \{ (\S+) \}", render(spec))[0]
    return str(ipaddress.IPv6Address(ipaddress.IPv6Address(first).packed[:8] +
                                     generation.to_bytes(8, "big")))


def test_delta_adds_a_guard_before_the_next_one_in_render_order() -> None:
    old = dataclasses.replace(SPEC, guards=(GUARD2,))
    new = dataclasses.replace(SPEC, guards=(GUARD2, GUARD))  # sdnv1 sorts before sdnv2
    handles = handles_of(old)
    delta = firewall.render_delta(old, new, handles)
    assert delta is not None
    lines = delta.script.splitlines()
    anchor = handles["sdnctl:ctr/db/spoof-mac"]
    inserted = [line for line in lines if line.startswith("insert rule")]
    assert [line.split(" comment ")[1] for line in inserted] == \
        [r.split(" comment ")[1] for r in rules(render(new), "prerouting", "bridge")[2:9]]
    # its fast path's elements come along
    assert lines[:2] == [
        'add element bridge sdnctl ports4 { "sdnv1" . 02:42:0a:01:00:02 . 10.1.0.2 }',
        'add element bridge sdnctl ports6 { "sdnv1" . 02:42:0a:01:00:02 . fe80::42:aff:fe01:2 }']
    assert all(f"bridge sdnctl prerouting position {anchor} iifname \"sdnv1\"" in line
               for line in inserted), inserted
    # It only adds: the old sha element's delete (a grace period in the kernel) comes apart.
    assert not any(line.startswith(("delete", "replace")) for line in lines)
    assert lines[-1] == f"add element inet sdnctl fingerprint {{ {sha_element(new, 1)} }}"
    assert delta.makes_rules  # (run with echo, for the new rules' handles)
    assert delta.cleanup == \
        f"delete element inet sdnctl fingerprint {{ {sha_element(old)} }}\n"


def test_delta_appends_the_last_guard_before_the_router_advert_rule() -> None:
    old = dataclasses.replace(SPEC, guards=(GUARD0,))
    handles = handles_of(old)
    delta = firewall.render_delta(old, dataclasses.replace(SPEC, guards=(GUARD0, GUARD)),
                                  handles)
    assert delta is not None
    inserted = [line for line in delta.script.splitlines() if line.startswith("insert")]
    assert f"position {handles['sdnctl:router-advert']} " in inserted[0]


def test_delta_removes_a_guard_by_its_handles() -> None:
    old = dataclasses.replace(SPEC, guards=(GUARD0, GUARD, GUARD2))
    handles = handles_of(old)
    new = dataclasses.replace(SPEC, guards=(GUARD0, GUARD2))
    delta = firewall.render_delta(old, new, handles, generation=4)
    assert delta is not None
    gone = [f"delete rule bridge sdnctl prerouting handle {handles[c]}"
            for c in handles if c.startswith("sdnctl:ctr/web/spoof-")]
    lines = delta.script.splitlines()
    assert lines[:2] == [
        'delete element bridge sdnctl ports4 { "sdnv1" . 02:42:0a:01:00:02 . 10.1.0.2 }',
        'delete element bridge sdnctl ports6 { "sdnv1" . 02:42:0a:01:00:02 . '
        'fe80::42:aff:fe01:2 }']
    assert lines[2:9] == gone
    assert not any(line.startswith(("insert", "add table", "flush")) for line in lines)
    # It deletes anyway: the old sha element goes in the same transaction; the new one is
    # of the next generation.
    assert lines[-2:] == [f"delete element inet sdnctl fingerprint {{ {sha_element(old, 4)} }}",
                          f"add element inet sdnctl fingerprint {{ {sha_element(new, 5)} }}"]
    assert delta.cleanup == "" and not delta.makes_rules and delta.generation == 5


def test_delta_changes_a_guard_in_place() -> None:
    moved = dataclasses.replace(GUARD, ip="10.1.0.9", mac="02:42:0a:01:00:09")
    delta = firewall.render_delta(SPEC, dataclasses.replace(SPEC, guards=(moved,)),
                                  handles_of(SPEC))
    assert delta is not None
    assert sum(line.startswith("delete rule bridge") for line in delta.script.splitlines()) == 7
    # two rules, and the fast path's element: the old one out, the new one in
    assert sum("10.1.0.9" in line for line in delta.script.splitlines()) == 3
    assert 'delete element bridge sdnctl ports4 { "sdnv1" . 02:42:0a:01:00:02 . 10.1.0.2 }' \
        in delta.script


@pytest.mark.parametrize("new", [
    dataclasses.replace(SPEC, allowed=()),  # more than guards changed
    dataclasses.replace(SPEC, ports=(WEB,), guards=(GUARD, GUARD2)),
    SPEC,  # nothing changed: nothing to do
])
def test_delta_is_refused_unless_only_guards_change(new: FirewallSpec) -> None:
    assert firewall.render_delta(SPEC, new, handles_of(SPEC)) is None


def test_delta_is_refused_without_the_handles_it_needs() -> None:
    handles = handles_of(SPEC)
    del handles["sdnctl:ctr/web/spoof-arp-ip"]
    assert firewall.render_delta(SPEC, dataclasses.replace(SPEC, guards=()), handles) is None
    handles = handles_of(SPEC)
    del handles["sdnctl:router-advert"]  # (the anchor of a guard that comes last)
    assert firewall.render_delta(SPEC, dataclasses.replace(SPEC, guards=(GUARD, GUARD2)),
                                 handles) is None


def test_delta_adds_and_deletes_overlay_members_as_elements() -> None:
    old = dataclasses.replace(OV_SPEC, guards=(GUARD,))
    first = OV_SPEC.vxlan[0]
    grown = (dataclasses.replace(first, members=(*first.members, "192.0.2.77")),
             *OV_SPEC.vxlan[1:])
    new = dataclasses.replace(old, vxlan=grown, guards=(GUARD, GUARD2))
    handles = handles_of(old)
    delta = firewall.render_delta(old, new, handles)
    assert delta is not None
    lines = delta.script.splitlines()
    assert lines[:2] == ["add element inet sdnctl vxlan4 { 192.0.2.77 . 4789 . 100 }",
                         "add element inet sdnctl vxlan4_hosts { 192.0.2.77 . 4789 }"]
    assert not [line for line in lines if "rule inet sdnctl input" in line]  # rules stay
    assert sum(line.startswith("insert rule") for line in lines) == 7
    assert delta.cleanup.startswith("delete element inet sdnctl fingerprint")  # sha later
    # a member that leaves one overlay but not the other: its VNI element goes, not its host
    shrunk = (dataclasses.replace(first, members=("192.0.2.2",)), *OV_SPEC.vxlan[1:])
    delta = firewall.render_delta(old, dataclasses.replace(old, vxlan=shrunk), handles)
    assert delta is not None and delta.cleanup == ""  # deleting anyway: one transaction
    assert not delta.makes_rules  # elements alone: no echo
    assert delta.script.splitlines()[0] == \
        "delete element inet sdnctl vxlan4 { 192.0.2.3 . 4789 . 100 }"
    assert "vxlan4_hosts" not in delta.script
    # played on the full render's elements, the delta gives the new render's
    for before, after in ((old, new), (old, dataclasses.replace(old, vxlan=shrunk))):
        script = firewall.render_delta(before, after, handles)
        assert script is not None
        elements = {n: set(e) for n, e in nftrules._rendered(before).elements.items()}
        for line in script.script.splitlines():
            verb, kind, _, _, name, rest = line.split(" ", 5)
            if kind == "element" and name != nftrules.FINGERPRINT_SET:
                items = set(rest.strip("{} ").split(", "))
                elements[name] = elements[name] | items if verb == "add" else \
                    elements[name] - items
        assert elements == {n: set(e) for n, e in nftrules._rendered(after).elements.items()}


# A delta runs with --echo (agent/kernel/firewall.py: the handles of the rules it inserts).
# libnftables 1.0.6's echo prints a new anonymous set through the set of the same name that the
# transaction freed, with that set's type; two types meeting in one table abort the process.
# So in each table a delta may free and create anonymous sets of one key type only.
_SET_KEYS = {"ip saddr": "ipv4_addr", "ip daddr": "ipv4_addr", "oifname": "ifname",
             "iifname": "ifname", "ether type": "ether_type"}
_ANONYMOUS = re.compile(r"(ip saddr|ip daddr|oifname|iifname|ether type) (?:!= )?\{ ")


def _set_types(expr: str) -> set[str]:
    found = _ANONYMOUS.findall(expr)
    assert len(found) == expr.count("{"), f"an anonymous set of unknown type in {expr!r}"
    return {_SET_KEYS[key] for key in found}


def _delta_set_types(old: FirewallSpec, new: FirewallSpec) -> dict[str, set[str]]:
    """Per table family: the key types of the anonymous sets ``render_delta`` frees (rules it
    deletes or replaces) and creates."""
    handles = handles_of(old)
    by_handle = {handles[c]: line for line in render(old).splitlines()
                 for c in re.findall(r'comment "([^"]+)"$', line) if c in handles}
    delta = firewall.render_delta(old, new, handles)
    assert delta is not None
    types: dict[str, set[str]] = {}
    for line in (delta.script + delta.cleanup).splitlines():
        verb, kind, family = line.split(" ", 3)[:3]
        if kind == "element":
            continue  # of a named set
        if verb in ("delete", "replace"):
            handle = int(re.findall(r" handle (\d+)", line)[0])
            types.setdefault(family, set()).update(_set_types(by_handle[handle]))
        if verb != "delete":
            types.setdefault(family, set()).update(_set_types(line))
    return types


@pytest.mark.parametrize("members", [("192.0.2.3",), ("192.0.2.3", "192.0.2.2", "192.0.2.9"),
                                     ("192.0.2.4", "192.0.2.5")])
def test_a_delta_frees_and_makes_anonymous_sets_of_one_type_per_table(
        members: tuple[str, ...]) -> None:
    old = dataclasses.replace(OV_SPEC, guards=(GUARD0, GUARD))
    vxlan = (dataclasses.replace(OV_SPEC.vxlan[0], members=members), *OV_SPEC.vxlan[1:])
    moved = dataclasses.replace(GUARD, ip="10.1.0.9", mac="02:42:0a:01:00:09")
    new = dataclasses.replace(old, vxlan=vxlan, guards=(moved, GUARD2))
    types = _delta_set_types(old, new)
    assert types["bridge"] == {"ether_type"} and types.get("inet", set()) <= {"ipv4_addr"}, \
        types
    assert all(len(t) <= 1 for t in types.values()), types


def test_delta_is_refused_when_an_overlay_port_or_vni_comes() -> None:
    more = (*OV_SPEC.vxlan, VxlanFilter(4790, 77, ("192.0.2.9",)))
    assert firewall.render_delta(OV_SPEC, dataclasses.replace(OV_SPEC, vxlan=more),
                                 handles_of(OV_SPEC)) is None


def test_frames_bridged_between_containers_update_the_flow_sets() -> None:
    script = render(SPEC)
    assert script.index("add set bridge sdnctl flows {") < script.index("add chain")
    assert "add set bridge sdnctl opened {" in script
    assert rules(script, "forward", family="bridge") == [
        'iifname "sdnv*" oifname "sdnv*" ether type ip update @flows '
        '{ ip saddr . ip daddr . meta l4proto counter } comment "sdnctl:flows/count"',
        'iifname "sdnv*" oifname "sdnv*" ether type ip ip daddr . ip saddr . meta l4proto != '
        '@opened update @opened { ip saddr . ip daddr . meta l4proto } '
        'comment "sdnctl:flows/opened"']
    # a render keeps the flows counted so far
    assert "flush set bridge sdnctl flows" not in script
    assert "flush set bridge sdnctl opened" not in script


def test_no_flow_rules_where_conntrack_sees_bridged_frames() -> None:
    """With br_netfilter passing bridged IPv4 to the IP hooks, conntrack has those flows: the
    two set updates per frame are left out (the sets stay declared, so nothing is lost when
    the sysctl goes back to 0)."""
    tracked = dataclasses.replace(SPEC, bridged_tracked=True)
    script = render(tracked)
    assert rules(script, "forward", family="bridge") == []
    assert "add set bridge sdnctl flows {" in script
    assert fingerprint(tracked) != fingerprint(SPEC)


def test_bridged_flows_add_up_both_directions_from_the_end_that_spoke_first() -> None:
    def element(src: str, dst: str, proto: str, packets: int | None = None) -> dict[str, Any]:
        elem: dict[str, Any] = {"val": {"concat": [src, dst, proto]}, "expires": 59}
        if packets is not None:
            elem["counter"] = {"packets": packets, "bytes": packets * 100}
        return {"elem": elem}

    def nft_set(name: str, *elems: dict[str, Any], table: str = "sdnctl") -> dict[str, Any]:
        return {"set": {"family": "bridge", "table": table, "name": name, "elem": list(elems)}}

    items = [
        nft_set("flows", element("10.1.0.3", "10.1.0.2", "tcp", 5),
                element("10.1.0.2", "10.1.0.3", "tcp", 4),
                element("10.1.0.9", "10.1.0.4", "udp", 1)),
        nft_set("opened", element("10.1.0.3", "10.1.0.2", "tcp")),
        nft_set("flows", element("10.9.0.1", "10.9.0.2", "icmp", 7), table="other"),
        {"rule": {"family": "bridge", "table": "sdnctl", "comment": "x"}},
    ]
    assert firewall.bridged_flows(items) == [
        ("10.1.0.3", "10.1.0.2", "tcp", 9, 900),  # opened by .3: both directions, one flow
        ("10.1.0.4", "10.1.0.9", "udp", 1, 100),  # no opener known: the lower address first
    ]


def test_network_drops_count_by_network_and_reason() -> None:
    def rule(comment: str, packets: int) -> dict[str, object]:
        return {"comment": comment,
                "expr": [{"counter": {"packets": packets, "bytes": 0}}, {"drop": None}]}

    rules_ = [rule("sdnctl:net/front/isolation", 3), rule("sdnctl:net/inside/internal-out", 2),
              rule("sdnctl:net/inside/internal-in", 0), rule("sdnctl:ctr/web/spoof-ip", 4),
              {"comment": "sdnctl:net/front/overlay", "expr": [{"accept": None}]}]
    assert firewall.network_drop_counts(rules_) == {("front", "isolation"): 3,
                                                    ("inside", "internal-out"): 2}


def test_a_dual_stack_port_on_every_address_is_dnatted_in_ipv6_too() -> None:
    """Issue 20: "" host_ip publishes on the host's IPv6 addresses too (never ::1)."""
    spec = dataclasses.replace(SPEC, ports=(dataclasses.replace(WEB, container_ip6="fd00:1::2"),))
    six = [r for r in rules(render(spec), "prerouting") + rules(render(spec), "output")
           if "ip6" in r]
    assert len(six) == 2 and all(
        r.startswith(f"ip6 daddr != ::1 fib daddr type local tcp dport {WEB.host_port} "
                     f"dnat ip6 to [fd00:1::2]:{WEB.container_port} comment ") for r in six)
    assert not [r for r in rules(render(SPEC), "prerouting") if "ip6" in r]  # IPv4 only: none


def test_ipv6_hairpin_masquerades_only_dnatted_ipv6_from_the_bridges_own_lease() -> None:
    """Issue 20: a container reaching a port published on the host's IPv6 addresses from the
    same bridge is masqueraded (the answer must come back through the host), per bridge with
    such a port, matched like IPv4's hairpin; nothing else of routed IPv6 is."""
    front6 = dataclasses.replace(FRONT, subnet6="fd00:1::/64", cidr6="fd00:1::/48")
    nets = (front6, BACK, INSIDE)
    hairpin6 = ('oifname "sdnbf" ct status dnat ip6 saddr fd00:1::/64 masquerade '
                'comment "sdnctl:net/front/hairpin/ip6"')
    for host_ip in ("", "::", "2001:db8::1"):
        port = dataclasses.replace(WEB, host_ip=host_ip, container_ip6="fd00:1::2")
        post = rules(render(dataclasses.replace(SPEC, networks=nets, ports=(port,))),
                     "postrouting")
        assert hairpin6 in post, (host_ip, post)
        six = [r for r in post if "ip6" in r]
        assert six == [hairpin6], six  # routed IPv6 (no masquerade6) stays un-NATed
        # after IPv4's hairpin (when there is one), before any egress masquerade
        assert post.index(hairpin6) == max(i for i, r in enumerate(post) if "hairpin" in r)
        assert all("/hairpin" in r for r in post[:post.index(hairpin6)] if "ct status" in r)
    # none without a port DNAT'd in IPv6: an IPv4-only container, an IPv4 host address, ::1
    # (served by the agent's proxy, not a DNAT), or a port on an internal network
    for port in (WEB, dataclasses.replace(WEB, host_ip="192.0.2.1", container_ip6="fd00:1::2"),
                 dataclasses.replace(WEB, host_ip="::1", container_ip6="fd00:1::2")):
        script = render(dataclasses.replace(SPEC, networks=nets, ports=(port,)))
        assert not [r for r in rules(script, "postrouting") if "ip6" in r], port
    inside6 = dataclasses.replace(INSIDE, subnet6="fd00:3::/64")
    on_inside = dataclasses.replace(WEB, bridge="sdnbi", container_ip6="fd00:3::2")
    script = render(dataclasses.replace(SPEC, networks=(front6, BACK, inside6),
                                        ports=(on_inside,)))
    assert "hairpin/ip6" not in script
    # with masquerade6 the network's own egress rule comes after the hairpin, unchanged
    nat6 = dataclasses.replace(front6, masquerade6=True)
    port = dataclasses.replace(WEB, container_ip6="fd00:1::2")
    post = rules(render(dataclasses.replace(SPEC, networks=(nat6, BACK, INSIDE), ports=(port,))),
                 "postrouting")
    assert [r.rsplit(" comment ", 1)[1] for r in post if "ip6" in r] == [
        '"sdnctl:net/front/hairpin/ip6"', '"sdnctl:net/front/ip6"']


def test_a_listing_takes_the_latest_sha_element_for_the_tables() -> None:
    """An agent killed before a delta's cleanup ran leaves the older sha elements behind; its
    successor's listing reads the latest one's sha (not drift: no full write in the first
    pass of an agent adopting its containers)."""
    old, new = dataclasses.replace(SPEC, guards=(GUARD2,)), SPEC
    listed = [{"set": {"family": "inet", "table": "sdnctl", "name": "fingerprint",
                       "elem": [sha_element(new, 2), sha_element(old, 0), sha_element(old, 1)]}}]
    assert firewall._latest_sha(listed) == ([nftrules.sha_item(sha_element(new))], 2)
    assert firewall._latest_sha([]) == ([], 0)
