"""Lab hosts: a topology's ``lab: true`` hosts built on this machine as network namespaces.

The picture, all of it in namespaces named ``<prefix>...`` (the root namespace is never touched)::

    <prefix>h1  eth0 192.0.2.11 ─┐   <prefix>ul: bridge ul0 192.0.2.1/24, ip_forward=1
    <prefix>h2  eth0 192.0.2.12 ─┘     (each host's veth has its underlay end on ul0)
                                     ext0 203.0.113.254/24 ── eth0 203.0.113.1/24  <prefix>ext

IPv6 towards the outside world (issue 20): each segment also has a /64 of 2001:db8::/32 (ul0
2001:db8:0:2::1, ul1 2001:db8:0:3::1, a host at ``::(10 + index)`` with a default route via it,
all ``nodad``), the outside world is 2001:db8:0:ff::1 behind ext0's 2001:db8:0:ff::fe, and the
underlay forwards IPv6. The outside world has routes to the segments only, not to container
prefixes: an IPv6 packet from a container arrives with its own source (routed, the default)
and only a masqueraded one (``masquerade6: true``) can be answered. The overlay's underlay
stays IPv4.

The underlay namespace is both the switch between hosts and their router to the "outside world"
(``<prefix>ext``). There is no NAT in the underlay, so a packet from a host reaches the outside
with whatever source it left the host with: 192.0.2.x, once the agent masquerades container
traffic to its host's underlay address.

A *routed* lab (``Lab(prefix, routed=True)``) has a second segment in the same underlay namespace,
bridge ul1 198.51.100.1/24, and puts odd-numbered hosts on it, so that host-to-host traffic between
the two segments crosses one router (TTL - 1), as in a data centre with one subnet per rack::

    <prefix>h0  eth0 192.0.2.10    ── ul0 192.0.2.1/24    ┐ <prefix>ul routes between them
    <prefix>h1  eth0 198.51.100.11 ── ul1 198.51.100.1/24 ┘ and to <prefix>ext as above

A host's address is a pure function of its index and the mode (``host_ip``): re-ensuring a lab
with the same options never renumbers it. The mode is recorded in the kernel, as the ifalias of
ul0 (``sdnctl-lab:flat`` / ``sdnctl-lab:routed``; none = flat, the only mode of older labs), so
nothing is written to disk. Switching the mode of a lab that has hosts would renumber them, so it
is refused (LabError: tear the lab down first); an underlay without hosts is simply converted.

MTU. Every underlay link, the host's eth0, its underlay end and the bridges (the router's
interfaces), gets the lab's MTU (default 1500). A bridge born at 1500 gets any other MTU set
explicitly, which pins it: an unpinned bridge follows its smallest port and falls back to 1500
when its last port goes. An MTU that differs is changed in place (same ifindex), and only in
what is re-ensured: pass the new MTU for every ``ensure_*`` call (as ``sdnctl up`` does).

The external link gets ``min(mtu, 1500)``. The outside world is the Internet, whose MTU is 1500:
a jumbo-frame underlay does not make the uplink jumbo (the underlay router sends "fragmentation
needed" for a bigger DF packet, as a real site's border does). An underlay smaller than 1500
models a site whose links are all that small (one carried in a tunnel, say), uplink included, so
that no lab link is bigger than the underlay except where the Internet caps it.

Every veth pair is created in place, from the underlay's netlink socket with the peer born in the
far namespace (``IFLA_NET_NS_FD``): moving a device between namespaces is slow, and a half-moved
device is a leak in the wrong namespace. The underlay end of a host's veth is named from a short
hash of the host name and carries the host name as its ifalias, so that a hash collision is an
error rather than one host silently adopting another's link. It is also in the device group
``UPLINK_GROUP``, so that teardown deletes all of them in one request: the kernel waits out an
RCU grace period for each deletion request (44 ms here), and 100 hosts' links deleted one by
one took 4.4 s of a teardown's 4.7, where one request for the group waits once.

Every ``ensure_*`` reads the kernel first and changes only what differs: an existing, correct lab
is left untouched (same ifindexes). The netlink steps themselves (bridge, veth pair, addresses,
routes, ip_forward) are the kernel package's (``agent.kernel.iproute``), as the agent's are. A
host whose namespace is new is made by two batches of raw requests instead (``agent.kernel.rtnl``,
one per namespace: 100 hosts in 0.9 s, where the checked steps through pyroute2 took 2.2-2.6 s);
a request refused there (a stale link in the way) undoes it, and the checked steps deal with it.
Setup rolls back what the failing call created; teardown keeps going and reports every failure
at the end.

The process helpers run one agent per lab host: ``nsenter --net=PATH`` (not ``ip netns exec``,
which remounts /sys and so drops cgroup mounts), detached in its own session.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import ipaddress
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from agent.kernel import iproute, procfs, procs, rtnl
from agent.kernel.errors import KernelError
from agent.kernel.iproute import delete_link, reader_in
from agent.kernel.netns import (
    NETNS_RUN_DIR,
    create_netns,
    is_netns,
    netns_inode,
    netns_path,
    open_netlink_fd,
    remove_netns,
)
from agent.kernel.rtnl import NetlinkError, Reader
from sdnctl.api.model import NAME_RE

UNDERLAY_SUFFIX = "ul"
EXTERNAL_SUFFIX = "ext"
RESERVED_HOST_NAMES = frozenset({UNDERLAY_SUFFIX, EXTERNAL_SUFFIX})


@dataclass(frozen=True)
class Segment:
    """One underlay subnet: a bridge in the underlay namespace; its address is the gateway."""

    bridge: str
    gateway: str
    prefixlen: int = 24
    gateway6: str = ""  # its IPv6 gateway, on a /64 (for the outside world's IPv6)

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"{self.gateway}/{self.prefixlen}", strict=False)

    @property
    def network6(self) -> ipaddress.IPv6Network:
        return ipaddress.IPv6Network(f"{self.gateway6}/64", strict=False)


SEGMENTS = (Segment("ul0", "192.0.2.1", gateway6="2001:db8:0:2::1"),
            Segment("ul1", "198.51.100.1", gateway6="2001:db8:0:3::1"))
UNDERLAY_BRIDGE = SEGMENTS[0].bridge  # the first segment's bridge, carrying the mode alias
UNDERLAY_GATEWAY = SEGMENTS[0].gateway
UNDERLAY_PREFIXLEN = SEGMENTS[0].prefixlen
UNDERLAY_NET = SEGMENTS[0].network
MODE_ALIAS = {False: "sdnctl-lab:flat", True: "sdnctl-lab:routed"}  # ifalias of ul0
HOST_DEV = "eth0"
HOST_IP_OFFSET = 10  # host index i gets .(10 + i) in its segment
MAX_HOST_INDEX = 254 - HOST_IP_OFFSET
LAB_MTU = 1500  # the default underlay MTU
EXTERNAL_MTU = 1500  # the Internet's: the external link never exceeds it
MIN_MTU, MAX_MTU = 68, 65535  # IPv4's minimum; the largest a veth or bridge accepts

EXTERNAL_IP = "203.0.113.1"
#: The outside world's IPv6 address and the underlay's towards it (documentation prefix): an
#: IPv6 packet from a container reaches it with its own source, or the host's with masquerade6.
EXTERNAL_IP6 = "2001:db8:0:ff::1"
EXTERNAL_GATEWAY6 = "2001:db8:0:ff::fe"
EXTERNAL_GATEWAY = "203.0.113.254"  # the underlay's address towards the outside
EXTERNAL_PREFIXLEN = 24
EXTERNAL_DEV = "eth0"  # in <prefix>ext
UPLINK_DEV = "ext0"  # in <prefix>ul, peer of EXTERNAL_DEV
UPLINK_GROUP = 0x5DC1AB  # the device group of hosts' underlay ends, in <prefix>ul alone
MAIN_TABLE = 254

PREFIX_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")

SPAWN_TIMEOUT = 5.0  # seconds for nsenter to enter the namespace and exec


class LabError(RuntimeError):
    """A lab step failed; the message names the verb and the object, the cause is chained."""


@dataclass(frozen=True)
class LabHost:
    name: str
    netns: str  # /run/netns/<prefix><name>
    underlay_ip: str  # "" while the host has no underlay address (half-built)
    underlay_dev: str = HOST_DEV


def default_prefix(topology: str) -> str:
    """``sdn-<topology>-``, with a long topology name shortened so namespace names stay short."""
    short = topology
    if len(topology) > 6:
        short = topology[:3] + hashlib.sha256(topology.encode()).hexdigest()[:3]
    return f"sdn-{short}-"


def host_segment(index: int, routed: bool = False) -> Segment:
    """The underlay segment of lab host ``index``: ul0 when flat; by parity when routed."""
    if not 0 <= index <= MAX_HOST_INDEX:
        raise ValueError(f"lab host index {index} is outside 0..{MAX_HOST_INDEX}")
    return SEGMENTS[index % 2] if routed else SEGMENTS[0]


def host_ip(index: int, routed: bool = False) -> str:
    """The underlay address of lab host ``index`` (0..244): always ``.(10 + index)``.

    Flat: 192.0.2.(10 + index). Routed: an even index on 192.0.2.0/24, an odd one on
    198.51.100.0/24, same last octet: 0 -> 192.0.2.10, 1 -> 198.51.100.11, 2 -> 192.0.2.12.
    The last octet names the host in both modes, and two hosts never share one.
    """
    return str(host_segment(index, routed).network.network_address + HOST_IP_OFFSET + index)


def host_ip6(index: int, routed: bool = False) -> str:
    """A host's IPv6 address on its segment: for IPv6 towards the outside world and, with
    ``lab: {underlay6: true}``, its agent's underlay address (VXLAN over IPv6, issue 20)."""
    return str(host_segment(index, routed).network6[HOST_IP_OFFSET + index])


