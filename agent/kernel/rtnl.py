"""The agent's rtnetlink, without pyroute2: the reads it makes in every container namespace on
every pass, and every write it makes (links, addresses, routes, neighbours, FDB entries, the
bandwidth limits' qdiscs and filter), each encoded here.

Design note. A restarted agent looks into every container's namespace before it is ready
(issue 10: 1,000 containers within 5 s). Through pyroute2 0.9.7 one look cost about 2-3 ms:
a thread to enter the namespace and open the socket, an ``IPRoute`` (an asyncio loop and
four file descriptors), then three requests each run through that loop and decoded into
generic message objects. Here a look is one plain ``AF_NETLINK`` socket and three
request/response exchanges (a link by name, an IPv4 address dump, an IPv4 route dump) parsed
with ``struct`` for just the attributes we compare, about 0.1 ms. Sockets for many
namespaces are opened by ONE short-lived thread that enters each namespace in turn (see
``netns.open_netlink_fds``), never by the caller's thread.

Writes are sent as a batch of requests at once before their acks are collected
(``Reader.send_all``): the VXLAN peer entries a joining host writes for every other host
(three per peer: at 100 hosts, 300 round trips through pyroute2 took ~2.3 s), a new CNI
attachment's veth pair, its peer's address and its routes (``Links.add_veth``: ~1 ms of
requests where pyroute2 took ~10). The last writes that went through pyroute2 (bridges,
VXLAN devices, repairs, the bandwidth limits) moved here too (issue 21): loading pyroute2 was
10 MB of every agent's 55. Parsing and encoding are pure (bytes in, tuples out; tuples in,
bytes out) and unit-tested, the requests decoded by pyroute2's parsers in the tests, and
checked against the kernel and ``ip``/``tc`` in tests/netns. The lab (``sdnctl/lab``) still
builds its hosts through pyroute2 (``iproute.py``).
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x100, 0x200, 0x400
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30
AF_BRIDGE = 7  # a neighbour dump of this family lists bridge and VXLAN FDB entries
NDA_DST, NDA_LLADDR, NDA_PROTOCOL = 1, 2, 12
RT_SCOPE_UNIVERSE, RTN_UNICAST = 0, 1
RTA_DST = 1
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTMGRP_LINK = 1  # the multicast group of link announcements (RTNLGRP_LINK's bit)
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINK, IFLA_MASTER, IFLA_IFALIAS = 1, 3, 4, 5, 10, 20
IFLA_LINKINFO, IFLA_EXT_MASK, IFLA_INFO_KIND = 18, 29, 1
IFLA_NET_NS_FD, IFLA_INFO_DATA, VETH_INFO_PEER = 28, 2, 1
IFLA_GROUP = 27
IFLA_VXLAN_ID, IFLA_VXLAN_GROUP, IFLA_VXLAN_LINK, IFLA_VXLAN_LOCAL = 1, 2, 3, 4
IFLA_VXLAN_LEARNING, IFLA_VXLAN_GROUP6 = 7, 16
IFLA_VXLAN_PORT, IFLA_VXLAN_LOCAL6 = 15, 17  # the port in network byte order
IFF_UP = 0x1
IFA_LOCAL, IFA_F_NODAD = 2, 0x02
RTEXT_FILTER_SKIP_STATS = 1 << 3
IFA_ADDRESS = 1
RTA_OIF, RTA_GATEWAY, RTA_TABLE = 4, 5, 15
RTM_NEWQDISC, RTM_DELQDISC, RTM_GETQDISC, RTM_NEWTFILTER = 36, 37, 38, 44
TCA_KIND, TCA_OPTIONS = 1, 2
TCA_TBF_PARMS, TCA_TBF_RATE64, TCA_TBF_BURST = 1, 4, 6
TC_H_ROOT, TC_H_INGRESS = 0xFFFFFFFF, 0xFFFFFFF1
TC_LINKLAYER_ETHERNET = 1
TCA_U32_CLASSID, TCA_U32_SEL, TCA_U32_ACT, TC_U32_TERMINAL = 1, 5, 7, 1
TCA_ACT_KIND, TCA_ACT_OPTIONS, TCA_MIRRED_PARMS = 1, 2, 2
TC_ACT_STOLEN, TCA_EGRESS_REDIR = 4, 1
ETH_P_ALL = 3

NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, sequence, port
IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
NDMSG = struct.Struct("=BxxxiHBB")  # family, index, state, flags, type
IFADDRMSG = struct.Struct("=BBBBi")  # family, prefix length, flags, scope, index
TCMSG = struct.Struct("=BxxxiIII")  # family, index, handle, parent, info
TBF_RATE = struct.Struct("=8xI")  # tc_tbf_qopt's rate: tc_ratespec's rate (bytes per second)
#: tc_tbf_qopt: the rate's tc_ratespec (cell_log, linklayer, overhead, cell_align, mpu, rate),
#: the peak rate's, limit, buffer, mtu
TBF_QOPT = struct.Struct("=BBHhHI12xIII")
U32_SEL = struct.Struct("=BBBxHHhhI")  # tc_u32_sel: flags, offshift, nkeys, offmask, off,
U32_KEY = struct.Struct("=IIii")  # mask, value, offset, offmask        # offoff, hoff, hmask
MIRRED = struct.Struct("=IIiiiiI")  # tc_mirred: index, capab, action, refcnt, bindcnt,
                                    # eaction, ifindex
U64 = struct.Struct("=Q")
RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, proto, scope, type,
RTATTR = struct.Struct("=HH")  # length, type                                           # flags
#: An attribute's type: its number, and two flags above it (NESTED, NET_BYTEORDER).
NLA_F_NESTED = 1 << 15
NLA_TYPE_MASK = 0x3FFF
U32 = struct.Struct("=I")
BE16 = struct.Struct("!H")
BE64 = struct.Struct("!Q")
#: nfnetlink (conntrack, nf_tables): the netlink protocol, and the header of its messages
NETLINK_NETFILTER = 12
NFGENMSG = struct.Struct("=BBH")  # family, version, resource id
ERRNO = struct.Struct("=i")
RECV_SIZE = 1 << 16
SEND_BATCH = 64  # requests per datagram of a batch: their acks must fit our receive buffer


class NetlinkError(Exception):
    """A netlink request's error answer: ``code`` is its positive errno."""

    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(code, message or os.strerror(code))
        self.code = code


