"""Network policy as nftables (pure): the table ``inet sdnctl_policy`` (issue 22).

Design note. What is allowed is ``sdnctl.api.policyeval``'s; this module only says it in nft.
Every distinct selector (a policy's target, a label or network peer) becomes ONE named set of
addresses per family (``s_<hash>`` of IPv4 addresses, ``s6_<hash>`` of IPv6 ones), shared by
every rule that uses it; two more sets per family hold the addresses isolated for ingress and
for egress (``iso_in``/``iso_out``, ``iso6_in``/``iso6_out``). When containers come and go only
set elements change: the rule text names sets, never addresses, so ``render_delta`` flushes and
refills the changed sets in one transaction and the rules (and their counters) stay. So the cost
of an update grows with the number of selectors that change, not with containers x rules, and a
container's addresses are in its sets as soon as its record arrives, before its process runs.

The table has its own base chain on the forward hook (priority filter + 10, policy accept: we
never default-drop a shared hook) after the agent's main table. Its rules:

  forward   ct state established,related accept        replies always pass
            icmpv6 type { nd-neighbor-solicit,         neighbour discovery passes: IPv6's ARP
              nd-neighbor-advert } accept              (see below)
            ip daddr @iso_in  jump ingress             the receiver is isolated for ingress
            ip6 daddr @iso6_in jump ingress            (the same in IPv6)
            ip saddr @iso_out jump egress              the sender is isolated for egress
            ip6 saddr @iso6_out jump egress
  ingress   per policy isolating ingress, per rule, per family, per (peer, protocol):
              ip daddr @<target> [ip saddr <peer>] [meta l4proto P th dport {ports}]
              counter return                           allowed by this rule: check egress next
            per policy and family: ip daddr @<target> counter drop
                                                       (the first selecting policy counts it)
  egress    the same with saddr and daddr swapped

Both families (issue 20) are evaluated alike: a rule is written once per family, with the
family's sets (``ip6 saddr @s6_<hash>``) and prefixes; a ``cidr`` peer (and its ``except``)
only in its own family, a network peer with the network's ``subnet`` or ``subnet6``; ports and
protocols (``meta l4proto``, ``th dport``) are the same in both. Neighbour discovery is exempt,
as ARP is by being no IP at all: between two containers of one bridge it crosses the forward
hook (br_netfilter), and an isolated container whose neighbour solicitations or advertisements
were dropped could not reach even the peers its policies allow (measured: the truth-table
test's same-bridge IPv6 pairs were all filtered). Both copies carry the same
comment, so a policy's counters add up over the two families and ``trace -6`` names the same
policy and rule. A network without ``subnet6`` gives its containers no IPv6 address, so its
IPv6 sets stay empty.

Every rule's comment names its policy, direction and rule (``sdnctl:policy/<name>/ingress/0``,
``.../drop``), so counters are per policy and rule and ``trace`` can say which one dropped a
probe. Every host holds the whole set (policies are evaluated identically everywhere), so a
packet across the overlay is checked on both hosts with the same verdict. Traffic from and to
the host itself (input/output hooks) is not filtered: the gateway's DNS keeps answering. Bridged
traffic between two containers of one bridge reaches the forward hook through br_netfilter
(``net.bridge.bridge-nf-call-iptables`` and ``-ip6tables``, which the kernel side turns on).
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from sdnctl.api.model import Policy, PolicyPeer, PolicyRule
from sdnctl.api.policyeval import (
    DIRECTIONS,
    INGRESS,
    Endpoint,
    Selector,
    address_order,
    family_of,
    members_of,
    parse_policy_port,
    peer_selector,
    policy_selector,
    rules_of,
    selectors_of,
)

FAMILY = "inet"
TABLE = "sdnctl_policy"
FAMILIES = (4, 6)
#: nft's name of each family's address (``ip saddr``, ``ip6 saddr``) and its set type.
NFT_FAMILY = {4: "ip", 6: "ip6"}
SET_TYPE = {4: "ipv4_addr", 6: "ipv6_addr"}
ISOLATED = {"ingress": "iso_in", "egress": "iso_out"}
ISOLATED6 = {"ingress": "iso6_in", "egress": "iso6_out"}
COMMENT_PREFIX = "sdnctl:policy/"


@dataclass(frozen=True)
class PolicyInput:
    """What the agent received: every policy and every selected address, on any host."""

    policies: tuple[Policy, ...] = ()
    endpoints: tuple[Endpoint, ...] = ()
    network_cidrs: tuple[tuple[str, str], ...] = ()
    network_cidrs6: tuple[tuple[str, str], ...] = ()  # dual-stack networks' IPv6 prefixes


@dataclass(frozen=True)
class PolicyTables:
    """The table as data: named sets (name -> sorted addresses) and rules (chain, text)."""

    sets: tuple[tuple[str, tuple[str, ...]], ...]
    rules: tuple[tuple[str, str], ...]

    @property
    def empty(self) -> bool:
        return not self.rules

    def comments(self) -> list[str]:
        return sorted(text.rsplit(" comment ", 1)[1].strip('"') for _, text in self.rules)


def set_name(selector: Selector, family: int = 4) -> str:
    """The set of ``selector``'s addresses in ``family``."""
    digest = hashlib.sha256(selector.key().encode()).hexdigest()[:12]
    return ("s6_" if family == 6 else "s_") + digest


