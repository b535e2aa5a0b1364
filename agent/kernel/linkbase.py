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

Requests are raw rtnetlink (``rtnl``): pyroute2 is not loaded by the agent (its import and
its event loop per socket were a fifth of an agent's memory, issue 21; the lab, which builds
hosts rather than reconciling them, still uses it: ``iproute.py``). A façade object and its
cached sockets are used by ONE thread, the reconciler's.

The bridge side is ``links.py``, the overlay side ``vxlan.py``; ``links.Links`` is both.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable

from agent.kernel import rtnl
from agent.kernel.errors import KernelError
from agent.kernel.netns import netns_inode, open_netlink_fd
from agent.kernel.rtnl import NetlinkError
from agent.names import ALIAS_PREFIX, BRIDGE_PREFIX, VETH_PREFIX, VXLAN_PREFIX
from agent.observed import ObservedLink, ObservedVxlan

RTPROT_SDNCTL = 211
IFF_UP = 0x1
MAIN_TABLE = 254
NUD_NOARP = 0x40
NUD_PERMANENT = 0x80
NTF_SELF = 0x02
RTNH_F_ONLINK = 0x04


def delete_link(reader: rtnl.Reader, link: rtnl.Link, what: str) -> None:
    """Delete ``link``; one already gone is success. A failure raises KernelError naming
    ``what``."""
    write(reader, [rtnl.link_delete(index=link.index)], f"could not delete {what}",
          ok=(errno.ENODEV,))


def write(reader: rtnl.Reader, requests: list[rtnl.Request], failure: str,
          ok: tuple[int, ...] = ()) -> list[int]:
    """Send ``requests`` as one batch; the first error but those in ``ok`` raises KernelError
    (``failure``, the netlink error chained). Returns each request's errno (0: done)."""
    try:
        codes = reader.send_all(requests)
    except (NetlinkError, OSError) as e:
        raise KernelError(failure) from e
    code = next((c for c in codes if c and c not in ok), 0)
    if code:
        raise KernelError(f"{failure}: {os.strerror(code)}") from NetlinkError(code)
    return codes


