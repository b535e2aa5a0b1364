"""IPAM: subnet leases for hosts and addresses for containers, on top of a Store.

Design note. A network's CIDR is carved into per-host leases (flannel-style, /24 by default);
each container interface gets one address from its host's lease. All state is in the store and
every write is one compare-and-swap transaction, so two controller replicas or two concurrent
requests can never hand out the same subnet or address:

- ``/leases/<network>/<host>`` holds the :class:`Lease`; ``/ipam/<network>/subnet/<a.b.c.d_n>``
  holds the host name and is the uniqueness guard (created with "must not exist").
- ``/ipam/<network>/addr/<address>`` is the address's uniqueness guard and
  ``/ipam/<network>/owner/<container>/<interface>`` makes allocation idempotent; both hold the
  same :class:`Allocation`.

Leases have an owner (the host), ``renewed_at`` and ``expires_at`` (unix seconds, :class:`Timers`
says how long). A lease that expired and holds no address is freed by the controller's sweeper;
every freed subnet or address is quarantined (``/ipam/<network>/quarantine/<subject>``, holding
a :class:`Quarantined`) before anyone else may take it, and a host that leases again gets its
previous subnet back (``/ipam/<network>/previous/<host>``) when it is still free. Every grant,
release, expiry and end of quarantine is appended to a bounded history (``/history/ipam/<seq>``,
keys that sort by time and are unique without a shared counter, so recording history never makes
two writers conflict; the sweeper trims it to :data:`HISTORY_MAX`).

Dual-stack (issue 20). A network with a ``subnet6`` gives each lease an IPv6 prefix too
(``host_prefix6``, /64 by default) and each allocation an IPv6 address, in the same
transaction and through the same kinds of guards, indexes and quarantine entries (their keys
spell the IPv6 text). Nothing ever walks an IPv6 range: a prefix is picked by skipping the taken
spans in order and an address from the lease's used-ranges index, so every operation, and
``ipam check``, costs O(used), never O(2^64).

A network with a ``gateway`` or an ``ip_range`` is one lease (validation makes its host prefix
the subnet's own, as a Docker bridge network is): the lease's gateway is the network's, and
picked addresses come from the ip_range only. A container's ``fixed_ip`` takes exactly that
address of its host's lease, through the same guard, so a fixed and a picked address can never
collide either.

The ``plan_*`` functions read the store and return (result, compares, puts) without writing, so
that the controller can commit a lease, an address and its own container record in ONE
transaction through :func:`commit_with_retry`. The pure helpers (``pick_subnet``,
``pick_address``...) do the arithmetic and have no I/O at all.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import ipaddress
import itertools
import json
import os
import random
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from netaddr import AddrFormatError, IPAddress, IPNetwork

from sdnctl.api.addrfields import validate_cidr
from sdnctl.api.fields import check_name
from sdnctl.api.model import Allocation, Lease, Network, from_json, from_json_frozen, to_json
from sdnctl.api.validate import MAX_HOST_PREFIX, host_prefix6_for, host_prefix_for
from sdnctl.controller.errors import (
    AlreadyExists,
    Conflict,
    Exhausted,
    FailedPrecondition,
    Invalid,
)
from sdnctl.controller.keys import (
    HISTORY,
    IPAM,
    LEASES,
    addr_key,
    lease_key,
    network_prefix,
    octet_prefix,
    owner_key,
    owners_prefix,
    previous_key,
    quarantine_key,
    quarantine_prefix,
    subnet_key,
    subnets_prefix,
    used_key,
)
from sdnctl.controller.store.base import Compare, Delete, KeyValue, Put, Store

R = TypeVar("R")

#: How long commit_with_retry keeps trying before it raises Conflict.
RETRY_TIMEOUT = 5.0



# ---------------------------------------------------------------------------------------------
# Keys


#: How many events the history keeps (the sweeper trims older ones).
HISTORY_MAX = 1000
QUARANTINE_DECODED = 16384  # quarantine entries kept decoded (see _quarantined)


# ---------------------------------------------------------------------------------------------
# Time: TTLs, quarantine, history


@dataclass(frozen=True)
class Timers:
    """How long leases live and freed subnets and addresses stay quarantined (seconds)."""

    lease_ttl: int = 3600
    subnet_quarantine: int = 600
    address_quarantine: int = 60
    #: ReportStatus renews a host's leases at most this often (and at least twice per TTL).
    renew_every: int = 60

    def renew_interval(self) -> int:
        return max(1, min(self.renew_every, self.lease_ttl // 2))


DEFAULT_TIMERS = Timers()


@dataclass(frozen=True)
class Quarantined:
    """A freed subnet or address nobody but ``holder`` (its last host, or container) may take
    before ``until``."""

    network: str
    subject: str  # a subnet (CIDR) or an address
    until: int
    holder: str = ""


@dataclass(frozen=True)
class IpamEvent:
    at: int
    kind: str  # lease | release | expire | allocate | free | quarantine-end
    network: str
    host: str = ""
    subnet: str = ""
    address: str = ""
    container: str = ""


_event_seq = itertools.count()
_event_origin = f"{os.getpid():x}"


def now_seconds(now: float | None = None) -> int:
    return int(time.time() if now is None else now)


def history_put(event: IpamEvent) -> Put:
    """The put that appends ``event`` to the history. Keys are unique (time, process, sequence)
    so that recording needs no compare and never makes two transactions conflict."""
    key = f"{HISTORY}{time.time_ns():020d}-{_event_origin}-{next(_event_seq):09d}"
    return Put(key, to_json(event))


def list_history(store: Store, network: str = "", limit: int = HISTORY_MAX) -> list[IpamEvent]:
    """The newest ``limit`` events (of ``network``, if given), oldest first."""
    entries, _ = store.range(HISTORY)
    events = [from_json(IpamEvent, kv.value) for kv in entries]
    if network:
        events = [e for e in events if e.network == network]
    return events[-limit:] if limit else []


def history_trim_ops(store: Store, keep: int = HISTORY_MAX) -> list[Delete]:
    entries, _ = store.range(HISTORY)
    return [Delete(kv.key) for kv in entries[:max(0, len(entries) - keep)]]


def list_quarantine(store: Store, network: str = "") -> list[tuple[KeyValue, Quarantined]]:
    """Quarantine entries (expired ones too, until the sweeper ends them)."""
    if network:
        entries, _ = store.range(network_prefix(network))
    else:
        entries, _ = store.range(IPAM)
    return [(kv, from_json(Quarantined, kv.value)) for kv in entries if "/quarantine/" in kv.key]


@functools.lru_cache(maxsize=QUARANTINE_DECODED)
def _quarantined(value: bytes) -> Quarantined:
    """A quarantine entry, decoded once per value: every allocation on a network reads all of
    the network's entries, and after churn they are many (immutable: kept by their bytes)."""
    return from_json(Quarantined, value)


