"""The netlink façade for bridge mode: bridges, veth pairs, container addresses and routes.

Design note. Everything we create is tagged so that resync can tell it apart from the rest of
the host: interface names start with ``sdn`` (``sdnb`` + 8 hex of sha1(network) for bridges,
``sdnv`` + 8 hex of sha1("container/interface") for the host side of a veth), every link carries
``IFLA_IFALIAS = "sdnctl:<owner key>"`` and every route we add has protocol ``RTPROT_SDNCTL``.

Every operation is an idempotent ``ensure_*`` / ``remove_*``: it reads the object back (one
request), compares it with what was asked and writes only the difference, so a second call with
the same arguments sends no write at all. A link that has our name but another kind or another
alias is somebody else's: it is an error, never reused.

The kernel ignores ``IFLA_IFALIAS`` in RTM_NEWLINK when it *creates* a link (only a later
RTM_SETLINK applies it), so creating costs one extra request and a crash between the two leaves a
link with our name and no alias. Such a link is adopted: the name is a hash of our owner key with
our prefix, and an empty alias can only be our own interrupted creation.

Veth peers are born inside the container namespace (``net_ns_fd`` in the peer attributes); no
device is ever moved between namespaces (10-40 ms each, LAB-NOTES).

Threads: pyroute2 0.9.7 binds an ``IPRoute`` to the thread that made it (from another thread a
request fails with ENOTSOCK), so a ``Links`` object and all its cached sockets must be made and
used by ONE thread. The reconciler owns it.

Overlays (flannel's VXLAN scheme, L3). Each overlay network has one VXLAN device per host
(``sdnx`` + 8 hex, alias ``sdnctl:vxlan/<network>``) with ``nolearning`` and no remote or
group: nothing is flooded and nothing is learnt from packets. Its address is the host's lease
network address as /32 (the VTEP address), its MAC the host's VTEP MAC. For each other member
host we keep exactly three entries, O(hosts) and nothing per remote container:

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
import os
import socket
import threading
from collections.abc import Iterable, Sequence
from typing import Any

from netaddr import IPNetwork
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from agent.kernel import rtnl
from agent.kernel.netns import (
    iproute_in,
    is_netns,
    netns_inode,
    open_netlink_fd,
    open_netlink_fds,
)
from agent.names import ALIAS_PREFIX, BRIDGE_PREFIX, VETH_PREFIX, VXLAN_PREFIX
from agent.observed import (
    ObservedContainerNet,
    ObservedLink,
    ObservedPeers,
    ObservedVxlan,
    PeerEntries,
)
from sdnctl.api import faults

RTPROT_SDNCTL = 211
IFF_UP = 0x1
MAIN_TABLE = 254
NUD_NOARP = 0x40
NUD_PERMANENT = 0x80
NTF_SELF = 0x02
RTNH_F_ONLINK = 0x04


def get_link(ipr: IPRoute, ifname: str) -> Any | None:
    """The link named ``ifname`` in ``ipr``'s namespace, or None when there is none."""
    try:
        return ipr.link("get", ifname=ifname)[0]
    except NetlinkError as e:
        if e.code == errno.ENODEV:
            return None
        raise


def delete_link(ipr: IPRoute, link: Any, what: str,
                error: type[Exception] | None = None) -> None:
    """Delete ``link`` (a message from ``get_link``); one already gone is success. Failures
    raise ``error`` (KernelError by default) naming ``what``."""
    try:
        ipr.link("del", index=link["index"])
    except NetlinkError as e:
        if e.code != errno.ENODEV:
            raise (error or KernelError)(f"could not delete {what}") from e


class KernelError(Exception):
    """A kernel operation failed; the message names the verb and the object."""


def _kind(msg: Any) -> str | None:
    info = msg.get_attr("IFLA_LINKINFO")
    return info.get_attr("IFLA_INFO_KIND") if info is not None else None


def _is_up(msg: Any) -> bool:
    return bool(msg["flags"] & IFF_UP)