@dataclass(frozen=True)
class Vxlan:
    """A VXLAN link's IFLA_INFO_DATA, the attributes the agent compares."""

    vni: int
    port: int
    local: str | None  # IPv4 or IPv6 source address
    link: int | None  # the underlay's index
    learning: bool
    remote: str | None = None  # a remote or multicast group (IFLA_VXLAN_GROUP, GROUP6)


@dataclass(frozen=True)
class Link:
    index: int
    flags: int
    mtu: int
    mac: str | None
    ifname: str = ""
    kind: str | None = None  # IFLA_INFO_KIND
    alias: str | None = None
    master: int | None = None  # the master's index
    vxlan: Vxlan | None = None  # kind "vxlan" only
    link: int | None = None  # IFLA_LINK: a veth's peer's index (in the peer's namespace)
    group: int | None = None  # IFLA_GROUP, None for the default group 0


@dataclass(frozen=True)
class Route:
    dst_len: int
    table: int
    proto: int
    gateway: str | None
    oif: int | None
    dst: str | None = None  # None: the default route


@dataclass(frozen=True)
class Neighbour:
    """A neighbour entry or, dumped in family AF_BRIDGE, an FDB entry (``dst``: the remote
    VTEP of a VXLAN device's entry)."""

    index: int
    state: int
    dst: str | None
    lladdr: str | None


@dataclass(frozen=True)
class Qdisc:
    """A queueing discipline, the parts the bandwidth limits compare (agent/kernel/shaping.py):
    ``tbf_rate`` is a TBF's rate in bits per second (0 for another kind)."""

    index: int
    parent: int
    kind: str
    tbf_rate: int = 0


def _align(n: int) -> int:
    return (n + 3) & ~3


def attributes(data: bytes | memoryview, offset: int) -> dict[int, memoryview]:
    """The route attributes from ``offset`` to the end of ``data``, by type (nested ones
    unparsed; a type that repeats keeps its last value). (Its own loop: a dict of
    ``attribute_items`` took 70 % longer, and every dump parses with it.)"""
    view = memoryview(data)
    found: dict[int, memoryview] = {}
    end = len(view)
    while offset + RTATTR.size <= end:
        length, kind = RTATTR.unpack_from(view, offset)
        if length < RTATTR.size or offset + length > end:
            break
        found[kind & NLA_TYPE_MASK] = view[offset + RTATTR.size:offset + length]
        offset += _align(length)
    return found


def attribute_items(data: bytes | memoryview, offset: int) -> Iterator[tuple[int, memoryview]]:
    """(type, value) of each attribute from ``offset`` to the end of ``data``, in order (a
    list's repeated elements each)."""
    view = memoryview(data)
    end = len(view)
    while offset + RTATTR.size <= end:
        length, kind = RTATTR.unpack_from(view, offset)
        if length < RTATTR.size or offset + length > end:
            break
        yield kind & NLA_TYPE_MASK, view[offset + RTATTR.size:offset + length]
        offset += _align(length)


def attribute(kind: int, value: bytes) -> bytes:
    """One netlink attribute: header, ``value``, padding."""
    length = RTATTR.size + len(value)
    return RTATTR.pack(length, kind) + value + b"\0" * (_align(length) - length)


