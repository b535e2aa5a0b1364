"""Forget conntrack entries that point at addresses which are gone or may no longer talk.

Design note. Conntrack keeps a NAT binding (and its "established" verdict) for as long as a flow
lives: after a container goes, a UDP client that keeps sending to a published port stays bound to
the dead address; after a container moves, its old address may be reused. Docker and the CNI
portmap plugin therefore delete the entries of an address when it goes, and so do we.

Entries are read with one ctnetlink dump (pyroute2's ``Conntrack``, no ``conntrack`` binary) and
deleted one by one by their original tuple and zone. The kernel's own flush filters by mark
only, so there is no server-side "delete where address = X". An entry that vanished between
the dump and the delete is fine. An address is flushed in its own family (a dump per family:
ctnetlink dumps one; issue 20 made the data path dual-stack); flows between networks and the
flow samples are IPv4's.

The socket is born in the calling thread's network namespace: the agent calls this from its
host's namespace; a test wraps the call in ``netns.run_in_netns``.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Callable
from typing import Any

from pyroute2 import Conntrack
from pyroute2.netlink.exceptions import NetlinkError

from agent.kernel.errors import KernelError


def flush_address(ip: str) -> int:
    """Delete every entry in which ``ip`` (IPv4 or IPv6) appears as source or destination of
    the original or the reply direction: flows it started, flows to it (also DNAT'd ones, where
    it is the reply's source) and flows masqueraded to it. Returns how many were deleted."""
    address = ipaddress.ip_address(ip)
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET

    def matches(entry: Any) -> bool:
        return address in {ipaddress.ip_address(a) for a in _addresses(entry) if a}

    return _flush(matches, f"address {address}", family)


def flush_between(subnet_a: str, subnet_b: str) -> int:
    """Delete every IPv4 entry whose client (source of the original direction) is in one subnet
    and whose server (source of the reply direction, i.e. after any DNAT) is in the other: the
    flows between two networks, routed or through a published port. Returns how many."""
    a = ipaddress.IPv4Network(subnet_a, strict=False)
    b = ipaddress.IPv4Network(subnet_b, strict=False)

    def matches(entry: Any) -> bool:
        client = ipaddress.IPv4Address(entry.tuple_orig.saddr)
        server = ipaddress.IPv4Address(entry.tuple_reply.saddr)
        return (client in a and server in b) or (client in b and server in a)

    return _flush(matches, f"flows between {a} and {b}")


def _addresses(entry: Any) -> set[str]:
    o, r = entry.tuple_orig, entry.tuple_reply
    return {o.saddr, o.daddr, r.saddr, r.daddr}


def _flush(matches: Callable[[Any], bool], what: str, family: int = socket.AF_INET) -> int:
    deleted = 0
    try:
        with Conntrack(nfgen_family=family) as ct:
            for entry in [e for e in ct.dump_entries() if matches(e)]:
                if _delete(ct, entry):
                    deleted += 1
    except (NetlinkError, OSError) as e:
        raise KernelError(f"could not flush conntrack entries of {what}") from e
    return deleted


def _delete(ct: Conntrack, entry: Any) -> bool:
    request: dict[str, Any] = {"tuple_orig": entry.tuple_orig}
    if entry.zone:
        request["zone"] = entry.zone
    try:
        ct.entry("del", **request)
    except NetlinkError as e:
        if e.code == errno.ENOENT:  # gone meanwhile
            return False
        raise
    return True


#: Protocol numbers as the flows report them.
PROTOCOL_NAMES = {1: "icmp", 6: "tcp", 17: "udp"}


def flow_samples(subnets: list[str]) -> list[tuple[str, str, str, int, int]]:
    """Flows conntrack tracks in the calling thread's namespace between addresses of which one
    is in ``subnets`` (our networks): (source, destination, protocol, packets, bytes), the
    counters of both directions added up (0 unless ``net.netfilter.nf_conntrack_acct`` is 1:
    :func:`enable_accounting`). One dump, read only."""
    networks = [ipaddress.IPv4Network(s, strict=False) for s in subnets]
    samples: dict[tuple[str, str, str], list[int]] = {}
    try:
        with Conntrack() as ct:
            for msg in ct.dump():
                orig = msg.get_attr("CTA_TUPLE_ORIG")
                ip = orig.get_attr("CTA_TUPLE_IP") if orig is not None else None
                src = ip.get_attr("CTA_IP_V4_SRC") if ip is not None else None
                dst = ip.get_attr("CTA_IP_V4_DST") if ip is not None else None
                if not src or not dst or ipaddress.IPv4Address(dst).is_multicast or not any(
                        ipaddress.IPv4Address(a) in n for a in (src, dst) for n in networks):
                    continue  # (multicast: IGMP reports of our bridges, not traffic)
                number = orig.get_attr("CTA_TUPLE_PROTO").get_attr("CTA_PROTO_NUM")
                proto = PROTOCOL_NAMES.get(number, str(number))
                totals = samples.setdefault((src, dst, proto), [0, 0])
                for direction in ("CTA_COUNTERS_ORIG", "CTA_COUNTERS_REPLY"):
                    counters = msg.get_attr(direction)
                    if counters is not None:
                        totals[0] += counters.get_attr("CTA_COUNTERS_PACKETS") or 0
                        totals[1] += counters.get_attr("CTA_COUNTERS_BYTES") or 0
    except (NetlinkError, OSError) as e:
        raise KernelError("could not dump conntrack entries") from e
    return [(s, d, p, packets, size) for (s, d, p), (packets, size) in sorted(samples.items())]