def _cidr(addr_msg: Any) -> str:
    return f"{addr_msg.get_attr('IFA_ADDRESS')}/{addr_msg['prefixlen']}"


def _v4_by_index(addr_msgs: Iterable[Any]) -> dict[int, list[str]]:
    by_index: dict[int, list[str]] = {}
    for a in addr_msgs:
        if a["family"] == socket.AF_INET:
            by_index.setdefault(a["index"], []).append(_cidr(a))
    return by_index


def _default_route(route_msgs: Iterable[Any]) -> Any | None:
    for r in route_msgs:
        if r["dst_len"] == 0 and r.get_attr("RTA_TABLE") in (None, MAIN_TABLE):
            return r
    return None


def _vxlan_data(msg: Any) -> dict[str, Any]:
    """The IFLA_INFO_DATA attributes of a VXLAN link, by name."""
    info = msg.get_attr("IFLA_LINKINFO")
    data = info.get_attr("IFLA_INFO_DATA") if info is not None else None
    return dict(data["attrs"]) if data is not None else {}


def _route_dst(route: Any) -> str:
    return f"{route.get_attr('RTA_DST') or '0.0.0.0'}/{route['dst_len']}"


def _is_peer_route(route: Any, index: int) -> bool:
    return bool(route.get_attr("RTA_OIF") == index and route["proto"] == RTPROT_SDNCTL
                and route.get_attr("RTA_TABLE") in (None, MAIN_TABLE))


def _peers_by_index(
    indexes: Iterable[int], routes: Iterable[Any], neighbours: Iterable[Any], fdb: Iterable[Any],
) -> dict[int, ObservedPeers]:
    wanted = set(indexes)
    found: dict[int, tuple[list[tuple[str, str]], list[tuple[str, str]], list[tuple[str, str]]]]
    found = {i: ([], [], []) for i in wanted}
    for r in routes:
        oif = r.get_attr("RTA_OIF")
        if oif in wanted and _is_peer_route(r, oif):
            found[oif][0].append((_route_dst(r), r.get_attr("RTA_GATEWAY") or ""))
    for n in neighbours:
        if n["ifindex"] in wanted and n["state"] & NUD_PERMANENT:
            found[n["ifindex"]][1].append((n.get_attr("NDA_DST"), n.get_attr("NDA_LLADDR")))
    for f in fdb:
        if f["ifindex"] in wanted and f.get_attr("NDA_DST") is not None:
            found[f["ifindex"]][2].append((f.get_attr("NDA_LLADDR"), f.get_attr("NDA_DST")))
    return {i: ObservedPeers(tuple(sorted(r)), tuple(sorted(n)), tuple(sorted(f)))
            for i, (r, n, f) in found.items()}


def _observe_peer(reader: rtnl.Reader, netns_path: str,
                  ifname: str) -> ObservedContainerNet | None:
    try:
        link = reader.link(ifname)
        if link is None:
            return None
        addresses = sorted(cidr for index, cidr in reader.ipv4_addresses()
                           if index == link.index)
        default = next((r for r in reader.ipv4_routes()
                        if r.dst_len == 0 and r.table == MAIN_TABLE), None)
    except (NetlinkError, OSError) as e:
        raise KernelError(f"could not read {ifname!r} in {netns_path!r}") from e
    return ObservedContainerNet(
        ifname=ifname, index=link.index, up=bool(link.flags & IFF_UP), mtu=link.mtu,
        addresses=tuple(addresses), gateway=default.gateway if default is not None else None,
        mac=link.mac)


def peek_interface(netns_path: str, ifname: str) -> ObservedContainerNet | None:
    """One interface of a namespace, read on a socket of its own (any thread may call it; the
    CNI service's ADD and CHECK do): None when the device is absent. KernelError when the
    namespace cannot be entered."""
    fd = open_netlink_fds([netns_path])[netns_path]
    if isinstance(fd, OSError):
        raise KernelError(f"could not enter network namespace {netns_path!r}: {fd}")
    with rtnl.Reader(fd) as reader:
        return _observe_peer(reader, netns_path, ifname)