def _family(address: str) -> int:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def _ip_bytes(address: str) -> bytes:
    return socket.inet_pton(_family(address), address)


def _mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


@dataclass(frozen=True)
class Request:
    """One netlink request of a batch: message type, flags beyond NLM_F_REQUEST|NLM_F_ACK, body."""

    kind: int
    flags: int
    body: bytes


REPLACE = NLM_F_REPLACE | NLM_F_CREATE  # create, or overwrite the entry with the same key


def fdb_replace(index: int, mac: str, dst: str, state: int, flags: int) -> Request:
    """``bridge fdb replace MAC dev INDEX dst DST`` (AF_BRIDGE neighbour; DST of either family:
    the kernel tells them by the attribute's length)."""
    body = NDMSG.pack(socket.AF_BRIDGE, index, state, flags, 0) + \
        attribute(NDA_LLADDR, _mac_bytes(mac)) + attribute(NDA_DST, _ip_bytes(dst))
    return Request(RTM_NEWNEIGH, REPLACE, body)


def neighbour_replace(index: int, ip: str, mac: str, state: int, protocol: int) -> Request:
    """``ip neigh replace IP lladdr MAC dev INDEX nud STATE protocol PROTOCOL`` (either
    family)."""
    body = NDMSG.pack(_family(ip), index, state, 0, 0) + attribute(NDA_DST, _ip_bytes(ip)) + \
        attribute(NDA_LLADDR, _mac_bytes(mac)) + attribute(NDA_PROTOCOL, bytes([protocol]))
    return Request(RTM_NEWNEIGH, REPLACE, body)


def route_replace(cidr: str, gateway: str, oif: int, table: int, protocol: int,
                  flags: int) -> Request:
    """``ip route replace CIDR via GATEWAY dev OIF table TABLE proto PROTOCOL`` (either
    family)."""
    network, length = cidr.split("/")
    body = RTMSG.pack(_family(network), int(length), 0, 0, table if table < 256 else 0, protocol,
                      RT_SCOPE_UNIVERSE, RTN_UNICAST, flags) + \
        attribute(RTA_DST, _ip_bytes(network)) + attribute(RTA_GATEWAY, _ip_bytes(gateway)) + \
        attribute(RTA_OIF, U32.pack(oif)) + attribute(RTA_TABLE, U32.pack(table))
    return Request(RTM_NEWROUTE, REPLACE, body)


def fdb_delete(index: int, mac: str, dst: str, flags: int) -> Request:
    """``bridge fdb del MAC dev INDEX dst DST``."""
    body = NDMSG.pack(socket.AF_BRIDGE, index, 0, flags, 0) + \
        attribute(NDA_LLADDR, _mac_bytes(mac)) + attribute(NDA_DST, _ip_bytes(dst))
    return Request(RTM_DELNEIGH, 0, body)


def neighbour_delete(index: int, ip: str) -> Request:
    """``ip neigh del IP dev INDEX`` (either family)."""
    return Request(RTM_DELNEIGH, 0, NDMSG.pack(_family(ip), index, 0, 0, 0) +
                   attribute(NDA_DST, _ip_bytes(ip)))


def route_delete(cidr: str, oif: int, table: int, protocol: int) -> Request:
    """``ip route del CIDR dev OIF table TABLE proto PROTOCOL`` (either family)."""
    network, length = cidr.split("/")
    body = RTMSG.pack(_family(network), int(length), 0, 0, table if table < 256 else 0, protocol,
                      RT_SCOPE_UNIVERSE, RTN_UNICAST, 0) + \
        attribute(RTA_DST, _ip_bytes(network)) + attribute(RTA_OIF, U32.pack(oif)) + \
        attribute(RTA_TABLE, U32.pack(table))
    return Request(RTM_DELROUTE, 0, body)


def _link_attributes(name: str = "", mtu: int = 0, master: int | None = None, mac: str = "",
                     alias: str | None = None, kind: str = "", data: bytes = b"",
                     group: int = 0) -> bytes:
    """The attributes of an RTM_NEWLINK, each only when given (``master`` 0: out of any)."""
    info = attribute(IFLA_INFO_KIND, kind.encode() + b"\0") + \
        (attribute(IFLA_INFO_DATA, data) if data else b"") if kind else b""
    return (attribute(IFLA_IFNAME, name.encode() + b"\0") if name else b"") + \
        (attribute(IFLA_MTU, U32.pack(mtu)) if mtu else b"") + \
        (attribute(IFLA_MASTER, U32.pack(master)) if master is not None else b"") + \
        (attribute(IFLA_ADDRESS, _mac_bytes(mac)) if mac else b"") + \
        (attribute(IFLA_IFALIAS, alias.encode()) if alias is not None else b"") + \
        (attribute(IFLA_LINKINFO, info) if info else b"") + \
        (attribute(IFLA_GROUP, U32.pack(group)) if group else b"")