@functools.lru_cache(maxsize=QUARANTINE_DECODED)
def _address_value(address: str) -> int:
    """An address as an integer (the quarantined ones of a network, at each allocation)."""
    return int(ipaddress.ip_address(address))


def _active_quarantine(store: Store, network: str, now: int) -> dict[str, tuple[KeyValue,
                                                                              Quarantined]]:
    """Quarantine entries of ``network`` still in force, by subject."""
    entries, _ = store.range(quarantine_prefix(network))
    found = {}
    for kv in entries:
        entry = _quarantined(kv.value)
        if entry.until > now:
            found[entry.subject] = (kv, entry)
    return found


def _quarantine_take(store: Store, network: str, subject: str) -> tuple[list[Compare],
                                                                         list[Put | Delete]]:
    """Taking ``subject`` ends its quarantine (if any) in the same transaction."""
    key = quarantine_key(network, subject)
    kv = store.get(key)
    if kv is None:
        return [], []
    return [Compare(key, kv.mod_revision)], [Delete(key)]


# ---------------------------------------------------------------------------------------------
# Pure arithmetic




def pick_subnet(network_cidr: str, prefixlen: int, taken: set[str]) -> str | None:
    """The lowest aligned ``/prefixlen`` of ``network_cidr`` overlapping nothing in ``taken``.

    ``taken`` may hold subnets of other sizes (a network whose host prefix changed): any
    overlap disqualifies a candidate. Returns None when the network is full.
    """
    net = IPNetwork(network_cidr).cidr
    width = _width(net.version)
    if not net.prefixlen <= prefixlen <= width:
        raise ValueError(f"a /{prefixlen} does not fit in {net}")
    step = 1 << (width - prefixlen)
    candidate = net.first
    # Walk the taken spans in address order, pushing the candidate past each one it overlaps
    # (O(taken): an IPv6 network's 2^16 or 2^32 candidate prefixes are never listed).
    spans = (n for n in map(IPNetwork, taken) if n.version == net.version)
    for first, last in sorted((n.first, n.last) for n in spans):
        if last < candidate:
            continue
        if first >= candidate + step:
            break
        candidate = net.first + -(-(last + 1 - net.first) // step) * step
    if candidate + step - 1 > net.last:
        return None
    return f"{IPAddress(candidate, net.version)}/{prefixlen}"


def _width(version: int) -> int:
    return 32 if version == 4 else 128


def gateway_of(subnet: str) -> str:
    """The first usable address of ``subnet``: held by the host's bridge (IPv6: prefix::1,
    after the subnet-router anycast address prefix::)."""
    net = IPNetwork(subnet)
    return str(IPAddress(net.first + 1, net.version))


def lease_gateway(network: Network, subnet: str) -> str:
    """The gateway of ``network``'s lease ``subnet``: the network's own, if it names one."""
    if network.gateway and IPAddress(network.gateway) in IPNetwork(subnet):
        return network.gateway
    return gateway_of(subnet)


def pick_address(subnet: str, gateway: str, taken: set[str], ip_range: str = "") -> str | None:
    """The lowest address of ``subnet`` that is free and not network, broadcast or gateway.

    With ``ip_range``, only addresses inside it are candidates.
    """
    net = IPNetwork(subnet)
    first, last = _usable(net)
    if ip_range:
        allowed = IPNetwork(ip_range)
        first, last = max(first, allowed.first), min(last, allowed.last)
    used = {int(IPAddress(a)) for a in taken}
    used.add(int(IPAddress(gateway)))
    for value in range(first, last + 1):  # lazy: at most len(taken) + 2 steps
        if value not in used:
            return str(IPAddress(value, net.version))
    return None


def _usable(net: IPNetwork) -> tuple[int, int]:
    """The first and last address a container may get: not the network address (IPv6: the
    subnet-router anycast address) nor IPv4's broadcast."""
    return net.first + 1, net.last - (1 if net.version == 4 else 0)


def check_fixed_address(lease: Lease, address: str, field: str = "fixed_ip",
                        version: int = 4) -> None:
    """``address`` may be asked for in ``lease`` (its IPv6 side with ``version`` 6): inside it,
    not network, broadcast or gateway."""
    cidr, gateway = (lease.subnet, lease.gateway) if version == 4 else (lease.subnet6,
                                                                          lease.gateway6)
    if not cidr:
        raise Invalid(field, f"network {lease.network!r} has no IPv6 subnet (subnet6)")
    subnet = IPNetwork(cidr)
    try:
        value = IPAddress(address, version)
    except (AddrFormatError, ValueError, TypeError):
        raise Invalid(field, f"{address!r} is not an IPv{version} address") from None
    if value not in subnet:
        raise Invalid(field, f"{address} is outside {cidr}, the subnet of network "
                      f"{lease.network!r} on host {lease.host!r}")
    first, last = _usable(subnet)
    if not first <= int(value) <= last:
        raise Invalid(field, f"{address} is the network or broadcast address of {cidr}")
    if value == IPAddress(gateway):
        raise Invalid(field, f"{address} is the gateway of network {lease.network!r}")


# ---------------------------------------------------------------------------------------------
# Transactions


def commit_with_retry(
    store: Store,
    build: Callable[[], tuple[list[Compare], list[Put | Delete], R]],
    timeout: float = RETRY_TIMEOUT,
) -> R:
    """Run ``build`` (which reads the store) and commit its ops if its compares still hold.

    When a concurrent writer got there first, read again and retry after a short random backoff;
    raise :class:`Conflict` after ``timeout`` seconds. Errors raised by ``build`` (Exhausted,
    Invalid...) propagate at once.
    """
    return commit_with_revision(store, build, timeout)[0]


def commit_with_revision(
    store: Store,
    build: Callable[[], tuple[list[Compare], list[Put | Delete], R]],
    timeout: float = RETRY_TIMEOUT,
) -> tuple[R, int]:
    """:func:`commit_with_retry`, also returning the revision the transaction committed at."""
    deadline = time.monotonic() + timeout
    attempts = 0
    while True:
        compares, ops, result = build()
        revision = store.txn(compares, ops)
        if revision is not None:
            return result, revision
        attempts += 1
        if time.monotonic() >= deadline:
            raise Conflict(
                f"gave up after {attempts} attempts: concurrent writers kept changing "
                "the same objects; try again"
            )
        # Exponential backoff with jitter: writers that keep colliding on one key (the lowest
        # free address of a lease) spread out instead of retrying in step.
        time.sleep(random.uniform(0, min(0.002 * 2 ** min(attempts, 6), 0.1)))


def _check_host(host: str) -> None:
    check_name(host, "host")


def _check_interface(interface: str) -> None:
    if not isinstance(interface, str) or not interface or "/" in interface:
        raise Invalid("interface", f"{interface!r} is not an interface name")
    if len(interface.encode()) > 15:
        raise Invalid("interface", f"{interface!r} is longer than 15 bytes")


def plan_lease(
    store: Store, network: Network, host: str, *, timers: Timers = DEFAULT_TIMERS,
    now: float | None = None,
) -> tuple[Lease, list[Compare], list[Put | Delete]]:
    """The lease ``host`` holds (or would get) on ``network``, and how to commit it.

    A new lease is the host's previous subnet of the network when that is free and not
    quarantined for another host; else the lowest free subnet nobody else's quarantine holds.
    A dual-stack network's lease gets its IPv6 prefix the same way, in the same transaction.
    """
    _check_host(host)
    key = lease_key(network.name, host)
    current = store.get(key)
    if current is not None:
        return from_json(Lease, current.value), [Compare(key, current.mod_revision)], []
    at = now_seconds(now)
    guards, _ = store.range(subnets_prefix(network.name))
    taken = {kv.key.rsplit("/", 1)[1].replace("_", "/") for kv in guards}
    quarantined = {subject for subject, (_, entry) in
                   _active_quarantine(store, network.name, at).items()
                   if entry.holder != host and "/" in subject}
    previous_kv = store.get(previous_key(network.name, host))
    # The previous subnets: "v4" or, for a dual-stack lease, "v4 v6".
    previous = previous_kv.value.decode().split() if previous_kv is not None else []
    # Each family its own prefix; an IPv6-only network (no subnet) leases an IPv6 one only.
    picked: dict[str, str | None] = {}
    for cidr, prefixlen in _lease_families(network):
        picked[cidr] = _pick_lease_subnet(cidr, prefixlen, taken | quarantined, previous)
        if picked[cidr] is None:
            # Each read above is its own snapshot: a request of the same host may have
            # committed its lease between the first and the guards. Then it is ours.
            current = store.get(key)
            if current is not None:
                return from_json(Lease, current.value), [Compare(key, current.mod_revision)], []
            raise Exhausted(f"network {network.name!r} has no free /{prefixlen} left for host "
                            f"{host!r}")
    subnet, subnet6 = picked.get(network.subnet) or "", picked.get(network.subnet6) or ""
    lease = Lease(network.name, host, subnet, lease_gateway(network, subnet) if subnet else "",
                  renewed_at=at, expires_at=at + timers.lease_ttl, subnet6=subnet6,
                  gateway6=gateway_of(subnet6) if subnet6 else "")
    compares = [Compare(key, 0)]
    ops: list[Put | Delete] = [Put(key, to_json(lease))]
    for cidr in filter(None, (subnet, subnet6)):
        guard = subnet_key(network.name, cidr)
        compares.append(Compare(guard, 0))
        ops.append(Put(guard, host.encode()))
        q_cmp, q_ops = _quarantine_take(store, network.name, cidr)
        compares += q_cmp
        ops += q_ops
    if previous_kv is not None:
        compares.append(Compare(previous_kv.key, previous_kv.mod_revision))
        ops.append(Delete(previous_kv.key))
    ops.append(history_put(IpamEvent(at, "lease", network.name, host,
                                     " ".join(filter(None, (subnet, subnet6))))))
    return lease, compares, ops


def _lease_families(network: Network) -> list[tuple[str, int]]:
    """(CIDR, host prefix length) of each family ``network`` has, IPv4 first."""
    families = []
    if network.subnet:
        families.append((network.subnet, host_prefix_for(network.subnet, network.host_prefix)))
    if network.subnet6:
        families.append((network.subnet6,
                         host_prefix6_for(network.subnet6, network.host_prefix6)))
    return families


def _pick_lease_subnet(network_cidr: str, prefixlen: int, unavailable: set[str],
                       previous: list[str]) -> str | None:
    """The previous subnet of this family when it fits and is free, else the lowest free one."""
    for wanted in previous:
        if _fits(network_cidr, prefixlen, wanted) and not _overlaps(wanted, unavailable):
            return wanted
    return pick_subnet(network_cidr, prefixlen, unavailable)


def _fits(network_cidr: str, prefixlen: int, subnet: str) -> bool:
    """``subnet`` is an aligned ``/prefixlen`` of ``network_cidr`` (a previous subnet may not be,
    if the network was made again differently)."""
    try:
        candidate = IPNetwork(subnet)
    except (AddrFormatError, ValueError):
        return False
    return (candidate.prefixlen == prefixlen and candidate in IPNetwork(network_cidr)
            and candidate.ip == candidate.network)


def _overlaps(subnet: str, others: Iterable[str]) -> bool:
    net = IPNetwork(subnet)
    return any(net.version == o.version and net.first <= o.last and o.first <= net.last
               for o in map(IPNetwork, others))


def renew_lease_ops(store: Store, lease: Lease, *, timers: Timers = DEFAULT_TIMERS,
                    now: float | None = None) -> tuple[list[Compare], list[Put]]:
    """Renew ``lease`` from ``now``: a new ``renewed_at`` and ``expires_at``."""
    at = now_seconds(now)
    key = lease_key(lease.network, lease.host)
    kv = store.get(key)
    if kv is None:
        return [Compare(key, 0)], []
    stored = from_json(Lease, kv.value)
    renewed = dataclasses.replace(stored, renewed_at=at, expires_at=at + timers.lease_ttl)
    if renewed == stored:
        return [Compare(key, kv.mod_revision)], []
    return [Compare(key, kv.mod_revision)], [Put(key, to_json(renewed))]


def plan_address(
    store: Store, network: Network, lease: Lease, container: str, interface: str,
    fixed_ip: str = "", *, releasing: Allocation | None = None, field: str = "fixed_ip",
    now: float | None = None, new_lease: bool = False, fixed_ip6: str = "",
) -> tuple[Allocation, list[Compare], list[Put | Delete]]:
    """The address (network, container, interface) holds or would get, and how to commit it.

    ``lease`` may be one that is not stored yet (from :func:`plan_lease`, committed in the same
    transaction: say so with ``new_lease``, so that a lease another writer stored meanwhile only
    fails the commit); a stored lease must match it and must not change before the commit.
    ``fixed_ip`` asks for exactly that address (``field`` names it in errors), ``fixed_ip6``
    for that IPv6 address (``field`` + "6") on a dual-stack lease. ``releasing`` is
    an allocation of this container that the caller frees in the same transaction: its owner
    key and its address count as free. Combine the caller's release ops with ours through
    :func:`merge_ops`.

    A quarantined address is never picked for another container, and a ``fixed_ip`` may take one
    only when it is the container that freed it asking again.
    """
    check_name(container, "container")
    _check_interface(interface)
    if lease.network != network.name:
        raise Invalid("lease", f"lease is on network {lease.network!r}, not {network.name!r}")
    freed = releasing if releasing is not None and releasing.network == network.name else None
    owner = owner_key(network.name, container, interface)
    current = store.get(owner)
    if current is not None and not (freed and freed.container == container
                                    and freed.interface == interface):
        existing = from_json(Allocation, current.value)
        for wanted, have, name in ((fixed_ip, existing.address, field),
                                   (fixed_ip6, existing.address6, field + "6")):
            if wanted and have != wanted:
                raise FailedPrecondition(
                    f"{name}: container {container!r} already holds {have or 'no address'} on "
                    f"network {network.name!r}; release it first")
        return existing, [Compare(owner, current.mod_revision)], []
    lease_ops: list[Put]
    if new_lease:  # the caller's transaction creates it, guarded by "must not exist"
        lease_cmp, lease_ops = Compare(lease_key(lease.network, lease.host), 0), []
    else:
        lease_cmp, lease_ops = _lease_unchanged(store, lease)
    if fixed_ip6 and not lease.subnet6:
        raise Invalid(field + "6", f"network {network.name!r} has no IPv6 subnet (subnet6)")
    compares = [Compare(owner, current.mod_revision if current else 0), lease_cmp]
    at = now_seconds(now)
    quarantined = {subject: entry for subject, (_, entry)
                   in _active_quarantine(store, network.name, at).items()
                   if "/" not in subject and entry.holder != container}
    ops: list[Put | Delete] = []
    guards: list[str] = []
    if fixed_ip and not lease.subnet:
        raise Invalid(field, f"network {network.name!r} is IPv6-only (no subnet): ask for an "
                      "IPv6 address (ip6)")
    families = []
    if lease.subnet:
        families.append((4, lease.subnet, lease.gateway, network.ip_range, fixed_ip, field))
    if lease.subnet6:
        families.append((6, lease.subnet6, lease.gateway6, "", fixed_ip6, field + "6"))
    addresses = {}
    for version, cidr, gateway, ip_range, fixed, fixed_field in families:
        address, f_cmp, f_ops = _plan_family(
            store, network, _Family(version, cidr, gateway, ip_range, lease.host), fixed,
            fixed_field, quarantined, freed, at)
        compares += f_cmp
        ops += f_ops
        guards.append(addr_key(network.name, address))
        addresses[version] = address
        event = IpamEvent(at, "allocate", network.name, lease.host, cidr, address, container)
        ops.append(history_put(event))
    allocation = Allocation(network.name, container, interface, addresses.get(4, ""),
                            IPNetwork(lease.subnet).prefixlen if lease.subnet else 0,
                            addresses.get(6, ""),
                            IPNetwork(lease.subnet6).prefixlen if lease.subnet6 else 0)
    value = to_json(allocation)
    return allocation, compares, [*(Put(guard, value) for guard in guards), Put(owner, value),
                                  *lease_ops, *ops]


@dataclass(frozen=True)
class _Family:
    """One family's side of a lease, as allocation sees it."""

    version: int
    subnet: str
    gateway: str
    ip_range: str
    host: str


def _plan_family(store: Store, network: Network, family: _Family, fixed: str, field: str,
                 quarantined: dict[str, Quarantined], freed: Allocation | None,
                 at: int) -> tuple[str, list[Compare], list[Put | Delete]]:
    """The address one family of an allocation takes (``fixed``, else the lowest free one by
    the lease's used-ranges index), the compares that guard it and the ops that take it (the
    address guard itself is the caller's: its value is the whole allocation)."""
    subnet = IPNetwork(family.subnet)
    freed_address = ""
    if freed is not None:
        freed_address = freed.address if family.version == 4 else freed.address6
    index = used_key(network.name, family.subnet)
    used_kv = store.get(index)
    used = (UsedRanges.decode(used_kv.value) if used_kv is not None
            else _scan_used(store, network.name, subnet))
    compares = [Compare(index, used_kv.mod_revision if used_kv is not None else 0)]
    if freed_address and IPAddress(freed_address) in subnet:
        used.remove(int(IPAddress(freed_address)))
    if fixed:
        lease_view = Lease(network.name, family.host, family.subnet, family.gateway,
                           subnet6=family.subnet, gateway6=family.gateway)
        check_fixed_address(lease_view, fixed, field, family.version)
        address = str(IPAddress(fixed, family.version))
        if address in quarantined:
            entry = quarantined[address]
            raise FailedPrecondition(
                f"{field}: {address} was freed by container {entry.holder!r} and is "
                f"quarantined for {entry.until - at} s more; only that container may take it "
                "before then")
        holder = store.get(addr_key(network.name, address))
    else:
        address, holder = _pick_indexed(store, network, family, used, quarantined,
                                         freed_address)
    guard = addr_key(network.name, address)
    if holder is None:
        compares.append(Compare(guard, 0))
    elif freed_address == address:
        compares.append(Compare(guard, holder.mod_revision))  # ours, freed and taken again
    else:
        taken_by = from_json(Allocation, holder.value).container
        raise AlreadyExists(field, address, f"{address} is taken by container {taken_by!r}")
    used.add(int(IPAddress(address)))
    q_cmp, q_ops = _quarantine_take(store, network.name, address)
    return address, [*compares, *q_cmp], [*q_ops, Put(index, used.encode())]


#: Greater than any address: ``[value, _ABOVE]`` sorts after every range starting at value.
_ABOVE = 1 << 129
#: How many candidates the index may offer that a guard shows taken before a full scan.
STALE_TRIES = 32


class UsedRanges:
    """The used addresses of one lease as sorted, disjoint, inclusive integer ranges: a
    lowest-free allocator fills a lease from the bottom, so this is one range or a few, and a
    create reads and writes a few bytes instead of every address guard of the lease.

    The index is a hint kept in the same transaction as the guards it mirrors: a candidate is
    always checked against its guard, so an index that says "free" wrongly only costs a retry;
    one that says "used" wrongly (a guard removed behind its back, by the garbage collector or
    by hand) is rebuilt from the guards when the lease looks full."""

    def __init__(self, ranges: list[list[int]] | None = None) -> None:
        self.ranges = ranges or []

    @classmethod
    def decode(cls, value: bytes) -> UsedRanges:
        return cls([[int(lo), int(hi)] for lo, hi in json.loads(value or b"[]")])

    def encode(self) -> bytes:
        return json.dumps(self.ranges, separators=(",", ":")).encode()

    def add(self, value: int) -> None:
        i = bisect.bisect_right(self.ranges, [value, _ABOVE]) - 1
        if i >= 0 and self.ranges[i][0] <= value <= self.ranges[i][1]:
            return
        joins_left = i >= 0 and self.ranges[i][1] == value - 1
        joins_right = i + 1 < len(self.ranges) and self.ranges[i + 1][0] == value + 1
        if joins_left and joins_right:
            self.ranges[i][1] = self.ranges[i + 1][1]
            del self.ranges[i + 1]
        elif joins_left:
            self.ranges[i][1] = value
        elif joins_right:
            self.ranges[i + 1][0] = value
        else:
            self.ranges.insert(i + 1, [value, value])

    def remove(self, value: int) -> None:
        i = bisect.bisect_right(self.ranges, [value, _ABOVE]) - 1
        if i < 0 or not self.ranges[i][0] <= value <= self.ranges[i][1]:
            return
        lo, hi = self.ranges[i]
        pieces = [[a, b] for a, b in ((lo, value - 1), (value + 1, hi)) if a <= b]
        self.ranges[i:i + 1] = pieces

    def free(self, first: int, last: int) -> Iterator[int]:
        """The values of ``first..last`` not in a range, lowest first."""
        value = first
        for lo, hi in self.ranges:
            if hi < value:
                continue
            if lo > last:
                break
            while value < lo:
                yield value
                value += 1
            value = hi + 1
        while value <= last:
            yield value
            value += 1


def _scan_used(store: Store, network: str, subnet: IPNetwork) -> UsedRanges:
    """The index of a lease built from its address guards (a lease older than the index, or an
    index found stale)."""
    entries, _ = store.range(addr_key(network, octet_prefix(subnet)))
    used = UsedRanges()
    for kv in entries:
        value = int(IPAddress(kv.key.rsplit("/", 1)[1]))
        if subnet.first <= value <= subnet.last:
            used.add(value)
    return used


def _pick_indexed(store: Store, network: Network, family: _Family, used: UsedRanges,
                  quarantined: dict[str, Quarantined],
                  freed_address: str) -> tuple[str, KeyValue | None]:
    """The lowest free address of one family of a lease by the index, checked against its
    guard, and that guard (None: free; the freed address's own guard when the container takes
    it again). Lazy: an IPv6 /64 costs the used ranges it skips, never its size."""
    subnet = IPNetwork(family.subnet)
    first, last = _usable(subnet)
    if family.ip_range:
        allowed = IPNetwork(family.ip_range)
        first, last = max(first, allowed.first), min(last, allowed.last)
    skip = {_address_value(a) for a in quarantined} | {int(IPAddress(family.gateway))}
    for attempt in range(2):
        stale = 0
        for value in used.free(first, last):
            if value in skip:
                continue
            address = str(IPAddress(value, family.version))
            holder = store.get(addr_key(network.name, address))
            if holder is None or freed_address == address:
                return address, holder
            used.add(value)  # the index was behind its guard
            stale += 1
            if stale >= STALE_TRIES:
                break
        if attempt == 0:
            fresh = _scan_used(store, network.name, subnet)
            if freed_address and IPAddress(freed_address) in subnet:
                fresh.remove(int(IPAddress(freed_address)))
            used.ranges = fresh.ranges
    where = f"ip_range {family.ip_range}" if family.ip_range else f"subnet {family.subnet}"
    raise Exhausted(f"{where} of network {network.name!r} on host {family.host!r} "
                    "has no free address")


def merge_ops(release: list[Put | Delete], take: list[Put | Delete]) -> list[Put | Delete]:
    """``release`` then ``take`` as one transaction's ops (a transaction may touch a key once): a
    key both freed and taken again is only taken, and an address taken again is not
    quarantined."""
    take_keys = {op.key for op in take}
    for op in take:
        if isinstance(op, Put) and op.key.startswith(IPAM) and "/addr/" in op.key:
            network = op.key.split("/")[2]
            take_keys.add(quarantine_key(network, op.key.rsplit("/", 1)[1]))
    return [*(op for op in release if op.key not in take_keys), *take]


def same_subnet(a: Lease, b: Lease) -> bool:
    """The same lease, renewed or not: owner, subnet and gateway."""
    return ((a.network, a.host, a.subnet, a.gateway, a.subnet6)
            == (b.network, b.host, b.subnet, b.gateway, b.subnet6))


def _lease_unchanged(store: Store, lease: Lease) -> tuple[Compare, list[Put]]:
    """A compare that holds while ``lease`` stays as it is, and the op that rewrites a stored
    lease unchanged: an allocation bumps its lease's revision, so that the sweeper, which frees
    a lease only if it is unchanged since it saw no address in it, can never free one in use."""
    key = lease_key(lease.network, lease.host)
    stored = store.get(key)
    if stored is None:
        return Compare(key, 0), []  # the caller commits the lease in the same transaction
    if not same_subnet(from_json(Lease, stored.value), lease):
        raise FailedPrecondition(
            f"host {lease.host!r} holds a different lease on network {lease.network!r} "
            f"than {lease.subnet or lease.subnet6}"
        )
    return Compare(key, stored.mod_revision), [Put(key, stored.value)]


def ensure_lease(store: Store, network: Network, host: str, *, timers: Timers = DEFAULT_TIMERS,
                 now: float | None = None) -> Lease:
    """Give ``host`` a lease on ``network`` (or return the one it has)."""

    def build() -> tuple[list[Compare], list[Put | Delete], Lease]:
        lease, compares, puts = plan_lease(store, network, host, timers=timers, now=now)
        return compares, list(puts), lease

    return commit_with_retry(store, build)


def allocate_address(
    store: Store, network: Network, lease: Lease, container: str, interface: str,
    fixed_ip: str = "", *, now: float | None = None, fixed_ip6: str = "",
) -> Allocation:
    """Give (network, container, interface) an address from ``lease`` (or return the one it has);
    with ``fixed_ip`` (``fixed_ip6``), exactly that one."""

    def build() -> tuple[list[Compare], list[Put | Delete], Allocation]:
        allocation, compares, puts = plan_address(store, network, lease, container, interface,
                                                  fixed_ip, now=now, fixed_ip6=fixed_ip6)
        return compares, list(puts), allocation

    return commit_with_retry(store, build)


def _name(network: Network | str) -> str:
    return network.name if isinstance(network, Network) else network


def release_ops(
    store: Store, network: Network | str, container: str, interface: str, *,
    timers: Timers = DEFAULT_TIMERS, now: float | None = None, host: str = "",
) -> list[Put | Delete]:
    """The ops that free the address of (network, container, interface) and quarantine it;
    [] if it has none. ``host`` (the container's) goes into the history."""
    name = _name(network)
    owner = owner_key(name, container, interface)
    current = store.get(owner)
    if current is None:
        return []
    allocation = from_json(Allocation, current.value)
    at = now_seconds(now)
    ops: list[Put | Delete] = [Delete(owner)]
    for address, prefixlen in ((allocation.address, allocation.prefixlen),
                               (allocation.address6, allocation.prefixlen6)):
        if address:
            ops += _free_address_ops(store, name, container, address, prefixlen, timers, at)
            ops.append(history_put(IpamEvent(at, "free", name, host, address=address,
                                             container=container)))
    return ops


def _free_address_ops(store: Store, network: str, container: str, address: str,
                      prefixlen: int, timers: Timers, at: int) -> list[Put | Delete]:
    """Free one address of an allocation: its guard, its place in the lease's index, and its
    quarantine."""
    ops: list[Put | Delete] = [Delete(addr_key(network, address))]
    lease_subnet = str(IPNetwork(f"{address}/{prefixlen}").cidr)
    used_kv = store.get(used_key(network, lease_subnet))
    if used_kv is not None:  # no compare: a lost race leaves the index saying "free" wrongly,
        used = UsedRanges.decode(used_kv.value)  # which the guard check of a pick catches
        used.remove(int(IPAddress(address)))
        ops.append(Put(used_kv.key, used.encode()))
    if timers.address_quarantine > 0:
        entry = Quarantined(network, address, at + timers.address_quarantine, container)
        ops.append(Put(quarantine_key(network, address), to_json(entry)))
    return ops


def release_address(
    store: Store, network: Network | str, container: str, interface: str, *,
    timers: Timers = DEFAULT_TIMERS, now: float | None = None,
) -> Allocation | None:
    """Free the address of (network, container, interface); return what was freed, if anything."""
    owner = owner_key(_name(network), container, interface)

    def build() -> tuple[list[Compare], list[Put | Delete], Allocation | None]:
        current = store.get(owner)
        if current is None:
            return [Compare(owner, 0)], [], None
        deletes = release_ops(store, network, container, interface, timers=timers, now=now)
        allocation = from_json(Allocation, current.value)
        return [Compare(owner, current.mod_revision)], list(deletes), allocation

    return commit_with_retry(store, build)


def get_lease(store: Store, network: Network | str, host: str) -> Lease | None:
    """The lease ``host`` holds on ``network``, if any."""
    kv = store.get(lease_key(_name(network), host))
    return from_json(Lease, kv.value) if kv else None


def lease_release_ops(lease: Lease, *, kind: str = "release", quarantine: int = 0,
                      now: float | None = None) -> list[Put | Delete]:
    """The ops that free ``lease`` (the lease and its subnet guard) and record it in the history
    as ``kind``. With ``quarantine`` seconds, the subnet is quarantined for its host and
    remembered as the host's previous subnet (a host that comes back gets it again).

    The caller makes sure no address of the lease is still allocated.
    """
    at = now_seconds(now)
    subnets = [cidr for cidr in (lease.subnet, lease.subnet6) if cidr]
    ops: list[Put | Delete] = [Delete(lease_key(lease.network, lease.host))]
    for cidr in subnets:
        ops += [Delete(subnet_key(lease.network, cidr)), Delete(used_key(lease.network, cidr))]
    if quarantine > 0:
        for cidr in subnets:
            entry = Quarantined(lease.network, cidr, at + quarantine, lease.host)
            ops.append(Put(quarantine_key(lease.network, cidr), to_json(entry)))
        ops.append(Put(previous_key(lease.network, lease.host), " ".join(subnets).encode()))
    ops.append(history_put(IpamEvent(at, kind, lease.network, lease.host, " ".join(subnets))))
    return ops


def list_leases(
    store: Store, network: Network | str | None = None, host: str | None = None
) -> list[Lease]:
    """Leases, sorted by network then host; optionally of one network and/or one host."""
    prefix = LEASES if network is None else f"{LEASES}{_name(network)}/"
    entries, _ = store.range(prefix)
    if host is not None:  # by key (``lease_key``): decode only the host's (every report asks)
        entries = [kv for kv in entries if kv.key.endswith(f"/{host}")]
    return [from_json_frozen(Lease, kv.value) for kv in entries]


def list_allocations(store: Store, network: Network | str) -> list[Allocation]:
    """The addresses handed out on ``network``, in address order."""
    entries, _ = store.range(owners_prefix(_name(network)))
    return sorted((from_json_frozen(Allocation, kv.value) for kv in entries),
                  key=allocation_order)


def allocation_order(alloc: Allocation) -> tuple[bool, bytes]:
    """Address order: IPv4 ones first, then an IPv6-only network's by their IPv6 address
    (packed addresses of one family sort as their numbers do; netaddr took 4 ms for 1,000)."""
    return (not alloc.address, socket.inet_pton(socket.AF_INET, alloc.address) if alloc.address
            else socket.inet_pton(socket.AF_INET6, alloc.address6))


__all__ = [
    "LEASES",
    "MAX_HOST_PREFIX",
    "addr_key",
    "allocate_address",
    "allocation_order",
    "check_fixed_address",
    "commit_with_retry",
    "ensure_lease",
    "gateway_of",
    "get_lease",
    "host_prefix_for",
    "lease_gateway",
    "lease_key",
    "lease_release_ops",
    "list_allocations",
    "list_leases",
    "merge_ops",
    "owner_key",
    "pick_address",
    "pick_subnet",
    "plan_address",
    "plan_lease",
    "release_address",
    "release_ops",
    "subnet_key",
    "validate_cidr",
]
