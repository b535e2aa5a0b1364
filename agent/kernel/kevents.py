"""What changes in this namespace's kernel, as it happens: rtnetlink's and nftables' multicast
announcements, read as small events.

Design note. The agent repairs drift (someone deleted our table, a veth, a peer route; turned
forwarding off) at its periodic full pass, which may be a whole resync interval away. The
kernel already announces every such change to whoever listens: rtnetlink to its multicast
groups (links, addresses, routes, neighbours and FDB entries, queueing disciplines, and the
``netconf`` group for forwarding), nftables to ``NFNLGRP_NFTABLES`` (each object a transaction
touched, then a "new generation" message naming the thread that committed it). ``Announcements``
holds one socket of each family in the namespace of the thread that opened it, and ``read``
turns what arrived into the events below; only the kinds that can mean drift are kept (a link
that went away or went down, an address, route, neighbour or qdisc that went away, forwarding
turned off or on, an nftables commit with its tables and writer). Deciding what is drift is
not this module's business (``agent/drift.py``, pure): here is only the kernel's vocabulary.

Parsing is pure (bytes in, events out) and reuses ``rtnl``'s parsers. A burst larger than the
socket's buffer loses announcements (ENOBUFS): ``read`` then returns ``Overrun``, after which
nothing about the kernel can be trusted without looking, which is what a full pass does.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from agent.kernel import nft, rtnl
from agent.kernel.netns import NETLINK_ROUTE

#: rtnetlink multicast groups (RTNLGRP_*, all below 32: one bind mask holds them).
RTNLGRP_LINK, RTNLGRP_NEIGH, RTNLGRP_TC = 1, 3, 4
RTNLGRP_IPV4_IFADDR, RTNLGRP_IPV4_ROUTE = 5, 7
RTNLGRP_IPV6_IFADDR, RTNLGRP_IPV6_ROUTE = 9, 11
RTNLGRP_IPV4_NETCONF, RTNLGRP_IPV6_NETCONF = 24, 25
RTNL_GROUPS = (RTNLGRP_LINK, RTNLGRP_NEIGH, RTNLGRP_TC, RTNLGRP_IPV4_IFADDR, RTNLGRP_IPV4_ROUTE,
               RTNLGRP_IPV6_IFADDR, RTNLGRP_IPV6_ROUTE, RTNLGRP_IPV4_NETCONF,
               RTNLGRP_IPV6_NETCONF)
NFNLGRP_NFTABLES = 7
RTM_NEWNETCONF = 80
NETCONFA_IFINDEX, NETCONFA_FORWARDING = 1, 2
NETCONFA_IFINDEX_ALL = -1  # the namespace's ``all`` settings (net.ipv4.ip_forward is one)
NETCONFMSG_SIZE = 4  # struct netconfmsg: one family byte, aligned
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_NEWGEN = 15
NFTA_GEN_PROC_PID = 2
#: The object messages of a transaction (tables, chains, rules, sets, elements, objects,
#: flowtables: every NEW and DEL up to DELFLOWTABLE); attribute 1 names the table in each.
NFT_OBJECT_MESSAGES = frozenset({0, 2, 3, 5, 6, 8, 9, 11, 12, 14, 18, 20, 22, 24})
NFTA_TABLE = 1
S32 = struct.Struct("=i")
BE32 = struct.Struct("!I")
NLMSG_LENGTH_TYPE = struct.Struct("=IH")  # the start of a netlink header
#: Bursts (a pass that builds 100 veths, a full ruleset of 1,000 rules) must fit.
RECEIVE_BUFFER = 4 << 20
SO_RCVBUFFORCE = 33  # (not in Python's socket module) past net.core.rmem_max, as root


@dataclass(frozen=True)
class LinkChanged:
    index: int
    name: str
    up: bool
    gone: bool  # RTM_DELLINK
    master: int | None = None  # the index of the bridge it is a port of


@dataclass(frozen=True)
class AddressGone:
    index: int
    cidr: str  # IPv4 or global IPv6 (link-local addresses are the kernel's, not announced)


@dataclass(frozen=True)
class RouteGone:
    oif: int | None
    dst: str  # 'address/len'
    table: int
    proto: int


@dataclass(frozen=True)
class NeighbourGone:
    """A neighbour entry or (``fdb``) a bridge or VXLAN FDB entry that went away."""

    index: int
    fdb: bool
    dst: str | None  # the neighbour's address; an FDB entry's remote VTEP
    lladdr: str | None
    state: int


@dataclass(frozen=True)
class QdiscGone:
    index: int
    root: bool  # the device's root qdisc


@dataclass(frozen=True)
class Forwarding:
    """The namespace's ``all`` forwarding setting of one family, as just set."""

    ipv6: bool
    on: bool