def link_add(name: str, kind: str, *, mtu: int = 0, master: int | None = None,
             up: bool = False, mac: str = "", data: bytes = b"", group: int = 0) -> Request:
    """``ip link add NAME [mtu MTU] [master MASTER] [address MAC] [up] [group GROUP] type KIND
    ...`` (``data``: the kind's IFLA_INFO_DATA, ``veth_peer`` or ``vxlan_data``). EEXIST when
    ``name`` exists (for a veth: or its peer's name in the peer's namespace)."""
    flags = IFF_UP if up else 0
    body = IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, flags, flags) + \
        _link_attributes(name, mtu, master, mac, kind=kind, data=data, group=group)
    return Request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, body)


def link_set(index: int = 0, *, name: str = "", mtu: int = 0, master: int | None = None,
             up: bool = False, mac: str = "", alias: str | None = None, kind: str = "",
             data: bytes = b"", group: int = 0) -> Request:
    """``ip link set (index INDEX | dev NAME) [mtu MTU] [master MASTER] [address MAC] [up]
    [alias ALIAS] [group GROUP]``, and with ``kind`` and ``data`` the kind's attributes changed
    in place (``type vxlan ...``): only what is given is sent (the kernel sets the address
    before it brings the link up)."""
    flags = IFF_UP if up else 0
    body = IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, flags, flags) + \
        _link_attributes(name, mtu, master, mac, alias, kind, data, group)
    return Request(RTM_NEWLINK, 0, body)


def veth_peer(name: str, mtu: int, netns_fd: int | None = None, mac: str = "") -> bytes:
    """A veth's IFLA_INFO_DATA: its peer ``name`` at ``mtu``, born in the namespace of
    ``netns_fd`` (None: the same as its other end), down, with MAC ``mac`` (a random one when
    none is given)."""
    peer = IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + \
        attribute(IFLA_IFNAME, name.encode() + b"\0") + \
        (attribute(IFLA_NET_NS_FD, U32.pack(netns_fd)) if netns_fd is not None else b"") + \
        attribute(IFLA_MTU, U32.pack(mtu)) + \
        (attribute(IFLA_ADDRESS, _mac_bytes(mac)) if mac else b"")
    return attribute(VETH_INFO_PEER, peer)


def vxlan_data(*, vni: int | None = None, port: int | None = None, local: str = "",
               link: int | None = None, learning: bool | None = None) -> bytes:
    """A VXLAN device's IFLA_INFO_DATA, each attribute only when given (``local`` of either
    family; ``port`` the UDP destination port)."""
    local_kind = IFLA_VXLAN_LOCAL6 if ":" in local else IFLA_VXLAN_LOCAL
    return (attribute(IFLA_VXLAN_ID, U32.pack(vni)) if vni is not None else b"") + \
        (attribute(IFLA_VXLAN_PORT, BE16.pack(port)) if port is not None else b"") + \
        (attribute(local_kind, _ip_bytes(local)) if local else b"") + \
        (attribute(IFLA_VXLAN_LINK, U32.pack(link)) if link is not None else b"") + \
        (attribute(IFLA_VXLAN_LEARNING, bytes([learning])) if learning is not None else b"")


def veth_add(name: str, mtu: int, master: int, peer: str, peer_netns_fd: int,
             peer_mac: str = "", group: int = 0) -> Request:
    """``ip link add NAME mtu MTU master MASTER up [group GROUP] type veth peer name PEER netns
    FD mtu MTU [address MAC]``: the peer born in the namespace of ``peer_netns_fd``, down (with
    a random MAC when none is given). EEXIST when ``name`` (or ``peer`` in its namespace)
    exists."""
    return link_add(name, "veth", mtu=mtu, master=master, up=True, group=group,
                    data=veth_peer(peer, mtu, peer_netns_fd, peer_mac))


def link_up(alias: str, index: int = 0, name: str = "", mac: str = "") -> Request:
    """``ip link set (dev NAME | index INDEX) [address MAC] up alias ALIAS`` (the kernel
    ignores an alias given when a link is made: it is set afterwards)."""
    return link_set(index, name=name, up=True, mac=mac, alias=alias)


def link_delete(name: str = "", index: int = 0) -> Request:
    """``ip link del (NAME | index INDEX)`` (a veth's peer goes with it; ENODEV when there is
    none)."""
    return Request(RTM_DELLINK, 0, IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, 0, 0) +
                   (attribute(IFLA_IFNAME, name.encode() + b"\0") if name else b""))


def group_delete(group: int) -> Request:
    """``ip link del group GROUP``: every link of the group at once, one wait for the kernel's
    grace period instead of one per link (ENODEV when the group is empty)."""
    return Request(RTM_DELLINK, 0, IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) +
                   attribute(IFLA_GROUP, U32.pack(group)))


