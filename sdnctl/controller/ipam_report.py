"""IPAM inspection: what is leased and allocated (``GetIpam``) and whether it all adds up
(``CheckIpam``).

Design note. The check reads the whole key space once (one store revision) and cross-checks the
records that must agree: a lease and its subnet guard, an allocation's owner record and its
address guard, both and the container they name, the container's host and its lease, an overlay
network and its VNI guard. It never writes: a problem is reported, not repaired, so that an
operator sees what went wrong (a bug, a crash between two writes of an older version, a hand
edit) before anything is changed.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from netaddr import AddrFormatError, IPAddress, IPNetwork

from sdnctl.api.fields import check_name
from sdnctl.api.model import Allocation, Container, Lease, Network, from_json, spans_hosts
from sdnctl.controller import ipam, keys
from sdnctl.controller.errors import NotFound
from sdnctl.controller.keys import CONTAINERS, HOSTS, IPAM, NETWORKS, VNIS, network_key, vni_key
from sdnctl.controller.store.base import KeyValue, Store
from sdnctl.v1 import sdnctl_pb2 as pb

# Problem kinds.
LEAKED_ADDRESS = "leaked-address"  # an address record whose container does not use it
MISSING_ADDRESS = "missing-address"  # a bridged/overlay container without an address
OUTSIDE_LEASE = "outside-lease"  # an address outside its container's host's lease
ORPHAN_LEASE = "orphan-lease"  # a lease of a host (or network) that does not exist
DUPLICATE_GUARD = "duplicate-guard"  # two guards for one owner (subnet or address), or one VNI
STRAY_GUARD = "stray-guard"  # a guard nothing holds
MISSING_GUARD = "missing-guard"  # a lease, allocation or overlay network without its guard


@dataclass(frozen=True)
class Problem:
    kind: str
    network: str
    subject: str
    detail: str


@dataclass(frozen=True)
class IpamView:
    leases: list[Lease]
    allocations: list[tuple[Allocation, str]]  # with the container's host ("" if none)
    quarantined: list[ipam.Quarantined]
    history: list[ipam.IpamEvent]


def _require_network(store: Store, network: str) -> None:
    if network:
        check_name(network, "network")
        if store.get(network_key(network)) is None:
            raise NotFound("network", network)


def report(store: Store, network: str = "") -> IpamView:
    """Leases, allocations, quarantine and history, of one network or all of them."""
    _require_network(store, network)
    kvs, _ = store.range(CONTAINERS)
    hosts = {kv.key[len(CONTAINERS):]: from_json(Container, kv.value).host for kv in kvs}
    names = [network] if network else [kv.key[len(NETWORKS):]
                                       for kv in store.range(NETWORKS)[0]]
    allocations = [(a, hosts.get(a.container, ""))
                   for name in names for a in ipam.list_allocations(store, name)]
    return IpamView(
        leases=ipam.list_leases(store, network=network or None),
        allocations=allocations,
        quarantined=[entry for _, entry in ipam.list_quarantine(store, network)],
        history=ipam.list_history(store, network),
    )


@dataclass
class _Keyspace:
    """One read of everything the check compares, grouped by network."""

    networks: dict[str, Network]
    hosts: set[str]
    containers: dict[str, Container]
    leases: dict[str, list[Lease]]
    subnet_guards: dict[str, list[KeyValue]]
    addr_guards: dict[str, list[KeyValue]]
    owners: dict[str, list[KeyValue]]
    vni_guards: list[KeyValue]


def _read(store: Store) -> _Keyspace:
    kvs, _ = store.range("/")
    space = _Keyspace({}, set(), {}, defaultdict(list), defaultdict(list), defaultdict(list),
                      defaultdict(list), [])
    for kv in kvs:
        key = kv.key
        if key.startswith(NETWORKS):
            space.networks[key[len(NETWORKS):]] = from_json(Network, kv.value)
        elif key.startswith(HOSTS):
            space.hosts.add(key[len(HOSTS):])
        elif key.startswith(CONTAINERS):
            space.containers[key[len(CONTAINERS):]] = from_json(Container, kv.value)
        elif key.startswith(keys.LEASES):
            lease = from_json(Lease, kv.value)
            space.leases[lease.network].append(lease)
        elif key.startswith(VNIS):
            space.vni_guards.append(kv)
        elif key.startswith(IPAM):
            parts = key.split("/")  # "", "ipam", network, kind, ...
            if len(parts) < 5:
                continue
            group = {"subnet": space.subnet_guards, "addr": space.addr_guards,
                     "owner": space.owners}.get(parts[3])
            if group is not None:
                group[parts[2]].append(kv)
    return space


def check(store: Store, network: str = "") -> list[Problem]:
    """Every inconsistency of IPAM (of one network, or of all); [] when it is consistent."""
    _require_network(store, network)
    space = _read(store)
    names = sorted({*space.networks, *space.leases, *space.subnet_guards, *space.addr_guards,
                    *space.owners})
    problems: list[Problem] = []
    for name in names:
        if network and name != network:
            continue
        problems += _check_leases(space, name)
        problems += _check_addresses(space, name)
    problems += [p for p in _check_vnis(space) if not network or p.network == network]
    return problems


def _check_leases(space: _Keyspace, name: str) -> list[Problem]:
    problems = []
    guards = {kv.key: kv.value.decode(errors="replace") for kv in space.subnet_guards[name]}
    held: set[str] = set()
    for lease in space.leases[name]:
        if lease.host not in space.hosts:
            problems.append(Problem(ORPHAN_LEASE, name, lease.subnet or lease.subnet6,
                                    f"leased to host {lease.host!r}, which does not exist"))
        if name not in space.networks:
            problems.append(Problem(ORPHAN_LEASE, name, lease.subnet or lease.subnet6,
                                    f"a lease of host {lease.host!r} on a network that does "
                                    "not exist"))
        for subnet in filter(None, (lease.subnet, lease.subnet6)):  # dual-stack: both
            guard = keys.subnet_key(name, subnet)
            held.add(guard)
            if guards.get(guard) != lease.host:
                problems.append(Problem(MISSING_GUARD, name, subnet,
                                        f"the lease of host {lease.host!r} has no subnet guard "
                                        f"({guard})"))
    lease_hosts = {lease.host for lease in space.leases[name]}
    for key, holder in sorted(guards.items()):
        if key in held:
            continue
        subnet = key.rsplit("/", 1)[1].replace("_", "/")
        kind = DUPLICATE_GUARD if holder in lease_hosts else STRAY_GUARD
        detail = (f"a second subnet guard of host {holder!r}, which leases another subnet"
                  if kind == DUPLICATE_GUARD else
                  f"a subnet guard of host {holder!r}, which holds no lease of it")
        problems.append(Problem(kind, name, subnet, detail))
    return problems


def _check_addresses(space: _Keyspace, name: str) -> list[Problem]:
    problems = []
    leases = {lease.host: lease for lease in space.leases[name]}
    owners: dict[tuple[str, str], Allocation] = {}
    for kv in space.owners[name]:
        allocation = from_json(Allocation, kv.value)
        owners[(allocation.container, allocation.interface)] = allocation
        problems += _check_owner(space, name, allocation, leases)
    guards: dict[str, Allocation] = {}
    for kv in space.addr_guards[name]:
        address = kv.key.rsplit("/", 1)[1]
        allocation = from_json(Allocation, kv.value)
        guards[address] = allocation
        owner = owners.get((allocation.container, allocation.interface))
        if owner is None:
            if _uses(space, name, allocation):
                problems.append(Problem(STRAY_GUARD, name, address, f"held for container "
                                        f"{allocation.container!r}, which has no owner record"))
            else:
                problems.append(Problem(LEAKED_ADDRESS, name, address,
                                        _not_used_because(space, name, allocation)))
        elif address not in (owner.address, owner.address6):
            problems.append(Problem(DUPLICATE_GUARD, name, address,
                                    f"a second address guard of container "
                                    f"{allocation.container!r}, which holds {owner.address}"))
    for (holder, _), allocation in sorted(owners.items()):
        for address in filter(None, (allocation.address, allocation.address6)):
            if address not in guards:
                problems.append(Problem(MISSING_GUARD, name, address,
                                        f"the address of container {holder!r} has no guard"))
    if name in space.networks:
        for container in sorted(space.containers.values(), key=lambda c: c.name):
            if (container.bridge_network == name
                    and (container.name, container.interface) not in owners):
                problems.append(Problem(MISSING_ADDRESS, name, container.name,
                                        f"container {container.name!r} on host "
                                        f"{container.host!r} has no address"))
    return problems


def _uses(space: _Keyspace, name: str, allocation: Allocation) -> bool:
    container = space.containers.get(allocation.container)
    return (container is not None and container.bridge_network == name
            and container.interface == allocation.interface)


def _not_used_because(space: _Keyspace, name: str, allocation: Allocation) -> str:
    container = space.containers.get(allocation.container)
    if container is None:
        return f"held for container {allocation.container!r}, which does not exist"
    return (f"held for container {allocation.container!r} ({allocation.interface}), which is "
            f"not on network {name!r} with that interface")


def _check_owner(space: _Keyspace, name: str, allocation: Allocation,
                 leases: dict[str, Lease]) -> list[Problem]:
    if not _uses(space, name, allocation):
        return [Problem(LEAKED_ADDRESS, name, allocation.address or allocation.address6,
                        _not_used_because(space, name, allocation))]
    host = space.containers[allocation.container].host
    lease = leases.get(host)
    if lease is None:
        return [Problem(OUTSIDE_LEASE, name, allocation.address or allocation.address6,
                        f"container {allocation.container!r} holds it, but its host {host!r} "
                        "has no lease")]
    problems = []
    for address, subnet in ((allocation.address, lease.subnet),
                            (allocation.address6, lease.subnet6)):
        if not address:
            continue
        try:
            inside = IPAddress(address) in IPNetwork(subnet)
        except (AddrFormatError, ValueError):
            inside = False
        if not inside:
            problems.append(Problem(OUTSIDE_LEASE, name, address,
                                    f"container {allocation.container!r} holds it, outside "
                                    f"{subnet or 'an IPv6 lease'}, the lease of its host "
                                    f"{host!r}"))
    return problems


def _check_vnis(space: _Keyspace) -> list[Problem]:
    problems = []
    by_vni: dict[int, list[str]] = defaultdict(list)
    for network in space.networks.values():
        if spans_hosts(network.driver) and network.vni:
            by_vni[network.vni].append(network.name)
    guards = {kv.key: kv.value.decode(errors="replace") for kv in space.vni_guards}
    for vni, names in sorted(by_vni.items()):
        for extra in sorted(names)[1:]:
            problems.append(Problem(DUPLICATE_GUARD, extra, f"vni {vni}",
                                    f"VNI {vni} is also used by network {sorted(names)[0]!r}"))
        holder = guards.get(vni_key(vni))
        for name in names:
            if holder != name and len(names) == 1:
                problems.append(Problem(MISSING_GUARD, name, f"vni {vni}",
                                        f"overlay network {name!r} has no VNI guard"))
    for key, holder in sorted(guards.items()):
        vni_text = key[len(VNIS):]
        owner = space.networks.get(holder)
        if owner is None or str(owner.vni) != vni_text:
            problems.append(Problem(STRAY_GUARD, holder, f"vni {vni_text}",
                                    f"a VNI guard for network {holder!r}, which does not use "
                                    f"VNI {vni_text}"))
    return problems


__all__ = ["IpamView", "Problem", "check", "report"]


def quarantine_to_pb(entry: ipam.Quarantined) -> pb.Quarantine:
    return pb.Quarantine(network=entry.network, subnet=entry.subject, until=entry.until)


def ipam_event_to_pb(event: ipam.IpamEvent) -> pb.IpamEvent:
    return pb.IpamEvent(at=event.at, kind=event.kind, network=event.network, host=event.host,
                        subnet=event.subnet, address=event.address, container=event.container)