def set_family(name: str) -> int:
    """The family of one of our sets' addresses, by its name."""
    return 6 if name.startswith("s6_") or name in ISOLATED6.values() else 4


def _quote(text: str) -> str:
    if '"' in text or "\n" in text or len(text) > 128:
        raise ValueError(f"cannot use {text!r} as an nft comment")
    return f'"{text}"'


def _cidr(text: str) -> str:
    return str(ipaddress.ip_network(text, strict=False))


def _peer_exprs(policy: Policy, peer: PolicyPeer, side: str, family: int,
                cidrs: Mapping[str, str]) -> list[str]:
    """The match on the other end of a connection (``side`` "saddr" or "daddr") in ``family``;
    [] when the peer can match nothing there (a cidr of the other family, a network that is
    gone or has no prefix in this family)."""
    ip = NFT_FAMILY[family]
    if peer.cidr:
        if family_of(peer.cidr) != family:
            return []
        expr = f"{ip} {side} {_cidr(peer.cidr)}"
        excepts = sorted(_cidr(x) for x in peer.excepts if family_of(x) == family)
        if excepts:
            expr += f" {ip} {side} != {{ {', '.join(excepts)} }}"
        return [expr]
    if peer.labels is None:
        cidr = cidrs.get(peer.network)
        return [f"{ip} {side} {_cidr(cidr)}"] if cidr else []
    selector = peer_selector(policy, peer)
    assert selector is not None
    return [f"{ip} {side} @{set_name(selector, family)}"]


def _port_exprs(rule: PolicyRule) -> list[str]:
    """One match per protocol ("" when the rule allows every port)."""
    if not rule.ports:
        return [""]
    by_protocol: dict[str, list[str]] = {}
    for text in rule.ports:
        r = parse_policy_port(text, "ports")
        by_protocol.setdefault(r.protocol, []).append(
            str(r.first) if r.first == r.last else f"{r.first}-{r.last}")
    return [f"meta l4proto {proto} th dport {{ {', '.join(sorted(set(ports)))} }}"
            for proto, ports in sorted(by_protocol.items())]


def _direction_rules(policies: Sequence[Policy], direction: str,
                     cidrs: Mapping[int, Mapping[str, str]]) -> list[tuple[str, str]]:
    own, other = ("daddr", "saddr") if direction == INGRESS else ("saddr", "daddr")
    isolating = [p for p in policies if rules_of(p, direction) is not None]
    rules = []
    for p in isolating:
        for i, rule in enumerate(rules_of(p, direction) or ()):
            comment = _quote(f"{COMMENT_PREFIX}{p.name}/{direction}/{i}")
            for family in FAMILIES:
                target = f"{NFT_FAMILY[family]} {own} @{set_name(policy_selector(p), family)}"
                peers = [e for peer in rule.peers
                         for e in _peer_exprs(p, peer, other, family, cidrs[family])] \
                    if rule.peers else [""]
                for peer in peers:
                    for ports in _port_exprs(rule):
                        match = " ".join(x for x in (target, peer, ports) if x)
                        rules.append((direction, f"{match} counter return comment {comment}"))
    for p in isolating:
        comment = _quote(f"{COMMENT_PREFIX}{p.name}/{direction}/drop")
        for family in FAMILIES:
            rules.append((direction, f"{NFT_FAMILY[family]} {own} "
                                     f"@{set_name(policy_selector(p), family)} counter drop "
                                     f"comment {comment}"))
    return rules


