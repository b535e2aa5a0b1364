"""Forget conntrack entries that point at addresses which are gone or may no longer talk.

Design note. Conntrack keeps a NAT binding (and its "established" verdict) for as long as a flow
lives: after a container goes, a UDP client that keeps sending to a published port stays bound to
the dead address; after a container moves, its old address may be reused. Docker and the CNI
portmap plugin therefore delete the entries of an address when it goes, and so do we.

Entries are read with one ctnetlink dump, parsed raw as ``rtnl`` parses routes (no
``conntrack`` binary; pyroute2's socket set-up and decoding were the largest part of an idle
agent's CPU), and deleted by their original tuple and zone, the deletions sent in batches.
The kernel's own flush filters by mark only, so there is no server-side "delete where
address = X". An entry that vanished between the dump and the delete is fine. Addresses are
flushed in their own family (a dump per family: ctnetlink dumps one; issue 20 made the data
path dual-stack), all the addresses of a family with one dump (``flush_addresses``: the pass
that removes ten containers dumps once, see below for what a dump costs); flows between
networks and the flow samples are IPv4's.

Why ``FlowSampler`` follows events instead of dumping: a dump walks the kernel's whole
conntrack hash, which every namespace shares (262,144 buckets here), bucket lock by bucket
lock: 13 ms of CPU in a lab host holding one flow, beside 1,100 namespaces (issue 21: a third
of the CPU of 100 idle lab agents, each reading flows every 5 s). So the sampler dumps once,
keeps the original tuples of the flows of our subnets, follows conntrack's NEW and DESTROY
events to add and drop flows, and reads the counters of the flows it knows with one GET each
(a hash lookup; the requests go in batches, one datagram each). It dumps again when it cannot
trust what it knows: the first call, events lost (ENOBUFS) or more queued than one call
reads, other subnets, events off in the namespace (``nf_conntrack_events`` 0), more flows
than requests are worth (``GETS_MAX``), and at least every ``RESEED`` seconds.

The socket is born in the calling thread's network namespace: the agent calls this from its
host's namespace; a test wraps the call in ``netns.run_in_netns``.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import time
from collections.abc import Callable, Iterable, Iterator

from agent.kernel import rtnl, sysctl
from agent.kernel.errors import KernelError
from agent.kernel.rtnl import NetlinkError

CT_GET = (1 << 8) | 1  # NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_GET
CT_NEW = (1 << 8) | 0  # an event of a new entry; also the type of a GET's answer
CT_DELETE = (1 << 8) | 2  # an event of an entry's end
CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_COUNTERS_ORIG, CTA_COUNTERS_REPLY, CTA_ZONE = \
    1, 2, 9, 10, 18
CTA_TUPLE_IP, CTA_TUPLE_PROTO, CTA_PROTO_NUM = 1, 2, 1
CTA_IP_V4_SRC, CTA_IP_V4_DST, CTA_IP_V6_SRC, CTA_IP_V6_DST = 1, 2, 3, 4
CTA_COUNTERS_PACKETS, CTA_COUNTERS_BYTES = 1, 2
#: Multicast groups of conntrack's events, as the bits of a netlink bind: NFNLGRP_CONNTRACK_NEW
#: (1) and NFNLGRP_CONNTRACK_DESTROY (3); not UPDATE: a flow's counters are not news.
CT_EVENT_GROUPS = (1 << 0) | (1 << 2)
DRAIN_MAX = 64  # reads of queued events per call, at most
RESEED = 60.0  # seconds after which the sampler dumps again, whatever the events said
GETS_MAX = 2048  # known flows beyond which one dump costs less than a GET each
EVENTS_SYSCTL = "net.netfilter.nf_conntrack_events"  # per namespace: 0 off, 1 on, 2 on when
#                                                     someone listens

Sample = tuple[str, str, str, int, int]


def flush_address(ip: str) -> int:
    """``flush_addresses`` of one address."""
    return flush_addresses([ip])


def flush_addresses(ips: Iterable[str]) -> int:
    """Delete every entry in which one of ``ips`` (IPv4 or IPv6) appears as source or
    destination of the original or the reply direction: flows it started, flows to it (also
    DNAT'd ones, where it is the reply's source) and flows masqueraded to it. One dump per
    family among ``ips``, however many they are. Returns how many entries were deleted."""
    wanted: dict[int, set[bytes]] = {}
    for ip in ips:
        address = ipaddress.ip_address(ip)
        family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
        wanted.setdefault(family, set()).add(address.packed)
    return sum(_flush(family, _touching(packed), "addresses " + ", ".join(
                   sorted(ipaddress.ip_address(a).compressed for a in packed)))
               for family, packed in sorted(wanted.items()))


def _touching(packed: set[bytes]) -> Callable[[tuple[bytes, ...]], bool]:
    """Whether an entry's addresses (``_ends``) include one of ``packed``."""
    return lambda ends: not packed.isdisjoint(ends)


