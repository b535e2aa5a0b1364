"""What every netlink façade of ours shares: sockets per namespace, one thread, our tags, and
idempotent create / read back / fix of a link.

Design note. Everything we create is tagged so that resync can tell it apart from the rest of
the host: interface names start with ``sdn`` (agent.names), every link carries
``IFLA_IFALIAS = "sdnctl:<owner key>"`` and every route we add has protocol ``RTPROT_SDNCTL``.

Every operation is an idempotent ``ensure_*`` / ``remove_*``: it reads the object back (one
request), compares it with what was asked and writes only the difference, so a second call with
the same arguments sends no write at all. A link that has our name but another kind or another
alias is somebody else's: it is an error, never reused.

The kernel ignores ``IFLA_IFALIAS`` in RTM_NEWLINK when it *creates* a link (only a later
RTM_SETLINK applies it), so creating costs one extra request and a crash between the two leaves a
link with our name and no alias. Such a link is adopted: the name is a hash of our owner key with
our prefix, and an empty alias can only be our own interrupted creation.

Threads: pyroute2 0.9.7 binds an ``IPRoute`` to the thread that made it (from another thread a
request fails with ENOTSOCK), so a façade object and all its cached sockets must be made and
used by ONE thread. The reconciler owns it.

The bridge side is ``links.py``, the overlay side ``vxlan.py``; ``links.Links`` is both.
"""

from __future__ import annotations

import errno
import socket
import threading
from collections.abc import Callable, Iterable
from typing import Any

from netaddr import IPNetwork
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from agent.kernel import rtnl
from agent.kernel.errors import KernelError
from agent.kernel.netns import netns_inode, open_netlink_fd
from agent.names import ALIAS_PREFIX, BRIDGE_PREFIX, VETH_PREFIX, VXLAN_PREFIX
from agent.observed import ObservedLink, ObservedVxlan

RTPROT_SDNCTL = 211
IFF_UP = 0x1
MAIN_TABLE = 254
NUD_NOARP = 0x40
NUD_PERMANENT = 0x80
NTF_SELF = 0x02
RTNH_F_ONLINK = 0x04



def iproute_in(path: str | None) -> IPRoute:
    """An ``IPRoute`` whose socket lives in the namespace at ``path``, opened without forking.

    pyroute2 keeps sockets per thread: use the returned object from the thread that made it only.
    """
    return IPRoute(fileno=open_netlink_fd(path))


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



IFA_F_NODAD = 0x02


def check_removable(name: str, alias: str) -> None:
    """Raise unless the link ``name`` with ``alias`` is ours to remove: our alias, or one of
    our names with none yet (our own interrupted creation, see the module note)."""
    interrupted = not alias and name.startswith((BRIDGE_PREFIX, VETH_PREFIX, VXLAN_PREFIX))
    if not (alias.startswith(ALIAS_PREFIX) or interrupted):
        raise KernelError(f"could not remove link {name!r}: not ours (alias {alias!r})")


def add_address6(ipr: IPRoute, index: int, cidr: str) -> None:
    """Add an IPv6 address with ``nodad``: usable at once, no tentative state (EEXIST is
    success)."""
    address = IPNetwork(cidr)
    try:
        ipr.addr("add", index=index, address=str(address.ip), prefixlen=address.prefixlen,
                 family=socket.AF_INET6, flags=IFA_F_NODAD)
    except NetlinkError as e:
        if e.code != errno.EEXIST:
            raise


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


def _observed(link: rtnl.Link, names: dict[int, str], addresses: tuple[str, ...]) -> ObservedLink:
    master = names.get(link.master) if link.master else None
    up = bool(link.flags & IFF_UP)
    vx = link.vxlan
    if vx is None:
        return ObservedLink(ifname=link.ifname, index=link.index, kind=link.kind,
                            alias=link.alias, master=master, mtu=link.mtu, up=up,
                            addresses=addresses)
    return ObservedVxlan(ifname=link.ifname, index=link.index, kind=link.kind, alias=link.alias,
                         master=master, mtu=link.mtu, up=up, addresses=addresses, vni=vx.vni,
                         port=vx.port, local=vx.local,
                         underlay=names.get(vx.link) if vx.link else None,
                         learning=vx.learning, mac=link.mac)