def build(given: PolicyInput) -> PolicyTables:
    """The table for ``given`` (pure). No policy: no table."""
    policies = sorted(given.policies, key=lambda p: p.name)
    if not policies:
        return PolicyTables((), ())
    cidrs = {4: dict(given.network_cidrs), 6: dict(given.network_cidrs6)}
    selectors = selectors_of(policies)
    members = members_of(selectors, given.endpoints)
    sets = {set_name(s, family): tuple(addresses)
            for s in selectors for family, addresses in members[s.key()].items()}
    for direction in DIRECTIONS:
        for family, names in ((4, ISOLATED), (6, ISOLATED6)):
            isolated: set[str] = set()
            for p in policies:
                if rules_of(p, direction) is not None:
                    isolated.update(sets[set_name(policy_selector(p), family)])
            sets[names[direction]] = tuple(sorted(isolated, key=address_order))
    rules = [("forward", f"ct state established,related accept comment "
                         f"{_quote(COMMENT_PREFIX + 'established')}"),
             ("forward", "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept "
                         f"comment {_quote(COMMENT_PREFIX + 'neighbour-discovery')}")]
    for direction, own in (("ingress", "daddr"), ("egress", "saddr")):
        for family, names in ((4, ISOLATED), (6, ISOLATED6)):
            rules.append(("forward", f"{NFT_FAMILY[family]} {own} @{names[direction]} jump "
                                     f"{direction} comment "
                                     f"{_quote(COMMENT_PREFIX + direction)}"))
    for direction in DIRECTIONS:
        rules += _direction_rules(policies, direction, cidrs)
    return PolicyTables(tuple(sorted(sets.items())), tuple(rules))


def _elements(name: str, addresses: Iterable[str]) -> list[str]:
    addrs = list(addresses)
    if not addrs:
        return []
    return [f"add element {FAMILY} {TABLE} {name} {{ {', '.join(addrs)} }}"]


def render(tables: PolicyTables) -> str:
    """The whole table in one transaction (it replaces whatever table of that name exists)."""
    lines = [f"add table {FAMILY} {TABLE}", f"delete table {FAMILY} {TABLE}"]
    if tables.empty:
        return "\n".join(lines) + "\n"
    lines.append(f"add table {FAMILY} {TABLE}")
    for name, addresses in tables.sets:
        lines.append(f"add set {FAMILY} {TABLE} {name} {{ type {SET_TYPE[set_family(name)]}; }}")
        lines += _elements(name, addresses)
    lines.append(f"add chain {FAMILY} {TABLE} forward "
                 "{ type filter hook forward priority filter + 10; policy accept; }")
    lines += [f"add chain {FAMILY} {TABLE} {d}" for d in DIRECTIONS]
    lines += [f"add rule {FAMILY} {TABLE} {chain} {text}" for chain, text in tables.rules]
    return "\n".join(lines) + "\n"


def render_delta(installed: PolicyTables, wanted: PolicyTables) -> str | None:
    """Only set elements changed: flush and refill those sets (one transaction; rules and
    their counters stay). None when the rules or the set names differ: render in full."""
    if installed.rules != wanted.rules or installed.empty or \
            [n for n, _ in installed.sets] != [n for n, _ in wanted.sets]:
        return None
    old = dict(installed.sets)
    lines: list[str] = []
    for name, addresses in wanted.sets:
        if old[name] != addresses:
            lines.append(f"flush set {FAMILY} {TABLE} {name}")
            lines += _elements(name, addresses)
    return "\n".join(lines) + "\n" if lines else ""


def rule_of_comment(comment: str) -> tuple[str, str, str] | None:
    """``(policy, direction, rule)`` of one of our comments (rule: an index or "drop")."""
    if not comment.startswith(COMMENT_PREFIX):
        return None
    parts = comment[len(COMMENT_PREFIX):].rsplit("/", 2)
    return (parts[0], parts[1], parts[2]) if len(parts) == 3 else None


__all__ = [
    "COMMENT_PREFIX",
    "FAMILY",
    "TABLE",
    "PolicyInput",
    "PolicyTables",
    "build",
    "render",
    "render_delta",
    "rule_of_comment",
    "set_name",
]
