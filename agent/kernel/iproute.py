"""Idempotent pyroute2 steps for small setups that run rarely: the lab's underlay, its hosts'
uplinks, the way out to the "outside world" (``sdnctl.lab.lab``).

Design note. The agent's own links go through ``links.py`` (batched raw rtnetlink, owner
tags; the agent does not load pyroute2); these steps are the plain form of the same rules:
every call is an ``ensure_*`` that reads the link back, keeps what is right, changes in place
what is not and treats "already there" as success. A failure raises ``error``
(:class:`KernelError` unless the caller names its own, as the lab does with ``LabError``)
naming the verb and the object, with the netlink error chained.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import socket
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from agent.kernel.errors import KernelError
from agent.kernel.netns import netns_inode, open_netlink_fd, run_in_netns

RTPROT_STATIC = 4  # our lab routes; the agent's routes carry its own protocol number
IFF_UP = 0x1
IFA_F_NODAD = 0x02


def iproute_in(path: str | None) -> IPRoute:
    """An ``IPRoute`` whose socket lives in the namespace at ``path``, opened without forking.

    pyroute2 0.9.7 binds an ``IPRoute`` to the thread that made it (from another thread a
    request fails with ENOTSOCK): use it from that thread only.
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


def add_address6(ipr: IPRoute, index: int, cidr: str) -> None:
    """Add an IPv6 address with ``nodad``: usable at once, no tentative state (EEXIST is
    success)."""
    address = ipaddress.IPv6Interface(cidr)
    try:
        ipr.addr("add", index=index, address=str(address.ip),
                 prefixlen=address.network.prefixlen, family=socket.AF_INET6, flags=IFA_F_NODAD)
    except NetlinkError as e:
        if e.code != errno.EEXIST:
            raise


def require_link(ipr: IPRoute, ifname: str, *, error: type[Exception] = KernelError) -> Any:
    link = get_link(ipr, ifname)
    if link is None:
        raise error(f"could not find link {ifname!r}")
    return link


def link_kind(link: Any) -> str | None:
    kind = link.get(("linkinfo", "kind"))
    return kind if isinstance(kind, str) else None


def ensure_bridge(ipr: IPRoute, name: str, mtu: int, *,
                  error: type[Exception] = KernelError) -> Any:
    link = get_link(ipr, name)
    if link is None:
        try:
            ipr.link("add", ifname=name, kind="bridge", state="up")
        except NetlinkError as e:
            if e.code != errno.EEXIST:
                raise error(f"could not add bridge {name!r}") from e
        link = require_link(ipr, name, error=error)
    if link_kind(link) != "bridge":
        raise error(f"could not use {name!r} as the underlay bridge: it is a {link_kind(link)}")
    ensure_up(ipr, link)
    return ensure_mtu(ipr, link, mtu, error=error)


def ensure_mtu(ipr: IPRoute, link: Any, mtu: int, *, error: type[Exception] = KernelError) -> Any:
    """Set the link's MTU in place when it differs; return the link, read back if changed."""
    if link.get("mtu") == mtu:
        return link
    try:
        ipr.link("set", index=link["index"], mtu=mtu)
    except NetlinkError as e:
        raise error(f"could not set the MTU of {link.get('ifname')!r} to {mtu}") from e
    return require_link(ipr, link.get("ifname"), error=error)


def ensure_up(ipr: IPRoute, link: Any) -> None:
    if not link["flags"] & IFF_UP:
        ipr.link("set", index=link["index"], state="up")


def ensure_veth_pair(near: IPRoute, near_name: str, far: IPRoute, far_path: str, far_name: str,
                     alias: str, master: int | None, mtu: int, rollback: contextlib.ExitStack,
                     *, error: type[Exception] = KernelError) -> tuple[Any, Any]:
    """A veth ``near_name`` (in ``near``'s namespace) whose peer ``far_name`` is in ``far_path``,
    both ends at ``mtu``.

    A correct pair is kept; a wrong MTU or master is changed in place. The near end carries
    ``alias``; a near end with another alias is a name collision and an error. Returns the
    (near, far) link messages, read back.
    """
    n, f = get_link(near, near_name), get_link(far, far_name)
    if n is not None and n.get("ifalias") != alias:
        raise error(f"could not add veth {near_name!r} for {alias!r}: it belongs to "
                       f"{n.get('ifalias')!r}")
    paired = (n is not None and f is not None and link_kind(n) == "veth" and link_kind(f) == "veth"
              and n.get("link") == f["index"] and f.get("link") == n["index"])
    if not paired:
        for ipr, link, name in ((near, n, near_name), (far, f, far_name)):
            if link is not None:
                delete_link(ipr, link, f"stale link {name!r}", error)
        add_veth_pair(near, near_name, far_path, far_name, master, mtu, error=error)
        n = require_link(near, near_name, error=error)
        rollback.callback(delete_link, near, n, f"veth {near_name!r}", error)
        near.link("set", index=n["index"], ifalias=alias)
        n = require_link(near, near_name, error=error)
        f = require_link(far, far_name, error=error)
    assert n is not None and f is not None
    if master is not None and n.get("master") != master:
        near.link("set", index=n["index"], master=master)
        n = require_link(near, near_name, error=error)
    n = ensure_mtu(near, n, mtu, error=error)
    f = ensure_mtu(far, f, mtu, error=error)
    ensure_up(far, f)
    return n, f