@dataclass(frozen=True)
class NftCommit:
    """One nftables transaction: the tables it touched, and the thread that committed it."""

    tables: frozenset[str]
    pid: int


@dataclass(frozen=True)
class Overrun:
    """Announcements were lost (the socket's buffer overflowed)."""


KernelEvent = (LinkChanged | AddressGone | RouteGone | NeighbourGone | QdiscGone | Forwarding
               | NftCommit | Overrun)


def parse_rtnl(data: bytes | memoryview) -> list[KernelEvent]:
    """The events of one rtnetlink datagram (pure; kinds that cannot mean drift are skipped)."""
    events: list[KernelEvent] = []
    for kind, _seq, payload in rtnl.messages(data):
        event = _rtnl_event(kind, payload)
        if event is not None:
            events.append(event)
    return events


def _rtnl_event(kind: int, payload: memoryview) -> KernelEvent | None:
    if kind in (rtnl.RTM_NEWLINK, rtnl.RTM_DELLINK):
        link = rtnl.parse_link(payload)
        return LinkChanged(link.index, link.ifname, bool(link.flags & rtnl.IFF_UP),
                           gone=kind == rtnl.RTM_DELLINK, master=link.master)
    if kind == rtnl.RTM_DELADDR:
        found = rtnl.parse_global_address(payload)
        return AddressGone(*found) if found is not None else None
    if kind == rtnl.RTM_DELROUTE:
        family = payload[0]
        route = rtnl.parse_route(payload, family) if family in (socket.AF_INET,
                                                                socket.AF_INET6) else None
        if route is None or route.dst is None:
            return None
        return RouteGone(route.oif, f"{route.dst}/{route.dst_len}", route.table, route.proto)
    if kind == rtnl.RTM_DELNEIGH:
        entry = rtnl.parse_neighbour(payload)
        return NeighbourGone(entry.index, payload[0] == rtnl.AF_BRIDGE, entry.dst, entry.lladdr,
                             entry.state)
    if kind == rtnl.RTM_DELQDISC:
        qdisc = rtnl.parse_qdisc(payload)
        return QdiscGone(qdisc.index, qdisc.parent == rtnl.TC_H_ROOT)
    if kind == RTM_NEWNETCONF:
        return _forwarding(payload)
    return None


def _forwarding(payload: memoryview) -> Forwarding | None:
    """The ``all`` forwarding setting a netconf announcement carries, if it is one."""
    family = payload[0]
    attrs = rtnl.attributes(payload, NETCONFMSG_SIZE)
    index, value = attrs.get(NETCONFA_IFINDEX), attrs.get(NETCONFA_FORWARDING)
    if family not in (socket.AF_INET, socket.AF_INET6) or index is None or value is None \
            or S32.unpack(index)[0] != NETCONFA_IFINDEX_ALL:
        return None
    return Forwarding(ipv6=family == socket.AF_INET6, on=S32.unpack(value)[0] != 0)


