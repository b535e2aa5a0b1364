"""The netlink façade for bridge mode: bridges, veth pairs, container addresses and routes;
``Links`` is the whole façade the agent uses (this bridge side plus ``vxlan.VxlanLinks``).

Design note. Names, tags, idempotence and the one-thread rule are ``linkbase``'s (see its note).
Interface names: ``sdnb`` + 8 hex of sha1(network) for bridges, ``sdnv`` + 8 hex of
sha1("container/interface") for the host side of a veth.

Dual-stack (issue 20): a bridge holds its IPv6 gateway and a container its IPv6 address beside
the IPv4 ones, added with ``nodad`` (no tentative state: a container binds its address at once),
with a default route in each family. Router advertisements are never taken: our bridges have
``accept_ra=0`` (the firewall's bridge sysctls, ``agent/kernel/firewall.py``) and a container's
namespace gets it (with ``autoconf``, ``accept_dad`` and ``accept_redirects`` 0) as defaults
when it is made (``netns.create_sandbox``), so its veth peer is born with them.

Veth peers are born inside the container namespace (``net_ns_fd`` in the peer attributes); no
device is ever moved between namespaces (10-40 ms each, LAB-NOTES).
"""

from __future__ import annotations

import errno
import os
import select
import socket
import time
from typing import Any

from agent.kernel import rtnl
from agent.kernel.errors import KernelError
from agent.kernel.linkbase import (
    IFF_UP,
    MAIN_TABLE,
    RTPROT_SDNCTL,
    LinkBase,
    check_removable,
    delete_link,
    write,
)
from agent.kernel.netns import NETLINK_ROUTE, is_netns, open_netlink_fd, open_netlink_fds
from agent.kernel.rtnl import NetlinkError
from agent.kernel.vxlan import VxlanLinks
from agent.names import ALIAS_PREFIX
from agent.observed import (
    ObservedContainerNet,
    ObservedLink,
    ObservedPeers,
    ObservedVxlan,
    PeerEntries,
    PreparedVeth,
)
from sdnctl.api import faults


def _observe_peer(reader: rtnl.Reader, netns_path: str,
                  ifname: str) -> ObservedContainerNet | None:
    try:
        link = reader.link(ifname)
        if link is None:
            return None
        addresses = sorted(cidr for index, cidr in reader.global_addresses()
                           if index == link.index)
        default = next((r for r in reader.ipv4_routes()
                        if r.dst_len == 0 and r.table == MAIN_TABLE), None)
        default6 = None
        if any(":" in cidr for cidr in addresses):  # no IPv6 address: no route dump for it
            default6 = next((r for r in reader.routes(socket.AF_INET6)
                             if r.dst_len == 0 and r.table == MAIN_TABLE), None)
    except (NetlinkError, OSError) as e:
        raise KernelError(f"could not read {ifname!r} in {netns_path!r}") from e
    return ObservedContainerNet(
        ifname=ifname, index=link.index, up=bool(link.flags & IFF_UP), mtu=link.mtu,
        addresses=tuple(addresses), gateway=default.gateway if default is not None else None,
        mac=link.mac, gateway6=default6.gateway if default6 is not None else None)


def peek_interface(netns_path: str, ifname: str) -> ObservedContainerNet | None:
    """One interface of a namespace, read on a socket of its own (any thread may call it; the
    CNI service's ADD and CHECK do): None when the device is absent. KernelError when the
    namespace cannot be entered."""
    fd = open_netlink_fds([netns_path])[netns_path]
    if isinstance(fd, OSError):
        raise KernelError(f"could not enter network namespace {netns_path!r}: {fd}")
    with rtnl.Reader(fd) as reader:
        return _observe_peer(reader, netns_path, ifname)


def peek_host_link(ifname: str) -> rtnl.Link | None:
    """A link of the calling thread's namespace (the host's, in the agent), on a socket of its
    own (any thread may call it): None when absent."""
    try:
        with rtnl.Reader(open_netlink_fd(None)) as reader:
            return reader.link(ifname)
    except (NetlinkError, OSError) as e:
        raise KernelError(f"could not read {ifname!r}") from e


