"""The netlink façade for overlays: our VXLAN devices and their peer entries.

Overlays (flannel's VXLAN scheme, L3). Each overlay network has one VXLAN device per host
(``sdnx`` + 8 hex, alias ``sdnctl:vxlan/<network>``) with ``nolearning`` and no remote or
group: nothing is flooded and nothing is learnt from packets. Its address is the host's lease
network address as /32 (the VTEP address), its MAC the host's VTEP MAC. For each other member
host we keep exactly three entries, O(hosts) and nothing per remote container (on a
dual-stack overlay, issue 20, five: the route and the neighbour in each family, the IPv6 VTEP
address being the host's IPv6 lease's network address as /128, and the one FDB entry):

- a route ``<peer subnet> via <peer VTEP address> dev sdnx… onlink proto 211``;
- a permanent neighbour ``<peer VTEP address> lladdr <peer VTEP MAC>`` (NDA_PROTOCOL 211);
- an FDB entry ``<peer VTEP MAC> dst <peer underlay address> self permanent``.

The kernel keeps all three while the agent is down. Ownership: routes carry our protocol and
neighbours NDA_PROTOCOL 211, but the VXLAN driver stores no protocol for its FDB entries (the
attribute is accepted and dropped, kernel 6.18), so for the FDB the proof is the device itself:
every entry on a device of ours is ours. Writes go FDB, neighbour, route, so the route never
exists without the entries it needs (the kernel would otherwise try ARP on a device that cannot
answer and cache a FAILED neighbour).

FDB traps (kernel): ``append`` of a unicast MAC that exists with another ``dst`` is accepted
and silently does nothing, so changing a peer's underlay address needs ``replace``; ``del``
of (MAC, dst) where the MAC exists with another dst is also accepted and does nothing.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Iterable, Sequence

from agent.kernel import rtnl
from agent.kernel.errors import KernelError
from agent.kernel.linkbase import (
    MAIN_TABLE,
    NTF_SELF,
    NUD_NOARP,
    NUD_PERMANENT,
    RTNH_F_ONLINK,
    RTPROT_SDNCTL,
    LinkBase,
    delete_link,
    write,
)
from agent.kernel.rtnl import NetlinkError
from agent.names import ALIAS_PREFIX, VXLAN_PREFIX
from agent.observed import ObservedPeers, ObservedVxlan, PeerEntries


def _peers_by_index(
    indexes: Iterable[int], routes: Iterable[rtnl.Route], neighbours: Iterable[rtnl.Neighbour],
    fdb: Iterable[rtnl.Neighbour],
) -> dict[int, ObservedPeers]:
    wanted = set(indexes)
    found: dict[int, tuple[list[tuple[str, str]], list[tuple[str, str]], list[tuple[str, str]]]]
    found = {i: ([], [], []) for i in wanted}
    for r in routes:
        if r.oif in wanted and r.proto == RTPROT_SDNCTL and r.table == MAIN_TABLE:
            found[r.oif][0].append((f"{r.dst or '0.0.0.0'}/{r.dst_len}", r.gateway or ""))
    for n in neighbours:
        if n.index in wanted and n.state & NUD_PERMANENT and n.dst and n.lladdr:
            found[n.index][1].append((n.dst, n.lladdr))
    for f in fdb:
        if f.index in wanted and f.dst is not None and f.lladdr:
            found[f.index][2].append((f.lladdr, f.dst))
    return {i: ObservedPeers(tuple(sorted(r)), tuple(sorted(n)), tuple(sorted(f)))
            for i, (r, n, f) in found.items()}


def _network(cidr: str) -> str:
    """``cidr``'s network ('10.1.2.0/24' of '10.1.2.3/24')."""
    return str(ipaddress.ip_network(cidr, strict=False))


def _our_vxlan(kind: str | None, alias: str, name: str) -> bool:
    """A VXLAN device of ours: our alias, or (made before aliases) none and our name prefix."""
    return kind == "vxlan" and (
        alias.startswith(ALIAS_PREFIX) or (not alias and name.startswith(VXLAN_PREFIX)))