class NftParser:
    """nftables announcements into ``NftCommit``: a transaction's object messages come first,
    then its "new generation" message with the committing thread's id, so the tables seen are
    held until that message (pure, but stateful across datagrams).

    A set's elements are announced one message each (a policy table of 1,000 addresses is
    1,300 messages), so an object message is read no further than its table's name: the
    kernel writes it first (``NFTA_*_TABLE``, type 1); a message that does not is parsed
    whole. A name equal to the one before is not decoded again (issue 21: parsing every
    message's attributes cost each agent 4 ms per policy change)."""

    def __init__(self) -> None:
        self._tables: set[str] = set()
        self._last = b""  # the raw name of the table last seen

    def feed(self, data: bytes | memoryview) -> list[KernelEvent]:
        events: list[KernelEvent] = []
        view = memoryview(data)
        offset, end = 0, len(view)
        while offset + rtnl.NLMSGHDR.size <= end:
            length, kind = NLMSG_LENGTH_TYPE.unpack_from(view, offset)
            if length < rtnl.NLMSGHDR.size or offset + length > end:
                break
            message = kind & 0xFF
            if kind >> 8 == NFNL_SUBSYS_NFTABLES:
                start = offset + rtnl.NLMSGHDR.size + rtnl.NFGENMSG.size
                if message in NFT_OBJECT_MESSAGES:
                    size, first = rtnl.RTATTR.unpack_from(view, start) \
                        if start + rtnl.RTATTR.size <= offset + length else (0, 0)
                    if first & rtnl.NLA_TYPE_MASK != NFTA_TABLE or size < rtnl.RTATTR.size or \
                            start + size > offset + length:
                        self._table(rtnl.attributes(view[start:offset + length], 0).get(
                            NFTA_TABLE))
                    elif view[start + rtnl.RTATTR.size:start + size] != self._last:
                        self._table(view[start + rtnl.RTATTR.size:start + size])
                elif message == NFT_MSG_NEWGEN:
                    pid = rtnl.attributes(view[start:offset + length], 0).get(
                        NFTA_GEN_PROC_PID)
                    events.append(NftCommit(frozenset(self._tables),
                                            BE32.unpack(pid)[0] if pid is not None else 0))
                    self._tables.clear()
                    self._last = b""
            offset += (length + 3) & ~3
        return events

    def _table(self, name: memoryview | None) -> None:
        """Note a table's name as an attribute holds it (None: the message named none)."""
        if name is not None and name != self._last:
            self._last = bytes(name)
            self._tables.add(self._last.split(b"\0", 1)[0].decode(errors="replace"))


class Announcements:
    """Both sockets, subscribed in the calling thread's namespace; ``read`` what is waiting.
    One thread uses it; ``fileno``s are for its ``select``."""

    def __init__(self) -> None:
        self.route = _subscribed(NETLINK_ROUTE, RTNL_GROUPS)
        try:
            self.netfilter = _subscribed(rtnl.NETLINK_NETFILTER, (NFNLGRP_NFTABLES,))
        except OSError:
            self.route.close()
            raise
        self._nft = NftParser()
        self._buffer = bytearray(rtnl.RECV_SIZE)  # (one buffer for every datagram)

    def sockets(self) -> list[socket.socket]:
        return [self.route, self.netfilter]

    def read(self, sock: socket.socket) -> list[KernelEvent]:
        """What ``sock`` (one of ``sockets()``, ready) holds, without blocking."""
        events: list[KernelEvent] = []
        while True:
            try:
                size = sock.recv_into(self._buffer, 0, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return events
            except OSError as e:
                if e.errno != errno.ENOBUFS:
                    raise
                events.append(Overrun())
                continue
            data = memoryview(self._buffer)[:size]
            events += parse_rtnl(data) if sock is self.route else self._nft.feed(data)

    def close(self) -> None:
        self.route.close()
        self.netfilter.close()


def own_thread(pid: int) -> bool:
    """``pid`` (an ``NftCommit``'s) is a thread of this process: one that ran an nft command
    (``nft.ran_here``: it may have ended before its announcement is read, as a cleanup's
    timer thread does), or one that still runs."""
    return pid > 0 and (nft.ran_here(pid) or os.path.exists(f"/proc/self/task/{pid}"))


def _subscribed(protocol: int, groups: Iterable[int]) -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, protocol)
    try:
        try:  # as root, past net.core.rmem_max
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVE_BUFFER)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        mask = 0
        for group in groups:
            mask |= 1 << (group - 1)
        sock.bind((0, mask))
    except OSError:
        sock.close()
        raise
    return sock