def prepare_veth(host_ifname: str, bridge: str, mtu: int, netns_path: str,
                 peer_ifname: str) -> PreparedVeth | None:
    """Make the pair of a CNI attachment before its address is known (see ``PreparedVeth``;
    any thread may call it, on a socket of its own in the calling thread's namespace, the
    host's). None, having made nothing, when the bridge is missing or either name is taken
    (``CNI_IFNAME`` in the namespace, or the host side): the caller then looks, or leaves
    the pair to ``Links.add_veth``. KernelError when the pair was made but cannot be read."""
    with rtnl.Reader(open_netlink_fd(None)) as reader:
        try:
            master = reader.link(bridge)
            if master is None:
                return None
            fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                (code,) = reader.send_all([rtnl.veth_add(host_ifname, mtu, master.index,
                                                         peer_ifname, fd)])
            finally:
                os.close(fd)
            if code:
                return None
            link = reader.link(host_ifname)
        except (NetlinkError, OSError) as e:
            raise KernelError(f"could not prepare veth {host_ifname!r}") from e
    if link is None or not link.link:
        raise KernelError(f"could not read back the veth {host_ifname!r} just made")
    return PreparedVeth(host_ifname, link.link, link.mac or "")


def remove_link_now(name: str) -> bool:
    """``Links.remove_link`` for any thread, on a socket of its own, in raw requests (a CNI
    DEL's veth, a prepared pair): a link of ours by name, its veth peer along; False when
    there was none. Refuses a link without our alias, unless one of our names has none yet
    (a pair made but not finished)."""
    with rtnl.Reader(open_netlink_fd(None)) as reader:
        try:
            link = reader.link(name)
            if link is None:
                return False
            check_removable(name, link.alias or "")
            (code,) = reader.send_all([rtnl.link_delete(name)])
        except (NetlinkError, OSError) as e:
            raise KernelError(f"could not remove link {name!r}") from e
    if code == errno.ENODEV:
        return False
    if code:
        raise KernelError(f"could not remove link {name!r}: {os.strerror(code)}")
    return True