def address_add(index: int, cidr: str) -> Request:
    """``ip addr add CIDR dev INDEX`` (an IPv6 one ``nodad``: usable at once)."""
    address, length = cidr.split("/")
    family = _family(address)
    body = IFADDRMSG.pack(family, int(length), IFA_F_NODAD if family == socket.AF_INET6 else 0,
                          RT_SCOPE_UNIVERSE, index) + \
        attribute(IFA_LOCAL, _ip_bytes(address)) + attribute(IFA_ADDRESS, _ip_bytes(address))
    return Request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, body)


def address_delete(index: int, cidr: str) -> Request:
    """``ip addr del CIDR dev INDEX`` (either family; EADDRNOTAVAIL when it is not there)."""
    address, length = cidr.split("/")
    body = IFADDRMSG.pack(_family(address), int(length), 0, 0, index) + \
        attribute(IFA_LOCAL, _ip_bytes(address)) + attribute(IFA_ADDRESS, _ip_bytes(address))
    return Request(RTM_DELADDR, 0, body)


# --- traffic control: the bandwidth limits' requests (agent/kernel/shaping.py) ---------------

TBF_HANDLE, INGRESS_HANDLE = 0x10000, 0xFFFF0000  # "1:" and "ffff:"


def tbf_replace(index: int, rate_bps: int, burst: int, latency_us: int) -> Request:
    """``tc qdisc replace dev INDEX root handle 1: tbf rate RATEbit burst BURST latency
    LATENCYus``: the queue holds what the rate drains in ``latency_us`` plus the burst (as tc
    computes ``limit``); the burst is given in bytes (TCA_TBF_BURST), the kernel derives the
    bucket's time from it. A rate of 2^32 bytes a second and more goes in TCA_TBF_RATE64."""
    rate = rate_bps // 8
    limit = rate * latency_us // 1_000_000 + burst
    parms = TBF_QOPT.pack(0, TC_LINKLAYER_ETHERNET, 0, 0, 0, min(rate, 0xFFFFFFFF),
                          min(limit, 0xFFFFFFFF), 0, 0)
    options = attribute(TCA_TBF_PARMS, parms) + attribute(TCA_TBF_BURST, U32.pack(burst)) + \
        (attribute(TCA_TBF_RATE64, U64.pack(rate)) if rate > 0xFFFFFFFF else b"")
    body = TCMSG.pack(socket.AF_UNSPEC, index, TBF_HANDLE, TC_H_ROOT, 0) + \
        attribute(TCA_KIND, b"tbf\0") + attribute(TCA_OPTIONS, options)
    return Request(RTM_NEWQDISC, REPLACE, body)


def ingress_add(index: int) -> Request:
    """``tc qdisc add dev INDEX ingress`` (handle ffff:; EEXIST when it has one)."""
    body = TCMSG.pack(socket.AF_UNSPEC, index, INGRESS_HANDLE, TC_H_INGRESS, 0) + \
        attribute(TCA_KIND, b"ingress\0")
    return Request(RTM_NEWQDISC, NLM_F_CREATE | NLM_F_EXCL, body)


def qdisc_delete(index: int, ingress: bool = False) -> Request:
    """``tc qdisc del dev INDEX (root handle 1: | ingress)`` (its filters go with it; ENOENT or
    EINVAL when there is none)."""
    handle, parent = (INGRESS_HANDLE, TC_H_INGRESS) if ingress else (TBF_HANDLE, TC_H_ROOT)
    return Request(RTM_DELQDISC, 0, TCMSG.pack(socket.AF_UNSPEC, index, handle, parent, 0))


def redirect_filter(index: int, target: int) -> Request:
    """``tc filter add dev INDEX parent ffff: protocol all prio 1 u32 match u32 0 0 flowid 1:
    action mirred egress redirect dev TARGET``: everything arriving on ``index`` leaves through
    ``target`` (an IFB, whose root qdisc then shapes it)."""
    selector = U32_SEL.pack(TC_U32_TERMINAL, 0, 1, 0, 0, 0, 0, 0) + U32_KEY.pack(0, 0, 0, 0)
    mirred = MIRRED.pack(0, 0, TC_ACT_STOLEN, 0, 0, TCA_EGRESS_REDIR, target)
    action = attribute(TCA_ACT_KIND, b"mirred\0") + attribute(
        TCA_ACT_OPTIONS | NLA_F_NESTED, attribute(TCA_MIRRED_PARMS, mirred))
    options = attribute(TCA_U32_CLASSID, U32.pack(TBF_HANDLE)) + \
        attribute(TCA_U32_SEL, selector) + attribute(TCA_U32_ACT, attribute(1, action))
    info = 1 << 16 | socket.htons(ETH_P_ALL)  # priority 1, every protocol
    body = TCMSG.pack(socket.AF_UNSPEC, index, 0, INGRESS_HANDLE, info) + \
        attribute(TCA_KIND, b"u32\0") + attribute(TCA_OPTIONS, options)
    return Request(RTM_NEWTFILTER, NLM_F_CREATE | NLM_F_EXCL, body)