def flush_between(subnet_a: str, subnet_b: str) -> int:
    """Delete every IPv4 entry whose client (source of the original direction) is in one subnet
    and whose server (source of the reply direction, i.e. after any DNAT) is in the other: the
    flows between two networks, routed or through a published port. Returns how many."""
    a = ipaddress.IPv4Network(subnet_a, strict=False)
    b = ipaddress.IPv4Network(subnet_b, strict=False)

    def matches(ends: tuple[bytes, ...]) -> bool:
        if len(ends[0]) != 4 or len(ends[2]) != 4:
            return False
        client, server = ipaddress.IPv4Address(ends[0]), ipaddress.IPv4Address(ends[2])
        return (client in a and server in b) or (client in b and server in a)

    return _flush(socket.AF_INET, matches, f"flows between {a} and {b}")


def _ends(attrs: dict[int, memoryview], family: int) -> tuple[bytes, ...]:
    """An entry's addresses, packed: source and destination of the original direction, then
    of the reply direction (b"" for one missing)."""
    src, dst = (CTA_IP_V6_SRC, CTA_IP_V6_DST) if family == socket.AF_INET6 else \
        (CTA_IP_V4_SRC, CTA_IP_V4_DST)
    found: list[bytes] = []
    for direction in (CTA_TUPLE_ORIG, CTA_TUPLE_REPLY):
        ip = _nested(_nested(attrs, direction), CTA_TUPLE_IP)
        found += [bytes(ip.get(src, b"")), bytes(ip.get(dst, b""))]
    return tuple(found)


def _flush(family: int, matches: Callable[[tuple[bytes, ...]], bool], what: str) -> int:
    """One dump of ``family``'s entries, then a delete of each that ``matches`` (by the
    addresses ``_ends`` gives), by its original tuple and zone, in batches."""
    try:
        with rtnl.Reader.netfilter() as reader:
            doomed = []
            for payload in list(reader.dump(CT_GET, rtnl.NFGENMSG.pack(family, 0, 0))):
                attrs = rtnl.attributes(payload, rtnl.NFGENMSG.size)
                if CTA_TUPLE_ORIG in attrs and matches(_ends(attrs, family)):
                    doomed.append(rtnl.Request(CT_DELETE, 0, _by_tuple(family, attrs)))
            codes = reader.send_all(doomed)
    except (NetlinkError, OSError) as e:
        raise KernelError(f"could not flush conntrack entries of {what}") from e
    failed = [code for code in codes if code not in (0, errno.ENOENT)]  # ENOENT: gone since
    if failed:
        raise KernelError(f"could not flush conntrack entries of {what}: "
                          f"{len(failed)} deletion(s) failed ({os.strerror(failed[0])})")
    return codes.count(0)


def _by_tuple(family: int, attrs: dict[int, memoryview]) -> bytes:
    """The body of a request naming one entry: its original tuple, and its zone if any."""
    return (rtnl.NFGENMSG.pack(family, 0, 0)
            + rtnl.attribute(CTA_TUPLE_ORIG | rtnl.NLA_F_NESTED, bytes(attrs[CTA_TUPLE_ORIG]))
            + (rtnl.attribute(CTA_ZONE, bytes(attrs[CTA_ZONE])) if CTA_ZONE in attrs else b""))