class VxlanLinks(LinkBase):
    """VXLAN devices and their peers' routes, neighbours and FDB entries (module note)."""

    def ensure_vxlan(
        self,
        name: str,
        alias: str,
        vni: int,
        local_ip: str,
        port: int,
        underlay_dev: str,
        mtu: int,
        mac: str,
        vtep_cidr: str,
        vtep6_cidr: str = "",
    ) -> int:
        """A VXLAN device with ``nolearning`` and no remote or group, up, with this VNI, UDP
        destination port, source address ``local_ip``, underlay device, MTU, MAC and exactly the
        address ``vtep_cidr`` (the host lease's network address as /32). Returns its index.

        The kernel refuses to change a VNI or a port in place (EOPNOTSUPP), so a device of ours
        with another VNI or port, or with a remote or group (which cannot be unset), is DELETED
        AND RECREATED: its index changes and the peer entries on it go with it, so the caller
        must program its peers again. Local address, underlay device, learning, MTU, MAC,
        address and alias are fixed in place (kernel 6.18 accepts all of those).
        """
        self._check_thread()
        reader = self._reader
        what = f"vxlan {name!r}"
        underlay = self._get(reader, underlay_dev, what)
        link = self._get(reader, name, what)
        if underlay is None:
            raise KernelError(f"could not add {what}: underlay {underlay_dev!r} does not exist")
        mac = mac.lower()
        if link is not None:
            self._verify_ours(link, name, "vxlan", alias)
            vx = link.vxlan
            if vx is None or (vx.vni, vx.port) != (vni, port) or vx.remote is not None or (
                    # its underlay changed family (an IPv6 underlay, issue 20)
                    vx.local is not None and (":" in vx.local) != (":" in local_ip)):
                delete_link(reader, link, f"{what} to recreate it")
                link = None
        if link is None:
            link = self._create(reader, rtnl.link_add(
                name, "vxlan", mtu=mtu, mac=mac, up=True,
                data=rtnl.vxlan_data(vni=vni, port=port, local=local_ip, link=underlay.index,
                                     learning=False)), name, "vxlan", alias)
        else:
            self._fix_vxlan(reader, link, what, local_ip, underlay.index)
        self._fix_link(reader, link, what, mtu=mtu, mac=mac, up=True, alias=alias)
        self._ensure_addresses(reader, link.index, vtep_cidr, what, vtep6_cidr)
        return link.index

    @staticmethod
    def _fix_vxlan(reader: rtnl.Reader, link: rtnl.Link, what: str, local_ip: str,
                   underlay: int) -> None:
        """One RTM_NEWLINK changing only the VXLAN attributes that differ (none: no request)."""
        vx = link.vxlan
        assert vx is not None  # (ensure_vxlan recreates a VXLAN device without its data)
        local = local_ip if vx.local != local_ip else ""
        data = rtnl.vxlan_data(local=local, link=underlay if vx.link != underlay else None,
                               learning=False if vx.learning else None)
        if data:
            changed = [name for name, differs in (("local", local), ("learning", vx.learning),
                                                  ("underlay", vx.link != underlay)) if differs]
            write(reader, [rtnl.link_set(link.index, kind="vxlan", data=data)],
                  f"could not set {changed} of {what}")

    def observe_vxlan(self, name: str) -> ObservedVxlan | None:
        """The VXLAN device ``name`` as the kernel has it, or None when there is none (or it is
        not a VXLAN device). A pass has them from ``dump_owned``."""
        found = self.observe_links(lambda link: link.ifname == name)
        return found[0] if found and isinstance(found[0], ObservedVxlan) else None

    def _dump_peers(self, indexes: Iterable[int]) -> dict[int, ObservedPeers]:
        """Route, neighbour and FDB dumps (each family) for all ``indexes``, read raw
        (``rtnl``): at 100 peers pyroute2's decoding of them was most of a full pass, and every
        agent runs one every resync interval."""
        reader = self._reader
        try:
            routes = [*reader.routes(socket.AF_INET), *reader.routes(socket.AF_INET6)]
            neighbours = [*reader.neighbours(socket.AF_INET),
                          *reader.neighbours(socket.AF_INET6)]
            fdb = reader.neighbours(rtnl.AF_BRIDGE)
        except (NetlinkError, OSError) as e:
            raise KernelError("could not dump routes, neighbours and FDB") from e
        return _peers_by_index(indexes, routes, neighbours, fdb)

    def observe_all_peers(self) -> dict[str, ObservedPeers]:
        """Peer entries of every VXLAN device of ours, by device name: one link dump, one route
        dump, one neighbour dump and one FDB dump in all."""
        self._check_thread()
        try:  # (raw: through pyroute2 this dump was half of an idle agent's full pass)
            links = self._reader.links()
        except (NetlinkError, OSError) as e:
            raise KernelError("could not dump links") from e
        ours = {link.index: link.ifname for link in links
                if _our_vxlan(link.kind, link.alias or "", link.ifname)}
        return {ours[i]: peers for i, peers in self._dump_peers(ours).items()}

    def observe_peers(self, name: str) -> ObservedPeers:
        """Peer entries of one VXLAN device (none when the device is missing)."""
        self._check_thread()
        index = self._vxlan_index(name)
        return ObservedPeers() if index is None else self._dump_peers([index])[index]

    def _vxlan_index(self, device: str) -> int | None:
        """The index of our VXLAN device ``device``, None when it is missing; a device of that
        name that is not ours is an error. Read raw (one get: every peer change asks)."""
        try:
            link = self._reader.link(device)
        except (NetlinkError, OSError) as e:
            raise KernelError(f"could not read vxlan {device!r}") from e
        if link is None:
            return None
        if not _our_vxlan(link.kind, link.alias or "", link.ifname):
            raise KernelError(f"{device!r} is not a VXLAN device of ours: refusing to touch it")
        return link.index

    def ensure_peer(
        self, device: str, subnet: str, vtep_ip: str, vtep_mac: str, underlay_ip: str,
        have: ObservedPeers | None = None,
    ) -> bool:
        """The three entries for one peer host on our VXLAN ``device``: FDB ``vtep_mac`` ->
        ``underlay_ip``, permanent neighbour ``vtep_ip`` -> ``vtep_mac`` and route ``subnet`` via
        ``vtep_ip`` onlink (see the module note). Entries already right are not written.
        Returns True when it wrote.

        Replacing moves an entry with the same key (the FDB entry of this MAC, the neighbour
        of this VTEP address, the main table's route to this subnet); entries under an OLD key
        (a peer's previous VTEP MAC, say) stay until ``remove_*`` is called for them.

        ``have``: the device's entries as just observed (``observe_all_peers``), to save three
        dumps and a lookup per peer: a host that joins N peers would otherwise dump O(N) entries
        N times.
        """
        return self.ensure_peers(device, [PeerEntries(subnet, vtep_ip, vtep_mac, underlay_ip)],
                                 have) > 0

    def ensure_peers(self, device: str, peers: Sequence[PeerEntries],
                     have: ObservedPeers | None = None) -> int:
        """``ensure_peer`` for many peers of one ``device`` at once: the device is looked up
        once, and every entry not already right (by ``have``, or one dump when None) is
        written in one batch of replace requests (FDB, neighbour, route per peer, in that
        order) sent before their acks are collected. Returns how many entries it wrote.

        A joining host programs every other host this way: 100 peers one ``ensure_peer`` at a
        time were ~400 pyroute2 round trips (~2.3 s on 2 CPUs)."""
        self._check_thread()
        index = self._vxlan_index(device)
        if index is None:
            raise KernelError(f"could not add {len(peers)} peers on {device!r}: the device does "
                              "not exist")
        if have is None:
            have = self._dump_peers([index])[index]
        requests: list[tuple[PeerEntries, rtnl.Request]] = []
        for peer in peers:
            mac = peer.vtep_mac.lower()
            subnet = _network(peer.subnet) if peer.subnet else ""  # "": IPv6-only
            if [d for m, d in have.fdb if m == mac] != [peer.underlay_ip]:
                requests.append((peer, rtnl.fdb_replace(index, mac, peer.underlay_ip,
                                                        NUD_PERMANENT | NUD_NOARP, NTF_SELF)))
            for vtep_ip, _ in peer.neighbours():
                if (vtep_ip, mac) not in have.neighbours:
                    requests.append((peer, rtnl.neighbour_replace(index, vtep_ip, mac,
                                                                  NUD_PERMANENT, RTPROT_SDNCTL)))
            for dst, via in peer.routes():
                dst = subnet if dst == peer.subnet else _network(dst)
                if [v for d, v in have.routes if d == dst] != [via]:
                    requests.append((peer, rtnl.route_replace(dst, via, index, MAIN_TABLE,
                                                              RTPROT_SDNCTL, RTNH_F_ONLINK)))
        if not requests:
            return 0
        try:
            codes = self._reader.send_all([request for _, request in requests])
        except (NetlinkError, OSError) as e:
            raise KernelError(f"could not add {len(peers)} peers on {device!r}") from e
        failed = [(peer, code) for (peer, _), code in zip(requests, codes, strict=True) if code]
        if failed:
            peer, code = failed[0]
            raise KernelError(
                f"could not add {len(failed)} of {len(requests)} peer entries on {device!r}, "
                f"first peer {peer.subnet} via {peer.vtep_ip} ({peer.vtep_mac}, "
                f"{peer.underlay_ip})") from NetlinkError(code)
        return len(requests)

    def remove_peers(self, device: str, routes: Sequence[str], neighbours: Sequence[str],
                     fdb: Sequence[tuple[str, str]]) -> int:
        """Delete our routes to ``routes``, the neighbours ``neighbours`` and the FDB entries
        ``fdb`` (MAC, destination) of ``device`` in one batch (routes, then neighbours, then
        FDB entries): a host that left takes three with it, on every other host. Missing
        entries (or no device) are success; returns how many the kernel deleted, as it says:
        a delete of (MAC, destination) whose MAC points elsewhere is acknowledged but deletes
        nothing, so name only entries known to be there (the planner's come from them)."""
        self._check_thread()
        index = self._vxlan_index(device)
        if index is None or not (routes or neighbours or fdb):
            return 0
        requests = [rtnl.route_delete(dst, index, MAIN_TABLE, RTPROT_SDNCTL) for dst in routes]
        requests += [rtnl.neighbour_delete(index, ip) for ip in neighbours]
        requests += [rtnl.fdb_delete(index, mac.lower(), dst, NTF_SELF) for mac, dst in fdb]
        try:
            codes = self._reader.send_all(requests)
        except (NetlinkError, OSError) as e:
            raise KernelError(f"could not remove {len(requests)} peer entries on {device!r}") \
                from e
        failed = [code for code in codes if code not in (0, errno.ESRCH, errno.ENOENT)]
        if failed:
            raise KernelError(f"could not remove {len(failed)} of {len(requests)} peer entries "
                              f"on {device!r}") from NetlinkError(failed[0])
        return codes.count(0)