def link_index(payload: memoryview) -> int:
    """The link index of an RTM_*LINK message."""
    return int(IFINFOMSG.unpack_from(payload)[2])


def messages(data: bytes | memoryview) -> Iterator[tuple[int, int, memoryview]]:
    """(type, sequence, payload) of each netlink message in one datagram."""
    view = memoryview(data)
    offset = 0
    while offset + NLMSGHDR.size <= len(view):
        length, kind, _flags, seq, _port = NLMSGHDR.unpack_from(view, offset)
        if length < NLMSGHDR.size or offset + length > len(view):
            break
        yield kind, seq, view[offset + NLMSGHDR.size:offset + length]
        offset += _align(length)


def _mac(value: memoryview | None) -> str | None:
    return ":".join(f"{b:02x}" for b in value) if value is not None else None


def _ipv4(value: memoryview | None) -> str | None:
    return socket.inet_ntop(socket.AF_INET, value) if value is not None else None


def _ip(family: int, value: memoryview | None) -> str | None:
    return socket.inet_ntop(family, value) if value is not None else None


def _ip_any(value: memoryview | None) -> str | None:
    """An IPv4 or IPv6 address, told apart by its length (an FDB entry's NDA_DST)."""
    if value is None:
        return None
    return socket.inet_ntop(socket.AF_INET6 if len(value) == 16 else socket.AF_INET, value)


def _u32(value: memoryview | None) -> int | None:
    return U32.unpack(value)[0] if value is not None else None


def _string(value: memoryview | None) -> str | None:
    return bytes(value).split(b"\0", 1)[0].decode(errors="replace") if value is not None \
        else None


def parse_link(payload: memoryview) -> Link:
    _family, _type, index, flags, _change = IFINFOMSG.unpack_from(payload)
    attrs = attributes(payload, IFINFOMSG.size)
    info = attributes(attrs[IFLA_LINKINFO], 0) if IFLA_LINKINFO in attrs else {}
    kind = _string(info.get(IFLA_INFO_KIND))
    data = info.get(IFLA_INFO_DATA)
    return Link(index=index, flags=flags, mtu=_u32(attrs.get(IFLA_MTU)) or 0,
                mac=_mac(attrs.get(IFLA_ADDRESS)), ifname=_string(attrs.get(IFLA_IFNAME)) or "",
                kind=kind, alias=_string(attrs.get(IFLA_IFALIAS)) or None,
                master=_u32(attrs.get(IFLA_MASTER)) or None,
                link=_u32(attrs.get(IFLA_LINK)) or None,
                group=_u32(attrs.get(IFLA_GROUP)) or None,
                vxlan=parse_vxlan(data) if kind == "vxlan" and data is not None else None)


def parse_vxlan(data: memoryview) -> Vxlan:
    attrs = attributes(data, 0)
    port = attrs.get(IFLA_VXLAN_PORT)
    learning = attrs.get(IFLA_VXLAN_LEARNING)
    return Vxlan(vni=_u32(attrs.get(IFLA_VXLAN_ID)) or 0,
                 port=BE16.unpack(port)[0] if port is not None else 0,
                 local=_ip(socket.AF_INET, attrs.get(IFLA_VXLAN_LOCAL))
                 or _ip(socket.AF_INET6, attrs.get(IFLA_VXLAN_LOCAL6)),
                 link=_u32(attrs.get(IFLA_VXLAN_LINK)) or None,
                 learning=bool(learning is not None and learning[0]),
                 remote=_unspecified_none(_ip(socket.AF_INET, attrs.get(IFLA_VXLAN_GROUP))
                                          or _ip(socket.AF_INET6, attrs.get(IFLA_VXLAN_GROUP6))))


def _unspecified_none(address: str | None) -> str | None:
    return None if address in ("0.0.0.0", "::") else address


def parse_ipv4_address(payload: memoryview) -> tuple[int, str] | None:
    """(interface index, 'a.b.c.d/len') of an IPv4 RTM_NEWADDR, None for another family."""
    family, prefixlen, _flags, _scope, index = IFADDRMSG.unpack_from(payload)
    if family != socket.AF_INET:
        return None
    address = _ipv4(attributes(payload, IFADDRMSG.size).get(IFA_ADDRESS))
    return (index, f"{address}/{prefixlen}") if address is not None else None