class Links:
    """Netlink for one host namespace plus cached sockets for its containers' namespaces.

    Use from ONE thread only (see the module note). ``netns_path=None`` means the caller's
    namespace, which is the normal case: the agent lives inside its host's namespace.
    """

    def __init__(self, netns_path: str | None = None) -> None:
        self._thread = threading.get_ident()
        self._host = iproute_in(netns_path)
        self._reader = rtnl.Reader(open_netlink_fd(netns_path))  # observation (see rtnl)
        # path -> (namespace inode, socket); the inode notices a namespace re-created at a path.
        self._containers: dict[str, tuple[int, IPRoute]] = {}

    # --- plumbing -----------------------------------------------------------------------------

    def close(self) -> None:
        for path in list(self._containers):
            self.forget_netns(path)
        self._reader.close()
        self._host.close()

    def __enter__(self) -> Links:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_thread(self) -> None:
        if threading.get_ident() != self._thread:
            raise KernelError("Links used from a thread other than the one that made it")

    def _in(self, netns_path: str) -> IPRoute:
        """The cached socket for a container namespace (opened without forking)."""
        self._check_thread()
        inode = netns_inode(netns_path)
        cached = self._containers.get(netns_path)
        if cached is not None and cached[0] == inode:
            return cached[1]
        self.forget_netns(netns_path)
        ipr = iproute_in(netns_path)
        self._containers[netns_path] = (inode, ipr)
        return ipr

    def forget_netns(self, path: str) -> None:
        """Close the cached socket of a container namespace (call when the namespace goes)."""
        cached = self._containers.pop(path, None)
        if cached is not None:
            cached[1].close()

    # --- observation --------------------------------------------------------------------------

    def dump_owned(self) -> list[ObservedLink]:
        """Every link in the host namespace whose alias marks it as ours: one link dump and one
        address dump in all (read through ``rtnl``: a host with 1,000 containers has 1,000
        veths, and pyroute2 decoded each of their ~50 attributes)."""
        self._check_thread()
        try:
            links = self._reader.links()
            addresses: dict[int, list[str]] = {}
            for index, cidr in self._reader.ipv4_addresses():
                addresses.setdefault(index, []).append(cidr)
        except (NetlinkError, OSError) as e:
            raise KernelError("could not dump links") from e
        names = {link.index: link.ifname for link in links}
        return [
            ObservedLink(
                ifname=link.ifname,
                index=link.index,
                kind=link.kind,
                alias=link.alias,
                master=names.get(link.master) if link.master else None,
                mtu=link.mtu,
                up=bool(link.flags & IFF_UP),
                addresses=tuple(sorted(addresses.get(link.index, []))),
            )
            for link in links if (link.alias or "").startswith(ALIAS_PREFIX)
        ]

    def observe_container(self, netns_path: str, peer_ifname: str) -> ObservedContainerNet | None:
        """The container side of an attachment, or None when the namespace or the device is gone
        (``observe_containers`` for one)."""
        return self.observe_containers({netns_path: peer_ifname})[netns_path]

    def observe_containers(
        self, peers: dict[str, str],
    ) -> dict[str, ObservedContainerNet | None]:
        """The container side of many attachments (namespace path -> peer interface name): for
        each, what the kernel has, or None when the namespace or the device is gone.

        Read through ``rtnl`` (see its note), not pyroute2: one socket per namespace, all opened
        by one thread, and one link request, one address dump and one route dump in each.
        """
        self._check_thread()
        found: dict[str, ObservedContainerNet | None] = {}
        for path in peers:
            if not is_netns(path):
                self.forget_netns(path)
                found[path] = None
        fds = open_netlink_fds([path for path in peers if path not in found])
        try:
            for path, fd in list(fds.items()):
                del fds[path]
                if isinstance(fd, OSError):  # gone since is_netns
                    found[path] = None
                    continue
                with rtnl.Reader(fd) as reader:
                    found[path] = _observe_peer(reader, path, peers[path])
        finally:
            for fd in fds.values():
                if isinstance(fd, int):
                    os.close(fd)
        return found

    # --- links --------------------------------------------------------------------------------

    def _verify_ours(self, link: Any, name: str, kind: str, alias: str) -> None:
        """A link with our name must be of our kind and carry our alias (or none: see module)."""
        found_kind, found_alias = _kind(link), link.get_attr("IFLA_IFALIAS")
        if found_kind != kind or found_alias not in (None, "", alias):
            raise KernelError(
                f"link {name!r} exists as kind {found_kind!r} alias {found_alias!r}, "
                f"not {kind} {alias!r}: refusing to reuse it"
            )

    def _create(self, ipr: IPRoute, name: str, kind: str, alias: str, **attrs: Any) -> Any:
        """Add a link and read it back. The alias is left to the caller's ``_fix_link`` (the
        kernel ignores it in RTM_NEWLINK; see the module note)."""
        self._add(ipr, name, kind, **attrs)
        return self._read_back(ipr, name, kind, alias)

    @staticmethod
    def _add(ipr: IPRoute, name: str, kind: str, **attrs: Any) -> bool:
        """RTM_NEWLINK; False when something of that name exists (read back and verify)."""
        try:
            ipr.link("add", ifname=name, kind=kind, **attrs)
        except NetlinkError as e:
            if e.code != errno.EEXIST:
                raise KernelError(f"could not add {kind} {name!r}") from e
            # A concurrent creation or a veth peer name taken: read back and verify.
            return False
        return True

    def _read_back(self, ipr: IPRoute, name: str, kind: str, alias: str) -> Any:
        try:
            link = get_link(ipr, name)
        except NetlinkError as e:
            raise KernelError(f"could not read back {kind} {name!r}") from e
        if link is None:
            # EEXIST yet no such link here: for a veth, the peer's name is taken in its namespace.
            raise KernelError(f"could not add {kind} {name!r}: a name it needs is taken")
        self._verify_ours(link, name, kind, alias)
        return link

    @staticmethod
    def _fix_link(ipr: IPRoute, link: Any, what: str, **want: Any) -> None:
        """One RTM_SETLINK with only the attributes that differ (none: no request at all)."""
        current = {
            "mtu": link.get_attr("IFLA_MTU"),
            "master": link.get_attr("IFLA_MASTER"),
            "state": "up" if _is_up(link) else "down",
            "ifalias": link.get_attr("IFLA_IFALIAS"),
            "address": link.get_attr("IFLA_ADDRESS"),
        }
        delta = {k: v for k, v in want.items() if current[k] != v}
        if delta:
            try:
                ipr.link("set", index=link["index"], **delta)
            except NetlinkError as e:
                raise KernelError(f"could not set {sorted(delta)} of {what}") from e

    @staticmethod
    def _ensure_addresses(ipr: IPRoute, index: int, wanted: str, what: str) -> None:
        """Exactly ``wanted`` as IPv4 address on the link: add it, delete any other."""
        try:
            present = _v4_by_index(ipr.get_addr(family=socket.AF_INET, index=index))
            want = IPNetwork(wanted)
            for cidr in present.get(index, []):
                if cidr != wanted:
                    have = IPNetwork(cidr)
                    ipr.addr("del", index=index, address=str(have.ip), prefixlen=have.prefixlen)
            if wanted not in present.get(index, []):
                try:
                    ipr.addr("add", index=index, address=str(want.ip), prefixlen=want.prefixlen)
                except NetlinkError as e:
                    if e.code != errno.EEXIST:
                        raise
        except NetlinkError as e:
            raise KernelError(f"could not set address {wanted} on {what}") from e

    def ensure_bridge(self, name: str, alias: str, gateway_cidr: str, mtu: int) -> int:
        """A bridge with our alias, this MTU, exactly the gateway address, up. Returns its index."""
        self._check_thread()
        ipr = self._host
        try:
            link = get_link(ipr, name)
        except NetlinkError as e:
            raise KernelError(f"could not read bridge {name!r}") from e
        if link is None:
            link = self._create(ipr, name, "bridge", alias, mtu=mtu, state="up")
        else:
            self._verify_ours(link, name, "bridge", alias)
        self._fix_link(ipr, link, f"bridge {name!r}", mtu=mtu, state="up", ifalias=alias)
        self._ensure_addresses(ipr, link["index"], gateway_cidr, f"bridge {name!r}")
        return int(link["index"])

    def ensure_veth(
        self,
        host_ifname: str,
        alias: str,
        bridge: str,
        mtu: int,
        netns_path: str,
        peer_ifname: str,
        address_cidr: str,
        gateway: str,
        mac: str | None = None,
    ) -> int:
        """A veth pair from ``bridge`` into the container namespace, addressed and routed.

        The peer is created directly inside ``netns_path``, with MAC address ``mac`` when given
        (``names.container_mac``: the anti-spoofing rules must know it; a different one is
        repaired). Returns the host side's index.
        """
        self._check_thread()
        ipr = self._host
        what = f"veth {host_ifname!r}"
        try:
            master = get_link(ipr, bridge)
        except NetlinkError as e:
            raise KernelError(f"could not read {what}") from e
        if master is None:
            raise KernelError(f"could not add {what}: bridge {bridge!r} does not exist")
        master_index = master["index"]
        # Add first (EEXIST when it is there: then read back and verify): a new container's
        # veth is the common case, and asking whether it exists cost a request.
        link, created = self._create_veth(host_ifname, alias, master_index, mtu, netns_path,
                                          peer_ifname, mac)
        if created:
            faults.point("veth")
        self._fix_link(ipr, link, what, mtu=mtu, master=master_index, state="up", ifalias=alias)
        peer_index = link.get_attr("IFLA_LINK")
        if created and peer_index:
            self._configure_new_peer(netns_path, peer_ifname, peer_index, alias, address_cidr,
                                     gateway)
        else:
            self._ensure_container_side(netns_path, peer_ifname, alias, mtu, address_cidr,
                                        gateway, mac)
        return int(link["index"])

    def _create_veth(
        self, name: str, alias: str, master: int, mtu: int, netns_path: str, peer: str,
        mac: str | None,
    ) -> tuple[Any, bool]:
        """Add the pair with its peer born in ``netns_path``; (host side, whether this call
        created it)."""
        fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
        peer_attrs: dict[str, Any] = {"ifname": peer, "net_ns_fd": fd, "mtu": mtu}
        if mac is not None:
            peer_attrs["address"] = mac.lower()
        try:
            created = self._add(self._host, name, "veth", mtu=mtu, master=master, state="up",
                                peer=peer_attrs)
        finally:
            os.close(fd)
        return self._read_back(self._host, name, "veth", alias), created

    def _configure_new_peer(self, netns_path: str, peer: str, index: int, alias: str,
                            address_cidr: str, gateway: str) -> None:
        """The peer this call just created (name, MTU and MAC set at birth; its index is the
        host side's IFLA_LINK): up with our alias, its address, its default route. Nothing to
        read first: three writes where repairing an existing one takes three reads more."""
        what = f"{peer!r} in {netns_path!r}"
        ipr = self._in(netns_path)
        address = IPNetwork(address_cidr)
        try:
            ipr.link("set", index=index, state="up", ifalias=alias)
            ipr.addr("add", index=index, address=str(address.ip), prefixlen=address.prefixlen)
        except NetlinkError as e:
            raise KernelError(f"could not bring up and address {what}") from e
        faults.point("address")
        try:
            ipr.route("replace", dst="0.0.0.0/0", gateway=gateway, oif=index,
                      proto=RTPROT_SDNCTL, table=MAIN_TABLE)
        except NetlinkError as e:
            raise KernelError(f"could not set default route via {gateway} for {what}") from e
        faults.point("route")

    def _ensure_container_side(
        self, netns_path: str, peer: str, alias: str, mtu: int, address_cidr: str, gateway: str,
        mac: str | None,
    ) -> None:
        what = f"{peer!r} in {netns_path!r}"
        ipr = self._in(netns_path)
        try:
            link = get_link(ipr, peer)
        except NetlinkError as e:
            raise KernelError(f"could not read {what}") from e
        if link is None:
            # The host side exists but its peer is not in this namespace (moved or renamed).
            raise KernelError(f"could not find {what}: host side exists without it")
        want: dict[str, Any] = {"mtu": mtu, "state": "up", "ifalias": alias}
        if mac is not None:
            want["address"] = mac.lower()
        self._fix_link(ipr, link, what, **want)
        self._ensure_addresses(ipr, link["index"], address_cidr, what)
        faults.point("address")
        self._ensure_default_route(ipr, link["index"], gateway, what)
        faults.point("route")

    @staticmethod
    def _ensure_default_route(ipr: IPRoute, index: int, gateway: str, what: str) -> None:
        try:
            current = _default_route(ipr.get_routes(family=socket.AF_INET, table=MAIN_TABLE))
            if (
                current is not None
                and current.get_attr("RTA_GATEWAY") == gateway
                and current.get_attr("RTA_OIF") == index
                and current["proto"] == RTPROT_SDNCTL
            ):
                return
            ipr.route("replace", dst="0.0.0.0/0", gateway=gateway, oif=index,
                      proto=RTPROT_SDNCTL, table=MAIN_TABLE)
        except NetlinkError as e:
            raise KernelError(f"could not set default route via {gateway} for {what}") from e

    def remove_link(self, name: str) -> bool:
        """Delete a link of ours by name (a veth takes its peer along). Missing is success.

        Returns False when there was nothing to delete. Refuses links without our alias.
        """
        self._check_thread()
        try:
            link = get_link(self._host, name)
            if link is None:
                return False
            alias = link.get_attr("IFLA_IFALIAS") or ""
            interrupted = not alias and name.startswith((BRIDGE_PREFIX, VETH_PREFIX,
                                                         VXLAN_PREFIX))
            if not (alias.startswith(ALIAS_PREFIX) or interrupted):
                raise KernelError(f"could not remove link {name!r}: not ours (alias {alias!r})")
            self._host.link("del", index=link["index"])
        except NetlinkError as e:
            if e.code == errno.ENODEV:
                return False
            raise KernelError(f"could not remove link {name!r}") from e
        return True


    # --- overlays (see the module note) -------------------------------------------------------

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
        ipr = self._host
        what = f"vxlan {name!r}"
        try:
            underlay = get_link(ipr, underlay_dev)
            link = get_link(ipr, name)
        except NetlinkError as e:
            raise KernelError(f"could not read {what}") from e
        if underlay is None:
            raise KernelError(f"could not add {what}: underlay {underlay_dev!r} does not exist")
        mac = mac.lower()
        if link is not None:
            self._verify_ours(link, name, "vxlan", alias)
            data = _vxlan_data(link)
            if (data.get("IFLA_VXLAN_ID"), data.get("IFLA_VXLAN_PORT")) != (vni, port) or \
                    data.get("IFLA_VXLAN_GROUP") not in (None, "0.0.0.0"):
                delete_link(ipr, link, f"{what} to recreate it")
                link = None
        if link is None:
            link = self._create(ipr, name, "vxlan", alias, vxlan_id=vni, vxlan_port=port,
                                vxlan_local=local_ip, vxlan_link=underlay["index"],
                                vxlan_learning=0, mtu=mtu, address=mac, state="up")
        else:
            self._fix_vxlan(ipr, link, what, local_ip, underlay["index"])
        self._fix_link(ipr, link, what, mtu=mtu, address=mac, state="up", ifalias=alias)
        self._ensure_addresses(ipr, link["index"], vtep_cidr, what)
        return int(link["index"])

    @staticmethod
    def _fix_vxlan(ipr: IPRoute, link: Any, what: str, local_ip: str, underlay: int) -> None:
        """One RTM_NEWLINK changing only the VXLAN attributes that differ (none: no request)."""
        data = _vxlan_data(link)
        current = {"vxlan_local": data.get("IFLA_VXLAN_LOCAL"),
                   "vxlan_link": data.get("IFLA_VXLAN_LINK"),
                   "vxlan_learning": data.get("IFLA_VXLAN_LEARNING")}
        want = {"vxlan_local": local_ip, "vxlan_link": underlay, "vxlan_learning": 0}
        delta = {k: v for k, v in want.items() if current[k] != v}
        if delta:
            try:
                ipr.link("set", index=link["index"], kind="vxlan", **delta)
            except NetlinkError as e:
                raise KernelError(f"could not set {sorted(delta)} of {what}") from e

    def observe_vxlan(self, name: str) -> ObservedVxlan | None:
        """The VXLAN device ``name`` as the kernel has it, or None when there is none (or it is
        not a VXLAN device). One link request, one address dump, one more link request for the
        underlay's name."""
        self._check_thread()
        ipr = self._host
        try:
            link = get_link(ipr, name)
            if link is None or _kind(link) != "vxlan":
                return None
            index = link["index"]
            addrs = _v4_by_index(ipr.get_addr(family=socket.AF_INET, index=index)).get(index, [])
            data = _vxlan_data(link)
            lower = data.get("IFLA_VXLAN_LINK")
            underlay = ipr.link("get", index=lower)[0].get_attr("IFLA_IFNAME") if lower else None
            master_index = link.get_attr("IFLA_MASTER")
            master = ipr.link("get", index=master_index)[0].get_attr("IFLA_IFNAME") \
                if master_index else None
        except NetlinkError as e:
            raise KernelError(f"could not read vxlan {name!r}") from e
        return ObservedVxlan(
            ifname=name, index=index, kind="vxlan", alias=link.get_attr("IFLA_IFALIAS"),
            master=master, mtu=link.get_attr("IFLA_MTU"),
            up=_is_up(link), addresses=tuple(sorted(addrs)),
            vni=data.get("IFLA_VXLAN_ID", 0), port=data.get("IFLA_VXLAN_PORT", 0),
            local=data.get("IFLA_VXLAN_LOCAL"), underlay=underlay,
            learning=bool(data.get("IFLA_VXLAN_LEARNING")), mac=link.get_attr("IFLA_ADDRESS"),
        )

    def _dump_peers(self, indexes: Iterable[int]) -> dict[int, ObservedPeers]:
        """One route dump, one neighbour dump and one FDB dump for all ``indexes``."""
        ipr = self._host
        try:
            routes = ipr.get_routes(family=socket.AF_INET, table=MAIN_TABLE)
            neighbours = ipr.get_neighbours(family=socket.AF_INET)
            fdb = ipr.fdb("dump")
        except NetlinkError as e:
            raise KernelError("could not dump routes, neighbours and FDB") from e
        return _peers_by_index(indexes, routes, neighbours, fdb)

    def observe_all_peers(self) -> dict[str, ObservedPeers]:
        """Peer entries of every VXLAN device of ours, by device name: one link dump, one route
        dump, one neighbour dump and one FDB dump in all."""
        self._check_thread()
        try:
            links = list(self._host.get_links())
        except NetlinkError as e:
            raise KernelError("could not dump links") from e
        ours = {msg["index"]: msg.get_attr("IFLA_IFNAME") for msg in links
                if self._is_our_vxlan(msg)}
        return {ours[i]: peers for i, peers in self._dump_peers(ours).items()}

    def observe_peers(self, name: str) -> ObservedPeers:
        """Peer entries of one VXLAN device (none when the device is missing)."""
        self._check_thread()
        index = self._vxlan_index(name)
        return ObservedPeers() if index is None else self._dump_peers([index])[index]

    @staticmethod
    def _is_our_vxlan(msg: Any) -> bool:
        alias = msg.get_attr("IFLA_IFALIAS") or ""
        name = msg.get_attr("IFLA_IFNAME") or ""
        return _kind(msg) == "vxlan" and (
            alias.startswith(ALIAS_PREFIX) or (not alias and name.startswith(VXLAN_PREFIX)))

    def _vxlan_index(self, device: str) -> int | None:
        """The index of our VXLAN device ``device``, None when it is missing; a device of that
        name that is not ours is an error."""
        try:
            link = get_link(self._host, device)
        except NetlinkError as e:
            raise KernelError(f"could not read vxlan {device!r}") from e
        if link is None:
            return None
        if not self._is_our_vxlan(link):
            raise KernelError(f"{device!r} is not a VXLAN device of ours: refusing to touch it")
        return int(link["index"])

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
            mac, subnet = peer.vtep_mac.lower(), str(IPNetwork(peer.subnet).cidr)
            if [d for m, d in have.fdb if m == mac] != [peer.underlay_ip]:
                requests.append((peer, rtnl.fdb_replace(index, mac, peer.underlay_ip,
                                                        NUD_PERMANENT | NUD_NOARP, NTF_SELF)))
            if (peer.vtep_ip, mac) not in have.neighbours:
                requests.append((peer, rtnl.neighbour_replace(index, peer.vtep_ip, mac,
                                                              NUD_PERMANENT, RTPROT_SDNCTL)))
            if [v for d, v in have.routes if d == subnet] != [peer.vtep_ip]:
                requests.append((peer, rtnl.route_replace(subnet, peer.vtep_ip, index,
                                                          MAIN_TABLE, RTPROT_SDNCTL,
                                                          RTNH_F_ONLINK)))
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
                f"{peer.underlay_ip})") from NetlinkError(code, os.strerror(code))
        return len(requests)

    def remove_peer_route(self, device: str, subnet: str) -> bool:
        """Delete our route to ``subnet`` on ``device``. Missing (or no device) is success:
        returns False when there was nothing to delete."""
        self._check_thread()
        index = self._vxlan_index(device)
        if index is None:
            return False
        try:
            self._host.route("del", dst=subnet, oif=index, proto=RTPROT_SDNCTL, table=MAIN_TABLE)
        except NetlinkError as e:
            if e.code == errno.ESRCH:
                return False
            raise KernelError(f"could not remove route {subnet} on {device!r}") from e
        return True

    def remove_neighbour(self, device: str, ip: str) -> bool:
        """Delete the neighbour entry of ``ip`` on ``device``. Missing is success (False)."""
        self._check_thread()
        index = self._vxlan_index(device)
        if index is None:
            return False
        try:
            self._host.neigh("del", ifindex=index, dst=ip)
        except NetlinkError as e:
            if e.code == errno.ENOENT:
                return False
            raise KernelError(f"could not remove neighbour {ip} on {device!r}") from e
        return True

    def remove_fdb(self, device: str, mac: str, dst: str) -> bool:
        """Delete the FDB entry ``mac`` -> ``dst`` on ``device``. Missing is success (False).

        Read first: the kernel answers success to a delete of (mac, dst) when ``mac`` points
        elsewhere, and we report only what was really there.
        """
        self._check_thread()
        index = self._vxlan_index(device)
        if index is None:
            return False
        mac = mac.lower()
        if (mac, dst) not in self._dump_peers([index])[index].fdb:
            return False
        try:
            self._host.fdb("del", ifindex=index, lladdr=mac, dst=dst)
        except NetlinkError as e:
            if e.code == errno.ENOENT:
                return False
            raise KernelError(f"could not remove FDB {mac} -> {dst} on {device!r}") from e
        return True


# The observed types live in agent/observed.py (pure); these names stay reachable from here.
__all__ = [
    "KernelError",
    "Links",
    "ObservedContainerNet",
    "ObservedLink",
    "ObservedPeers",
    "ObservedVxlan",
    "PeerEntries",
]