def uplink_name(host: str) -> str:
    """The underlay end of a host's veth: ``h`` + 8 hex digits of the host name's hash."""
    return "h" + hashlib.sha256(host.encode()).hexdigest()[:8]


class Lab:
    """The lab hosts of one prefix. Nothing is cached: each call opens its own netlink sockets
    and reads the kernel, so a new ``Lab(prefix)`` adopts what an earlier process built. One
    caller at a time per prefix; prefixes must not be prefixes of one another.

    ``mtu`` is the underlay's MTU; ``routed`` puts hosts on two subnets joined by the underlay
    router (see the module's note). Pass the same options every time for one lab: a different
    MTU is repaired in place, a different ``routed`` is refused once the lab has hosts.
    """

    EXTERNAL_IP = EXTERNAL_IP

    def __init__(self, prefix: str, mtu: int = LAB_MTU, routed: bool = False) -> None:
        if not PREFIX_RE.match(prefix):
            raise ValueError(f"invalid lab prefix {prefix!r}")
        if not MIN_MTU <= mtu <= MAX_MTU:
            raise ValueError(f"lab underlay MTU {mtu} is outside {MIN_MTU}..{MAX_MTU}")
        self.prefix = prefix
        self.mtu = mtu
        self.routed = routed

    @property
    def segments(self) -> tuple[Segment, ...]:
        """The underlay subnets this lab has: ul0, and ul1 when routed."""
        return SEGMENTS if self.routed else SEGMENTS[:1]

    @property
    def external_mtu(self) -> int:
        return min(self.mtu, EXTERNAL_MTU)

    # -- names -------------------------------------------------------------------------------

    def underlay_netns(self) -> str:
        return netns_path(self.prefix + UNDERLAY_SUFFIX)

    def external_netns(self) -> str:
        return netns_path(self.prefix + EXTERNAL_SUFFIX)

    def host_netns(self, name: str) -> str:
        return netns_path(self.prefix + _check_host_name(name))

    # -- underlay ----------------------------------------------------------------------------

    def ensure_underlay(self) -> None:
        """The underlay namespace: bridge ``ul0`` (192.0.2.1/24), when routed also ``ul1``
        (198.51.100.1/24), all at the lab's MTU, and forwarding on."""
        path = self.underlay_netns()
        with contextlib.ExitStack() as rollback:
            if create_netns(path):
                rollback.callback(remove_netns, path)
            with reader_in(path) as ipr:
                try:
                    self._ensure_mode(ipr)
                    for segment in self.segments:
                        bridge = iproute.ensure_bridge(ipr, segment.bridge, self.mtu,
                                                       error=LabError)
                        iproute.ensure_addresses(ipr, bridge,
                                                 [(segment.gateway, segment.prefixlen)],
                                                 error=LabError)
                        iproute.ensure_addresses6(ipr, bridge, [f"{segment.gateway6}/64"],
                                                  error=LabError)
                except NetlinkError as e:
                    raise LabError(f"could not set up the underlay of lab {self.prefix!r}") from e
            iproute.ensure_ip_forward(path, error=LabError, ipv6=True)
            rollback.pop_all()

    def _ensure_mode(self, ipr: Reader) -> None:
        """Record ``routed`` on ul0 and drop the bridges of the other mode.

        A lab with hosts keeps its mode: converting it would renumber every odd-numbered host.
        """
        wanted = MODE_ALIAS[self.routed]
        bridge = ipr.link(UNDERLAY_BRIDGE)
        fresh = bridge is None  # a new underlay: no host is wired to it, whatever exists
        if bridge is None:
            bridge = iproute.ensure_bridge(ipr, UNDERLAY_BRIDGE, self.mtu, error=LabError)
        have = bridge.alias or MODE_ALIAS[False]
        if have == wanted:
            return
        if not fresh and self._host_names():
            raise LabError(f"could not make lab {self.prefix!r} "
                           f"{'routed' if self.routed else 'flat'}: it has hosts built "
                           f"{'flat' if self.routed else 'routed'}; tear it down first")
        iproute.set_link(ipr, bridge, alias=wanted, error=LabError)
        for segment in SEGMENTS:
            link = ipr.link(segment.bridge)
            if segment not in self.segments and link is not None:
                delete_link(ipr, link, f"bridge {segment.bridge!r} of the other mode", LabError)

    # -- hosts -------------------------------------------------------------------------------

    def ensure_host(self, name: str, index: int, known: list[LabHost] | None = None,
                    underlay_ready: bool = False) -> LabHost:
        """Host namespace ``<prefix><name>`` with eth0 = ``host_ip(index, routed)`` on its
        segment, default route via the segment's gateway, at the lab's MTU.

        An existing, correct host is left untouched; a wrong detail (address, route, MTU, a
        broken veth) is repaired, in place where the kernel allows. The index must stay the same
        for a host across runs: the caller keeps it (the host's position in the topology).
        ``known``: ``hosts()`` as the caller read it once for several hosts (reading it is a
        netlink socket per host: once per host made a 100-host `up` quadratic).
        ``underlay_ready``: the caller ensured the underlay just before (once for all hosts).
        """
        path = self.host_netns(name)
        segment = host_segment(index, self.routed)
        address = host_ip(index, self.routed)
        addresses = (address, host_ip6(index, self.routed))
        if not underlay_ready:
            self.ensure_underlay()  # first: it refuses a mode change before any renumbering
        for other in self.hosts() if known is None else known:
            if other.name != name and other.underlay_ip == address:
                raise LabError(f"could not add lab host {name!r}: {address} is {other.name!r}'s")
        if not self._make_host(path, name, segment, addresses) and \
                not self._wired(path, name, segment, addresses):  # (a namespace there already)
            self._in_new_netns(path, f"could not set up lab host {name!r}",
                               lambda ul, host, rollback: self._wire_host(
                                   ul, host, path, name, segment, addresses, rollback))
        return LabHost(name=name, netns=path, underlay_ip=address)

    def _make_host(self, path: str, name: str, segment: Segment,
                   addresses: tuple[str, str]) -> bool:
        """A new host as ``_wire_host`` makes it, in two batches of raw requests (one per
        namespace) instead of some twenty pyroute2 calls, each a turn of its asyncio loop:
        about 20 ms of CPU a host, 2 s of a 100-host `up`. False when the namespace exists
        already, or, having undone what it made, when a request is refused (a stale link
        where the veth goes, say): the checked path then deals with it."""
        address, address6 = addresses
        uplink = uplink_name(name)
        # (the rollback runs first, while the sockets are open; they close either way)
        with contextlib.ExitStack() as sockets, contextlib.ExitStack() as rollback:
            if not create_netns(path):
                return False
            rollback.callback(remove_netns, path)
            ul = sockets.enter_context(rtnl.Reader(open_netlink_fd(self.underlay_netns())))
            host = sockets.enter_context(rtnl.Reader(open_netlink_fd(path)))
            bridge = ul.link(segment.bridge)
            if bridge is None:
                return False
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                made = ul.send_all([rtnl.veth_add(uplink, self.mtu, bridge.index, HOST_DEV, fd,
                                                  group=UPLINK_GROUP)])[0] == 0
            finally:
                os.close(fd)
            if not made:
                return False
            rollback.callback(ul.send_all, [rtnl.link_delete(uplink)])
            eth0 = host.link(HOST_DEV)
            if eth0 is None or any(ul.send_all([rtnl.link_up(name, name=uplink)])) or any(
                    host.send_all([
                        rtnl.link_up("", index=eth0.index),
                        rtnl.address_add(eth0.index, f"{address}/{segment.prefixlen}"),
                        rtnl.route_replace("0.0.0.0/0", segment.gateway, eth0.index,
                                           MAIN_TABLE, iproute.RTPROT_STATIC, 0),
                        rtnl.address_add(eth0.index, f"{address6}/64"),
                        rtnl.route_replace("::/0", segment.gateway6, eth0.index, MAIN_TABLE,
                                           iproute.RTPROT_STATIC, 0)])):
                return False
            rollback.pop_all()
        return True

    def _wired(self, path: str, name: str, segment: Segment,
               addresses: tuple[str, str]) -> bool:
        """Whether the existing host at ``path`` is wired as ``_wire_host`` leaves it, read
        raw: two links and a bridge, one dump of addresses and one of routes per family,
        against ``_wire_host``'s some fifteen pyroute2 calls, each a turn of its asyncio loop
        (about 20 ms of CPU a host: 2 s of an `up` of an unchanged 100-host lab). False when
        anything differs or cannot be read: ``_wire_host`` then looks again and repairs."""
        address, address6 = addresses
        try:
            with contextlib.ExitStack() as sockets:
                ul = sockets.enter_context(rtnl.Reader(open_netlink_fd(self.underlay_netns())))
                host = sockets.enter_context(rtnl.Reader(open_netlink_fd(path)))
                bridge, near = ul.link(segment.bridge), ul.link(uplink_name(name))
                far = host.link(HOST_DEV)
                if bridge is None or near is None or far is None:
                    return False
                paired = near.kind == far.kind == "veth" and near.link == far.index and \
                    far.link == near.index
                up = near.flags & far.flags & iproute.IFF_UP
                if not (paired and up and near.alias == name and near.master == bridge.index
                        and near.mtu == far.mtu == self.mtu and near.group == UPLINK_GROUP):
                    return False
                on_eth0 = {ipaddress.ip_interface(cidr) for index, cidr
                           in host.global_addresses() if index == far.index}
                v4 = {a for a in on_eth0 if a.version == 4}
                if v4 != {ipaddress.ip_interface(f"{address}/{segment.prefixlen}")} or \
                        ipaddress.ip_interface(f"{address6}/64") not in on_eth0:
                    return False
                return all(any(
                    r.dst_len == 0 and r.table == MAIN_TABLE and r.oif == far.index
                    and r.gateway is not None
                    and ipaddress.ip_address(r.gateway) == ipaddress.ip_address(gateway)
                    for r in host.routes(family))
                    for family, gateway in ((socket.AF_INET, segment.gateway),
                                            (socket.AF_INET6, segment.gateway6)))
        except (OSError, rtnl.NetlinkError):
            return False

    def _in_new_netns(self, path: str, what: str,
                      wire: Callable[[Reader, Reader, contextlib.ExitStack], None]) -> None:
        """Create the namespace at ``path`` unless it exists and ``wire`` it to the underlay
        (``wire(underlay socket, its socket, rollback)``); a failure undoes what was created and
        raises LabError(``what``)."""
        with contextlib.ExitStack() as sockets:
            ul = sockets.enter_context(reader_in(self.underlay_netns()))
            with contextlib.ExitStack() as rollback:
                if create_netns(path):
                    rollback.callback(remove_netns, path)
                ipr = sockets.enter_context(reader_in(path))
                try:
                    wire(ul, ipr, rollback)
                except NetlinkError as e:
                    raise LabError(what) from e
                rollback.pop_all()

    def _wire_host(self, ul: Reader, host: Reader, path: str, name: str, segment: Segment,
                   addresses: tuple[str, str], rollback: contextlib.ExitStack) -> None:
        address, address6 = addresses
        bridge = iproute.require_link(ul, segment.bridge, error=LabError).index
        near, far = iproute.ensure_veth_pair(ul, uplink_name(name), host, path, HOST_DEV,
                                             alias=name, master=bridge, mtu=self.mtu,
                                             rollback=rollback, error=LabError)
        iproute.ensure_up(ul, near, error=LabError)
        if near.group != UPLINK_GROUP:
            iproute.set_link(ul, near, group=UPLINK_GROUP, error=LabError)
        iproute.ensure_addresses(host, far, [(address, segment.prefixlen)], error=LabError)
        iproute.ensure_route(host, "0.0.0.0/0", segment.gateway, far.index, error=LabError)
        iproute.ensure_addresses6(host, far, [f"{address6}/64"], error=LabError)
        iproute.ensure_route(host, "::/0", segment.gateway6, far.index, error=LabError)

    def hosts(self) -> list[LabHost]:
        """The lab hosts that exist now, found by the prefix under /run/netns, sorted by name."""
        found = []
        for name in self._host_names():
            path = netns_path(self.prefix + name)
            found.append(LabHost(name=name, netns=path, underlay_ip=_underlay_ip(path)))
        return found

    def _host_names(self) -> list[str]:
        try:
            entries = os.listdir(NETNS_RUN_DIR)
        except FileNotFoundError:
            return []
        names = []
        for entry in entries:
            rest = entry[len(self.prefix):]
            if (entry.startswith(self.prefix) and rest not in RESERVED_HOST_NAMES
                    and NAME_RE.match(rest) and is_netns(netns_path(entry))):
                names.append(rest)
        return sorted(names)

    def remove_host(self, name: str) -> None:
        """Delete the host's veth (both ends, at once) and its namespace. Gone is success.

        The veth is deleted explicitly: a namespace that a process still holds (an agent not
        yet stopped) outlives its mount, and its veth would stay on the underlay bridge.
        """
        path = self.host_netns(name)
        ul_path = self.underlay_netns()
        if is_netns(ul_path):
            with reader_in(ul_path) as ul:
                link = ul.link(uplink_name(name))
                if link is not None and link.alias == name:
                    delete_link(ul, link, f"lab host {name!r}'s veth", LabError)
        try:
            remove_netns(path)
        except OSError as e:
            raise LabError(f"could not remove lab host namespace {path}") from e

    def _remove_uplinks(self) -> None:
        """Delete the underlay ends of every host's veth (their peers go with them) in one
        request: the group ``UPLINK_GROUP`` (a lab made before the group is left to
        ``remove_host``, link by link)."""
        path = self.underlay_netns()
        if not is_netns(path):
            return
        with rtnl.Reader(open_netlink_fd(path)) as ul:
            code = ul.send_all([rtnl.group_delete(UPLINK_GROUP)])[0]
        if code not in (0, errno.ENODEV):  # (ENODEV: no link in the group)
            raise LabError(f"could not delete the lab hosts' links: {os.strerror(code)}")

    # -- the outside world -------------------------------------------------------------------

    def ensure_external(self) -> str:
        """``<prefix>ext`` (203.0.113.1/24), wired to the underlay (203.0.113.254/24), with a
        route back to each underlay subnet; its link's MTU is ``external_mtu``."""
        self.ensure_underlay()
        path = self.external_netns()

        def wire(ul: Reader, ext: Reader, rollback: contextlib.ExitStack) -> None:
            near, far = iproute.ensure_veth_pair(ul, UPLINK_DEV, ext, path, EXTERNAL_DEV,
                                                 alias="external", master=None,
                                                 mtu=self.external_mtu, rollback=rollback,
                                                 error=LabError)
            iproute.ensure_up(ul, near, error=LabError)
            iproute.ensure_addresses(ul, near, [(EXTERNAL_GATEWAY, EXTERNAL_PREFIXLEN)],
                                     error=LabError)
            iproute.ensure_addresses(ext, far, [(EXTERNAL_IP, EXTERNAL_PREFIXLEN)],
                                     error=LabError)
            wanted = [segment.network for segment in self.segments]
            for network in wanted:
                iproute.ensure_route(ext, str(network), EXTERNAL_GATEWAY, far.index,
                                     error=LabError)
            iproute.remove_other_routes(ext, wanted, EXTERNAL_GATEWAY, error=LabError)
            iproute.ensure_addresses6(ul, near, [f"{EXTERNAL_GATEWAY6}/64"], error=LabError)
            iproute.ensure_addresses6(ext, far, [f"{EXTERNAL_IP6}/64"], error=LabError)
            for segment in self.segments:  # no route to container prefixes: routed IPv6
                iproute.ensure_route(ext, str(segment.network6), EXTERNAL_GATEWAY6, far.index,
                                     error=LabError)

        self._in_new_netns(path, "could not set up the lab's external namespace", wire)
        return path

    # -- teardown ----------------------------------------------------------------------------

    def teardown(self) -> None:
        """Remove every host, the external and the underlay namespace; report all failures."""
        failures: list[Exception] = []
        steps: list[tuple[str, Any]] = [("remove the lab hosts' links", self._remove_uplinks)]
        steps += [
            (f"remove lab host {name!r}", lambda name=name: self.remove_host(name))
            for name in self._host_names()
        ]
        steps += [
            ("remove the external namespace", lambda: remove_netns(self.external_netns())),
            ("remove the underlay namespace", lambda: remove_netns(self.underlay_netns())),
        ]
        for what, step in steps:
            try:
                step()
            except Exception as e:
                e.add_note(f"while trying to {what} (lab prefix {self.prefix!r})")
                failures.append(e)
        if failures:
            raise ExceptionGroup(f"lab {self.prefix!r} teardown had failures", failures)