def parse_global_address(payload: memoryview) -> tuple[int, str] | None:
    """(interface index, 'address/len') of an IPv4 or global-scope IPv6 RTM_NEWADDR (dual-stack,
    issue 20: the kernel's own link-local fe80:: addresses are not ours to compare)."""
    family, prefixlen, _flags, scope, index = IFADDRMSG.unpack_from(payload)
    if family not in (socket.AF_INET, socket.AF_INET6) or (
            family == socket.AF_INET6 and scope != RT_SCOPE_UNIVERSE):
        return None
    address = _ip(family, attributes(payload, IFADDRMSG.size).get(IFA_ADDRESS))
    return (index, f"{address}/{prefixlen}") if address is not None else None


def parse_ipv4_route(payload: memoryview) -> Route | None:
    return parse_route(payload, socket.AF_INET)


def parse_route(payload: memoryview, family: int) -> Route | None:
    """A route of ``family`` (AF_INET or AF_INET6), None for another family."""
    got, dst_len, _src, _tos, table, proto, _scope, _type, _flags = RTMSG.unpack_from(payload)
    if got != family:
        return None
    attrs = attributes(payload, RTMSG.size)
    return Route(dst_len=dst_len, table=_u32(attrs.get(RTA_TABLE)) or table, proto=proto,
                 gateway=_ip(family, attrs.get(RTA_GATEWAY)), oif=_u32(attrs.get(RTA_OIF)),
                 dst=_ip(family, attrs.get(RTA_DST)))


def parse_neighbour(payload: memoryview) -> Neighbour:
    _family, index, state, _flags, _type = NDMSG.unpack_from(payload)
    attrs = attributes(payload, NDMSG.size)
    return Neighbour(index=index, state=state, dst=_ip_any(attrs.get(NDA_DST)),
                     lladdr=_mac(attrs.get(NDA_LLADDR)))


def parse_qdisc(payload: memoryview) -> Qdisc:
    _family, index, _handle, parent, _info = TCMSG.unpack_from(payload)
    attrs = attributes(payload, TCMSG.size)
    kind = _string(attrs.get(TCA_KIND)) or ""
    rate = 0
    if kind == "tbf" and TCA_OPTIONS in attrs:
        options = attributes(attrs[TCA_OPTIONS], 0)
        if len(options.get(TCA_TBF_RATE64, b"")) == U64.size:  # (rates of 2^32 bytes/s and up)
            rate = U64.unpack(options[TCA_TBF_RATE64])[0]
        elif len(options.get(TCA_TBF_PARMS, b"")) >= TBF_RATE.size:
            rate = TBF_RATE.unpack_from(options[TCA_TBF_PARMS])[0]
    return Qdisc(index=index, parent=parent, kind=kind, tbf_rate=rate * 8)