class LinkBase:
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

    def __enter__(self) -> LinkBase:
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

    # --- links --------------------------------------------------------------------------------

    def observe_links(self, wanted: Callable[[rtnl.Link], bool]) -> list[ObservedLink]:
        """The links ``wanted`` picks, with their addresses (IPv4 and global IPv6), a VXLAN
        device with its VXLAN attributes as an ``ObservedVxlan``: one link dump and one address
        dump in all, read through ``rtnl`` (a host with 1,000 containers has 1,000 veths, and
        pyroute2 decoded each of their ~50 attributes; a VXLAN device's four pyroute2 requests
        were most of a pass that a policy change wakes)."""
        self._check_thread()
        try:
            links = self._reader.links()
            addresses: dict[int, list[str]] = {}
            for index, cidr in self._reader.global_addresses():
                addresses.setdefault(index, []).append(cidr)
        except (NetlinkError, OSError) as e:
            raise KernelError("could not dump links") from e
        names = {link.index: link.ifname for link in links}
        return [_observed(link, names, tuple(sorted(addresses.get(link.index, []))))
                for link in links if wanted(link)]

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
    def _ensure_addresses(ipr: IPRoute, index: int, wanted: str, what: str,
                          wanted6: str = "") -> None:
        """Exactly ``wanted`` ("": none, IPv6-only) as IPv4 address on the link: add it,
        delete any other. With ``wanted6`` (dual-stack), exactly that global IPv6 address too."""
        LinkBase._ensure_address6(ipr, index, wanted6, what)
        try:
            present = _v4_by_index(ipr.get_addr(family=socket.AF_INET, index=index))
            for cidr in present.get(index, []):
                if cidr != wanted:
                    have = IPNetwork(cidr)
                    ipr.addr("del", index=index, address=str(have.ip), prefixlen=have.prefixlen)
            if wanted and wanted not in present.get(index, []):
                want = IPNetwork(wanted)
                try:
                    ipr.addr("add", index=index, address=str(want.ip), prefixlen=want.prefixlen)
                except NetlinkError as e:
                    if e.code != errno.EEXIST:
                        raise
        except NetlinkError as e:
            raise KernelError(f"could not set address {wanted} on {what}") from e

    @staticmethod
    def _ensure_address6(ipr: IPRoute, index: int, wanted: str, what: str) -> None:
        """Exactly ``wanted`` ("": none) as global IPv6 address on the link, added without
        duplicate address detection (a container binds it at once; IPAM made it unique), and
        no other global one; the kernel's link-local address is left alone."""
        try:
            present = [_cidr(m) for m in ipr.get_addr(family=socket.AF_INET6, index=index)
                       if m["scope"] == rtnl.RT_SCOPE_UNIVERSE]
            for cidr in present:
                if cidr != wanted:
                    have = IPNetwork(cidr)
                    ipr.addr("del", index=index, address=str(have.ip), prefixlen=have.prefixlen)
            if wanted and wanted not in present:
                add_address6(ipr, index, wanted)
        except NetlinkError as e:
            raise KernelError(f"could not set address {wanted or '(none)'} on {what}") from e

    def remove_link(self, name: str) -> bool:
        """Delete a link of ours by name (a veth takes its peer along). Missing is success.

        Returns False when there was nothing to delete. Refuses links without our alias.
        """
        self._check_thread()
        try:
            link = get_link(self._host, name)
            if link is None:
                return False
            check_removable(name, link.get_attr("IFLA_IFALIAS") or "")
            self._host.link("del", index=link["index"])
        except NetlinkError as e:
            if e.code == errno.ENODEV:
                return False
            raise KernelError(f"could not remove link {name!r}") from e
        return True