# -- kernel helpers: idempotent, each reads before it writes --------------------------------------


def _check_host_name(name: str) -> str:
    if not NAME_RE.match(name) or name in RESERVED_HOST_NAMES:
        raise ValueError(f"invalid lab host name {name!r}")
    return name


def _underlay_ip(path: str) -> str:
    """The host's first address in an underlay subnet on eth0, or "" (half-built host). Read
    raw (``rtnl``): through pyroute2 it took 3.5 ms a host, a third of a second of every `up`
    of a 100-host lab."""
    try:
        with rtnl.Reader(open_netlink_fd(path)) as ipr:
            link = ipr.link(HOST_DEV)
            if link is None:
                return ""
            for index, cidr in ipr.ipv4_addresses():
                address = cidr.split("/")[0]
                if index == link.index and any(
                        ipaddress.IPv4Address(address) in s.network for s in SEGMENTS):
                    return address
    except (OSError, rtnl.NetlinkError):  # the namespace went away under us
        return ""
    return ""


# -- processes ------------------------------------------------------------------------------------

# Popen objects of what we spawned, by PID: kept so that they are reaped (no zombies, no
# ResourceWarning) by process_alive/stop_process.
_children: dict[int, subprocess.Popen[bytes]] = {}


def spawn_in_netns(netns_path: str, argv: list[str], log_path: str,
                   env: dict[str, str] | None = None) -> int:
    """Run ``argv`` in the network namespace at ``netns_path``, detached; return its PID.

    ``nsenter`` execs ``argv``, so the PID is that of ``argv`` itself. Returns once the process
    has entered the namespace and exec'd (or raises, pointing at the log). ``env`` is added to
    this process's environment (not a replacement: nsenter needs PATH). stdout and stderr are
    appended to ``log_path``.
    """
    if not argv:
        raise ValueError("spawn_in_netns needs a command")
    if not is_netns(netns_path):
        raise LabError(f"could not run {argv[0]!r}: {netns_path} is not a network namespace")
    nsenter = shutil.which("nsenter") or "/usr/bin/nsenter"
    full_env = None if env is None else {**os.environ, **env}
    with open(log_path, "ab") as log:
        try:
            proc = subprocess.Popen(
                [nsenter, f"--net={netns_path}", "--", *argv],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, close_fds=True, env=full_env,
            )
        except OSError as e:
            raise LabError(f"could not start {argv[0]!r} in {netns_path}") from e
    _children[proc.pid] = proc
    _wait_entered(proc, netns_inode(netns_path), os.path.realpath(nsenter), log_path)
    return proc.pid


