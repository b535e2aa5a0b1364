"""The agent's firewall rules: tables ``inet sdnctl`` and ``bridge sdnctl`` plus two bridge sysctls.

Design note. A ``FirewallSpec`` (pure data) says what this host wants: its bridge networks, the
pairs of them allowed to talk, the published ports and the anti-spoofing guards of container
ports. ``render(spec)`` turns it into ONE ``nft -f -`` script, which nft applies as one atomic
transaction: for each table ``add table``, ``add chain`` (always the same chains), ``flush
chain``, then the rules. We never touch tables we do not own, and every base chain has policy
accept: a default drop on a hook shared with the host's own firewall would break it. Our drops
name exactly what they drop.

``inet sdnctl``
  prerouting (nat)   published ports: DNAT to the container. ``host_ip`` "" means any local
                     address except 127.0.0.0/8 (``fib daddr type local``): a packet from another
                     host addressed to 127.0.0.1 must never be DNAT'd (moby#45610). A port on a
                     loopback address is DNAT'd in ``output`` only. A dual-stack container's
                     port on every address is DNAT'd in IPv6 too (``ip6 daddr != ::1``); one
                     on ``[::]`` in IPv6 only, one on an IPv6 address on that one. Never
                     ``::1``: IPv6 has no route_localnet, the answer would not come back.
  output (nat)       the same for connections made by the host itself, 127.0.0.1 included.
  input (filter)     VXLAN filtering: per UDP port of our overlays, accept a packet only from a
                     member host's underlay address AND with the VNI of an overlay it is a member
                     of (raw payload ``@th,96,24``: the VNI is bits 32-55 of the 8-byte VXLAN
                     header that follows the 8-byte UDP header); count and drop the rest (a
                     forged source, or a member using a VNI it has no part in). Who may send
                     what is in named sets (``VXLAN_SETS``: source . port . VNI), so members
                     that come and go are elements, not rules. Nothing else is touched: the
                     chain's policy is accept.
  postrouting (nat)  masquerade, in this order: loopback sources leaving a bridge (for the
                     127.0.0.1 path, with ``route_localnet=1`` on that bridge, as Docker does);
                     hairpin (DNAT'd traffic whose source is on the destination's bridge, so
                     the answer comes back through us, not straight over the bridge from an
                     address the client never called; in IPv6 too, ``.../hairpin/ip6``: the
                     one IPv6 masquerade without ``masquerade6``); egress of each
                     non-internal network with masquerade, except towards the network's whole
                     CIDR (on an overlay the other hosts' slices are reached through the VXLAN
                     device with the real source) and towards any of our bridges and VXLAN
                     devices (routed traffic between allowed networks keeps its real source).
  forward (filter)   stateless, like Docker's isolation chains, so un-allowing a pair cuts
                     established flows too: (0) a network's bridge and its own VXLAN device
                     always forward to each other (internal networks too: that is the overlay);
                     (1) an internal network forwards only to and from itself and its allowed
                     networks; (2) DNAT'd connections pass; (3) a network forwards to none of
                     our other networks except the allowed ones. A network's "interfaces" are
                     its bridge and, on an overlay, its VXLAN device: isolation and allowed
                     pairs apply to both. Every drop here is counted too (the agent's
                     ``sdnctl_agent_nft_dropped_packets_total{guard="isolation"}``...).

``bridge sdnctl``
  prerouting (filter) per container port (``iifname VETH``): drop frames whose source MAC is
                     not the container's, IPv4 whose source is not its address, ARP whose sender
                     MAC or IP is not its own, IPv6 whose source is neither its IPv6 address
                     nor its (MAC-derived) link-local one, neighbour advertisements for any
                     other target, and any ethertype but IPv4, ARP and IPv6 (a VLAN tag would
                     hide the inner header). Router advertisements and redirects from any
                     container port (``sdnv*``) are dropped. Every drop has a counter.
                     Ahead of them, two fast-path rules (issue 21's data path): an IPv4 frame
                     whose (port . source MAC . source address) is an element of ``ports4``,
                     and an IPv6 frame other than ICMPv6 whose (port . MAC . address) is in
                     ``ports6``, is accepted by one set lookup. Such a frame passes every
                     rule after them anyway (none of them drops it), so the verdicts and the
                     counters are the same; what changes is that a good frame no longer walks
                     seven rules per port of the bridge (23 rules for three containers cost
                     about 5 % of a TCP stream's throughput and a microsecond of round trip).
                     ARP, ICMPv6 (neighbour discovery) and anything spoofed go the long way.
  forward (filter)   flows between two containers of one bridge: such frames never reach the
                     host's IP hooks (unless ``br_netfilter`` is loaded), so conntrack does not
                     see them. Each IPv4 frame from one container port to another updates an
                     element of the dynamic set ``flows`` (source . destination . protocol, with
                     a counter) and, unless the reverse is there, of ``opened`` (which end
                     spoke first); idle elements time out. The agent reads both sets with its
                     flows (``Firewall.bridged_flows``). The sets are declared by every render
                     (``add set`` of an existing set keeps its elements) and never flushed.
                     When br_netfilter hands bridged IPv4 to the IP hooks in this namespace
                     (``net.bridge.bridge-nf-call-iptables`` = 1, ``FirewallSpec.
                     bridged_tracked``, read by ``Firewall.observe``), conntrack sees those
                     flows already (our NAT chains keep it on), and the two rules are left out:
                     they were two set updates per frame for what the agent reads from
                     conntrack anyway.

Sysctls of our bridges, in the same namespace: ``net.ipv4.conf.<bridge>.route_localnet`` is 1
exactly on bridges with a loopback-reachable port (host_ip "" or 127.x), and
``net.ipv6.conf.<bridge>.accept_ra`` is 0 on every bridge of ours (skipped without IPv6).

Idempotence. The script is applied only when the installed state's fingerprint differs from the
wanted one. The fingerprint is the sha of the rendered script, carried by the one element of the
set ``inet sdnctl fingerprint`` (64 bits of it, as the top of an IPv6 address), plus the sorted
comments of all rules of both tables (every rule has one), plus the bridge sysctls; a rule
deleted or added by hand, or a recreated bridge that lost ``route_localnet``, shows up as
drift. (A table comment would be the obvious place for the sha, but nft 1.0.6 neither updates a
table's comment on ``add table`` nor shows it in ``nft -j`` output. It was the comment of a
no-op rule until issue 21: swapping that rule made every change, a host joining an overlay
too, a transaction with a rule, which libnftables runs only after reading every rule of the
table back for ``--echo``: 2 ms of CPU per change on each of a hundred hosts, against 0.4 ms
for elements alone.) A bridge
that does not exist yet cannot take its sysctls: the fingerprint stays different and the next
apply, once the bridge exists, sets them (without rewriting the unchanged tables).

This module is pure (no I/O): ``agent/kernel/firewall.py`` applies its scripts.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import ipaddress
import re
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from agent.names import VETH_PREFIX, link_local

TABLE_FAMILY = "inet"  # the main table; BRIDGE_FAMILY holds the anti-spoofing one
BRIDGE_FAMILY = "bridge"
TABLE_NAME = "sdnctl"
SHA_COMMENT_PREFIX = "sdnctl:sha/"
SYSCTL_PREFIX = "sysctl:"
PROTOCOLS = ("tcp", "udp")
LOOPBACK = ipaddress.ip_network("127.0.0.0/8")

T = TypeVar("T")

# (family, chain, declaration) in creation order; every render declares and flushes all of them.
CHAINS = (
    (TABLE_FAMILY, "prerouting", "type nat hook prerouting priority dstnat;"),
    (TABLE_FAMILY, "output", "type nat hook output priority -100;"),
    (TABLE_FAMILY, "postrouting", "type nat hook postrouting priority srcnat;"),
    (TABLE_FAMILY, "forward", "type filter hook forward priority filter; policy accept;"),
    (TABLE_FAMILY, "input", "type filter hook input priority filter; policy accept;"),
    (BRIDGE_FAMILY, "prerouting", "type filter hook prerouting priority filter; policy accept;"),
    (BRIDGE_FAMILY, "forward", "type filter hook forward priority filter; policy accept;"),
)
#: The sets of frames bridged between two containers (see the module note): ``FLOW_SET``
#: counts each direction (source . destination . protocol), ``OPENED_SET`` remembers which
#: end sent first. Idle elements go after ``FLOW_TIMEOUT``.
FLOW_SET = "flows"
OPENED_SET = "opened"
FLOW_TIMEOUT = "60s"
FLOW_SET_SIZE = 4096
SETS = tuple(
    (BRIDGE_FAMILY, name, "type ipv4_addr . ipv4_addr . inet_proto; flags dynamic,timeout; "
     f"timeout {FLOW_TIMEOUT}; size {FLOW_SET_SIZE};")
    for name in (FLOW_SET, OPENED_SET))
#: The overlays' members (issue 21), as elements of named sets rather than addresses in rules:
#: a host joining or leaving is an element added or deleted (before, the rules were replaced,
#: and libnftables parsed their hundred addresses again on each of a hundred hosts). Per
#: underlay family: (address . UDP port . VNI) that a member may send, and (address . port)
#: of every member. Declared and refilled by every render; their names never change, so none
#: is ever left behind.
VXLAN_SETS = {"ip": ("vxlan4", "vxlan4_hosts"), "ip6": ("vxlan6", "vxlan6_hosts")}
for _family, (_by_vni, _hosts) in VXLAN_SETS.items():
    SETS += ((TABLE_FAMILY, _by_vni, f"typeof {_family} saddr . udp dport . @th,96,24;"),
             (TABLE_FAMILY, _hosts, f"typeof {_family} saddr . udp dport;"))
#: The anti-spoofing fast path's sets (see the module note): (port . MAC . address) of every
#: guarded container port, per family. Declared and refilled by every render.
GUARD_SETS = {"ip": "ports4", "ip6": "ports6"}
SETS += tuple((BRIDGE_FAMILY, name, f"typeof iifname . ether saddr . {family} saddr;")
              for family, name in GUARD_SETS.items())
#: The fingerprint's carrier: one element, the first 64 bits of the rendered script's sha as
#: the top of an IPv6 address (see the module note). An element rather than a rule's comment,
#: so that a change of overlay members is a transaction of elements alone, which libnftables
#: applies without reading our rules back (0.3 ms against 2 ms of CPU for a host joining, on
#: each of a hundred hosts).
FINGERPRINT_SET = "fingerprint"
SETS += ((TABLE_FAMILY, FINGERPRINT_SET, "type ipv6_addr;"),)
SET_FAMILY = {name: family for family, name, _ in SETS}
FAMILIES = (TABLE_FAMILY, BRIDGE_FAMILY)


# --- the spec -------------------------------------------------------------------------------


@dataclass(frozen=True)
class BridgeNet:
    """One bridge network on this host."""

    network: str  # network name: the owner key is "net/<network>"
    bridge: str  # its bridge on this host
    subnet: str  # this host's subnet of the network, "a.b.c.d/len" ("": IPv6-only)
    masquerade: bool = True  # egress NAT (ignored when internal)
    internal: bool = False  # no forwarding but to allowed bridges, no NAT
    cidr: str = ""  # the whole network's CIDR (an overlay's, all hosts); "" = same as subnet
    vxlan: str = ""  # the overlay's VXLAN device on this host; "" = not an overlay
    #: NAT66 (issue 20): this host's IPv6 lease and the network's IPv6 CIDR; "" = none
    subnet6: str = ""
    cidr6: str = ""
    masquerade6: bool = False  # IPv6 egress masqueraded (default: routed, no NAT)

    @property
    def interfaces(self) -> list[str]:
        """The bridge and, on an overlay, the VXLAN device."""
        return [self.bridge, self.vxlan] if self.vxlan else [self.bridge]


@dataclass(frozen=True)
class VxlanFilter:
    """Accept VXLAN on ``port`` with VNI ``vni`` only from ``members`` (underlay addresses of
    the overlay's other hosts). Several overlays may share a port with different VNIs."""

    port: int
    vni: int
    members: tuple[str, ...]


@dataclass(frozen=True)
class PortRule:
    """A published port: ``host_ip:host_port/protocol`` -> ``container_ip:container_port``."""

    container: str
    bridge: str  # the container's bridge (must be one of the spec's networks)
    container_ip: str
    protocol: str  # "tcp" or "udp"
    host_ip: str  # "" = any local address but 127.0.0.0/8; a loopback address = host only
    host_port: int
    container_port: int
    #: A dual-stack container's IPv6 address (issue 20): a port published on every address
    #: ("" host_ip) is published on the host's IPv6 addresses too, as Docker does.
    container_ip6: str = ""


@dataclass(frozen=True)
class PortGuard:
    """Anti-spoofing for one container port on a bridge."""

    container: str
    veth: str  # host side of the container's veth (the bridge port)
    mac: str  # the container interface's MAC
    ip: str  # its IPv4 address ("": IPv6-only)
    ip6: str = ""  # its IPv6 address on a dual-stack or IPv6-only network (issue 20)


@dataclass(frozen=True)
class FirewallSpec:
    networks: tuple[BridgeNet, ...] = ()
    allowed: tuple[tuple[str, str], ...] = ()  # pairs of network names, order-free
    ports: tuple[PortRule, ...] = ()
    guards: tuple[PortGuard, ...] = ()
    vxlan: tuple[VxlanFilter, ...] = ()
    #: Conntrack sees IPv4 frames bridged between two containers (br_netfilter passes them to
    #: the IP hooks here): the bridge table counts no flows of its own (see the module note).
    bridged_tracked: bool = False

    @classmethod
    def from_masquerade(cls, rules: Sequence[MasqueradeRule]) -> FirewallSpec:
        """The spec of the older masquerade-only interface (non-internal networks, no pairs)."""
        return cls(networks=tuple(BridgeNet(r.network, r.bridge, r.subnet) for r in rules))


@dataclass(frozen=True)
class MasqueradeRule:
    """Masquerade traffic from a bridge network's host subnet that leaves the host.

    The first interface of this module; ``render``/``fingerprint``/``apply`` still take a list
    of these and treat it as ``FirewallSpec.from_masquerade(rules)``.
    """

    network: str
    subnet: str
    bridge: str

    @property
    def comment(self) -> str:
        return f"sdnctl:net/{self.network}"


SpecLike = FirewallSpec | Sequence[MasqueradeRule]


def _as_spec(spec: SpecLike) -> FirewallSpec:
    return spec if isinstance(spec, FirewallSpec) else FirewallSpec.from_masquerade(spec)


# --- rendering (pure) -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Rule:
    family: str
    chain: str
    expr: str
    comment: str

    def line(self) -> str:
        return f"add rule {self.family} {TABLE_NAME} {self.chain} {self.expr} " \
               f"comment {_quote(self.comment)}"


_NAME = re.compile(r"[A-Za-z0-9_.:@/+-]{1,64}")
_MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")


def _quote(text: str) -> str:
    if '"' in text or "\n" in text:
        raise ValueError(f"cannot quote {text!r} for nft")
    return f'"{text}"'


def _ifname(name: str) -> str:
    if not _NAME.fullmatch(name) or len(name.encode()) > 15:
        raise ValueError(f"invalid interface name {name!r}")
    return _quote(name)


def _names(names: Sequence[str]) -> str:
    """One quoted name, or an anonymous set of several (nft rejects an empty set)."""
    quoted = [_ifname(n) for n in sorted(set(names))]
    if not quoted:
        raise ValueError("empty interface set")
    return quoted[0] if len(quoted) == 1 else "{ " + ", ".join(quoted) + " }"


def _ipv4(text: str) -> str:
    return str(ipaddress.IPv4Address(text))


def _subnet(text: str) -> str:
    return str(ipaddress.IPv4Network(text, strict=False))


def _mac(text: str) -> str:
    mac = text.lower()
    if not _MAC.fullmatch(mac):
        raise ValueError(f"invalid MAC address {text!r}")
    return mac


def _vni(number: int) -> int:
    if not 0 <= number < 1 << 24:
        raise ValueError(f"invalid VNI {number!r}")
    return number


@functools.lru_cache(maxsize=1 << 14)
def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


@functools.lru_cache(maxsize=1 << 14)
def _member(text: str) -> tuple[int, str, int]:
    """A VXLAN member's address as a number, as text and its version (every peer pass renders
    every member: converting each again was 0.3 of a render's 0.9 ms at 100 hosts)."""
    address = _address(text)
    return int(address), str(address), address.version


def _port(number: int) -> int:
    if not 1 <= number <= 65535:
        raise ValueError(f"invalid port {number!r}")
    return number


def _normalized_pairs(spec: FirewallSpec) -> set[tuple[str, str]]:
    """Allowed pairs as sorted tuples of names known to the spec, without self-pairs."""
    known = {n.network for n in spec.networks}
    return {(min(a, b), max(a, b)) for a, b in spec.allowed if a != b and {a, b} <= known}


def _is_loopback(host_ip: str) -> bool:
    """An IPv4 loopback address (127.0.0.0/8): the ports that need ``route_localnet``."""
    return bool(host_ip) and ":" not in host_ip and ipaddress.IPv4Address(host_ip) in LOOPBACK


def _published(spec: FirewallSpec) -> list[PortRule]:
    """The ports to publish, sorted. Ports on internal networks are not published (as Docker):
    the forward chain would drop them anyway, and a DNAT that cannot deliver only misleads."""
    nets = {n.bridge: n for n in spec.networks}
    for p in spec.ports:
        if p.bridge not in nets:
            raise ValueError(f"port {p.host_port}/{p.protocol} of {p.container!r}: "
                             f"bridge {p.bridge!r} is not in the spec")
        if p.protocol not in PROTOCOLS:
            raise ValueError(f"invalid protocol {p.protocol!r} for {p.container!r}")
    return sorted((p for p in spec.ports if not nets[p.bridge].internal),
                  key=lambda p: (p.protocol, p.host_ip, p.host_port, p.container))


def localnet_bridges(spec: SpecLike) -> list[str]:
    """Bridges that need ``route_localnet=1``: those with a loopback-reachable port (pure)."""
    return sorted({p.bridge for p in _published(_as_spec(spec))
                   if p.container_ip and (p.host_ip == "" or _is_loopback(p.host_ip))})


def _port_rules(spec: FirewallSpec) -> list[_Rule]:
    rules = []
    for p in _published(spec):
        if ":" in p.host_ip:
            rules += _port_rules6(p)
            continue
        comment = f"sdnctl:ctr/{p.container}/port/{p.protocol}/{p.host_port}"
        if p.container_ip:  # (an IPv6-only container has none: its port is IPv6's only)
            rules += _port_rules4(p, comment)
        if p.host_ip == "" and _dnat6(p):
            # ::1 is never DNAT'd: IPv6 has no route_localnet, the answer could not come back
            match6 = (f"ip6 daddr != ::1 fib daddr type local {p.protocol} dport "
                      f"{_port(p.host_port)} dnat ip6 to [{_ipv6(p.container_ip6)}]:"
                      f"{_port(p.container_port)}")
            for chain in ("prerouting", "output"):
                rules.append(_Rule(TABLE_FAMILY, chain, match6, comment + "/ip6"))
    return rules


def _dnat6(p: PortRule) -> bool:
    """Whether ``p`` is DNAT'd in IPv6 (what :func:`_port_rules` and the hairpin go by): a
    container with an IPv6 address, published on every address or on an IPv6 one but ``::1``."""
    return bool(p.container_ip6) and (p.host_ip == "" or (":" in p.host_ip and
                                                          p.host_ip != "::1"))


def _port_rules4(p: PortRule, comment: str) -> list[_Rule]:
    """A port published on every address ("") or an IPv4 one, DNAT'd to the container's IPv4
    address."""
    target = f"dnat ip to {_ipv4(p.container_ip)}:{_port(p.container_port)}"
    match = f"{p.protocol} dport {_port(p.host_port)} {target}"
    if p.host_ip == "":
        return [_Rule(TABLE_FAMILY, "prerouting",
                      f"ip daddr != {LOOPBACK} fib daddr type local {match}", comment),
                _Rule(TABLE_FAMILY, "output",
                      f"meta nfproto ipv4 fib daddr type local {match}", comment)]
    daddr = f"ip daddr {_ipv4(p.host_ip)} {match}"
    chains = ("output",) if _is_loopback(p.host_ip) else ("prerouting", "output")
    return [_Rule(TABLE_FAMILY, chain, daddr, comment) for chain in chains]


def _port_rules6(p: PortRule) -> list[_Rule]:
    """A port published on an IPv6 host address: ``::`` is every IPv6 address of the host but
    ``::1`` (prerouting and output); another address is that one. Never ``::1``: the answer,
    de-NAT'd to ``::1``, would arrive on the bridge and the kernel would not take it (IPv6 has
    no ``route_localnet``); the agent's userland proxy serves it (``agent/portproxy.py``).
    Nothing without a container IPv6 address (the API refuses that; an agent skips it)."""
    if not _dnat6(p):
        return []
    comment = f"sdnctl:ctr/{p.container}/port/{p.protocol}/{p.host_port}/ip6"
    match = (f"{p.protocol} dport {_port(p.host_port)} dnat ip6 to "
             f"[{_ipv6(p.container_ip6)}]:{_port(p.container_port)}")
    daddr = ("ip6 daddr != ::1 fib daddr type local" if p.host_ip == "::" else
             f"ip6 daddr {_ipv6(p.host_ip)}")
    return [_Rule(TABLE_FAMILY, chain, f"{daddr} {match}", comment)
            for chain in ("prerouting", "output")]


def _postrouting_rules(spec: FirewallSpec) -> list[_Rule]:
    nets = sorted(spec.networks, key=lambda n: n.network)
    by_bridge = {n.bridge: n for n in nets}
    published = _published(spec)
    rules = [
        _Rule(TABLE_FAMILY, "postrouting",
              f"oifname {_ifname(b)} ip saddr {LOOPBACK} masquerade",
              f"sdnctl:net/{by_bridge[b].network}/localnet")
        for b in localnet_bridges(spec)
    ]
    for b in sorted({p.bridge for p in published if p.container_ip}):
        n = by_bridge[b]
        rules.append(_Rule(
            TABLE_FAMILY, "postrouting",
            f"oifname {_ifname(b)} ct status dnat ip saddr {_subnet(n.subnet)} masquerade",
            f"sdnctl:net/{n.network}/hairpin"))
    for b in sorted({p.bridge for p in published if _dnat6(p)}):
        n = by_bridge[b]
        if n.subnet6:  # (the API refuses an IPv6 port without one; an agent skips it)
            rules.append(_Rule(
                TABLE_FAMILY, "postrouting",
                f"oifname {_ifname(b)} ct status dnat ip6 saddr {_subnet6(n.subnet6)} "
                "masquerade", f"sdnctl:net/{n.network}/hairpin/ip6"))
    ours = _names([i for n in nets for i in n.interfaces]) if nets else ""
    for n in nets:
        if n.masquerade and n.subnet and not n.internal:
            subnet = _subnet(n.subnet)
            whole = _subnet(n.cidr) if n.cidr else subnet
            rules.append(_Rule(
                TABLE_FAMILY, "postrouting",
                f"ip saddr {subnet} ip daddr != {whole} oifname != {ours} masquerade",
                f"sdnctl:net/{n.network}"))
        if n.masquerade6 and n.subnet6 and not n.internal:
            subnet6, whole6 = _subnet6(n.subnet6), _subnet6(n.cidr6 or n.subnet6)
            rules.append(_Rule(
                TABLE_FAMILY, "postrouting",
                f"ip6 saddr {subnet6} ip6 daddr != {whole6} oifname != {ours} masquerade",
                f"sdnctl:net/{n.network}/ip6"))
    return rules


def _subnet6(text: str) -> str:
    return str(ipaddress.IPv6Network(text))


def _forward_rules(spec: FirewallSpec) -> list[_Rule]:
    nets = sorted(spec.networks, key=lambda n: n.network)
    pairs = _normalized_pairs(spec)
    by_name = {n.network: n for n in nets}

    def allowed_with(n: BridgeNet) -> list[str]:
        return [i for a, b in pairs if n.network in (a, b)
                for i in by_name[b if a == n.network else a].interfaces]

    rules = []
    for n in (n for n in nets if n.vxlan):
        bridge, vxlan = _ifname(n.bridge), _ifname(n.vxlan)
        for iif, oif in ((bridge, vxlan), (vxlan, bridge)):
            rules.append(_Rule(TABLE_FAMILY, "forward", f"iifname {iif} oifname {oif} accept",
                               f"sdnctl:net/{n.network}/overlay"))
    for n in (n for n in nets if n.internal):
        own = _names(n.interfaces)
        reach = _names([*n.interfaces, *allowed_with(n)])
        rules.append(_Rule(TABLE_FAMILY, "forward",
                           f"iifname {own} oifname != {reach} counter drop",
                           f"sdnctl:net/{n.network}/internal-out"))
        rules.append(_Rule(TABLE_FAMILY, "forward",
                           f"oifname {own} iifname != {reach} counter drop",
                           f"sdnctl:net/{n.network}/internal-in"))
    if _published(spec):
        rules.append(_Rule(TABLE_FAMILY, "forward", "ct status dnat accept", "sdnctl:ports"))
    for n in nets:
        isolated = {i for m in nets for i in m.interfaces} - {*n.interfaces, *allowed_with(n)}
        if isolated:
            rules.append(_Rule(TABLE_FAMILY, "forward",
                               f"iifname {_names(n.interfaces)} oifname "
                               f"{_names(list(isolated))} counter drop",
                               f"sdnctl:net/{n.network}/isolation"))
    return rules


def _vxlan_rules(spec: FirewallSpec) -> list[_Rule]:
    """Per port and underlay family with members: accept what a member may send (its address,
    the port and a VNI of its overlays: ``VXLAN_SETS``); drop and count other sources; then
    drop what is left (another VNI, or a family no member uses). Members on an IPv6 underlay
    (issue 20) get rules in ``ip6`` (comments ending ``/ip6``). Who the members are is in the
    sets' elements (:func:`_vxlan_elements`), not here."""
    families: dict[int, set[str]] = {}
    for f in spec.vxlan:
        families.setdefault(_port(f.port), set()).update(
            "ip6" if ":" in m else "ip" for m in f.members)
    rules = []
    for port, used in sorted(families.items()):
        udp = f"udp dport {port}"
        for family, suffix in (("ip", ""), ("ip6", "/ip6")):
            if family not in used:
                continue
            by_vni, hosts = VXLAN_SETS[family]
            rules.append(_Rule(TABLE_FAMILY, "input",
                               f"{udp} {family} saddr . udp dport . @th,96,24 @{by_vni} accept",
                               f"sdnctl:vxlan/{port}/member{suffix}"))
            rules.append(_Rule(TABLE_FAMILY, "input",
                               f"{udp} {family} saddr . udp dport != @{hosts} counter drop",
                               f"sdnctl:vxlan/{port}/not-member{suffix}"))
        rules.append(_Rule(TABLE_FAMILY, "input", f"{udp} counter drop",
                           f"sdnctl:vxlan/{port}/wrong-vni"))
    return rules


@functools.lru_cache(maxsize=8)
def _vxlan_elements(filters: tuple[VxlanFilter, ...]) -> Mapping[str, tuple[str, ...]]:
    """Each VXLAN set's elements (see ``VXLAN_SETS``), sorted by address, port and VNI.
    Remembered, as the guards' elements are: the pass a peer change triggers renders the
    whole ruleset to compare its fingerprint, and only the members changed."""
    wanted: dict[str, set[tuple[int, str, int, int]]] = {
        name: set() for names in VXLAN_SETS.values() for name in names}
    for f in filters:
        port, vni = _port(f.port), _vni(f.vni)
        for member in f.members:
            number, text, version = _member(member)
            by_vni, hosts = VXLAN_SETS["ip6" if version == 6 else "ip"]
            wanted[by_vni].add((number, text, port, vni))
            wanted[hosts].add((number, text, port, -1))
    return types.MappingProxyType({
        name: tuple(f"{text} . {port}" + (f" . {vni}" if vni >= 0 else "")
                    for _, text, port, vni in sorted(elements))
        for name, elements in wanted.items()})


def _missing(elements: Sequence[str], other: Sequence[str]) -> tuple[str, ...]:
    """``elements`` not in ``other``, in order."""
    there = set(other)
    return tuple(e for e in elements if e not in there)


def _element_lines(verb: str, elements: Mapping[str, Sequence[str]]) -> list[str]:
    """``add element`` (or ``delete element``) lines for ``elements`` by set, none for none."""
    return [f"{verb} element {SET_FAMILY[name]} {TABLE_NAME} {name} {{ {', '.join(items)} }}"
            for name, items in elements.items() if items]


@functools.lru_cache(maxsize=8)
def _guard_elements(guards: tuple[PortGuard, ...]) -> Mapping[str, tuple[str, ...]]:
    """The fast path's sets (``GUARD_SETS``): each guarded port's (port . MAC . address), its
    IPv4 address in ``ports4``, its IPv6 and link-local ones in ``ports6``; sorted."""
    four: set[str] = set()
    six: set[str] = set()
    for g in guards:
        port = f"{_ifname(g.veth)} . {_mac(g.mac)}"
        if g.ip:
            four.add(f"{port} . {_ipv4(g.ip)}")
        six.update(f"{port} . {a}" for a in _own6(g))
    return types.MappingProxyType({GUARD_SETS["ip"]: tuple(sorted(four)),
                                   GUARD_SETS["ip6"]: tuple(sorted(six))})


def _own6(g: PortGuard) -> list[str]:
    """The IPv6 sources a container port may use: the link-local address its MAC gives, and
    its IPv6 address if it has one."""
    return sorted({link_local(_mac(g.mac)), *([_ipv6(g.ip6)] if g.ip6 else [])})


def _guard_key(g: PortGuard) -> tuple[str, str]:
    return (g.veth, g.container)


@functools.lru_cache(maxsize=1 << 14)
def _one_guard(g: PortGuard) -> tuple[_Rule, ...]:
    """The seven rules of one container port, in their order in the chain. IPv6 (issue 20): a
    container sends only from its own addresses (its IPv6 one, if any, and the link-local one
    the kernel derives from its MAC) and advertises itself as neighbour for those only.
    Remembered: a write renders every guard up to four times (the delta, the fingerprints),
    and a CNI ADD's fast path waits for it."""
    port, mac = f"iifname {_ifname(g.veth)}", _mac(g.mac)
    # An IPv6-only container (no IPv4 address) sends no IPv4 and no ARP at all.
    ip4, arp = (f"ip saddr != {_ipv4(g.ip)}", f"arp saddr ip != {_ipv4(g.ip)}") if g.ip else \
        ("", "ether type arp")
    own6 = _own6(g)
    # Each a chain of "!=" rather than an anonymous set: a delta may make anonymous sets of
    # one key type per table only (see the delta's note), and this table has ether types.
    sources = " ".join(f"ip6 saddr != {a}" for a in own6)
    targets = " ".join(f"@th,64,128 != 0x{int(ipaddress.IPv6Address(a)):032x}" for a in own6)
    key = f"sdnctl:ctr/{g.container}"
    return tuple(
        _Rule(BRIDGE_FAMILY, "prerouting", f"{port} {expr} counter drop", f"{key}/spoof-{what}")
        for expr, what in (
            (f"ether saddr != {mac}", "mac"),
            ("ether type != { ip, arp, ip6 }", "ethertype"),
            (f"ether type ip {ip4}".rstrip(), "ip"),
            (f"arp saddr ether != {mac}", "arp-mac"),
            (arp, "arp-ip"),
            (f"ether type ip6 {sources}", "ip6"),
            # the target address of a neighbour advertisement: 16 bytes after the ICMPv6
            # header's first 8 (nft 1.0.6 has no name for it)
            (f"icmpv6 type nd-neighbor-advert {targets}", "na"),
        ))


def _ipv6(text: str) -> str:
    return str(ipaddress.IPv6Address(text))


_ROUTER_ADVERT = _Rule(BRIDGE_FAMILY, "prerouting",
                       f'iifname "{VETH_PREFIX}*" icmpv6 type nd-router-advert counter drop',
                       "sdnctl:router-advert")
_REDIRECT = _Rule(BRIDGE_FAMILY, "prerouting",
                  f'iifname "{VETH_PREFIX}*" icmpv6 type nd-redirect counter drop',
                  "sdnctl:redirect")


#: The fast path, first in the chain (see the module note): frames every guard rule would let
#: pass anyway, accepted by one lookup.
_FAST_PATH = (
    _Rule(BRIDGE_FAMILY, "prerouting", "ether type ip iifname . ether saddr . ip saddr "
          f"@{GUARD_SETS['ip']} accept", "sdnctl:guard/fast/ip"),
    _Rule(BRIDGE_FAMILY, "prerouting", "ether type ip6 meta l4proto != ipv6-icmp "
          f"iifname . ether saddr . ip6 saddr @{GUARD_SETS['ip6']} accept",
          "sdnctl:guard/fast/ip6"),
)


def _guard_rules(spec: FirewallSpec) -> list[_Rule]:
    rules = [r for g in sorted(spec.guards, key=_guard_key) for r in _one_guard(g)]
    return [*_FAST_PATH, *rules, _ROUTER_ADVERT, _REDIRECT]


_PORTS = f'iifname "{VETH_PREFIX}*" oifname "{VETH_PREFIX}*" ether type ip'
_KEY = "ip saddr . ip daddr . meta l4proto"
_FLOW_RULES = [
    _Rule(BRIDGE_FAMILY, "forward", f"{_PORTS} update @{FLOW_SET} {{ {_KEY} counter }}",
          "sdnctl:flows/count"),
    _Rule(BRIDGE_FAMILY, "forward", f"{_PORTS} ip daddr . ip saddr . meta l4proto != "
          f"@{OPENED_SET} update @{OPENED_SET} {{ {_KEY} }}", "sdnctl:flows/opened"),
]


def _rules(spec: FirewallSpec) -> list[_Rule]:
    return _port_rules(spec) + _postrouting_rules(spec) + _forward_rules(spec) + \
        _vxlan_rules(spec) + _guard_rules(spec) + ([] if spec.bridged_tracked else _FLOW_RULES)


def _render_body(rules: Sequence[_Rule], elements: Mapping[str, Sequence[str]]) -> list[str]:
    lines = []
    for family in FAMILIES:
        lines.append(f"add table {family} {TABLE_NAME}")
    for family, name, declaration in SETS:
        lines.append(f"add set {family} {TABLE_NAME} {name} {{ {declaration} }}")
    for family, chain, declaration in CHAINS:
        lines.append(f"add chain {family} {TABLE_NAME} {chain} {{ {declaration} }}")
    for family, chain, _ in CHAINS:
        lines.append(f"flush chain {family} {TABLE_NAME} {chain}")
    for name in elements:
        lines.append(f"flush set {SET_FAMILY[name]} {TABLE_NAME} {name}")
    lines.append(f"flush set {TABLE_FAMILY} {TABLE_NAME} {FINGERPRINT_SET}")
    lines += _element_lines("add", elements)
    lines += [r.line() for r in rules]
    return lines


def _sha(lines: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def sha_item(element: str) -> str:
    """The fingerprint's sha item for an ``element`` of FINGERPRINT_SET as nft lists it."""
    return SHA_COMMENT_PREFIX + ipaddress.IPv6Address(element).packed[:8].hex()


def sha_generation(element: str) -> int:
    """The generation of an ``element`` of FINGERPRINT_SET as nft lists it (its last 8
    bytes): of the elements listed, the latest one's sha is the tables'. An element whose
    delete a delta left for later (``Delta.cleanup``) is older; an agent killed before it ran
    the delete leaves it there, and its successor must not take it for drift (a full write,
    0.6 s with 1,000 guards, in the first pass of an agent adopting them)."""
    return int.from_bytes(ipaddress.IPv6Address(element).packed[8:], "big")


def _sha_element(verb: str, sha: str, generation: int = 0) -> str:
    address = ipaddress.IPv6Address(bytes.fromhex(sha) + generation.to_bytes(8, "big"))
    return f"{verb} element {TABLE_FAMILY} {TABLE_NAME} {FINGERPRINT_SET} {{ {address} }}"


@dataclass(frozen=True)
class _Rendered:
    rules: list[_Rule]
    #: the VXLAN sets' and the guards' fast path's (``_vxlan_elements``, ``_guard_elements``)
    elements: dict[str, tuple[str, ...]]
    body: list[str]  # the script without its fingerprint element
    sha: str  # that element's sha, in hex


#: The last specs rendered, by identity: one apply renders the spec it writes for its
#: fingerprint, its delta and its script, and the installed one for the delta again.
_RENDERED: collections.deque[tuple[FirewallSpec, _Rendered]] = collections.deque(maxlen=4)


def _rendered(spec: FirewallSpec) -> _Rendered:
    for known, done in list(_RENDERED):  # (a copy: other threads render too)
        if known is spec:
            return done
    rules = _rules(spec)
    elements = {**_vxlan_elements(spec.vxlan), **_guard_elements(spec.guards)}
    body = _render_body(rules, elements)
    done = _Rendered(rules, elements, body, _sha(body))
    _RENDERED.append((spec, done))
    return done


def render(spec: SpecLike) -> str:
    """The nft script for ``spec`` (pure). Its last line adds the script's sha, the one element
    of FINGERPRINT_SET (generation 0: the script flushed the set)."""
    done = _rendered(_as_spec(spec))
    return "\n".join([*done.body, _sha_element("add", done.sha)]) + "\n"


@dataclass(frozen=True)
class Delta:
    """What :func:`render_delta` makes: ``script``, one transaction, and ``cleanup``, a second
    one the caller may run later ("" when there is none).

    Why two. A transaction that deletes anything (a rule, an element, a chain) costs the
    kernel an RCU grace period before it answers (~15 ms on this machine's 6.x kernel, however
    little is deleted), while one that only adds answers in ~0.2 ms. A container that comes only
    adds its guard, but the sha must change too: so such a delta adds the new sha element
    and leaves the old one's delete to ``cleanup``, which nobody waits for (a CNI ADD answered
    in ~15 ms less; ``agent/kernel/firewall.py`` keeps it pending for a while, to take it into
    a later transaction that deletes anyway). Until it runs the fingerprint set holds both
    elements. A delta that deletes anyway (a guard that goes, overlay members replaced) takes
    the old sha element along in its one transaction."""

    script: str
    cleanup: str = ""
    #: it inserts rules (a guard that comes): run with echo, for their handles
    makes_rules: bool = False
    #: the generation of the sha element the tables hold once ``script`` ran
    generation: int = 0


def render_delta(installed: SpecLike, spec: SpecLike, handles: Mapping[str, int],
                 generation: int = 0) -> Delta | None:
    """A small nft script that turns the tables ``render(installed)`` made into exactly what
    ``render(spec)`` would make, rule order included (pure); None when that takes more than
    moving anti-spoofing guards and changing the members of overlays (the caller then writes
    ``render(spec)``). The old sha element's delete may come apart, as the :class:`Delta`'s
    ``cleanup``: run both, and the tables are the full render's.

    ``handles`` maps rule comments to nft rule handles, for the guards' rules, the
    router-advert rule of the installed tables. Overlay members that come or
    go are elements added to or deleted from the VXLAN sets, and a guarded port that comes or
    goes its elements of the fast path's sets. A guard that goes loses its
    seven rules (by handle); a guard that comes is inserted before the first rule of the next
    guard in render order (or before the router-advert rule), so the chain reads as a full
    render's; the sha element is replaced, the installed one's ``generation`` by the next.
    """
    installed, spec = _as_spec(installed), _as_spec(spec)
    if dataclasses.replace(installed, guards=(), vxlan=()) != \
            dataclasses.replace(spec, guards=(), vxlan=()):
        return None
    if _vxlan_rules(installed) != _vxlan_rules(spec):
        return None  # a port, or an underlay family, came or went: not a change of members
    had, has = _rendered(installed).elements, _rendered(spec).elements
    removed = {name: _missing(had[name], has[name]) for name in had}
    added = {name: _missing(has[name], had[name]) for name in has}
    members = _element_lines("delete", removed) + _element_lines("add", added)
    old, new = set(installed.guards), set(spec.guards)
    if old == new and not members:
        return None
    gone, kept = old - new, sorted(old & new, key=_guard_key)
    lines: list[str] = list(members)  # a host joined or left an overlay, a port came or went
    try:
        for g in sorted(gone, key=_guard_key):
            lines += [_delete(r, handles[r.comment]) for r in _one_guard(g)]
        for g in sorted(new - old, key=_guard_key):
            following = next((k for k in kept if _guard_key(k) > _guard_key(g)), None)
            anchor = _one_guard(following)[0] if following is not None else _ROUTER_ADVERT
            position = handles[anchor.comment]
            lines += [f"insert rule {r.family} {TABLE_NAME} {r.chain} position {position} "
                      f"{r.expr} comment {_quote(r.comment)}" for r in _one_guard(g)]
    except KeyError:
        return None  # a handle we do not know: not worth guessing
    makes_rules = bool(new - old)
    old_sha, new_sha = _rendered(installed).sha, _rendered(spec).sha
    if old_sha == new_sha:
        return Delta("\n".join(lines) + "\n", makes_rules=makes_rules, generation=generation)
    drop_sha = _sha_element("delete", old_sha, generation)
    add_sha = _sha_element("add", new_sha, generation + 1)
    if any(removed.values()) or gone:  # it deletes anyway: one transaction, one grace period
        return Delta("\n".join([*lines, drop_sha, add_sha]) + "\n", makes_rules=makes_rules,
                     generation=generation + 1)
    return Delta("\n".join([*lines, add_sha]) + "\n", drop_sha + "\n", makes_rules,
                 generation + 1)


def _delete(rule: _Rule, handle: int) -> str:
    return f"delete rule {rule.family} {TABLE_NAME} {rule.chain} handle {int(handle)}"


def _sysctl_lines(localnet: Sequence[str], accept_ra: Sequence[str]) -> list[str]:
    """The sysctl part of a fingerprint: our bridges with route_localnet=1, and with
    accept_ra other than 0."""
    return [f"{SYSCTL_PREFIX}route_localnet=1:{','.join(sorted(localnet))}",
            f"{SYSCTL_PREFIX}accept_ra!=0:{','.join(sorted(accept_ra))}"]


def _tables_fingerprint(spec: FirewallSpec) -> list[str]:
    done = _rendered(spec)
    return sorted([r.comment for r in done.rules] + [SHA_COMMENT_PREFIX + done.sha])


def fingerprint(spec: SpecLike) -> str:
    """What ``Firewall.observe()`` returns once ``spec`` is applied (pure)."""
    spec = _as_spec(spec)
    return _fingerprint_of(_tables_fingerprint(spec), localnet_bridges(spec), [])


def _fingerprint_of(comments: Sequence[str], localnet: Sequence[str],
                    accept_ra: Sequence[str]) -> str:
    return "\n".join(sorted(comments) + _sysctl_lines(localnet, accept_ra))