class Reader:
    """rtnetlink requests on one NETLINK_ROUTE socket (it owns the fd): reads, and batches of
    writes (``send_all``). ``dump`` serves a socket of another netlink family too (ctnetlink:
    ``conntrack.flow_samples``)."""

    def __init__(self, fd: int) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0, fileno=fd)
        self._seq = 0

    @classmethod
    def netfilter(cls) -> Reader:
        """A reader on a new nfnetlink socket (conntrack, nf_tables), born in the calling
        thread's network namespace."""
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        return cls(sock.detach())

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def dump(self, kind: int, body: bytes) -> Iterator[memoryview]:
        """The payload of every answer to one dump request of type ``kind``."""
        return self._request(kind, NLM_F_DUMP, body)

    def _request(self, kind: int, flags: int, body: bytes) -> Iterator[memoryview]:
        """Send one request; yield the payload of every answer until it is complete. An error
        answer raises NetlinkError with its (positive) errno."""
        self._seq += 1
        seq = self._seq
        self._sock.send(NLMSGHDR.pack(NLMSGHDR.size + len(body), kind, NLM_F_REQUEST | flags,
                                      seq, 0) + body)
        while True:
            data = self._sock.recv(RECV_SIZE)
            if not data:
                raise NetlinkError(errno.EIO, "netlink socket closed")
            for answer, got_seq, payload in messages(data):
                if got_seq != seq:
                    continue  # a late answer to an earlier request: not ours
                if answer == NLMSG_ERROR:
                    code = -ERRNO.unpack_from(payload)[0]
                    if code:
                        raise NetlinkError(code)
                    return
                if answer == NLMSG_DONE:
                    return
                yield payload
                if not flags & NLM_F_DUMP:
                    return

    def send_all(self, requests: list[Request]) -> list[int]:
        """Send ``requests`` in datagrams of up to SEND_BATCH, each asking for an ack, and
        collect the acks of each datagram before sending the next; the errno of each request
        (0: done), in order. The kernel runs the messages of a datagram in order, so the batch
        keeps the order of ``requests``.

        Why not all at once: every ack is an skb of its own in our receive buffer (~1 KB of
        truesize for 36 bytes), and 300 of them overflowed the default 208 KB (ENOBUFS)."""
        codes: list[int] = []
        for start in range(0, len(requests), SEND_BATCH):
            codes += self._send_batch(requests[start:start + SEND_BATCH])
        return codes

    def get_each(self, kind: int, bodies: list[bytes]) -> list[memoryview | int]:
        """One request of type ``kind`` per body (each answered by one message), in datagrams
        of up to SEND_BATCH: per request, in order, its answer's payload or the errno of its
        error answer."""
        found: list[memoryview | int] = []
        for start in range(0, len(bodies), SEND_BATCH):
            batch = bodies[start:start + SEND_BATCH]
            first = self._seq + 1
            self._seq += len(batch)
            self._sock.send(b"".join(
                NLMSGHDR.pack(NLMSGHDR.size + len(body), kind, NLM_F_REQUEST, seq, 0) + body
                for seq, body in enumerate(batch, first)))
            answers: dict[int, memoryview | int] = {}
            while len(answers) < len(batch):
                data = self._sock.recv(RECV_SIZE)
                if not data:
                    raise NetlinkError(errno.EIO, "netlink socket closed")
                for answer, seq, payload in messages(data):
                    if first <= seq < first + len(batch):
                        answers[seq] = -ERRNO.unpack_from(payload)[0] \
                            if answer == NLMSG_ERROR else payload
            found += [answers[seq] for seq in range(first, first + len(batch))]
        return found

    def _send_batch(self, requests: list[Request]) -> list[int]:
        first = self._seq + 1
        self._seq += len(requests)
        self._sock.send(b"".join(
            NLMSGHDR.pack(NLMSGHDR.size + len(request.body), request.kind,
                          NLM_F_REQUEST | NLM_F_ACK | request.flags, seq, 0) + request.body
            for seq, request in enumerate(requests, first)))
        codes: dict[int, int] = {}
        while len(codes) < len(requests):
            data = self._sock.recv(RECV_SIZE)
            if not data:
                raise NetlinkError(errno.EIO, "netlink socket closed")
            for answer, seq, payload in messages(data):
                if answer == NLMSG_ERROR and first <= seq < first + len(requests):
                    codes[seq] = -ERRNO.unpack_from(payload)[0]
        return [codes[seq] for seq in range(first, first + len(requests))]

    def link(self, ifname: str) -> Link | None:
        """The link named ``ifname``, or None when there is none."""
        body = IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + \
            attribute(IFLA_IFNAME, ifname.encode() + b"\0") + \
            attribute(IFLA_EXT_MASK, U32.pack(RTEXT_FILTER_SKIP_STATS))
        try:
            for payload in self._request(RTM_GETLINK, 0, body):
                return parse_link(payload)
        except NetlinkError as e:
            if e.code == errno.ENODEV:
                return None
            raise
        return None

    def links(self) -> list[Link]:
        """Every link."""
        body = IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + \
            attribute(IFLA_EXT_MASK, U32.pack(RTEXT_FILTER_SKIP_STATS))
        return [parse_link(payload) for payload in self._request(RTM_GETLINK, NLM_F_DUMP, body)]

    def ipv4_addresses(self) -> list[tuple[int, str]]:
        """(interface index, 'a.b.c.d/len') of every IPv4 address."""
        body = IFADDRMSG.pack(socket.AF_INET, 0, 0, 0, 0)
        return [found for payload in self._request(RTM_GETADDR, NLM_F_DUMP, body)
                if (found := parse_ipv4_address(payload)) is not None]

    def global_addresses(self) -> list[tuple[int, str]]:
        """(interface index, 'address/len') of every IPv4 and global IPv6 address: one dump."""
        body = IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
        return [found for payload in self._request(RTM_GETADDR, NLM_F_DUMP, body)
                if (found := parse_global_address(payload)) is not None]

    def ipv4_routes(self) -> list[Route]:
        """Every IPv4 route of every table."""
        return self.routes(socket.AF_INET)

    def routes(self, family: int) -> list[Route]:
        """Every route of ``family`` (AF_INET, AF_INET6) of every table."""
        body = RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0)
        return [found for payload in self._request(RTM_GETROUTE, NLM_F_DUMP, body)
                if (found := parse_route(payload, family)) is not None]

    def qdiscs(self) -> list[Qdisc]:
        """Every queueing discipline of every link: one dump."""
        body = TCMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
        return [parse_qdisc(payload) for payload in self._request(RTM_GETQDISC, NLM_F_DUMP, body)]

    def neighbours(self, family: int) -> list[Neighbour]:
        """Every neighbour entry of ``family`` (AF_INET, AF_INET6), or with AF_BRIDGE every FDB
        entry."""
        body = NDMSG.pack(family, 0, 0, 0, 0)
        return [parse_neighbour(payload)
                for payload in self._request(RTM_GETNEIGH, NLM_F_DUMP, body)]