class DeletionWatch:
    """Tells when the kernel has unlisted a link being deleted by another thread.

    Deleting a veth takes the deleting call ~15-25 ms, most of it after both ends left their
    namespaces (the teardown waits for grace periods and the last references). The kernel
    announces the deletion (RTM_DELLINK to the link group) as soon as they left, ~0.5 ms in.
    Made before the deletion starts (it subscribes, then reads the link's index), on the
    caller's namespace; the deleting thread calls ``finished`` when its call ended, whatever
    the outcome (no announcement comes for a link that was not there, or not deleted).
    """

    def __init__(self, name: str) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                   NETLINK_ROUTE)
        try:
            self._read_end, self._write_end = os.pipe2(os.O_CLOEXEC)
        except OSError as e:
            self._sock.close()
            raise KernelError(f"could not watch link {name!r}") from e
        try:
            self._sock.bind((0, rtnl.RTMGRP_LINK))
            with rtnl.Reader(open_netlink_fd(None)) as reader:
                link = reader.link(name)
        except (NetlinkError, OSError) as e:
            self.close()
            os.close(self._write_end)
            raise KernelError(f"could not watch link {name!r}") from e
        self.index = link.index if link is not None else 0

    def finished(self) -> None:
        """The deleting call ended (the deleting thread; once)."""
        try:
            os.write(self._write_end, b"1")
        except OSError:  # the watcher gave up and went
            pass
        finally:
            os.close(self._write_end)

    def wait(self, timeout: float) -> bool:
        """Until the link is announced deleted, or the deleting call ended; False on timeout.
        A link that was not there to begin with needs no wait."""
        if not self.index:
            return True
        deadline = time.monotonic() + timeout
        watched: list[Any] = [self._sock, self._read_end]
        while (remaining := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select(watched, [], [], remaining)
            if self._read_end in ready:
                return True
            if self._sock in ready:
                try:
                    data = self._sock.recv(rtnl.RECV_SIZE)
                except OSError:  # (ENOBUFS: announcements lost) the call's end will tell
                    watched = [self._read_end]
                    continue
                if any(kind == rtnl.RTM_DELLINK and rtnl.link_index(payload) == self.index
                       for kind, _, payload in rtnl.messages(data)):
                    return True
        return False

    def close(self) -> None:
        """The watcher's ends (the deleting thread closes its own in ``finished``)."""
        self._sock.close()
        os.close(self._read_end)


class StalePeer(KernelError):
    """A veth's host side exists, its peer is not in the namespace it should be in."""


class Links(VxlanLinks, LinkBase):
    """The agent's netlink façade: bridges and veths (here) and overlays (``VxlanLinks``),
    on the sockets of ``LinkBase``. Use from ONE thread only (see linkbase)."""

    def __enter__(self) -> Links:
        return self

    # --- observation --------------------------------------------------------------------------

    def dump_owned(self) -> list[ObservedLink]:
        """Every link in the host namespace whose alias marks it as ours (a VXLAN device as an
        ``ObservedVxlan``): one link dump and one address dump in all (``observe_links``)."""
        return self.observe_links(lambda link: (link.alias or "").startswith(ALIAS_PREFIX))

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

    def ensure_bridge(self, name: str, alias: str, gateway_cidr: str, mtu: int,
                      gateway6_cidr: str = "") -> int:
        """A bridge with our alias, this MTU, exactly the gateway address (and IPv6 gateway),
        up. Returns its index."""
        self._check_thread()
        reader, what = self._reader, f"bridge {name!r}"
        link = self._get(reader, name, what)
        if link is None:
            link = self._create(reader, rtnl.link_add(name, "bridge", mtu=mtu, up=True), name,
                                "bridge", alias)
        else:
            self._verify_ours(link, name, "bridge", alias)
        self._fix_link(reader, link, what, mtu=mtu, up=True, alias=alias)
        self._ensure_addresses(reader, link.index, gateway_cidr, what, gateway6_cidr)
        return link.index

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
        address6_cidr: str = "",
        gateway6: str = "",
    ) -> int:
        """A veth pair from ``bridge`` into the container namespace, addressed and routed (in
        both families with ``address6_cidr`` and ``gateway6``).

        The peer is created directly inside ``netns_path``, with MAC address ``mac`` when given
        (``names.container_mac``: the anti-spoofing rules must know it; a different one is
        repaired). Returns the host side's index.
        """
        self._check_thread()
        reader = self._reader
        what = f"veth {host_ifname!r}"
        master_index = self._bridge_index(bridge, what)
        # Add first (EEXIST when it is there: then read back and verify): a new container's
        # veth is the common case, and asking whether it exists cost a request.
        link, created = self._create_veth(host_ifname, alias, master_index, mtu, netns_path,
                                          peer_ifname, mac)
        if created:
            faults.point("veth")
        self._fix_link(reader, link, what, mtu=mtu, master=master_index, up=True, alias=alias)
        peer_index = link.link
        if created and peer_index:
            self._configure_new_peer(netns_path, peer_ifname, alias, address_cidr, gateway,
                                     address6_cidr, gateway6, index=peer_index)
            return link.index
        try:
            self._ensure_container_side(netns_path, peer_ifname, alias, mtu, address_cidr,
                                        gateway, mac, address6_cidr, gateway6)
            return link.index
        except StalePeer:
            if created:
                raise
        # Our host side, its peer in another namespace: one a failed start dropped while a
        # process still held it (a runtime killed at its timeout, issue 21). The pair goes
        # with that end; a new one is born in this namespace.
        delete_link(reader, link, what)
        link, created = self._create_veth(host_ifname, alias, master_index, mtu, netns_path,
                                          peer_ifname, mac)
        self._fix_link(reader, link, what, mtu=mtu, master=master_index, up=True, alias=alias)
        peer_index = link.link
        if not (created and peer_index):
            raise KernelError(f"could not replace {what}: it came back at once")
        self._configure_new_peer(netns_path, peer_ifname, alias, address_cidr, gateway,
                                 address6_cidr, gateway6, index=peer_index)
        return link.index

    def add_veth(
        self, host_ifname: str, alias: str, bridge: str, mtu: int, netns_path: str,
        peer_ifname: str, address_cidr: str, gateway: str, mac: str,
        address6_cidr: str = "", gateway6: str = "",
    ) -> None:
        """What ``ensure_veth`` makes of a pair that does not exist yet, in two batches of raw
        requests (``rtnl``): the pair, its host side up in ``bridge`` with our alias; then the
        peer up with our alias, its addresses and default routes. For a CNI ADD's fast path:
        a pair of that name that exists already is left to ``ensure_veth`` (verified, repaired).
        On failure what was made is left for the caller to remove (``remove_link``)."""
        self._check_thread()
        what = f"veth {host_ifname!r}"
        try:
            master = self._reader.link(bridge)
        except (NetlinkError, OSError) as e:
            raise KernelError(f"could not read {what}") from e
        if master is None:
            raise KernelError(f"could not add {what}: bridge {bridge!r} does not exist")
        fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            codes = self._reader.send_all([
                rtnl.veth_add(host_ifname, mtu, master.index, peer_ifname, fd, mac.lower()),
                rtnl.link_up(alias, name=host_ifname)])
        except (NetlinkError, OSError) as e:
            raise KernelError(f"could not add {what}") from e
        finally:
            os.close(fd)
        if codes[0] == errno.EEXIST:
            self.ensure_veth(host_ifname, alias, bridge, mtu, netns_path, peer_ifname,
                             address_cidr, gateway, mac, address6_cidr, gateway6)
            return
        if any(codes):
            code = next(c for c in codes if c)
            raise KernelError(f"could not add {what}: {os.strerror(code)}")
        faults.point("veth")
        self._configure_new_peer(netns_path, peer_ifname, alias, address_cidr, gateway,
                                 address6_cidr, gateway6)

    def finish_veth(self, prepared: PreparedVeth, alias: str, netns_path: str,
                    peer_ifname: str, address_cidr: str, gateway: str, mac: str,
                    address6_cidr: str = "", gateway6: str = "") -> None:
        """What ``add_veth`` makes, from a pair ``prepare_veth`` made: the host side gets our
        alias, the peer its MAC, our alias, its addresses and default routes, and both are up.
        On failure (the pair gone meanwhile too) what exists is left for the caller to remove
        (``remove_link``)."""
        self._check_thread()
        what = f"veth {prepared.host_ifname!r}"
        try:
            (code,) = self._reader.send_all([rtnl.link_up(alias, name=prepared.host_ifname)])
        except (NetlinkError, OSError) as e:
            raise KernelError(f"could not bring up {what}") from e
        if code == errno.ENODEV:
            raise KernelError(f"{what} prepared for the attachment is gone")
        if code:
            raise KernelError(f"could not bring up {what}: {os.strerror(code)}")
        faults.point("veth")
        self._configure_new_peer(netns_path, peer_ifname, alias, address_cidr, gateway,
                                 address6_cidr, gateway6, index=prepared.peer_index, mac=mac)

    def _configure_new_peer(self, netns_path: str, peer: str, alias: str, address_cidr: str,
                            gateway: str, address6_cidr: str = "", gateway6: str = "",
                            index: int = 0, mac: str = "") -> None:
        """The peer just created (name and MTU set at birth, and its MAC unless ``mac`` is
        given: set here, before it is up; ``index``, when known, is the host side's IFLA_LINK,
        else it is read by name): up with our alias, its addresses, its default routes, as ONE
        batch of raw requests on a socket opened for it (pyroute2 took a round trip, and a
        decode, for each)."""
        what = f"{peer!r} in {netns_path!r}"
        fd = open_netlink_fds([netns_path])[netns_path]
        if isinstance(fd, OSError):
            raise KernelError(f"could not enter network namespace {netns_path!r}: {fd}")
        with rtnl.Reader(fd) as reader:
            try:
                if not index:
                    link = reader.link(peer)
                    if link is None:
                        raise KernelError(f"could not find {what}: host side exists without it")
                    index = link.index
                requests = [rtnl.link_up(alias, index=index, mac=mac.lower()),
                            *(rtnl.address_add(index, cidr)
                              for cidr in (address_cidr, address6_cidr) if cidr),
                            *(rtnl.route_replace(dst, via, index, MAIN_TABLE, RTPROT_SDNCTL, 0)
                              for dst, via in (("0.0.0.0/0", gateway), ("::/0", gateway6))
                              if via)]
                codes = reader.send_all(requests)
            except (NetlinkError, OSError) as e:
                raise KernelError(f"could not bring up and address {what}") from e
        faults.point("address")
        if any(codes):
            code = next(c for c in codes if c)
            raise KernelError(f"could not bring up, address and route {what}: "
                              f"{os.strerror(code)}")
        faults.point("route")

    def ensure_handover_veth(self, host_ifname: str, alias: str, bridge: str, mtu: int,
                             peer_ifname: str, mac: str) -> int:
        """A veth pair whose BOTH ends are in the host namespace, the host side up in
        ``bridge``, the peer down with this MTU and MAC: a Docker endpoint's (issue 18), whose
        peer dockerd then moves into its sandbox, renames, addresses and brings up. A pair that
        exists is verified and fixed (its peer may already have been moved). Returns the host
        side's index."""
        self._check_thread()
        reader = self._reader
        what = f"veth {host_ifname!r}"
        master_index = self._bridge_index(bridge, what)
        self._add(reader, rtnl.link_add(host_ifname, "veth", mtu=mtu, master=master_index,
                                        up=True, data=rtnl.veth_peer(peer_ifname, mtu,
                                                                     mac=mac.lower())),
                  host_ifname, "veth")
        link = self._read_back(reader, host_ifname, "veth", alias)
        self._fix_link(reader, link, what, mtu=mtu, master=master_index, up=True, alias=alias)
        # The peer stays untagged and outside our name prefixes: resync must not take it for a
        # link of ours to remove; it goes with the host side.
        return link.index

    def _bridge_index(self, bridge: str, what: str) -> int:
        """The index of ``bridge``, which a veth (``what``) is about to join; it must exist."""
        master = self._get(self._reader, bridge, what)
        if master is None:
            raise KernelError(f"could not add {what}: bridge {bridge!r} does not exist")
        return master.index

    def repair_host_side(self, host_ifname: str, alias: str, bridge: str, mtu: int) -> bool:
        """The host side of a veth whose other side is out of our reach (a Docker endpoint's,
        in dockerd's sandbox): in ``bridge``, up, this MTU and alias. Never creates one; False
        when it is gone."""
        self._check_thread()
        reader = self._reader
        what = f"veth {host_ifname!r}"
        link = self._get(reader, host_ifname, what)
        if link is None:
            return False
        master = self._get(reader, bridge, what)
        if master is None:
            raise KernelError(f"could not repair {what}: bridge {bridge!r} does not exist")
        self._verify_ours(link, host_ifname, "veth", alias)
        self._fix_link(reader, link, what, mtu=mtu, master=master.index, up=True, alias=alias)
        return True

    def _create_veth(
        self, name: str, alias: str, master: int, mtu: int, netns_path: str, peer: str,
        mac: str | None,
    ) -> tuple[rtnl.Link, bool]:
        """Add the pair with its peer born in ``netns_path``; (host side, whether this call
        created it)."""
        fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            created = self._add(self._reader, rtnl.link_add(
                name, "veth", mtu=mtu, master=master, up=True,
                data=rtnl.veth_peer(peer, mtu, fd, mac.lower() if mac is not None else "")),
                name, "veth")
        finally:
            os.close(fd)
        return self._read_back(self._reader, name, "veth", alias), created

    def _ensure_container_side(
        self, netns_path: str, peer: str, alias: str, mtu: int, address_cidr: str, gateway: str,
        mac: str | None, address6_cidr: str = "", gateway6: str = "",
    ) -> None:
        what = f"{peer!r} in {netns_path!r}"
        reader = self._in(netns_path)
        link = self._get(reader, peer, what)
        if link is None:
            # The host side exists but its peer is not in this namespace (moved or renamed).
            raise StalePeer(f"could not find {what}: host side exists without it")
        self._fix_link(reader, link, what, mtu=mtu, up=True, alias=alias,
                       mac=mac.lower() if mac is not None else "")
        self._ensure_addresses(reader, link.index, address_cidr, what, address6_cidr)
        faults.point("address")
        if gateway:
            self._ensure_default_route(reader, link.index, gateway, what)
        if gateway6:
            self._ensure_default_route(reader, link.index, gateway6, what, socket.AF_INET6)
        faults.point("route")

    @staticmethod
    def _ensure_default_route(reader: rtnl.Reader, index: int, gateway: str, what: str,
                              family: int = socket.AF_INET) -> None:
        failure = f"could not set default route via {gateway} for {what}"
        try:
            current = next((r for r in reader.routes(family)
                            if r.dst_len == 0 and r.table == MAIN_TABLE), None)
        except (NetlinkError, OSError) as e:
            raise KernelError(failure) from e
        if current is not None and (current.gateway, current.oif, current.proto) == (
                gateway, index, RTPROT_SDNCTL):
            return
        dst = "0.0.0.0/0" if family == socket.AF_INET else "::/0"
        write(reader, [rtnl.route_replace(dst, gateway, index, MAIN_TABLE, RTPROT_SDNCTL, 0)],
              failure)


# The observed types live in agent/observed.py (pure); these names stay reachable from here.
__all__ = [
    "RTPROT_SDNCTL",
    "KernelError",
    "LinkBase",
    "Links",
    "ObservedContainerNet",
    "ObservedLink",
    "ObservedPeers",
    "ObservedVxlan",
    "PeerEntries",
    "delete_link",
]
