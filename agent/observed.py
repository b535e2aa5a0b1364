"""What the agent reads back from the kernel, as plain frozen data (pure: no I/O).

Design note. ``agent/kernel/links.py`` and ``vxlan.py`` fill these from netlink dumps; the planner
(``agent/plan.py``) compares them with the desired state. Keeping them here lets the planner
and its tests import the kernel's vocabulary without importing the kernel code.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ObservedLink:
    ifname: str
    index: int
    kind: str | None
    alias: str | None
    master: str | None
    mtu: int
    up: bool
    addresses: tuple[str, ...]  # IPv4 and global IPv6, 'address/len', sorted


@dataclass(frozen=True)
class ObservedContainerNet:
    ifname: str
    index: int
    up: bool
    mtu: int
    addresses: tuple[str, ...]  # IPv4 and global IPv6, 'address/len', sorted
    gateway: str | None  # of the main table's IPv4 default route
    mac: str | None = None  # the interface's MAC address
    gateway6: str | None = None  # of the main table's IPv6 default route


@dataclass(frozen=True)
class ObservedVxlan(ObservedLink):
    vni: int
    port: int
    local: str | None
    underlay: str | None  # the name of the device it sends through (IFLA_VXLAN_LINK)
    learning: bool
    mac: str | None


@dataclass(frozen=True)
class PeerEntries:
    """One peer host as ``ensure_peers`` writes it (see the module note)."""

    subnet: str
    vtep_ip: str
    vtep_mac: str
    underlay_ip: str
    subnet6: str = ""  # dual-stack (issue 20): the peer's IPv6 lease, via its IPv6 VTEP address
    vtep_ip6: str = ""

    def routes(self) -> tuple[tuple[str, str], ...]:
        """(destination, via) of the peer's route in each family it has."""
        return tuple((dst, via) for dst, via in ((self.subnet, self.vtep_ip),
                                                 (self.subnet6, self.vtep_ip6)) if dst)

    def neighbours(self) -> tuple[tuple[str, str], ...]:
        """(address, MAC) of the peer's permanent neighbour in each family it has."""
        return tuple((ip, self.vtep_mac) for ip, dst in ((self.vtep_ip, self.subnet),
                                                         (self.vtep_ip6, self.subnet6)) if dst)


@dataclass(frozen=True)
class ObservedPeers:
    """What a VXLAN device of ours holds for its peers, each tuple sorted."""

    routes: tuple[tuple[str, str], ...] = ()  # (dst 'a.b.c.d/len', via), proto RTPROT_SDNCTL
    neighbours: tuple[tuple[str, str], ...] = ()  # (ip, mac), permanent
    fdb: tuple[tuple[str, str], ...] = ()  # (mac, underlay dst ip)


@dataclass(frozen=True)
class PreparedVeth:
    """A veth pair made ahead of its addresses (a CNI ADD's, while the controller allocates
    one: ``links.prepare_veth``): the host side up in its bridge but without our alias (a pass
    leaves a link without it alone, and ``ensure_veth`` adopts it), the peer down in the
    container's namespace with its name and MTU, and a MAC of the kernel's choosing."""

    host_ifname: str
    peer_index: int  # in the container's namespace
    host_mac: str = ""  # the host side's (the CNI result names it)
