"""Forget conntrack entries that point at addresses which are gone or may no longer talk.

Design note. Conntrack keeps a NAT binding (and its "established" verdict) for as long as a flow
lives: after a container goes, a UDP client that keeps sending to a published port stays bound to
the dead address; after a container moves, its old address may be reused. Docker and the CNI
portmap plugin therefore delete the entries of an address when it goes, and so do we.

Entries are read with one ctnetlink dump (pyroute2's ``Conntrack``, no ``conntrack`` binary) and
deleted one by one by their original tuple and zone. The kernel's own flush filters by mark
only, so there is no server-side "delete where address = X". An entry that vanished between
the dump and the delete is fine. IPv4 only, like the rest of the data path.

The socket is born in the calling thread's network namespace: the agent calls this from its
host's namespace; a test wraps the call in ``netns.run_in_netns``.
"""

from __future__ import annotations

import errno
import ipaddress
from collections.abc import Callable
from typing import Any

from pyroute2 import Conntrack
from pyroute2.netlink.exceptions import NetlinkError

from agent.kernel.links import KernelError


def flush_address(ip: str) -> int:
    """Delete every IPv4 entry in which ``ip`` appears as source or destination of the original
    or the reply direction: flows it started, flows to it (also DNAT'd ones, where it is the
    reply's source) and flows masqueraded to it. Returns how many were deleted."""
    address = str(ipaddress.IPv4Address(ip))

    def matches(entry: Any) -> bool:
        return address in _addresses(entry)

    return _flush(matches, f"address {address}")


def flush_between(subnet_a: str, subnet_b: str) -> int:
    """Delete every IPv4 entry whose client (source of the original direction) is in one subnet
    and whose server (source of the reply direction, i.e. after any DNAT) is in the other: the
    flows between two networks, routed or through a published port. Returns how many."""
    a = ipaddress.IPv4Network(subnet_a, strict=False)
    b = ipaddress.IPv4Network(subnet_b, strict=False)

    def matches(entry: Any) -> bool:
        client = ipaddress.IPv4Address(entry.tuple_orig.saddr)
        server = ipaddress.IPv4Address(entry.tuple_reply.saddr)
        return (client in a and server in b) or (client in b and server in a)

    return _flush(matches, f"flows between {a} and {b}")


def _addresses(entry: Any) -> set[str]:
    o, r = entry.tuple_orig, entry.tuple_reply
    return {o.saddr, o.daddr, r.saddr, r.daddr}


def _flush(matches: Callable[[Any], bool], what: str) -> int:
    deleted = 0
    try:
        with Conntrack() as ct:
            for entry in [e for e in ct.dump_entries() if matches(e)]:
                if _delete(ct, entry):
                    deleted += 1
    except (NetlinkError, OSError) as e:
        raise KernelError(f"could not flush conntrack entries of {what}") from e
    return deleted


def _delete(ct: Conntrack, entry: Any) -> bool:
    request: dict[str, Any] = {"tuple_orig": entry.tuple_orig}
    if entry.zone:
        request["zone"] = entry.zone
    try:
        ct.entry("del", **request)
    except NetlinkError as e:
        if e.code == errno.ENOENT:  # gone meanwhile
            return False
        raise
    return True