#: Protocol numbers as the flows report them.
PROTOCOL_NAMES = {1: "icmp", 6: "tcp", 17: "udp"}


class FlowSampler:
    """Flow samples (``flow_samples``'s) from the flows it follows, dumping only when it must
    (see the module note). Made and used by one thread, in the namespace whose flows it
    samples."""

    def __init__(self, reseed: float = RESEED) -> None:
        self.reseed = reseed
        self._events: socket.socket | None = None
        #: the flows of our subnets it knows: original tuple (and zone) -> the GET of it
        self._known: dict[bytes, bytes] | None = None
        self._subnets: list[str] = []
        self._networks: list[ipaddress.IPv4Network] = []
        self._dumped_at = 0.0
        self.dumps = 0  # whole-table dumps so far
        self.gets = 0  # flows read one by one so far

    def samples(self, subnets: list[str]) -> list[Sample]:
        untrusted = self._drain()
        if (untrusted or self._known is None or subnets != self._subnets
                or len(self._known) > GETS_MAX or not _events_on()
                or time.monotonic() - self._dumped_at >= self.reseed):
            return self._dump(subnets)
        try:
            entries = self._get_known()
        except (NetlinkError, OSError) as e:
            raise KernelError("could not read conntrack entries") from e
        return _samples(entries, self._networks)

    def close(self) -> None:
        if self._events is not None:
            self._events.close()
            self._events = None

    def _dump(self, subnets: list[str]) -> list[Sample]:
        self._known = None  # (until the dump is read)
        networks = [ipaddress.IPv4Network(s, strict=False) for s in subnets]
        entries = _read_all(_dump_ipv4)
        self.dumps += 1
        self._known = {}
        self._subnets, self._networks = list(subnets), networks
        self._dumped_at = time.monotonic()
        for attrs in entries:
            self._follow(CT_NEW, attrs)
        return _samples(entries, networks)

    def _get_known(self) -> list[dict[int, memoryview]]:
        """The current entry of every known flow (one GET each); ended ones are forgotten."""
        assert self._known is not None
        keys = list(self._known)
        if not keys:
            return []
        with rtnl.Reader.netfilter() as reader:
            answers = reader.get_each(CT_GET, [self._known[k] for k in keys])
        self.gets += len(keys)
        entries = []
        for key, answer in zip(keys, answers, strict=True):
            if isinstance(answer, int):
                if answer != errno.ENOENT:
                    raise NetlinkError(answer)
                self._known.pop(key, None)  # ended without our seeing the event yet
            else:
                entries.append(rtnl.attributes(answer, rtnl.NFGENMSG.size))
        return entries

    def _follow(self, kind: int, attrs: dict[int, memoryview]) -> None:
        """Add a new flow of our subnets (``CT_NEW``) or drop an ended one (``CT_DELETE``)."""
        if self._known is None or CTA_TUPLE_ORIG not in attrs:
            return
        origin = bytes(attrs[CTA_TUPLE_ORIG])
        zone = bytes(attrs[CTA_ZONE]) if CTA_ZONE in attrs else b""
        key = origin + zone
        if kind == CT_DELETE:
            self._known.pop(key, None)
        elif kind == CT_NEW and _flow_of(attrs, self._networks) is not None:
            self._known[key] = _by_tuple(socket.AF_INET, attrs)

    def _drain(self) -> bool:
        """Follow the events queued since the last call; True when what it knows cannot be
        trusted: just subscribed (on the first call), events lost, or more queued than one
        call reads."""
        if self._events is None:
            try:
                sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC
                                     | socket.SOCK_NONBLOCK, rtnl.NETLINK_NETFILTER)
            except OSError:
                return True
            try:
                sock.bind((0, CT_EVENT_GROUPS))
            except OSError:  # (no conntrack here: every call dumps, as without events)
                sock.close()
                return True
            self._events = sock
            return True
        lost = False
        for _ in range(DRAIN_MAX):  # (bounded: a busy host's events may come faster)
            try:
                data = self._events.recv(rtnl.RECV_SIZE)
            except BlockingIOError:
                return lost
            except OSError:  # ENOBUFS: events were lost
                lost = True
                continue
            if not data:
                return True
            for kind, _seq, payload in rtnl.messages(data):
                if len(payload) >= rtnl.NFGENMSG.size and payload[0] == socket.AF_INET:
                    self._follow(kind, rtnl.attributes(payload, rtnl.NFGENMSG.size))
        return True  # what is left is followed by the next call, after a dump