class AgentSpawner:
    """Lab agents started from one fork server (``agent.forkserver``): the agent's modules are
    imported once, not once per host (at 100 hosts that was ~100 s of CPU, issue 21). Each
    :meth:`spawn` answers the agent's PID once it is forked (it enters its namespace at once);
    :meth:`close` ends the server, the agents run on. ``label`` goes into every agent's
    command line (a lab's prefix: what finds a test's processes)."""

    def __init__(self, label: str, log_path: str) -> None:
        self.label = label
        self.log_path = log_path
        self._proc: subprocess.Popen[str] | None = None

    def _server(self) -> subprocess.Popen[str]:
        if self._proc is None:
            with open(self.log_path, "ab") as log:
                try:
                    self._proc = subprocess.Popen(
                        [sys.executable, "-m", "agent.forkserver", "--label", self.label],
                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
                        close_fds=True, start_new_session=True)
                except OSError as e:
                    raise LabError("could not start the agents' fork server") from e
        return self._proc

    def spawn(self, netns_path: str, argv: list[str], log_path: str) -> int:
        """Start ``agent.main`` with ``argv`` (its options) in ``netns_path``; its PID."""
        if not is_netns(netns_path):
            raise LabError(f"could not start an agent: {netns_path} is not a network namespace")
        proc = self._server()
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(json.dumps({"argv": argv, "netns": netns_path,
                                         "log": log_path}) + "\n")
            proc.stdin.flush()
            answer = proc.stdout.readline()
            pid = int(json.loads(answer)["pid"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            try:
                with open(self.log_path, errors="replace") as f:
                    tail = f.read()[-1500:]
            except OSError:
                tail = ""
            raise LabError(f"the agents' fork server failed ({self.log_path}):\n{tail}") from e
        _wait_forked(pid, netns_inode(netns_path), log_path)
        return pid

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError):
            assert proc.stdin is not None
            proc.stdin.close()
        try:
            proc.wait(timeout=SPAWN_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    def __enter__(self) -> AgentSpawner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _wait_forked(pid: int, netns_ino: int, log_path: str) -> None:
    """Until the forked agent ``pid`` is in its namespace (it enters it first thing)."""
    deadline = time.monotonic() + SPAWN_TIMEOUT
    while time.monotonic() < deadline:
        try:
            if os.stat(f"/proc/{pid}/ns/net").st_ino == netns_ino:
                return
        except OSError:
            if not procfs.is_running(pid):
                raise LabError(f"the agent (pid {pid}) exited at once; see {log_path}") \
                    from None
        time.sleep(0.002)
    stop_process(pid)  # a half-started agent is not left running, as with _wait_entered
    raise LabError(f"the agent (pid {pid}) did not enter its namespace in {SPAWN_TIMEOUT}s; "
                   f"see {log_path}")


def _wait_entered(proc: subprocess.Popen[bytes], netns_ino: int, nsenter: str,
                  log_path: str) -> None:
    deadline = time.monotonic() + SPAWN_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            _children.pop(proc.pid, None)
            raise LabError(f"could not start {proc.args!r}: exited with {proc.returncode}, "
                           f"see {log_path}")
        with contextlib.suppress(OSError):  # mid-exec: /proc entries flicker
            entered = os.stat(f"/proc/{proc.pid}/ns/net").st_ino == netns_ino
            # The kernel switches ``exe`` before the new program's arguments are on its stack:
            # until they are, /proc/PID/cmdline and environ read empty. Both mark the exec done.
            if (entered and os.readlink(f"/proc/{proc.pid}/exe") != nsenter
                    and _read(f"/proc/{proc.pid}/cmdline")):
                return
        time.sleep(0.002)
    stop_process(proc.pid)
    raise LabError(f"could not start {proc.args!r}: not running in its namespace after "
                   f"{SPAWN_TIMEOUT}s, see {log_path}")


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def process_start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (clock ticks after boot), or None if there is no such PID."""
    return procfs.start_time(pid)


def process_alive(pid: int, start_time: int | None = None) -> bool:
    """True if ``pid`` runs (a zombie is dead) and, when given, started at ``start_time``."""
    if pid <= 0:
        return False
    proc = _children.get(pid)
    if proc is not None and proc.poll() is not None:  # our zombie: reap it
        _children.pop(pid, None)
        return False
    return procfs.is_running(pid, start_time)


def stop_process(pid: int, grace: float = 3.0, *, start_time: int | None = None) -> None:
    """SIGTERM, up to ``grace`` seconds, then SIGKILL (the agent's ``procs.stop``, through a
    pidfd). Already gone is success; with ``start_time``, a PID now held by another process is
    treated as gone."""
    stop_processes([(pid, start_time)], grace)


def stop_processes(processes: Sequence[tuple[int, int | None]], grace: float = 3.0) -> None:
    """:func:`stop_process` of several (pid, start time) at once: SIGTERM to all, one grace
    period for all, then SIGKILL (``down`` stopped 100 agents one after another in 4.8 s)."""
    infos = []
    for pid, start_time in processes:
        if pid <= 0:
            raise ValueError(f"invalid pid {pid}")
        started = start_time if start_time is not None else procfs.start_time(pid)
        if started is not None:
            infos.append(procs.ProcInfo(pid, started))
    try:
        procs.stop_all(infos, grace)
    except KernelError as e:  # ("could not stop processes [...]: still running after SIGKILL")
        raise LabError(str(e)) from e
    finally:
        for pid, _ in processes:
            _reap(pid)


def _reap(pid: int) -> None:
    proc = _children.pop(pid, None)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=procs.KILL_WAIT)
        return
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