def add_veth_pair(near: IPRoute, near_name: str, far_path: str, far_name: str,
                  master: int | None, mtu: int, *, error: type[Exception] = KernelError) -> None:
    fd = os.open(far_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        extra = {} if master is None else {"master": master}
        near.link("add", ifname=near_name, kind="veth", mtu=mtu, **extra,
                  peer={"ifname": far_name, "net_ns_fd": fd, "mtu": mtu})
    except NetlinkError as e:
        raise error(f"could not add veth {near_name!r} with peer {far_name!r} in "
                       f"{far_path}") from e
    finally:
        os.close(fd)


def v4_addresses(ipr: IPRoute, index: int) -> list[tuple[str, int]]:
    return [(a.get("address"), a["prefixlen"])
            for a in ipr.addr("dump", family=socket.AF_INET) if a["index"] == index]


def ensure_addresses(ipr: IPRoute, link: Any, wanted: list[tuple[str, int]], *,
                     error: type[Exception] = KernelError) -> None:
    """Exactly ``wanted`` as the link's IPv4 addresses: the links are ours, strays go."""
    index = link["index"]
    have = v4_addresses(ipr, index)
    for address, prefixlen in have:
        if (address, prefixlen) not in wanted:
            ipr.addr("del", index=index, address=address, prefixlen=prefixlen)
    for address, prefixlen in wanted:
        if (address, prefixlen) not in have:
            try:
                ipr.addr("add", index=index, address=address, prefixlen=prefixlen)
            except NetlinkError as e:
                if e.code != errno.EEXIST:
                    raise error(f"could not add {address}/{prefixlen} to {link.get('ifname')!r}"
                                   ) from e


def ensure_route(ipr: IPRoute, dst: str, dst_len: int, gateway: str, oif: int, *,
                 error: type[Exception] = KernelError) -> None:
    for route in ipr.route("dump", family=socket.AF_INET, table=254):
        same_dst = route["dst_len"] == dst_len and (dst_len == 0 or route.get("dst") == dst)
        if same_dst and route.get("gateway") == gateway and route.get("oif") == oif:
            return
    try:
        ipr.route("replace", dst=f"{dst}/{dst_len}", gateway=gateway, oif=oif,
                  proto=RTPROT_STATIC)
    except NetlinkError as e:
        raise error(f"could not route {dst}/{dst_len} via {gateway}") from e


def ensure_addresses6(ipr: IPRoute, link: Any, wanted: list[str], *,
                      error: type[Exception] = KernelError) -> None:
    """``wanted`` (CIDRs) among the link's IPv6 addresses, added ``nodad`` (usable at once)."""
    for cidr in wanted:
        try:
            add_address6(ipr, link["index"], cidr)
        except NetlinkError as e:
            raise error(f"could not add {cidr} to {link.get('ifname')!r}") from e


def ensure_route6(ipr: IPRoute, dst: str, gateway: str, oif: int, *,
                  error: type[Exception] = KernelError) -> None:
    """An IPv6 route to ``dst`` (a CIDR; ``::/0`` for the default) via ``gateway``."""
    net = ipaddress.IPv6Network(dst)
    for route in ipr.route("dump", family=socket.AF_INET6, table=254):
        same_dst = route["dst_len"] == net.prefixlen and (
            net.prefixlen == 0 or route.get("dst") == str(net.network_address))
        if same_dst and route.get("gateway") == gateway and route.get("oif") == oif:
            return
    try:
        ipr.route("replace", dst=str(net.network_address), dst_len=net.prefixlen,
                  gateway=gateway, oif=oif, family=socket.AF_INET6, proto=RTPROT_STATIC)
    except NetlinkError as e:
        raise error(f"could not route {dst} via {gateway}") from e


def remove_other_routes(ipr: IPRoute, wanted: list[ipaddress.IPv4Network],
                         gateway: str, *, error: type[Exception] = KernelError) -> None:
    """Delete our static routes via ``gateway`` to anything but ``wanted`` (a former mode's)."""
    for route in ipr.route("dump", family=socket.AF_INET, table=254):
        if route["proto"] != RTPROT_STATIC or route.get("gateway") != gateway:
            continue
        dst = ipaddress.IPv4Network(f"{route.get('dst') or '0.0.0.0'}/{route['dst_len']}")
        if dst not in wanted:
            try:
                ipr.route("del", dst=str(dst), gateway=gateway, proto=RTPROT_STATIC)
            except NetlinkError as e:
                if e.code != errno.ESRCH:
                    raise error(f"could not delete the stale route to {dst}") from e


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
