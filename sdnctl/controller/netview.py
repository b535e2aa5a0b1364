"""The records of one network that the Watch streams' shared view is made of (issue 21): read
whole once, then moved on by the change log.

Design note. ``State._network_view`` gives every stream of a network the same spec, name table
and overlay members, rebuilt when the store moved past them. Rebuilt from a whole read, that was
six reads of the store and ~2,000 records at 100 x 10 (the network, its 1,000 allocations, their
containers, its 100 leases and their hosts): on etcd 100-170 ms per host joining or batch of
containers created, while every stream of the replica waited for it. Here the records are kept
with the revision they are as of, and moved on by ``changes_since`` that revision: one read of
the change log (a host joining is a lease and its host; a batch of creates its allocations and
containers), applied key by key, the last change of a key winning. A container or host that
becomes part of the network without its record among the changes (an allocation of a container
written before it) is read with one ``get_many``. A change log compacted past the records, or
the network deleted and written again, means a whole read again; the network gone, None.

What the records hold is what a whole read gives, as of the revision they say (records read or
moved on are equal: tests/unit/test_netview.py compares them after every step of generated
histories). Unchanged records keep their objects (``from_json_frozen``): the name table is kept
while its inputs are the same objects.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from sdnctl.api.model import (
    Allocation,
    Container,
    Host,
    Lease,
    Network,
    from_json,
    from_json_frozen,
    spans_hosts,
)
from sdnctl.controller import ipam
from sdnctl.controller.keys import (
    CONTAINERS,
    HOSTS,
    LEASES,
    container_key,
    host_key,
    network_key,
    owner_key,
    owners_prefix,
)
from sdnctl.controller.store.base import Compacted, Store, get_many

T = TypeVar("T")


@dataclass(frozen=True)
class NetworkRecords:
    """One network's records as of ``revision`` (at least: a read is as new as its first)."""

    revision: int
    spec: Network
    allocations: dict[str, Allocation]  # by owner key
    containers: dict[str, Container]  # by name: those an allocation here names, that exist
    leases: dict[str, Lease]  # by host
    hosts: dict[str, Host]  # the lease holders that exist (an overlay's only: its peers)

    def sorted_allocations(self) -> tuple[Allocation, ...]:
        """In address order (``ipam.list_allocations``'s)."""
        return tuple(sorted(self.allocations.values(), key=ipam.allocation_order))

    def sorted_leases(self) -> tuple[Lease, ...]:
        """By host (``ipam.list_leases``'s order: by key)."""
        return tuple(self.leases[host] for host in sorted(self.leases))


def read(store: Store, network: str) -> NetworkRecords | None:
    """The records of ``network`` read whole; None when it does not exist."""
    revision = store.revision()
    net_kv = store.get(network_key(network))
    if net_kv is None:
        return None
    spec = from_json(Network, net_kv.value)
    allocations = {owner_key(a.network, a.container, a.interface): a
                   for a in ipam.list_allocations(store, network)}
    leases = {lease.host: lease for lease in (
        from_json_frozen(Lease, kv.value) for kv in store.range(f"{LEASES}{network}/")[0])}
    return _completed(store, NetworkRecords(revision, spec, allocations, {}, leases, {}))


def move_on(store: Store, records: NetworkRecords) -> NetworkRecords | None:
    """``records`` (of the network ``records.spec`` names) as of the store's revision now: the
    same object when nothing was written since, else moved on by the change log (read whole
    when it was compacted past them); None when the network is gone."""
    network = records.spec.name
    revision = store.revision()
    if revision <= records.revision:
        return records
    try:
        changes = store.changes_since(records.revision)
    except Compacted:
        return read(store, network)
    spec = records.spec
    allocations = dict(records.allocations)
    leases = dict(records.leases)
    containers: dict[str, Container | None] = dict(records.containers)
    hosts: dict[str, Host | None] = dict(records.hosts)
    owners, lease_prefix, net_key = owners_prefix(network), f"{LEASES}{network}/", \
        network_key(network)
    for change in changes:
        key, value = change.key, change.value
        if key == net_key:
            if value is None:  # gone, perhaps written again since: whatever it is now
                return read(store, network)
            spec = from_json(Network, value)
        elif key.startswith(owners):
            if value is None:
                allocations.pop(key, None)
            else:
                allocations[key] = from_json_frozen(Allocation, value)
        elif key.startswith(lease_prefix):
            host = key[len(lease_prefix):]
            if value is None:
                leases.pop(host, None)
            else:
                leases[host] = from_json_frozen(Lease, value)
        elif key.startswith(CONTAINERS):
            containers[key[len(CONTAINERS):]] = (None if value is None
                                                 else from_json_frozen(Container, value))
        elif key.startswith(HOSTS):
            hosts[key[len(HOSTS):]] = None if value is None else from_json_frozen(Host, value)
    moved = NetworkRecords(max([revision, *(c.revision for c in changes[-1:])]), spec,
                           allocations, {}, leases, {})
    return _completed(store, moved, containers, hosts)


def _completed(store: Store, records: NetworkRecords,
               containers: dict[str, Container | None] | None = None,
               hosts: dict[str, Host | None] | None = None) -> NetworkRecords:
    """``records`` with the containers its allocations name and, for an overlay, the hosts
    holding its leases: those of ``containers`` and ``hosts`` (known as of the records'
    revision; None: known not to exist), the others read (one ``get_many`` each)."""
    names = sorted({a.container for a in records.allocations.values()})
    records.containers.update(_known_or_read(store, names, containers or {}, container_key,
                                             Container))
    if spans_hosts(records.spec.driver):
        records.hosts.update(_known_or_read(store, sorted(records.leases), hosts or {},
                                            host_key, Host))
    return records


def _known_or_read(store: Store, names: list[str], known: Mapping[str, T | None],
                   key_of: Callable[[str], str], kind: type[T]) -> dict[str, T]:
    """The records of ``names`` that exist: from ``known``, the others read in one request."""
    unknown = [name for name in names if name not in known]
    found = get_many(store, [key_of(name) for name in unknown]) if unknown else []
    read = {name: from_json_frozen(kind, kv.value)
            for name, kv in zip(unknown, found, strict=True) if kv is not None}
    got = {name: known[name] if name in known else read.get(name) for name in names}
    return {name: record for name, record in got.items() if record is not None}
