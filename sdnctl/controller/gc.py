"""IPAM garbage collection: free what nobody uses any more, conservatively (``GcIpam``).

Design note. Calico once freed addresses still in use (calico#5044) because one look said
"unused". Here a thing is freed only after it was seen unused TWICE, at least ``grace`` seconds
apart, and unchanged in between:

- The first sighting writes a *mark* ``/gc/marks<key of the thing>`` holding when it was seen
  and the store revisions of every record the verdict rested on.
- A later run that finds it unused again, with the grace period over and every one of those
  revisions unchanged, frees it in ONE transaction guarded by compares on the same records (so
  a writer that slips in between the read and the commit makes it fail; the next run re-marks).
- Something that is in use again (or changed: a renewed lease, a re-created container) loses
  its mark; its clock starts over if it becomes unused again.

What counts as unused (the kinds are those of ``sdnctl ipam check``):

    leaked-address  an allocation (owner record) whose container is gone or does not use it
    stray-guard     an address guard whose owner record is gone or holds another address
    orphan-lease    a lease whose host or network is gone, with no address allocated in it
    lost-host       a host whose agent is not connected and has not renewed its leases since
                    it was first seen so (a registering agent renews them all): its containers
                    are deleted, their addresses freed and its leases released (its subnets
                    quarantined for it, so a host that comes back gets them again)

Freed addresses and subnets are quarantined as on any release, and every free is recorded in
the IPAM history as ``gc``. A dry run reads only: it reports what a real run would mark, wait
for and free now. Whether an agent is connected is known only to the controller replica that
holds its Watch stream, so ``alive`` is passed in; without it no host is ever taken for lost.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from netaddr import IPAddress, IPNetwork

from sdnctl.api.model import Allocation, Container, Lease, from_json, to_json
from sdnctl.controller import ipam, keys
from sdnctl.controller.keys import (
    CONTAINERS,
    HOSTS,
    IPAM,
    MARKS,
    addrs_prefix,
    container_key,
    host_key,
    network_key,
    status_key,
)
from sdnctl.controller.state import State
from sdnctl.controller.store.base import Compare, Delete, KeyValue, Put

log = logging.getLogger("sdnctl.controller")

#: Seconds between the two sightings, unless the caller says otherwise (``--gc-grace``).
DEFAULT_GRACE = 600

LEAKED_ADDRESS = "leaked-address"
STRAY_GUARD = "stray-guard"
ORPHAN_LEASE = "orphan-lease"
LOST_HOST = "lost-host"

# What a run did (or, dry, would do) with each candidate.
MARK = "mark"  # first seen unused now
WAIT = "wait"  # seen before; the grace period is not over
FREE = "free"  # freed now
RESET = "reset"  # seen before, but something it rests on changed since: marked again


@dataclass(frozen=True)
class Candidate:
    kind: str
    key: str  # the store key of the thing (also names its mark)
    network: str
    subject: str  # for people: an address, a subnet, a host
    detail: str
    guards: dict[str, int]  # key -> mod revision (0: must not exist) the verdict rests on
    ops: list[Put | Delete] = field(default_factory=list)  # what frees it


@dataclass(frozen=True)
class Item:
    kind: str
    network: str
    subject: str
    detail: str
    action: str
    first_seen: int
    free_in: int  # seconds until it may be freed (0: now)


@dataclass(frozen=True)
class Report:
    at: int
    grace: int
    dry_run: bool
    items: list[Item]


def collect(state: State, grace: int, dry_run: bool = False,
            alive: Callable[[str], bool] | None = None) -> Report:
    """One garbage collection run (see the module note). ``alive(host)``: whether the host's
    agent is connected now; None: assume every host alive (no host is ever taken for lost)."""
    now = state.now()
    store = state.store
    candidates = {c.key: c for c in _candidates(state, now, alive)}
    marks, _ = store.range(MARKS)
    items = []
    for kv in marks:
        subject = kv.key[len(MARKS):]
        if subject not in candidates and not dry_run:  # in use again: forget it
            store.txn([Compare(kv.key, kv.mod_revision)], [Delete(kv.key)])
    by_subject = {kv.key[len(MARKS):]: kv for kv in marks}
    for key, cand in sorted(candidates.items()):
        mark_kv = by_subject.get(key)
        mark = json.loads(mark_kv.value) if mark_kv is not None else None
        if mark_kv is None or mark is None or mark.get("guards") != cand.guards:
            action = MARK if mark is None else RESET
            if not dry_run:
                _put_mark(state, cand, now, mark_kv)
            items.append(_item(cand, action, now, grace, now))
            continue
        first = int(mark["first_seen"])
        if now - first < grace:
            items.append(_item(cand, WAIT, first, grace, now))
            continue
        if not dry_run:
            compares = [Compare(k, rev) for k, rev in cand.guards.items()]
            compares.append(Compare(mark_kv.key, mark_kv.mod_revision))
            if store.txn(compares, [*cand.ops, Delete(mark_kv.key)]) is None:
                continue  # changed since we read it: the next run looks again
        items.append(_item(cand, FREE, first, grace, now))
    return Report(now, grace, dry_run, items)


def _item(cand: Candidate, action: str, first: int, grace: int, now: int) -> Item:
    return Item(cand.kind, cand.network, cand.subject, cand.detail, action, first,
                0 if action == FREE else max(0, first + grace - now))


def _put_mark(state: State, cand: Candidate, now: int, old: KeyValue | None) -> None:
    value = json.dumps({"kind": cand.kind, "first_seen": now, "guards": cand.guards},
                       sort_keys=True).encode()
    key = MARKS + cand.key
    state.store.txn([Compare(key, old.mod_revision if old else 0)], [Put(key, value)])


# -- candidates ------------------------------------------------------------------------------


def _candidates(state: State, now: int, alive: Callable[[str], bool] | None) -> list[Candidate]:
    kvs, _ = state.store.range("/")
    by_key = {kv.key: kv for kv in kvs}
    containers = {kv.key[len(CONTAINERS):]: from_json(Container, kv.value)
                  for kv in kvs if kv.key.startswith(CONTAINERS)}
    found = _lost_hosts(state, by_key, containers, now, alive) if alive is not None else []
    for kv in kvs:
        parts = kv.key.split("/")  # '', 'ipam', network, kind, ...
        if kv.key.startswith(IPAM) and len(parts) >= 5 and parts[3] == "owner":
            cand = _leaked(state, kv, by_key, containers, now)
            if cand is not None:
                found.append(cand)
        elif kv.key.startswith(IPAM) and len(parts) == 5 and parts[3] == "addr":
            cand = _stray(kv, by_key)
            if cand is not None:
                found.append(cand)
        elif kv.key.startswith(keys.LEASES):
            cand = _orphan_lease(state, kv, by_key, now)
            if cand is not None:
                found.append(cand)
    return found


def _rev(by_key: dict[str, KeyValue], key: str) -> int:
    kv = by_key.get(key)
    return kv.mod_revision if kv is not None else 0


def _leaked(state: State, kv: KeyValue, by_key: dict[str, KeyValue],
            containers: dict[str, Container], now: int) -> Candidate | None:
    alloc = from_json(Allocation, kv.value)
    ctr = containers.get(alloc.container)
    if ctr is not None and ctr.bridge_network == alloc.network and \
            ctr.interface == alloc.interface:
        return None
    why = "its container is gone" if ctr is None else \
        f"container {alloc.container!r} uses network {ctr.network!r}/{ctr.interface} now"
    guards = {kv.key: kv.mod_revision, container_key(alloc.container):
              _rev(by_key, container_key(alloc.container))}
    ops: list[Put | Delete] = [Delete(kv.key)]
    addresses = [a for a in (alloc.address, alloc.address6) if a]  # each family it holds
    for address in addresses:
        guard = keys.addr_key(alloc.network, address)
        guard_kv = by_key.get(guard)
        guards[guard] = _rev(by_key, guard)
        if guard_kv is not None and from_json(Allocation, guard_kv.value) == alloc:
            ops.append(Delete(guard))  # the guard is this allocation's (not someone else's)
        ops += _quarantine_address(state, alloc, address, now)
    return Candidate(LEAKED_ADDRESS, kv.key, alloc.network, " ".join(addresses),
                     f"held by {alloc.container}/{alloc.interface}, but {why}", guards, ops)


def _quarantine_address(state: State, alloc: Allocation, address: str,
                        now: int) -> list[Put | Delete]:
    ops: list[Put | Delete] = []
    if state.timers.address_quarantine > 0:
        entry = ipam.Quarantined(alloc.network, address,
                                 now + state.timers.address_quarantine, alloc.container)
        ops.append(Put(keys.quarantine_key(alloc.network, address), to_json(entry)))
    ops.append(ipam.history_put(ipam.IpamEvent(now, "gc", alloc.network, address=address,
                                               container=alloc.container)))
    return ops


def _stray(kv: KeyValue, by_key: dict[str, KeyValue]) -> Candidate | None:
    alloc = from_json(Allocation, kv.value)
    owner = keys.owner_key(alloc.network, alloc.container, alloc.interface)
    owner_kv = by_key.get(owner)
    if owner_kv is not None and from_json(Allocation, owner_kv.value).address == alloc.address:
        return None
    return Candidate(STRAY_GUARD, kv.key, alloc.network, alloc.address,
                     f"guard of {alloc.container}/{alloc.interface}, which holds no such "
                     "address", {kv.key: kv.mod_revision, owner: _rev(by_key, owner)},
                     [Delete(kv.key)])


def _orphan_lease(state: State, kv: KeyValue, by_key: dict[str, KeyValue],
                  now: int) -> Candidate | None:
    lease = from_json(Lease, kv.value)
    gone = [what for what, key in (("host", host_key(lease.host)),
                                   ("network", network_key(lease.network)))
            if key not in by_key]
    if not gone or _addresses_in(by_key, lease):
        return None  # (addresses in it are leaked ones: freed first, the lease next time)
    guards = {kv.key: kv.mod_revision, host_key(lease.host): _rev(by_key, host_key(lease.host)),
              network_key(lease.network): _rev(by_key, network_key(lease.network))}
    ops = ipam.lease_release_ops(lease, kind="gc", quarantine=state.timers.subnet_quarantine,
                                 now=now)
    return Candidate(ORPHAN_LEASE, kv.key, lease.network, lease.subnet or lease.subnet6,
                     f"lease of host {lease.host!r}, whose {' and '.join(gone)} is gone",
                     guards, ops)


def _addresses_in(by_key: dict[str, KeyValue], lease: Lease) -> list[str]:
    subnets = [IPNetwork(cidr) for cidr in (lease.subnet, lease.subnet6) if cidr]
    prefix = addrs_prefix(lease.network)
    return [k for k in by_key if k.startswith(prefix)
            and any(IPAddress(k[len(prefix):]) in subnet for subnet in subnets)]


def _lost_hosts(state: State, by_key: dict[str, KeyValue], containers: dict[str, Container],
                now: int, alive: Callable[[str], bool]) -> list[Candidate]:
    found = []
    for key, kv in sorted(by_key.items()):
        if not key.startswith(HOSTS):
            continue
        host = key[len(HOSTS):]
        leases = [from_json(Lease, lkv.value) for k, lkv in by_key.items()
                  if k.startswith(keys.LEASES) and k.endswith("/" + host)
                  and from_json(Lease, lkv.value).host == host]
        if not leases or alive(host):
            continue  # nothing to free, or its agent is there
        mine = sorted(name for name, c in containers.items() if c.host == host)
        guards = {key: kv.mod_revision}
        ops: list[Put | Delete] = []
        for lease in leases:
            lkey = keys.lease_key(lease.network, lease.host)
            guards[lkey] = by_key[lkey].mod_revision
            ops += ipam.lease_release_ops(lease, kind="gc",
                                          quarantine=state.timers.subnet_quarantine, now=now)
        for name in mine:
            ckey = container_key(name)
            guards[ckey] = by_key[ckey].mod_revision
            ops += [Delete(ckey), Delete(status_key(name))]
            ctr = containers[name]
            if ctr.bridge_network is not None:
                ops += ipam.release_ops(state.store, ctr.bridge_network, name, ctr.interface,
                                        timers=state.timers, now=now, host=host)
        freed = {op.key for op in ops if isinstance(op, Delete)}  # a lease's address index
        ops = [op for op in ops if not (isinstance(op, Put) and op.key in freed)]  # goes with it
        newest = max(lease.renewed_at for lease in leases)
        found.append(Candidate(
            LOST_HOST, key, ",".join(sorted({lease.network for lease in leases})), host,
            f"no agent connected; leases last renewed {now - newest} s ago; "
            f"{len(mine)} container(s): {', '.join(mine) or '-'}", guards, ops))
    return found


def collect_forever(state: State, interval: float, grace: int, alive: Callable[[str], bool],
                    stopping: threading.Event) -> None:
    """:func:`collect` every ``interval`` seconds until ``stopping`` (``--gc-interval``)."""
    while not stopping.wait(interval):
        try:
            report = collect(state, grace, alive=alive)
        except Exception:
            log.exception("IPAM garbage collection failed")
            continue
        for item in report.items:
            if item.action == FREE:
                log.warning("gc: freed %s %s (%s)", item.kind, item.subject, item.detail)


__all__ = ["DEFAULT_GRACE", "MARKS", "Item", "Report", "collect", "collect_forever"]
