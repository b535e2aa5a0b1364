"""Which kernel announcements are drift: a change that takes away something the desired state
wants (pure: no I/O).

Design note. The agent listens to the kernel's announcements of its own namespace
(``agent/kernel/kevents.py``) so that drift is repaired at once rather than at the next full
pass (issue 21: "drift repaired in under 1 s"). An announcement is drift when it contradicts
the desired state, so our own writes never are, without keeping a list of what we wrote:

- a wanted link (bridge, VXLAN device, container veth) went away, or went from right (up, in
  the bridge it belongs to) to wrong, or was renamed away. A link's first announcement only
  records it (a link is made down and outside its bridge, then set up and enslaved);
- a wanted address (a bridge's gateway, a VTEP address), peer route, peer neighbour or peer
  FDB entry went away. Ours go only when a peer or a network went, so no longer wanted;
- a bandwidth limit's root qdisc went away from a veth or IFB that should have one;
- forwarding was turned off while a network needs it;
- an nftables transaction touched one of our tables and was not committed by one of our own
  threads (the kernel names the thread: ``NftCommit.pid``);
- announcements were lost: nothing can be trusted without looking.

What is drift asks for a full pass (it lists the firewall too): the pass finds the difference
and repairs it as the periodic one would. A false alarm costs one pass that does nothing; the
periodic full pass stays the safety net (for a container's own namespace, which is not
watched, and for changes no announcement names). Links are known by index: the announcements
name them, and the links each pass observed fill in those seen before we listened.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from agent.desired import DesiredState
from agent.drivers import driver_of
from agent.kernel.kevents import (
    AddressGone,
    Forwarding,
    KernelEvent,
    LinkChanged,
    NeighbourGone,
    NftCommit,
    Overrun,
    QdiscGone,
    RouteGone,
)
from agent.modes import MODES
from agent.names import bridge_name, ifb_name, veth_name, vxlan_name
from agent.netpolicy import TABLE as POLICY_TABLE
from agent.nftrules import TABLE_NAME
from agent.observed import ObservedLink
from agent.plan import LOCAL_BRIDGE_DRIVERS, wanted_links

#: Our nftables tables, by name (``inet``/``bridge sdnctl`` and the policy table).
OUR_TABLES = frozenset({TABLE_NAME, POLICY_TABLE})


@dataclass(frozen=True)
class Wanted:
    """What the desired state wants of the host's namespace, in the announcements' terms."""

    links: frozenset[str] = frozenset()
    masters: Mapping[str, str] = field(default_factory=dict)  # veth -> its bridge
    addresses: frozenset[tuple[str, str]] = frozenset()  # (link, 'address/len')
    routes: frozenset[tuple[str, str]] = frozenset()  # (VXLAN device, destination)
    neighbours: frozenset[tuple[str, str]] = frozenset()  # (VXLAN device, address)
    fdb: frozenset[tuple[str, str, str]] = frozenset()  # (VXLAN device, MAC, remote VTEP)
    shaped: frozenset[str] = frozenset()  # links with a root qdisc of ours
    forwarding: bool = False
    forwarding6: bool = False


def wanted(desired: DesiredState) -> Wanted:
    """``desired`` in the terms of the announcements (nothing before the first snapshot)."""
    if not desired.synced:
        return Wanted()
    networks = {n: net for n, net in desired.networks.items()
                if net.driver in LOCAL_BRIDGE_DRIVERS}
    masters: dict[str, str] = {}
    shaped: set[str] = set()
    for ctr in desired.containers.values():
        network = MODES[ctr.mode].bridge_network(ctr)
        if network is None:
            continue
        veth = veth_name(ctr.name, ctr.interface)
        masters[veth] = bridge_name(network)
        if ctr.ingress_bps:
            shaped.add(veth)
        if ctr.egress_bps:
            shaped.add(ifb_name(veth))
    addresses = {(bridge_name(n), cidr) for n, net in networks.items()
                 for cidr in net.gateway_cidrs}
    routes, neighbours, fdb = set(), set(), set()
    for n, net in networks.items():
        if not driver_of(net.driver).spans_hosts:
            continue
        device = vxlan_name(n)
        addresses |= {(device, cidr) for cidr in net.vtep_cidrs}
        for peer in net.peers:
            entries = peer.entries()
            routes |= {(device, dst) for dst, _ in entries.routes()}
            neighbours |= {(device, ip) for ip, _ in entries.neighbours()}
            fdb.add((device, peer.vtep_mac, peer.underlay_ip))
    return Wanted(links=frozenset(wanted_links(desired, networks)), masters=masters,
                  addresses=frozenset(addresses), routes=frozenset(routes),
                  neighbours=frozenset(neighbours), fdb=frozenset(fdb), shaped=frozenset(shaped),
                  forwarding=bool(networks),
                  forwarding6=any(net.subnet6 for net in networks.values()))


@dataclass
class _Link:
    name: str
    up: bool
    master: int | None


class Drift:
    """Tells drift among announcements (one thread's, or under the caller's lock).

    ``ours(pid)``: the thread ``pid`` belongs to this process (its nftables commits are ours).
    """

    def __init__(self, ours: Callable[[int], bool]) -> None:
        self._ours = ours
        self._links: dict[int, _Link] = {}
        self._expected_gone: collections.Counter[str] = collections.Counter()

    def observed(self, links: Mapping[str, ObservedLink]) -> None:
        """Links a pass read from the kernel: those no announcement told us of yet."""
        by_name = {link.ifname: link.index for link in links.values()}
        for link in links.values():
            if link.index not in self._links:
                master = by_name.get(link.master) if link.master else None
                self._links[link.index] = _Link(link.ifname, link.up, master)

    def expect_gone(self, name: str) -> None:
        """Our own code is about to delete the wanted link ``name`` (a CNI DEL takes the veth
        away before the controller forgets its container): its going is not drift. Counted:
        the announcements may come after the next ADD and DEL of the same attachment (the
        same name) were made, and each deletion is one of ours."""
        self._expected_gone[name] += 1

    def not_gone(self, name: str) -> None:
        """The deletion ``expect_gone`` announced did not happen (there was no such link)."""
        if self._expected_gone[name] > 1:
            self._expected_gone[name] -= 1
        else:
            del self._expected_gone[name]

    def check(self, events: Iterable[KernelEvent], want: Callable[[], Wanted]) -> list[str]:
        """Why each drift among ``events`` is one (empty: none is). ``want`` is asked only for
        an event that may be drift (our own nftables commit, the announcement of a route we
        just wrote, are not: a host joining a 100-host overlay asks nothing)."""
        return [reason for event in events if (reason := self._check(event, want))]

    def _check(self, event: KernelEvent, want: Callable[[], Wanted]) -> str | None:
        match event:
            case LinkChanged():
                return self._link(event, want)
            case NftCommit(tables, pid):
                if tables & OUR_TABLES and not self._ours(pid):
                    return f"nftables table(s) {', '.join(sorted(tables & OUR_TABLES))} " \
                           f"changed by process {pid}"
                return None
            case Overrun():
                return "kernel announcements lost"
        wanted = want()
        match event:
            case AddressGone(index, cidr) if (self._name(index), cidr) in wanted.addresses:
                return f"address {cidr} removed from {self._name(index)}"
            case RouteGone(oif, dst) if oif is not None and \
                    (self._name(oif), dst) in wanted.routes:
                return f"route {dst} removed from {self._name(oif)}"
            case NeighbourGone(index, False, dst) if \
                    (self._name(index), dst) in wanted.neighbours:
                return f"neighbour {dst} removed from {self._name(index)}"
            case NeighbourGone(index, True, dst, mac) if \
                    (self._name(index), mac, dst) in wanted.fdb:
                return f"FDB entry {mac} dst {dst} removed from {self._name(index)}"
            case QdiscGone(index, True) if self._name(index) in wanted.shaped:
                return f"root qdisc removed from {self._name(index)}"
            case Forwarding(ipv6, False) if (wanted.forwarding6 if ipv6 else wanted.forwarding):
                return f"IPv{6 if ipv6 else 4} forwarding turned off"
        return None

    def _name(self, index: int) -> str:
        link = self._links.get(index)
        return link.name if link is not None else ""

    def _link(self, event: LinkChanged, want: Callable[[], Wanted]) -> str | None:
        before = self._links.pop(event.index, None)
        expected = event.name in self._expected_gone  # (its last announcements are ours too)
        if event.gone:
            if expected:
                self.not_gone(event.name)  # (one expected deletion, announced)
                return None
            return f"link {event.name} deleted" if event.name in want().links else None
        now = self._links[event.index] = _Link(event.name, event.up, event.master)
        if before is None:  # a new link, or one not seen yet: recorded
            return None
        if expected or (before.name, before.up, before.master) == (now.name, now.up, now.master):
            return None  # (an announcement of another attribute: MTU, carrier, address)
        wanted = want()
        if before.name not in wanted.links:
            return None
        if before.name != event.name:
            return f"link {before.name} renamed {event.name}"
        if self._right(before, wanted) and not self._right(now, wanted):
            return f"link {event.name} set down or out of its bridge"
        return None

    def _right(self, link: _Link, want: Wanted) -> bool:
        master = want.masters.get(link.name)
        return link.up and (master is None or self._name(link.master or 0) == master)
