"""Idempotent rtnetlink steps for small setups that run rarely: the lab's underlay, its hosts'
uplinks, the way out to the "outside world" (``sdnctl.lab.lab``).

Design note. The agent's own links go through ``links.py`` (batched requests, owner tags);
these steps are the plain form of the same rules, on the same raw sockets (``rtnl.Reader``):
every call is an ``ensure_*`` that reads the link back, keeps what is right, changes in place
what is not and treats "already there" as success. A failure raises ``error``
(:class:`KernelError` unless the caller names its own, as the lab does with ``LabError``)
naming the verb and the object, with the netlink error chained. They once went through
pyroute2, whose import alone took 80 ms of every `sdnctl up` (issue 21); nothing the CLI or
the agent runs imports it now.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import socket

from agent.kernel import rtnl
from agent.kernel.errors import KernelError
from agent.kernel.linkbase import MAIN_TABLE
from agent.kernel.netns import netns_inode, open_netlink_fd, run_in_netns
from agent.kernel.rtnl import Link, NetlinkError, Reader, Request

RTPROT_STATIC = 4  # our lab routes; the agent's routes carry its own protocol number
IFF_UP = 0x1


def reader_in(path: str | None) -> Reader:
    """A ``rtnl.Reader`` whose socket lives in the namespace at ``path`` (None: the calling
    thread's), opened without forking."""
    return Reader(open_netlink_fd(path))


def _do(reader: Reader, request: Request, what: str, error: type[Exception],
        ok: tuple[int, ...] = ()) -> None:
    """Send one request; an errno other than 0 and those in ``ok`` raises ``error(what)``."""
    (code,) = reader.send_all([request])
    if code and code not in ok:
        raise error(what) from NetlinkError(code)


def delete_link(reader: Reader, link: Link, what: str,
                error: type[Exception] | None = None) -> None:
    """Delete ``link``; one already gone is success. Failures raise ``error`` (KernelError by
    default) naming ``what``."""
    _do(reader, rtnl.link_delete(index=link.index), f"could not delete {what}",
        error or KernelError, ok=(errno.ENODEV,))


def require_link(reader: Reader, ifname: str, *,
                 error: type[Exception] = KernelError) -> Link:
    link = reader.link(ifname)
    if link is None:
        raise error(f"could not find link {ifname!r}")
    return link


def ensure_bridge(reader: Reader, name: str, mtu: int, *,
                  error: type[Exception] = KernelError) -> Link:
    if reader.link(name) is None:
        _do(reader, rtnl.link_add(name, "bridge", up=True), f"could not add bridge {name!r}",
            error, ok=(errno.EEXIST,))
    link = require_link(reader, name, error=error)
    if link.kind != "bridge":
        raise error(f"could not use {name!r} as the underlay bridge: it is a {link.kind}")
    ensure_up(reader, link, error=error)
    return ensure_mtu(reader, link, mtu, error=error)


def ensure_mtu(reader: Reader, link: Link, mtu: int, *,
               error: type[Exception] = KernelError) -> Link:
    """Set the link's MTU in place when it differs; return the link, read back if changed."""
    if link.mtu == mtu:
        return link
    _do(reader, rtnl.link_set(link.index, mtu=mtu),
        f"could not set the MTU of {link.ifname!r} to {mtu}", error)
    return require_link(reader, link.ifname, error=error)


def ensure_up(reader: Reader, link: Link, *, error: type[Exception] = KernelError) -> None:
    if not link.flags & IFF_UP:
        _do(reader, rtnl.link_set(link.index, up=True), f"could not bring {link.ifname!r} up",
            error)


def set_link(reader: Reader, link: Link, *, error: type[Exception] = KernelError,
             alias: str | None = None, master: int | None = None, group: int = 0) -> Link:
    """Change ``link``'s alias, master or group in place; return it read back."""
    _do(reader, rtnl.link_set(link.index, alias=alias, master=master, group=group),
        f"could not change {link.ifname!r}", error)
    return require_link(reader, link.ifname, error=error)


def ensure_veth_pair(near: Reader, near_name: str, far: Reader, far_path: str, far_name: str,
                     alias: str, master: int | None, mtu: int, rollback: contextlib.ExitStack,
                     *, error: type[Exception] = KernelError) -> tuple[Link, Link]:
    """A veth ``near_name`` (in ``near``'s namespace) whose peer ``far_name`` is in ``far_path``,
    both ends at ``mtu``.

    A correct pair is kept; a wrong MTU or master is changed in place. The near end carries
    ``alias``; a near end with another alias is a name collision and an error. Returns the
    (near, far) links, read back.
    """
    n, f = near.link(near_name), far.link(far_name)
    if n is not None and n.alias != alias:
        raise error(f"could not add veth {near_name!r} for {alias!r}: it belongs to "
                    f"{n.alias!r}")
    paired = (n is not None and f is not None and n.kind == "veth" and f.kind == "veth"
              and n.link == f.index and f.link == n.index)
    if not paired:
        for reader, link, name in ((near, n, near_name), (far, f, far_name)):
            if link is not None:
                delete_link(reader, link, f"stale link {name!r}", error)
        add_veth_pair(near, near_name, far_path, far_name, master, mtu, error=error)
        n = require_link(near, near_name, error=error)
        rollback.callback(delete_link, near, n, f"veth {near_name!r}", error)
        n = set_link(near, n, alias=alias, error=error)
        f = require_link(far, far_name, error=error)
    assert n is not None and f is not None
    if master is not None and n.master != master:
        n = set_link(near, n, master=master, error=error)
    n = ensure_mtu(near, n, mtu, error=error)
    f = ensure_mtu(far, f, mtu, error=error)
    ensure_up(far, f, error=error)
    return n, f


def add_veth_pair(near: Reader, near_name: str, far_path: str, far_name: str,
                  master: int | None, mtu: int, *, error: type[Exception] = KernelError) -> None:
    fd = os.open(far_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _do(near, rtnl.link_add(near_name, "veth", mtu=mtu, master=master,
                                data=rtnl.veth_peer(far_name, mtu, fd)),
            f"could not add veth {near_name!r} with peer {far_name!r} in {far_path}", error)
    finally:
        os.close(fd)


def _addresses(reader: Reader, index: int, family: int) -> list[str]:
    """The CIDRs of ``family`` on link ``index`` (IPv6: global ones only)."""
    return [cidr for at, cidr in reader.global_addresses()
            if at == index and (":" in cidr) == (family == socket.AF_INET6)]


def ensure_addresses(reader: Reader, link: Link, wanted: list[tuple[str, int]], *,
                     error: type[Exception] = KernelError) -> None:
    """Exactly ``wanted`` as the link's IPv4 addresses: the links are ours, strays go."""
    want = [f"{address}/{prefixlen}" for address, prefixlen in wanted]
    have = _addresses(reader, link.index, socket.AF_INET)
    for cidr in have:
        if cidr not in want:
            _do(reader, rtnl.address_delete(link.index, cidr),
                f"could not remove {cidr} from {link.ifname!r}", error,
                ok=(errno.EADDRNOTAVAIL,))
    for cidr in want:
        if cidr not in have:
            _do(reader, rtnl.address_add(link.index, cidr),
                f"could not add {cidr} to {link.ifname!r}", error, ok=(errno.EEXIST,))


def ensure_addresses6(reader: Reader, link: Link, wanted: list[str], *,
                      error: type[Exception] = KernelError) -> None:
    """``wanted`` (CIDRs) among the link's IPv6 addresses, added ``nodad`` (usable at once)."""
    for cidr in wanted:
        _do(reader, rtnl.address_add(link.index, cidr),
            f"could not add {cidr} to {link.ifname!r}", error, ok=(errno.EEXIST,))


def ensure_route(reader: Reader, dst: str, gateway: str, oif: int, *,
                 error: type[Exception] = KernelError) -> None:
    """A route in the main table to ``dst`` (a CIDR of either family; ``0.0.0.0/0`` or
    ``::/0`` for the default) via ``gateway`` out of ``oif``."""
    net = ipaddress.ip_network(dst)
    family = socket.AF_INET6 if net.version == 6 else socket.AF_INET
    for route in reader.routes(family):
        same_dst = route.dst_len == net.prefixlen and (
            net.prefixlen == 0 or route.dst == str(net.network_address))
        if route.table == MAIN_TABLE and same_dst and route.gateway == gateway \
                and route.oif == oif:
            return
    _do(reader, rtnl.route_replace(str(net), gateway, oif, MAIN_TABLE, RTPROT_STATIC, 0),
        f"could not route {dst} via {gateway}", error)


def remove_other_routes(reader: Reader, wanted: list[ipaddress.IPv4Network],
                        gateway: str, *, error: type[Exception] = KernelError) -> None:
    """Delete our static routes via ``gateway`` to anything but ``wanted`` (a former mode's)."""
    for route in reader.routes(socket.AF_INET):
        if route.table != MAIN_TABLE or route.proto != RTPROT_STATIC \
                or route.gateway != gateway or route.oif is None:
            continue
        dst = ipaddress.IPv4Network(f"{route.dst or '0.0.0.0'}/{route.dst_len}")
        if dst not in wanted:
            _do(reader, rtnl.route_delete(str(dst), route.oif, MAIN_TABLE, RTPROT_STATIC),
                f"could not delete the stale route to {dst}", error, ok=(errno.ESRCH,))


def ensure_ip_forward(path: str, *, error: type[Exception] = KernelError,
                      ipv6: bool = False) -> None:
    """net.ipv4.ip_forward=1 (and with ``ipv6`` net.ipv6.conf.all.forwarding=1) in the
    namespace at ``path`` (and, checked, nowhere else).

    /proc/sys/net belongs to the network namespace of the *thread* that opens it.
    """
    target = netns_inode(path)

    def write() -> None:
        if os.stat("/proc/thread-self/ns/net").st_ino != target:
            raise error(f"could not enter {path} to set ip_forward")
        for name in ("ipv4/ip_forward", *(["ipv6/conf/all/forwarding"] if ipv6 else [])):
            with open(f"/proc/sys/net/{name}", "r+") as f:
                if f.read().strip() != "1":
                    f.seek(0)
                    f.write("1")

    try:
        run_in_netns(path, write)
    except OSError as e:
        raise error(f"could not set ip_forward in {path}") from e