def check_removable(name: str, alias: str) -> None:
    """Raise unless the link ``name`` with ``alias`` is ours to remove: our alias, or one of
    our names with none yet (our own interrupted creation, see the module note)."""
    interrupted = not alias and name.startswith((BRIDGE_PREFIX, VETH_PREFIX, VXLAN_PREFIX))
    if not (alias.startswith(ALIAS_PREFIX) or interrupted):
        raise KernelError(f"could not remove link {name!r}: not ours (alias {alias!r})")


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
        self._reader = rtnl.Reader(open_netlink_fd(netns_path))
        # path -> (namespace inode, socket); the inode notices a namespace re-created at a path.
        self._containers: dict[str, tuple[int, rtnl.Reader]] = {}

    # --- plumbing -----------------------------------------------------------------------------

    def close(self) -> None:
        for path in list(self._containers):
            self.forget_netns(path)
        self._reader.close()

    def __enter__(self) -> LinkBase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_thread(self) -> None:
        if threading.get_ident() != self._thread:
            raise KernelError("Links used from a thread other than the one that made it")

    def _in(self, netns_path: str) -> rtnl.Reader:
        """The cached socket for a container namespace (opened without forking)."""
        self._check_thread()
        inode = netns_inode(netns_path)
        cached = self._containers.get(netns_path)
        if cached is not None and cached[0] == inode:
            return cached[1]
        self.forget_netns(netns_path)
        reader = rtnl.Reader(open_netlink_fd(netns_path))
        self._containers[netns_path] = (inode, reader)
        return reader

    def forget_netns(self, path: str) -> None:
        """Close the cached socket of a container namespace (call when the namespace goes)."""
        cached = self._containers.pop(path, None)
        if cached is not None:
            cached[1].close()

    # --- links --------------------------------------------------------------------------------

    def observe_links(self, wanted: Callable[[rtnl.Link], bool]) -> list[ObservedLink]:
        """The links ``wanted`` picks, with their addresses (IPv4 and global IPv6), a VXLAN
        device with its VXLAN attributes as an ``ObservedVxlan``: one link dump and one address
        dump in all (a host with 1,000 containers has 1,000 veths)."""
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

    @staticmethod
    def _get(reader: rtnl.Reader, name: str, what: str) -> rtnl.Link | None:
        """The link ``name`` (None: there is none); a failure raises KernelError."""
        try:
            return reader.link(name)
        except (NetlinkError, OSError) as e:
            raise KernelError(f"could not read {what}") from e

    @staticmethod
    def _verify_ours(link: rtnl.Link, name: str, kind: str, alias: str) -> None:
        """A link with our name must be of our kind and carry our alias (or none: see module)."""
        if link.kind != kind or (link.alias or "") not in ("", alias):
            raise KernelError(
                f"link {name!r} exists as kind {link.kind!r} alias {link.alias!r}, "
                f"not {kind} {alias!r}: refusing to reuse it"
            )

    def _create(self, reader: rtnl.Reader, request: rtnl.Request, name: str, kind: str,
                alias: str) -> rtnl.Link:
        """Add a link (``request``: an ``rtnl.link_add``) and read it back. The alias is left to
        the caller's ``_fix_link`` (the kernel ignores it in RTM_NEWLINK; see the module
        note)."""
        self._add(reader, request, name, kind)
        return self._read_back(reader, name, kind, alias)

    @staticmethod
    def _add(reader: rtnl.Reader, request: rtnl.Request, name: str, kind: str) -> bool:
        """RTM_NEWLINK; False when something of that name exists (read back and verify: a
        concurrent creation, or a veth peer's name taken)."""
        (code,) = write(reader, [request], f"could not add {kind} {name!r}", ok=(errno.EEXIST,))
        return code == 0

    def _read_back(self, reader: rtnl.Reader, name: str, kind: str, alias: str) -> rtnl.Link:
        link = self._get(reader, name, f"back {kind} {name!r}")
        if link is None:
            # EEXIST yet no such link here: for a veth, the peer's name is taken in its namespace.
            raise KernelError(f"could not add {kind} {name!r}: a name it needs is taken")
        self._verify_ours(link, name, kind, alias)
        return link

    @staticmethod
    def _fix_link(reader: rtnl.Reader, link: rtnl.Link, what: str, *, mtu: int = 0,
                  master: int | None = None, up: bool = False, alias: str | None = None,
                  mac: str = "") -> None:
        """One RTM_SETLINK with only the attributes that differ (none: no request at all)."""
        mtu = mtu if link.mtu != mtu else 0
        master = master if link.master != master else None
        up = up and not link.flags & IFF_UP
        alias = alias if (link.alias or "") != alias else None
        mac = mac if link.mac != mac else ""
        changed = [name for name, value in (("mtu", mtu), ("master", master), ("up", up),
                                            ("alias", alias), ("address", mac))
                   if value not in (0, None, False, "")]
        if changed:
            write(reader, [rtnl.link_set(link.index, mtu=mtu, master=master, up=up, alias=alias,
                                         mac=mac)], f"could not set {changed} of {what}")

    @staticmethod
    def _ensure_addresses(reader: rtnl.Reader, index: int, wanted: str, what: str,
                          wanted6: str = "") -> None:
        """Exactly ``wanted`` ("": none, IPv6-only) as IPv4 address on the link, and exactly
        ``wanted6`` ("": none) as global IPv6 one, added without duplicate address detection (a
        container binds it at once; IPAM made it unique): one address dump, then one batch
        deleting the others and adding what is missing. The kernel's IPv6 link-local address
        is left alone."""
        try:
            present = [cidr for i, cidr in reader.global_addresses() if i == index]
        except (NetlinkError, OSError) as e:
            raise KernelError(f"could not read the addresses of {what}") from e
        keep = {cidr for cidr in (wanted, wanted6) if cidr}
        requests = [rtnl.address_delete(index, cidr) for cidr in present if cidr not in keep]
        requests += [rtnl.address_add(index, cidr) for cidr in (wanted, wanted6)
                     if cidr and cidr not in present]
        if requests:
            write(reader, requests,
                  f"could not set address {' '.join(sorted(keep)) or '(none)'} on {what}",
                  ok=(errno.EEXIST, errno.EADDRNOTAVAIL))

    def remove_link(self, name: str) -> bool:
        """Delete a link of ours by name (a veth takes its peer along). Missing is success.

        Returns False when there was nothing to delete. Refuses links without our alias.
        """
        self._check_thread()
        link = self._get(self._reader, name, f"link {name!r}")
        if link is None:
            return False
        check_removable(name, link.alias or "")
        (code,) = write(self._reader, [rtnl.link_delete(index=link.index)],
                        f"could not remove link {name!r}", ok=(errno.ENODEV,))
        return code == 0