def _events_on() -> bool:
    try:
        return sysctl.read_sysctl(EVENTS_SYSCTL) in ("1", "2")
    except KernelError:
        return False


def flow_samples(subnets: list[str]) -> list[Sample]:
    """Flows conntrack tracks in the calling thread's namespace between addresses of which one
    is in ``subnets`` (our networks): (source, destination, protocol, packets, bytes), the
    counters of both directions added up (0 unless ``net.netfilter.nf_conntrack_acct`` is 1, as
    the agent sets it in its host). One dump, read only."""
    networks = [ipaddress.IPv4Network(s, strict=False) for s in subnets]
    return _samples(_read_all(_dump_ipv4), networks)


def _read_all(entries: Callable[[], Iterator[dict[int, memoryview]]]
              ) -> list[dict[int, memoryview]]:
    try:
        return list(entries())
    except (NetlinkError, OSError) as e:
        raise KernelError("could not dump conntrack entries") from e


def _flow_of(attrs: dict[int, memoryview], networks: list[ipaddress.IPv4Network]
             ) -> tuple[str, str, str] | None:
    """(source, destination, protocol) of an entry between addresses of which one is in
    ``networks``; None for any other (multicast too: IGMP reports of our bridges)."""
    tuple_attrs = _nested(attrs, CTA_TUPLE_ORIG)
    ip = _nested(tuple_attrs, CTA_TUPLE_IP)
    if CTA_IP_V4_SRC not in ip or CTA_IP_V4_DST not in ip:
        return None
    src = socket.inet_ntop(socket.AF_INET, ip[CTA_IP_V4_SRC])
    dst = socket.inet_ntop(socket.AF_INET, ip[CTA_IP_V4_DST])
    if ipaddress.IPv4Address(dst).is_multicast or not any(
            ipaddress.IPv4Address(a) in n for a in (src, dst) for n in networks):
        return None
    number = _nested(tuple_attrs, CTA_TUPLE_PROTO).get(CTA_PROTO_NUM)
    number_value = number[0] if number is not None and len(number) else 0
    return src, dst, PROTOCOL_NAMES.get(number_value, str(number_value))


def _samples(entries: list[dict[int, memoryview]], networks: list[ipaddress.IPv4Network]
             ) -> list[Sample]:
    """The samples of ``entries``: per (source, destination, protocol) of our networks, the
    packets and bytes of both directions of all its entries, added up."""
    samples: dict[tuple[str, str, str], list[int]] = {}
    for attrs in entries:
        flow = _flow_of(attrs, networks)
        if flow is None:
            continue
        totals = samples.setdefault(flow, [0, 0])
        for direction in (CTA_COUNTERS_ORIG, CTA_COUNTERS_REPLY):
            counters = _nested(attrs, direction)
            for i, kind in enumerate((CTA_COUNTERS_PACKETS, CTA_COUNTERS_BYTES)):
                if len(counters.get(kind, b"")) == rtnl.BE64.size:
                    totals[i] += rtnl.BE64.unpack(counters[kind])[0]
    return [(s, d, p, packets, size) for (s, d, p), (packets, size) in sorted(samples.items())]


def _nested(attrs: dict[int, memoryview], kind: int) -> dict[int, memoryview]:
    return rtnl.attributes(attrs[kind], 0) if kind in attrs else {}


def _dump_ipv4() -> Iterator[dict[int, memoryview]]:
    """The attributes of every IPv4 conntrack entry: one ctnetlink dump, on a socket of its
    own (born in the calling thread's namespace), read by ``rtnl.Reader``."""
    with rtnl.Reader.netfilter() as reader:
        for payload in reader.dump(CT_GET, rtnl.NFGENMSG.pack(socket.AF_INET, 0, 0)):
            yield rtnl.attributes(payload, rtnl.NFGENMSG.size)
