"""Forget conntrack entries that point at addresses which are gone or may no longer talk.

Design note. Conntrack keeps a NAT binding (and its "established" verdict) for as long as a flow
lives: after a container goes, a UDP client that keeps sending to a published port stays bound to
the dead address; after a container moves, its old address may be reused. Docker and the CNI
portmap plugin therefore delete the entries of an address when it goes, and so do we.

Entries are read with one ctnetlink dump (pyroute2's ``Conntrack``, no ``conntrack`` binary) and
deleted one by one by their original tuple and zone. The flow samples, read by every agent at
every full pass and flows interval, come from a dump of our own, parsed raw as ``rtnl`` parses
routes: pyroute2's socket set-up and decoding were the largest part of an idle agent's CPU.
The kernel's own flush filters by mark only, so there is no server-side "delete where
address = X". An entry that vanished between the dump and the delete is fine. An address is
flushed in its own family (a dump per family: ctnetlink dumps one; issue 20 made the data path
dual-stack); flows between networks and the flow samples are IPv4's.

Why ``FlowSampler`` watches before it dumps: a dump walks the kernel's whole conntrack hash,
which every namespace shares (262,144 buckets here: ~4 ms of kernel CPU for a table holding one
entry), and an idle agent dumped every 5 s. Subscribed to conntrack's NEW and DESTROY events,
it knows when nothing came or went since a dump that found no flow of ours, and then answers
"none" without dumping. Any event, a lost one (ENOBUFS), flows seen by the last dump (their
counters move), other subnets, or events off in the namespace (``nf_conntrack_events`` 0) mean
a dump, as before.

The socket is born in the calling thread's network namespace: the agent calls this from its
host's namespace; a test wraps the call in ``netns.run_in_netns``.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
from collections.abc import Callable, Iterator
from typing import Any

from pyroute2 import Conntrack
from pyroute2.netlink.exceptions import NetlinkError

from agent.kernel import rtnl
from agent.kernel.errors import KernelError

NETLINK_NETFILTER = 12
CT_GET = (1 << 8) | 1  # NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_GET
NFGENMSG = struct.Struct("=BBH")  # family, version, resource id
CTA_TUPLE_ORIG, CTA_COUNTERS_ORIG, CTA_COUNTERS_REPLY = 1, 9, 10
CTA_TUPLE_IP, CTA_TUPLE_PROTO, CTA_PROTO_NUM = 1, 2, 1
CTA_IP_V4_SRC, CTA_IP_V4_DST = 1, 2
CTA_COUNTERS_PACKETS, CTA_COUNTERS_BYTES = 1, 2
BE64 = struct.Struct("!Q")
#: Multicast groups of conntrack's events, as the bits of a netlink bind: NFNLGRP_CONNTRACK_NEW
#: (1) and NFNLGRP_CONNTRACK_DESTROY (3); not UPDATE: a flow's counters are not news.
CT_EVENT_GROUPS = (1 << 0) | (1 << 2)
DRAIN_MAX = 64  # reads of queued events per call, at most
EVENTS_SYSCTL = "/proc/sys/net/netfilter/nf_conntrack_events"  # per namespace: 0 off, 1 on,
#                                                                 2 on when someone listens

Sample = tuple[str, str, str, int, int]


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


class FlowSampler:
    """``flow_samples`` that skips the dump when conntrack's events say nothing changed since a
    dump that found no flow (see the module note). Made and used by one thread, in the
    namespace whose flows it samples."""

    def __init__(self) -> None:
        self._events: socket.socket | None = None
        self._empty_for: list[str] | None = None  # the subnets of a dump that found no flow
        self.dumps = 0

    def samples(self, subnets: list[str]) -> list[Sample]:
        changed = self._drain()
        if not changed and self._empty_for == subnets and _events_on():
            return []
        self._empty_for = None
        found = flow_samples(subnets)
        self.dumps += 1
        if not found and self._events is not None:
            self._empty_for = list(subnets)
        return found

    def close(self) -> None:
        if self._events is not None:
            self._events.close()
            self._events = None

    def _drain(self) -> bool:
        """Whether an event came (or was lost) since the last call; subscribes on the first."""
        if self._events is None:
            try:
                sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC
                                     | socket.SOCK_NONBLOCK, NETLINK_NETFILTER)
            except OSError:
                return True
            try:
                sock.bind((0, CT_EVENT_GROUPS))
            except OSError:  # (no conntrack here: every call dumps, as without events)
                sock.close()
                return True
            self._events = sock
            return True
        changed = False
        for _ in range(DRAIN_MAX):  # (bounded: a busy host's events may come faster)
            try:
                if not self._events.recv(rtnl.RECV_SIZE):
                    return True
                changed = True
            except BlockingIOError:
                return changed
            except OSError:  # ENOBUFS: events were lost
                changed = True
        return True  # what is left is news for the next call too


def _events_on() -> bool:
    try:
        with open(EVENTS_SYSCTL) as f:
            return f.read().strip() in ("1", "2")
    except OSError:
        return False


def flow_samples(subnets: list[str]) -> list[Sample]:
    """Flows conntrack tracks in the calling thread's namespace between addresses of which one
    is in ``subnets`` (our networks): (source, destination, protocol, packets, bytes), the
    counters of both directions added up (0 unless ``net.netfilter.nf_conntrack_acct`` is 1, as
    the agent sets it in its host). One dump, read only."""
    networks = [ipaddress.IPv4Network(s, strict=False) for s in subnets]
    samples: dict[tuple[str, str, str], list[int]] = {}
    try:
        for attrs in _dump_ipv4():
            tuple_attrs = _nested(attrs, CTA_TUPLE_ORIG)
            ip = _nested(tuple_attrs, CTA_TUPLE_IP)
            if CTA_IP_V4_SRC not in ip or CTA_IP_V4_DST not in ip:
                continue
            src = socket.inet_ntop(socket.AF_INET, ip[CTA_IP_V4_SRC])
            dst = socket.inet_ntop(socket.AF_INET, ip[CTA_IP_V4_DST])
            if ipaddress.IPv4Address(dst).is_multicast or not any(
                    ipaddress.IPv4Address(a) in n for a in (src, dst) for n in networks):
                continue  # (multicast: IGMP reports of our bridges, not traffic)
            number = _nested(tuple_attrs, CTA_TUPLE_PROTO).get(CTA_PROTO_NUM)
            number_value = number[0] if number is not None and len(number) else 0
            proto = PROTOCOL_NAMES.get(number_value, str(number_value))
            totals = samples.setdefault((src, dst, proto), [0, 0])
            for direction in (CTA_COUNTERS_ORIG, CTA_COUNTERS_REPLY):
                counters = _nested(attrs, direction)
                for i, kind in enumerate((CTA_COUNTERS_PACKETS, CTA_COUNTERS_BYTES)):
                    if len(counters.get(kind, b"")) == BE64.size:
                        totals[i] += BE64.unpack(counters[kind])[0]
    except (NetlinkError, OSError) as e:
        raise KernelError("could not dump conntrack entries") from e
    return [(s, d, p, packets, size) for (s, d, p), (packets, size) in sorted(samples.items())]


def _nested(attrs: dict[int, memoryview], kind: int) -> dict[int, memoryview]:
    return rtnl.attributes(attrs[kind], 0) if kind in attrs else {}


def _dump_ipv4() -> Iterator[dict[int, memoryview]]:
    """The attributes of every IPv4 conntrack entry: one ctnetlink dump, on a socket of its
    own (born in the calling thread's namespace), read by ``rtnl.Reader``."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    with rtnl.Reader(sock.detach()) as reader:
        for payload in reader.dump(CT_GET, NFGENMSG.pack(socket.AF_INET, 0, 0)):
            yield rtnl.attributes(payload, NFGENMSG.size)
