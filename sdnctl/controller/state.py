"""The controller's desired state: hosts, networks and containers over a :class:`Store`.

Every operation validates first, then writes in ONE store transaction guarded by compares on what
it read (compare-and-swap), retried with a fresh read when another writer got there first. So a
container record, its host's subnet lease and its address appear together or not at all, and a
failed call changes nothing.

Network modes (Docker's ``--network``): only a bridged container holds a lease and an address.
A joined container (``container:<donor>``) needs its donor on the same host, one level deep
(the donor joins nobody), so that the donor is always in the same host's Watch stream and the
agent can find the namespace to share. An update that changes the mode or the bridge network
releases the old address and allocates the new one in the same transaction as the new record.

Overlay networks get a VNI (given, or the lowest free one from 4096 up) guarded by
``/vni/<n>``, written in the same transaction as the network, so two networks never share one.
Leases are renewed when their host's agent registers and, at most once a ``renew_interval``,
when it reports or its Watch stream sends a keepalive (:meth:`State.renew_leases`);
:meth:`State.sweep` (the server runs it periodically) frees expired leases that hold no address,
ends quarantines and trims the IPAM history.

The key layout is :mod:`sdnctl.controller.keys`.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TypeVar

from netaddr import IPAddress, IPNetwork

from sdnctl.api import faults
from sdnctl.api.fields import check_name, host_ips_overlap, is_ipv6_host, parse_port
from sdnctl.api.model import (
    DEFAULT_HOST_PREFIX,
    DEFAULT_VXLAN_PORT,
    Allocation,
    Container,
    ContainerStatus,
    Host,
    HostStatus,
    Lease,
    Network,
    from_json,
    from_json_frozen,
    spans_hosts,
    to_json,
)
from sdnctl.api.validate import validate_container, validate_host, validate_network
from sdnctl.controller import images, ipam, keys, netview
from sdnctl.controller.errors import (
    AlreadyExists,
    Conflict,
    Exhausted,
    FailedPrecondition,
    Invalid,
    NotFound,
    SdnError,
)
from sdnctl.controller.keys import (
    CONTAINERS,
    HOST_STATUS,
    HOSTS,
    NETWORKS,
    SUBNETS_GUARD,
    VNIS,
    container_key,
    host_index_key,
    host_index_prefix,
    host_key,
    network_key,
    status_key,
    vni_key,
)
from sdnctl.controller.staging import Restage, Staging
from sdnctl.controller.store.base import Compare, Delete, KeyValue, Put, Store, get_many
from sdnctl.controller.store.coalesce import Coalescer

#: Allocated VNIs start here (lower ones are left to topologies that pick their own).
VNI_FIRST_AUTO = 4096
VNI_MAX = 16777215
#: How many history entries one sweep transaction deletes.
TRIM_BATCH = 100
#: The name of the controller's default bridge network (Docker's ``bridge``, set with ``bip``).
DEFAULT_BRIDGE = "bridge"

log = logging.getLogger(__name__)

Ops = list[Put | Delete]
T = TypeVar("T")
#: A network as every host sees it: spec, name table, for an overlay every member's peer entry
#: (each host's peers are the others: ``overlay_peers`` once, not once per host), and the
#: leases by host (each stream's own: on etcd a read per stream was a round trip each).
_SharedView = tuple[Network, "tuple[DnsName, ...]", "tuple[Peer, ...]", Mapping[str, Lease]]


@dataclass(frozen=True)
class ContainerView:
    """A container as the API shows it: its spec, its address and its last reported status."""

    container: Container
    allocation: Allocation | None
    lease: Lease | None
    status: ContainerStatus
    revision: int


@dataclass(frozen=True)
class HostView:
    host: Host
    leases: tuple[Lease, ...]
    revision: int
    status: HostStatus | None = None  # None until the current agent has reported


@dataclass(frozen=True)
class Peer:
    """Another host holding a lease of an overlay network: what a VXLAN peer needs."""

    host: str
    subnet: str
    underlay_ip: str
    vtep_mac: str
    vtep_ip: str  # the network address of its lease, held by its VXLAN device
    subnet6: str = ""  # dual-stack: its IPv6 lease, and that lease's network address
    vtep_ip6: str = ""


@dataclass(frozen=True)
class DnsName:
    """A container of a network as the network's resolvers answer it (issue 19)."""

    container: str
    aliases: tuple[str, ...]
    address: str
    dns: tuple[str, ...] = ()  # the container's own upstream resolvers
    address6: str = ""  # dual-stack (issue 20): answered for AAAA


@dataclass(frozen=True)
class HostNetwork:
    """A network as one host realises it: the network, the host's lease, (overlay) peers and
    the network's name table (every container of it with an address, on any host)."""

    network: Network
    lease: Lease
    peers: tuple[Peer, ...] = ()
    names: tuple[DnsName, ...] = ()


@dataclass(frozen=True)
class NameDelta:
    """Changed entries of a network's name table, for the hosts that hold it
    (``State.name_delta``): ``names`` holds the entries of ``containers`` that still have
    one; ``holders`` are the hosts with a lease of the network."""

    network: str
    containers: frozenset[str]
    holders: frozenset[str]
    names: tuple[DnsName, ...]


#: Name-table entries ``State.name_delta`` keeps per network before it starts again.
NAME_ENTRIES_KEPT = 20_000


def _fresh(kept: tuple[int, object], at_least: int) -> bool:
    """Whether what was read at ``kept[0]`` serves a stream whose changes go to ``at_least``."""
    return at_least > 0 and kept[0] >= at_least


#: A batch of creates reads the keys each create reads first for this many at once.
PREFETCH = 32


def _prefetch_creates(store: Store, containers: Sequence[Container]) -> None:
    """Read what creating ``containers`` reads first, key by key, in one ``get_many`` (on a
    :class:`Staging` view the creates then find them read): their own keys, their hosts' and,
    where the network is named, the network, the host's lease of it and their owner
    entries."""
    wanted: list[str] = []
    for ctr in containers:
        wanted += [container_key(ctr.name), host_key(ctr.host)]
        if ctr.network and ctr.bridge_network is not None:
            network = ctr.bridge_network
            wanted += [network_key(network), keys.lease_key(network, ctr.host),
                       keys.owner_key(network, ctr.name, ctr.interface)]
    get_many(store, list(dict.fromkeys(wanted)))


def creating(container: Container) -> Callable[[State], ContainerView]:
    """A write for the group commit (``State.write_each``) that creates ``container``, its
    first reads made in one request (:func:`_prefetch_creates`): a single create read eight
    keys one by one (on etcd a round trip each), now four."""
    def create(state: State) -> ContainerView:
        _prefetch_creates(state.store, [container])
        return state.create_container(container)
    return create


def dns_names(network: str, allocations: Iterable[Allocation],
              containers: dict[str, Container]) -> tuple[DnsName, ...]:
    """The name table of ``network``: each allocation whose container still exists."""
    names = []
    for alloc in allocations:
        ctr = containers.get(alloc.container)
        if alloc.network == network and ctr is not None and ctr.bridge_network == network:
            names.append(DnsName(ctr.name, ctr.aliases, alloc.address, ctr.dns,
                                 alloc.address6))
    return tuple(sorted(names, key=lambda n: n.container))


@dataclass(frozen=True)
class Snapshot:
    """Everything one host must run, read at one store revision."""

    revision: int
    networks: dict[str, HostNetwork]
    containers: dict[str, ContainerView]


def overlay_peers(network: Network, host: str, leases: Iterable[Lease],
                  hosts: dict[str, Host]) -> tuple[Peer, ...]:
    """The VXLAN peers of ``host`` on ``network``: every other host holding a lease of it whose
    agent has registered an underlay address and a VTEP MAC (without them there is nothing to
    program; their registration then reaches every member); ``host`` "": every member. Empty
    for other drivers."""
    if not spans_hosts(network.driver):
        return ()
    peers = []
    for lease in leases:
        other = hosts.get(lease.host)
        if (lease.network != network.name or lease.host == host or other is None
                or not other.underlay_ip or not other.vtep_mac):
            continue
        peers.append(Peer(lease.host, lease.subnet, other.underlay_ip, other.vtep_mac,
                          str(IPNetwork(lease.subnet).network) if lease.subnet else "",
                          lease.subnet6,
                          str(IPNetwork(lease.subnet6).network) if lease.subnet6 else ""))
    return tuple(sorted(peers, key=lambda p: p.host))


def _in_batch(e: SdnError, where: str) -> SdnError:
    """``e``, its message naming the item of a batch it is about (``names[3] (web)``)."""
    e.message = f"{where}: {e.message}"
    e.args = (e.message,)
    return e


class State:
    def __init__(self, store: Store, timers: ipam.Timers = ipam.DEFAULT_TIMERS,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.timers = timers
        self.clock = clock
        self._shared_views: dict[str, tuple[int, _SharedView]] = {}  # see _network_view
        self._net_records: dict[str, netview.NetworkRecords] = {}  # what each view was made of
        self._status_writes = Coalescer(lambda: self.store)  # see report_status
        # By network: the allocations and containers its last view's name table was made of,
        # and that table (a view read again with the same ones keeps it).
        self._names_from: dict[str, tuple[tuple[tuple[Allocation, ...], tuple[Container, ...]],
                                          tuple[DnsName, ...]]] = {}
        # One build of a network's view at a time: the streams one write wakes wait for it
        # and take it, instead of each building the same view at once.
        self._view_locks: dict[str, threading.Lock] = {}
        self._view_locks_guard = threading.Lock()
        self._lease_networks: dict[str, tuple[int, list[str]]] = {}  # see lease_networks
        # See name_delta: by network, its entries by container and the hosts holding it, each
        # with the revision it was read at, and the last answer.
        self._name_entries: dict[str, dict[str, tuple[int, DnsName | None]]] = {}
        self._holders: dict[str, tuple[int, frozenset[str]]] = {}
        self._name_deltas: dict[str, NameDelta] = {}
        # host -> the time (State.now) before which none of its leases is due for renewal, as
        # of its last renewal written here (a lease made since is due later; one renewed by
        # another replica, later too): see _renew_ops.
        self._renew_due: dict[str, int] = {}

    def now(self) -> int:
        return int(self.clock())

    # -- hosts ------------------------------------------------------------------------------

    def create_host(self, host: Host) -> HostView:
        validate_host(host)
        self._check_underlay_free(host)
        revision = self.store.txn([Compare(host_key(host.name), 0)],
                                  [Put(host_key(host.name), to_json(host))])
        if revision is None:
            raise AlreadyExists("host", host.name)
        return self.get_host(host.name)

    def register_host(self, host: Host) -> HostView:
        """Create or update a host from its agent's registration (keeps the ``lab`` flag).

        A different agent (another PID) clears the host's status: until the new agent reports,
        nobody may take the old agent's word for what the host runs.
        """
        host = dataclasses.replace(host, vtep_mac=host.vtep_mac.lower())
        validate_host(host)
        self._check_underlay_free(host)

        def build() -> tuple[list[Compare], list[Put | Delete], None]:
            kv = self.store.get(host_key(host.name))
            compares, ops, _ = self._renew_ops(host.name, always=True)
            merged = host
            if kv is not None:
                merged = dataclasses.replace(host, lab=from_json(Host, kv.value).lab or host.lab)
                if kv.value == to_json(merged):
                    return [Compare(kv.key, kv.mod_revision), *compares], ops, None
            return ([Compare(host_key(host.name), kv.mod_revision if kv else 0), *compares],
                    [Put(host_key(host.name), to_json(merged)),
                     Delete(HOST_STATUS + host.name), *ops], None)

        ipam.commit_with_retry(self.store, build)
        return self.get_host(host.name)

    def renew_leases(self, host: str) -> int:
        """Renew ``host``'s leases renewed longer than ``renew_interval`` ago; how many. The
        Watch stream of a connected agent calls it at each keepalive: an agent no longer
        reports those (issue 21), and while it is connected its leases live, as flannel's do
        while flanneld runs. A renewal that lost a race (another replica, a report) is left
        to the next keepalive."""
        compares, ops, due = self._renew_ops(host, always=False)
        if ops and self.store.txn(compares, ops) is None:
            return 0
        self._renew_due[host] = due
        return len(ops)

    def _renew_ops(self, host: str, always: bool) -> tuple[list[Compare], Ops, int]:
        """Renew ``host``'s leases: all of them (``always``), else those renewed longer than
        ``renew_interval`` ago, so that frequent reports do not write; and when the next
        renewal is due once these are written (the caller keeps it in ``_renew_due`` when
        they were). Until then none can be due, so none is read (issue 21: every report and
        keepalive listed every lease of the store, 100 at 100 hosts, to find none due)."""
        now = self.now()
        interval = self.timers.renew_interval()
        if not always and now < self._renew_due.get(host, 0):
            return [], [], self._renew_due[host]
        compares: list[Compare] = []
        ops: Ops = []
        due = now + interval
        for lease in ipam.list_leases(self.store, host=host):
            if not always and now - lease.renewed_at < interval:
                due = min(due, lease.renewed_at + interval)
                continue
            cmp, puts = ipam.renew_lease_ops(self.store, lease, timers=self.timers, now=now)
            compares += cmp
            ops += puts
        return compares, ops, due

    def get_host(self, name: str) -> HostView:
        check_name(name, "name")
        kv = self.store.get(host_key(name))
        if kv is None:
            raise NotFound("host", name)
        leases = tuple(ipam.list_leases(self.store, host=name))
        return HostView(from_json(Host, kv.value), leases, kv.mod_revision,
                        self._host_status(name))

    def list_hosts(self) -> tuple[list[HostView], int]:
        kvs, revision = self.store.range(HOSTS)
        leases = ipam.list_leases(self.store)
        by_host: dict[str, list[Lease]] = {}
        for lease in leases:
            by_host.setdefault(lease.host, []).append(lease)
        # Every host's status in one read (a read per host was most of a listing's cost).
        statuses = {kv.key[len(HOST_STATUS):]: kv.value
                    for kv in self.store.range(HOST_STATUS)[0]}
        views = []
        for kv in kvs:
            host = from_json_frozen(Host, kv.value)
            status = statuses.get(host.name)
            views.append(HostView(host, tuple(by_host.get(host.name, ())), kv.mod_revision,
                                  from_json_frozen(HostStatus, status) if status else None))
        return views, revision

    def delete_host(self, name: str) -> None:
        check_name(name, "name")

        def build() -> tuple[list[Compare], list[Put | Delete], None]:
            kv = self.store.get(host_key(name))
            if kv is None:
                raise NotFound("host", name)
            users = [c.name for c in self._host_containers(name)]
            if users:
                raise FailedPrecondition(
                    f"host {name!r} still runs containers: {', '.join(sorted(users))}")
            ops: list[Put | Delete] = [Delete(kv.key), Delete(HOST_STATUS + name)]
            for lease in ipam.list_leases(self.store, host=name):
                ops += ipam.lease_release_ops(lease, quarantine=self.timers.subnet_quarantine,
                                              now=self.now())
            return [Compare(kv.key, kv.mod_revision)], ops, None

        ipam.commit_with_retry(self.store, build)
        self.forget_views(host=name)

    # -- networks ---------------------------------------------------------------------------

    def create_network(self, network: Network) -> tuple[Network, int]:
        """Record a network; an overlay one with its VNI (given or allocated) in the same
        transaction as the VNI's guard."""
        network = dataclasses.replace(network, builtin=False)  # only the controller makes one
        validate_network(network)
        network = _with_overlay_defaults(network)
        key = network_key(network.name)

        def build() -> tuple[list[Compare], Ops, Network]:
            if self.store.get(key) is not None:
                raise AlreadyExists("network", network.name)
            guard = self.store.get(SUBNETS_GUARD)
            self._check_subnet_free(network)
            made = network
            compares = [Compare(key, 0),
                        Compare(SUBNETS_GUARD, guard.mod_revision if guard else 0)]
            ops: Ops = [Put(SUBNETS_GUARD, network.name.encode())]
            if spans_hosts(made.driver):
                made = dataclasses.replace(made, vni=made.vni or self._free_vni())
                guard = self.store.get(vni_key(made.vni))
                # A VNI we picked and someone took since we listed: the compare fails, we retry.
                if guard is not None and network.vni:
                    raise AlreadyExists("network.vni", str(made.vni),
                                        f"VNI {made.vni} is taken by network "
                                        f"{guard.value.decode()!r}")
                compares.append(Compare(vni_key(made.vni), 0))
                ops.append(Put(vni_key(made.vni), made.name.encode()))
            return compares, [Put(key, to_json(made)), *ops], made

        return ipam.commit_with_revision(self.store, build)

    def _check_subnet_free(self, network: Network) -> None:
        """A new network's subnet overlaps no other network's and holds no host's underlay
        address (the host would route its own underlay into the bridge)."""
        others = [other for other, _ in self.list_networks()[0]]
        for field in ("subnet", "subnet6"):  # each family against its own (issue 20)
            if not getattr(network, field):
                continue
            mine = IPNetwork(getattr(network, field))
            for other in others:
                if not getattr(other, field):
                    continue
                theirs = IPNetwork(getattr(other, field))
                if mine.first <= theirs.last and theirs.first <= mine.last:
                    raise Invalid(f"network.{field}", f"{mine} overlaps {theirs} of network "
                                  f"{other.name!r}")
        for view in self.list_hosts()[0]:
            if not network.subnet:
                break  # IPv6-only: the underlay is IPv4
            subnet = IPNetwork(network.subnet)
            if view.host.underlay_ip and IPAddress(view.host.underlay_ip) in subnet:
                raise Invalid("network.subnet", f"{subnet} holds {view.host.underlay_ip}, the "
                              f"underlay address of host {view.host.name!r}")

    def _check_underlay_free(self, host: Host) -> None:
        """A host's underlay address is in no network's subnet."""
        if not host.underlay_ip:
            return
        for network, _ in self.list_networks()[0]:
            if network.subnet and IPAddress(host.underlay_ip) in IPNetwork(network.subnet):
                raise Invalid("host.underlay_ip", f"{host.underlay_ip} is inside {network.subnet}"
                              f" of network {network.name!r}")

    def _free_vni(self) -> int:
        kvs, _ = self.store.range(VNIS)
        used = {int(kv.key[len(VNIS):]) for kv in kvs if kv.key[len(VNIS):].isdigit()}
        for vni in range(VNI_FIRST_AUTO, VNI_MAX + 1):
            if vni not in used:
                return vni
        raise Exhausted(f"no free VNI left in {VNI_FIRST_AUTO}..{VNI_MAX}")

    def ensure_default_bridge(self, subnet: str) -> Network:
        """Make sure the default bridge network exists on ``subnet`` (idempotent).

        What an update may change (masquerade, internal, allow) is kept. A ``bridge`` network on
        another subnet is replaced when no container uses it; else it stays, with a warning.
        """
        wanted = Network(DEFAULT_BRIDGE, subnet, host_prefix=DEFAULT_HOST_PREFIX,
                         masquerade=True, builtin=True)
        validate_network(wanted, "default_bridge")
        key = network_key(DEFAULT_BRIDGE)

        def build() -> tuple[list[Compare], Ops, Network]:
            kv = self.store.get(key)
            if kv is None:
                return [Compare(key, 0)], [Put(key, to_json(wanted))], wanted
            stored = from_json(Network, kv.value)
            keep = {name: getattr(stored, name) for name in Network.MUTABLE}
            network = dataclasses.replace(wanted, **keep)
            compares = [Compare(key, kv.mod_revision)]
            if network == stored:
                return compares, [], stored
            ops: Ops = [Put(key, to_json(network))]
            if _immutable_change(stored, network) is not None:
                users = self._bridge_users(DEFAULT_BRIDGE)
                if users:
                    log.warning("the default bridge network stays on %s, not %s: containers "
                                "use it (%s)", stored.subnet, subnet, ", ".join(users))
                    return compares, [], stored
                ops += self._forget_network_ops(stored)
            return compares, ops, network

        return ipam.commit_with_retry(self.store, build)

    def get_network(self, name: str) -> tuple[Network, int]:
        check_name(name, "name")
        kv = self.store.get(network_key(name))
        if kv is None:
            raise NotFound("network", name)
        return from_json(Network, kv.value), kv.mod_revision

    def list_networks(self) -> tuple[list[tuple[Network, int]], int]:
        kvs, revision = self.store.range(NETWORKS)
        return [(from_json(Network, kv.value), kv.mod_revision) for kv in kvs], revision

    def update_network(self, network: Network) -> tuple[Network, int]:
        """Change what may change of a network (``Network.MUTABLE``); the rest must be as stored."""
        validate_network(network)

        def build() -> tuple[list[Compare], Ops, None]:
            kv = self.store.get(network_key(network.name))
            if kv is None:
                raise NotFound("network", network.name)
            stored = from_json(Network, kv.value)
            wanted = dataclasses.replace(network, builtin=stored.builtin)  # output only
            if spans_hosts(wanted.driver):  # 0: as allocated
                wanted = _with_overlay_defaults(
                    dataclasses.replace(wanted, vni=wanted.vni or stored.vni))
            changed = _immutable_change(stored, wanted)
            if changed is not None:
                raise Invalid(
                    f"network.{changed}",
                    f"cannot change from {getattr(stored, changed)!r} to "
                    f"{getattr(wanted, changed)!r}; only {', '.join(Network.MUTABLE)} can "
                    "change (delete the network and create it again)")
            compares = [Compare(kv.key, kv.mod_revision)]
            for i, name in enumerate(wanted.allow):
                if name in stored.allow:
                    continue  # created before the network it names: it may be made later
                other = self._require(network_key(name), f"network.allow[{i}]", name)
                compares.append(Compare(other.key, other.mod_revision))
            if wanted == stored:
                return compares, [], None
            return compares, [Put(kv.key, to_json(wanted))], None

        ipam.commit_with_retry(self.store, build)
        return self.get_network(network.name)

    def delete_network(self, name: str) -> None:
        """Delete a network no container uses, its leases, and its name from others' ``allow``
        (a later network of the same name must not inherit a permission)."""
        check_name(name, "name")

        def build() -> tuple[list[Compare], Ops, None]:
            kv = self.store.get(network_key(name))
            if kv is None:
                raise NotFound("network", name)
            if from_json(Network, kv.value).builtin:
                raise FailedPrecondition("the default bridge network cannot be deleted")
            users = self._bridge_users(name)
            if users:
                raise FailedPrecondition(
                    f"network {name!r} still has containers: {', '.join(users)}")
            compares = [Compare(kv.key, kv.mod_revision)]
            ops: Ops = [Delete(kv.key)]
            others, _ = self.store.range(NETWORKS)
            for other_kv in others:
                other = from_json(Network, other_kv.value)
                if name in other.allow:
                    allow = tuple(n for n in other.allow if n != name)
                    compares.append(Compare(other_kv.key, other_kv.mod_revision))
                    ops.append(Put(other_kv.key, to_json(dataclasses.replace(other, allow=allow))))
            ops += self._forget_network_ops(from_json(Network, kv.value))
            if len(others) == 1 and self.store.get(SUBNETS_GUARD) is not None:
                ops.append(Delete(SUBNETS_GUARD))  # the last network: leave nothing behind
            return compares, ops, None

        ipam.commit_with_retry(self.store, build)
        self.forget_views(network=name)

    def _forget_network_ops(self, network: Network) -> Ops:
        """Delete every lease and IPAM key of ``network`` (guards, quarantine, previous subnets)
        and its VNI guard: a later network of the same name starts afresh."""
        ops: Ops = []
        for lease in ipam.list_leases(self.store, network=network.name):
            ops += ipam.lease_release_ops(lease, now=self.now())
        touched = {op.key for op in ops}
        kvs, _ = self.store.range(keys.network_prefix(network.name))
        ops += [Delete(kv.key) for kv in kvs if kv.key not in touched]
        if network.vni:
            guard = self.store.get(vni_key(network.vni))
            if guard is not None and guard.value.decode() == network.name:
                ops.append(Delete(guard.key))
        return ops

    # -- containers -------------------------------------------------------------------------

    def create_container(self, container: Container) -> ContainerView:
        """Record a container with its host's lease and its address, in one transaction."""
        container = self._with_default_network(container)
        validate_container(container)
        spec = container

        def build() -> tuple[list[Compare], Ops, None]:
            nonlocal container
            if self.store.get(container_key(container.name)) is not None:
                raise AlreadyExists("container", container.name)
            container, image_cmp = self._with_image(spec)
            host_kv = self._require(host_key(container.host), "container.host", container.host)
            if container.ports:  # reads the host's containers: only when there is a port
                _check_host_ports(container, self._host_containers(container.host))
            place_cmp, place_ops = self._plan_placement(container, releasing=None)
            compares = [
                Compare(container_key(container.name), 0),
                Compare(host_kv.key, host_kv.mod_revision),
                *place_cmp,
                *image_cmp,
            ]
            ops: Ops = [
                *place_ops,
                Put(container_key(container.name), to_json(container)),
                Delete(status_key(container.name)),
                Put(host_index_key(container.host, container.name), b""),
            ]
            faults.point("ipam")
            return compares, ops, None

        ipam.commit_with_retry(self.store, build)
        return self.get_container(container.name)

    def create_containers(self, containers: Sequence[Container]) -> tuple[list[ContainerView],
                                                                          int]:
        """Create many containers in ONE store transaction: all or none. Each is planned as
        :meth:`create_container` plans one, on a :class:`Staging` view that holds the ones
        planned before it (the next address of a lease, a donor earlier in the list). A store
        that caps a transaction's operations (etcd) gets several transactions, each whole.
        Errors name ``containers[i]``. Returns the views and the last transaction's revision."""
        names = [c.name for c in containers]
        dup = next((n for i, n in enumerate(names) if n in names[:i]), None)
        if dup is not None:
            raise Invalid(f"containers[{names.index(dup, names.index(dup) + 1)}].name",
                          f"{dup!r} appears twice")
        cap = getattr(self.store, "max_txn_ops", None)
        views: list[ContainerView] = []
        revision = 0
        start = 0
        while start < len(containers):
            made, revision = self._create_batch(containers, start, cap)
            views += made
            start += len(made)
        return views, revision

    def _create_batch(self, containers: Sequence[Container], start: int,
                      cap: int | None) -> tuple[list[ContainerView], int]:
        """Containers from ``start`` on, as many as one transaction holds (``_staged_batch``)."""
        def create(staged: State, i: int) -> bool:
            if (i - start) % PREFETCH == 0:
                _prefetch_creates(staged.store, containers[i:i + PREFETCH])
            try:
                staged.create_container(containers[i])
            except Invalid as e:
                field = e.field.removeprefix("container")
                raise Invalid(f"containers[{i}]{field}", e.message) from None
            except SdnError as e:
                raise _in_batch(e, f"containers[{i}] ({containers[i].name})") from None
            return True

        made, _, revision, staging = self._staged_batch(len(containers), start, cap, create)
        staged = State(staging, self.timers, self.clock)
        views = staged._views([kv for kv in get_many(
            staging, [container_key(containers[i].name) for i in made]) if kv is not None])
        return [dataclasses.replace(v, revision=revision) for v in views], revision

    def write_each(self, writes: Sequence[Callable[[State], T]]) -> list[tuple[T | Exception,
                                                                              int]]:
        """Several independent writes (each a function that makes its write through the
        ``State`` it is given) in ONE store transaction (several, each whole, on a store that
        caps a transaction's operations), each planned on a :class:`Staging` view that holds
        the ones before it. A write that raises is taken back out of the view and gets its
        exception; the others still commit. Returns, per write, what it returned or raised,
        and the revision it was committed at (0 for one that raised). What the group commit
        (:mod:`sdnctl.controller.groupcommit`) runs."""
        cap = getattr(self.store, "max_txn_ops", None)
        outcomes: dict[int, T | Exception] = {}

        def stage(staged: State, i: int) -> bool:
            staging = staged.store
            assert isinstance(staging, Staging)
            mark = staging.snapshot()
            try:
                outcomes[i] = writes[i](staged)
            except Restage:
                raise  # the real store moved: the whole transaction is planned again
            except Exception as e:
                staging.restore(mark)
                outcomes[i] = e
                return False
            return True

        results: list[tuple[T | Exception, int]] = []
        while len(results) < len(writes):
            done, through, revision, _ = self._staged_batch(len(writes), len(results), cap,
                                                            stage)
            written = set(done)
            results += [(outcomes[i], revision if i in written else 0)
                        for i in range(len(results), len(results) + through)]
        return results

    def _staged_batch(self, count: int, start: int, cap: int | None,
                      stage: Callable[[State, int], bool]) -> tuple[list[int], int, int, Staging]:
        """Items ``start``.. of ``count``, each staged by ``stage(state, i)`` (False: nothing to
        do for it) on a :class:`Staging` view that holds the ones before it, as many as one
        transaction of at most ``cap`` ops holds, committed; planned again whole when another
        writer came first. Returns the items staged, how many items it went through, the
        revision and the staging view."""
        deadline = time.monotonic() + ipam.RETRY_TIMEOUT
        attempts = 0
        while True:
            staging = Staging(self.store)
            staged = State(staging, self.timers, self.clock)
            done: list[int] = []
            through = 0
            try:
                for i in range(start, count):
                    before = staging.snapshot()
                    if not stage(staged, i):
                        through += 1
                        continue
                    if cap is not None and len(staging.ops()) > cap and done:
                        staging.restore(before)  # the next transaction takes this one
                        break
                    done.append(i)
                    through += 1
                revision = staging.commit() if done else self.store.revision()
            except Restage:
                revision = None
            if revision is not None:
                return done, through, revision, staging
            attempts += 1
            if time.monotonic() >= deadline:
                raise Conflict(f"gave up after {attempts} attempts: concurrent writers kept "
                               "changing the same objects; try again")
            time.sleep(random.uniform(0, min(0.002 * 2 ** min(attempts, 6), 0.1)))

    def update_container(self, container: Container) -> ContainerView:
        """Replace a container's spec on the same host, moving its address as its mode needs."""
        container = self._with_default_network(container)
        validate_container(container)
        spec = container

        def build() -> tuple[list[Compare], Ops, None]:
            nonlocal container
            kv = self.store.get(container_key(container.name))
            if kv is None:
                raise NotFound("container", container.name)
            old = from_json(Container, kv.value)
            container, image_cmp = self._with_image(spec)
            if container.host != old.host:
                raise Invalid("container.host", f"a container cannot move from host {old.host!r} "
                              f"to {container.host!r}; delete it and create it there")
            compares = [Compare(kv.key, kv.mod_revision), *image_cmp]
            if container == old:
                return compares, [], None
            # A joiner shares its donor's host, and ports clash on one host only.
            others = [c for c in self._host_containers(container.host)
                      if c.name != container.name]
            joiners = sorted(c.name for c in others if c.donor == container.name)
            if container.donor and joiners:
                raise FailedPrecondition(
                    f"container.network: {', '.join(joiners)} join {container.name!r}, so it "
                    "cannot join another container itself")
            _check_host_ports(container, others)
            current = self._allocation(old)
            releasing = current if _address_moves(current, container) else None
            place_cmp, place_ops = self._plan_placement(container, releasing)
            ops: Ops = [*place_ops, Put(kv.key, to_json(container))]
            return [*compares, *place_cmp], ops, None

        ipam.commit_with_retry(self.store, build)
        return self.get_container(container.name)

    def get_container(self, name: str) -> ContainerView:
        check_name(name, "name")
        kv = self.store.get(container_key(name))
        if kv is None:
            raise NotFound("container", name)
        return self._view(kv)

    def list_containers(self, host: str = "", network: str = "") -> tuple[list[ContainerView], int]:
        if host:
            check_name(host, "host")
            names, revision = self.store.range(host_index_prefix(host))
            found = get_many(self.store, [CONTAINERS + kv.key[len(host_index_prefix(host)):]
                                          for kv in names])
            kvs = [kv for kv in found if kv is not None]
        else:
            kvs, revision = self.store.range(CONTAINERS)
        views = self._views(kvs, whole=not host)
        views = [v for v in views
                 if (not host or v.container.host == host)
                 and (not network or v.container.network == network)]
        return views, revision

    def delete_containers(self, names: Sequence[str]) -> tuple[list[str], int]:
        """Delete many containers in ONE store transaction (several, each whole, on a store that
        caps a transaction's operations), each as :meth:`delete_container` deletes one, on a
        :class:`Staging` view that holds the deletions before it (two addresses released in one
        lease; a donor after its joiners). Names that do not exist are skipped. Errors name
        ``names[i]``. Returns the names deleted and the last transaction's revision."""
        for i, name in enumerate(names):
            check_name(name, f"names[{i}]")
            if name in names[:i]:
                raise Invalid(f"names[{i}]", f"{name!r} appears twice")
        cap = getattr(self.store, "max_txn_ops", None)
        deleted: list[str] = []
        revision = 0
        start = 0
        while start < len(names):
            gone, done, revision = self._delete_batch(names, start, cap)
            deleted += gone
            start += done
        return deleted, revision

    def _delete_batch(self, names: Sequence[str], start: int,
                      cap: int | None) -> tuple[list[str], int, int]:
        """Deletions from ``start`` on, as many as one transaction holds (``_staged_batch``).
        Returns the names deleted, how many names it went through, and the revision."""
        def delete(staged: State, i: int) -> bool:
            try:
                staged.delete_container(names[i])
            except NotFound:
                return False
            except SdnError as e:
                raise _in_batch(e, f"names[{i}] ({names[i]})") from None
            return True

        gone, through, revision, _ = self._staged_batch(len(names), start, cap, delete)
        return [names[i] for i in gone], through, revision

    def delete_container(self, name: str) -> int:
        """Delete a container and release its address; returns the deletion's revision."""
        check_name(name, "name")

        def build() -> tuple[list[Compare], list[Put | Delete], None]:
            kv = self.store.get(container_key(name))
            if kv is None:
                raise NotFound("container", name)
            container = from_json(Container, kv.value)
            joiners = sorted(c.name for c in self._host_containers(container.host)
                             if c.donor == name)  # a joiner runs on its donor's host
            if joiners:
                raise FailedPrecondition(
                    f"container {name!r} still has containers joined to it: {', '.join(joiners)}")
            ops: Ops = [Delete(kv.key), Delete(status_key(name)),
                        Delete(host_index_key(container.host, name))]
            if container.bridge_network is not None:
                ops += ipam.release_ops(self.store, container.bridge_network, name,
                                        container.interface, timers=self.timers,
                                        now=self.now(), host=container.host)
            return [Compare(kv.key, kv.mod_revision)], ops, None

        return ipam.commit_with_revision(self.store, build)[1]

    def report_status(self, host: str, statuses: Iterable[ContainerStatus],
                      observed_revision: int = 0) -> None:
        """Record what an agent says runs on its host; only changes are written."""
        check_name(host, "host")
        reported = list(statuses)
        # One read for the whole report (issue 21: five reads, one of them every lease of the
        # store, made the 100 reports that follow one change at 100 x 10 cost the controller
        # 1.2-1.9 s of CPU, 0.4-0.6 s now): the host, its status, and per container its record,
        # its status and its entry in the host's index.
        found = get_many(self.store, [host_key(host), HOST_STATUS + host,
                                      *(key for s in reported for key in (
                                          container_key(s.name), status_key(s.name),
                                          host_index_key(host, s.name)))])
        host_kv, status_kv = found[0], found[1]
        if host_kv is None:
            raise NotFound("host", host)
        # Only the host's own containers (one deleted meanwhile, or another's, is left out).
        mine = [(s, kv, found[3 + 3 * i]) for i, s in enumerate(reported)
                if found[4 + 3 * i] is not None and (kv := found[2 + 3 * i]) is not None]
        host_status = HostStatus(observed_revision, tuple(sorted(s.name for s, _, _ in mine)))
        renew_cmp, renew_ops, due = self._renew_ops(host, always=False)
        compares, ops = self._status_ops(host_kv, status_kv, host_status, mine)
        # One write for the whole report (issue 21: one per changed container made a report
        # wait for the store's writer once per container, behind every create), unless the
        # store caps a transaction's operations (etcd): then a write per cap's worth (every
        # status write is one compare and one put, in step).
        cap = getattr(self.store, "max_txn_ops", None) or 1 << 30
        if len(renew_cmp) + len(compares) <= cap and len(renew_ops) + len(ops) <= cap:
            batches = [([*renew_cmp, *compares], [*renew_ops, *ops])]
        else:
            batches = [(renew_cmp, renew_ops)] + [(compares[i:i + cap], ops[i:i + cap])
                                                  for i in range(0, len(ops), cap)]
        # Merged with the reports of other hosts written at the same time (``Coalescer``).
        lost = [batch for batch in batches if batch[1]
                and self._status_writes.txn(*batch) is None]
        if not lost:
            self._renew_due[host] = due
            return
        # Something moved meanwhile: a container deleted, a lease renewed by another replica.
        # A lost renewal waits for the next report; the statuses are written on a fresh read,
        # one container at a time.
        self._renew_due.pop(host, None)
        for status, _, _ in mine:
            kv, current = get_many(self.store, [container_key(status.name),
                                                status_key(status.name)])
            if kv is not None:
                compares, ops = self._status_ops(None, None, host_status, [(status, kv, current)])
                if ops:
                    self.store.txn(compares, ops)
        host_kv, status_kv = get_many(self.store, [host_key(host), HOST_STATUS + host])
        compares, ops = self._status_ops(host_kv, status_kv, host_status, [])
        if ops:
            self.store.txn(compares, ops)

    def _status_ops(self, host_kv: KeyValue | None, status_kv: KeyValue | None,
                    host_status: HostStatus,
                    statuses: Sequence[tuple[ContainerStatus, KeyValue, KeyValue | None]]
                    ) -> tuple[list[Compare], Ops]:
        """The writes that record ``statuses`` (each with its container's record and current
        status as read; guarded by the record's revision: one deleted meanwhile gets none)
        and, with ``host_kv`` (the host's record as read; ``status_kv`` its status), the
        host's status."""
        compares: list[Compare] = []
        ops: Ops = []
        if host_kv is not None and (status_kv is None or
                                    from_json(HostStatus, status_kv.value) != host_status):
            compares.append(Compare(host_kv.key, host_kv.mod_revision))
            ops.append(Put(HOST_STATUS + host_kv.key[len(HOSTS):], to_json(host_status)))
        for status, kv, current in statuses:
            value = to_json(status)
            if current is not None and current.value == value:
                continue
            compares.append(Compare(kv.key, kv.mod_revision))
            ops.append(Put(status_key(status.name), value))
        return compares, ops

    def foreign_containers(self, host: str, names: Iterable[str]) -> list[str]:
        """Which of ``names`` are containers of another host than ``host``."""
        wanted = sorted(set(names))
        found = get_many(self.store, [container_key(name) for name in wanted])
        return sorted(name for name, kv in zip(wanted, found, strict=True)
                      if kv is not None and from_json(Container, kv.value).host != host)

    # -- what one host must run ---------------------------------------------------------------

    def snapshot(self, host: str) -> Snapshot:
        kvs, revision = self.store.range("/")
        by_key = {kv.key: kv for kv in kvs}
        leases = [from_json(Lease, kv.value) for kv in kvs if kv.key.startswith(keys.LEASES)]
        hosts = {kv.key[len(HOSTS):]: from_json(Host, kv.value)
                 for kv in kvs if kv.key.startswith(HOSTS)}
        all_containers = {kv.key[len(CONTAINERS):]: from_json(Container, kv.value)
                          for kv in kvs if kv.key.startswith(CONTAINERS)}
        allocations = [from_json(Allocation, kv.value) for kv in kvs
                       if kv.key.startswith(keys.IPAM)
                       and kv.key[len(keys.IPAM):].split("/")[1:2] == ["owner"]]
        networks: dict[str, HostNetwork] = {}
        for lease in leases:
            net_kv = by_key.get(network_key(lease.network))
            if net_kv is not None and lease.host == host:
                network = from_json(Network, net_kv.value)
                networks[lease.network] = HostNetwork(
                    network, lease, overlay_peers(network, host, leases, hosts),
                    dns_names(network.name, allocations, all_containers))
        containers = {}
        for kv in kvs:
            if kv.key.startswith(CONTAINERS):
                view = self._view(kv, by_key)
                if view.container.host == host:
                    containers[view.container.name] = view
        return Snapshot(revision, networks, containers)

    def host_network(self, network: str, host: str, at_least: int = 0) -> HostNetwork | None:
        """``host``'s view of ``network`` (None without a lease there), as of the store's
        revision, or as of any revision from ``at_least`` on (see :meth:`_network_view`)."""
        shared = self._network_view(network, at_least)
        lease = shared[3].get(host) if shared is not None else None
        if shared is None or lease is None:
            return None
        spec, names, members, _ = shared
        if not spans_hosts(spec.driver):
            return HostNetwork(spec, lease, names=names)
        return HostNetwork(spec, lease, tuple(p for p in members if p.host != host), names)

    def lease_networks(self, host: str, at_least: int = 0) -> list[str]:
        """The networks where ``host`` holds a lease, read once for the Watch streams one
        change wakes (a host whose VXLAN endpoint moved, or that was deleted, concerns every
        peer: each stream decoded every lease), as :meth:`_network_view` keeps its views."""
        cached = self._lease_networks.get(host)
        if cached is not None and at_least and cached[0] >= at_least:
            return cached[1]
        with self._view_lock(f"host {host}"):  # one stream reads, the others wait and take it
            cached = self._lease_networks.get(host)
            if cached is not None and at_least and cached[0] >= at_least:
                return cached[1]
            revision = self.store.revision()
            networks = sorted({lease.network
                               for lease in ipam.list_leases(self.store, host=host)})
            self._lease_networks[host] = (revision, networks)
            return networks

    def _view_lock(self, key: str) -> threading.Lock:
        with self._view_locks_guard:
            return self._view_locks.setdefault(key, threading.Lock())

    def forget_views(self, host: str = "", network: str = "") -> None:
        """Drop what the shared views keep of a host or a network that is gone (deleted here;
        the watch hub calls it too for deletions it reads in the change log, another
        replica's included), and its lock: a controller that sees hosts and networks come and
        go keeps only those that exist. A stream that still holds the lock finishes; the next
        one takes a new lock."""
        with self._view_locks_guard:
            if host:
                self._lease_networks.pop(host, None)
                self._view_locks.pop(f"host {host}", None)
            if network:
                self._shared_views.pop(network, None)
                self._net_records.pop(network, None)
                self._names_from.pop(network, None)
                self._view_locks.pop(f"network {network}", None)
                self._name_entries.pop(network, None)
                self._holders.pop(network, None)
                self._name_deltas.pop(network, None)
                self._view_locks.pop(f"names {network}", None)

    def _network_view(self, network: str, at_least: int = 0) -> _SharedView | None:
        """What every host's view of ``network`` shares (spec, name table, and for an overlay
        its members' peer entries), read once per store revision: the N streams one write
        wakes build it once, not N times (issue 21). Read after the revision it is kept
        under, so it is never older than that revision.

        ``at_least``: a Watch stream building the event for changes up to that revision may
        take a view kept under any revision from there on (what changed since comes to it as
        its next batch). Without it, the store moving on between the first stream's read and
        the others' (at 100 hosts their status reports are a write every few ms) made each
        stream read the overlay's 100 leases again: O(hosts²) per host joining."""
        cached = self._shared_views.get(network)
        if cached is not None and at_least and cached[0] >= at_least:
            return cached[1]
        with self._view_lock(f"network {network}"):
            return self._build_network_view(network, at_least)

    def _build_network_view(self, network: str, at_least: int) -> _SharedView | None:
        """:meth:`_network_view`'s read, one per network at a time (the caller holds its
        lock): a view another stream built while this one waited serves too. Its records are
        moved on by the change log since they were read (``netview``), not read whole."""
        cached = self._shared_views.get(network)
        if cached is not None and at_least and cached[0] >= at_least:
            return cached[1]
        kept_records = self._net_records.get(network)
        records = netview.read(self.store, network) if kept_records is None else \
            netview.move_on(self.store, kept_records)
        if records is None:
            self.forget_views(network=network)
            return None
        if cached is not None and records is kept_records:  # nothing written since
            return cached[1]
        # Records decoded once and shared while their bytes do not change (from_json_frozen):
        # a host joining a 100 x 10 overlay, or one container created, decoded all 1,000
        # allocations and containers again, ~90 ms while every stream of the network waited.
        spec, allocations = records.spec, records.sorted_allocations()
        inputs = (allocations, tuple(records.containers.values()))
        kept = self._names_from.get(network)
        if kept is not None and kept[0] == inputs:  # (the same objects: compared by identity)
            names = kept[1]
        else:
            names = dns_names(network, allocations, records.containers)
            self._names_from[network] = (inputs, names)
        leases = records.sorted_leases()
        members: tuple[Peer, ...] = ()
        if spans_hosts(spec.driver):
            members = overlay_peers(spec, "", leases, records.hosts)
        view = (spec, names, members, MappingProxyType({lease.host: lease for lease in leases}))
        self._net_records[network] = records
        self._shared_views[network] = (records.revision, view)
        return view

    def name_delta(self, network: str, containers: Iterable[str],
                   at_least: int = 0) -> NameDelta:
        """What a Watch stream needs for ``network``'s NameDelta: the hosts holding a lease of
        it (they alone hold its name table) and the entries of ``containers`` in it, as now.
        The streams one change wakes ask alike: what they ask is read once and shared, entry by
        entry (streams that fell behind take several changes at once, so their sets differ),
        each kept with the revision it was read at and taken by a stream whose changes it is
        as new as (``at_least``, as :meth:`_network_view` keeps its views). On etcd every
        stream read two keys per container and the network's lease of its host, each a round
        trip: at 100x10, 1,000 creates made ~200,000 reads, which held ``up``'s writes back
        (issue 21)."""
        wanted = frozenset(containers)
        kept = self._name_entries.setdefault(network, {})
        entries: dict[str, DnsName | None] = {}

        def take_kept() -> list[str]:
            """Take the fresh entries kept; the containers left to read."""
            for c in wanted.difference(entries):
                held = kept.get(c)
                if held is not None and _fresh(held, at_least):
                    entries[c] = held[1]
            return sorted(wanted.difference(entries))

        holders = self._holders.get(network)
        missing = take_kept()
        if missing or holders is None or not _fresh(holders, at_least):
            with self._view_lock(f"names {network}"):  # one stream reads, the others take it
                missing, holders = take_kept(), self._holders.get(network)
                if missing or holders is None or not _fresh(holders, at_least):
                    revision = self.store.revision()  # (what follows is at least as new)
                    if holders is None or not _fresh(holders, at_least):
                        holders = (revision, frozenset(
                            lease.host for lease in ipam.list_leases(self.store, network=network)))
                        self._holders[network] = holders
                    found = {n.container: n for n in self.names_of(network, missing)}
                    if len(kept) + len(missing) > NAME_ENTRIES_KEPT:
                        kept.clear()  # (entries of containers long gone)
                    for c in missing:
                        entries[c] = found.get(c)
                        kept[c] = (revision, entries[c])
        names = tuple(sorted((e for e in entries.values() if e is not None),
                             key=lambda n: n.container))
        done = NameDelta(network, wanted, holders[1], names)
        last = self._name_deltas.get(network)
        if last == done:  # the same object for every stream: converted once (watch._Shared)
            return last
        self._name_deltas[network] = done
        return done

    def names_of(self, network: str, containers: Iterable[str]) -> tuple[DnsName, ...]:
        """The entries of ``containers`` in ``network``'s name table, as they are now: none for a
        container deleted, moved to another network or without an address there (issue 21).
        Two reads, each of many keys: the containers, then their owner entries."""
        names = sorted(set(containers))
        found = {name: from_json(Container, kv.value) for name, kv in zip(
            names, get_many(self.store, [container_key(n) for n in names]), strict=True) if kv}
        mine = [ctr for ctr in found.values() if ctr.bridge_network == network]
        owned = get_many(self.store, [keys.owner_key(network, ctr.name, ctr.interface)
                                      for ctr in mine])
        allocations = [from_json(Allocation, kv.value) for kv in owned if kv is not None]
        return dns_names(network, allocations, found)

    # -- leases: expiry and quarantine ----------------------------------------------------------

    def sweep(self) -> int:
        """Free expired leases that hold no address (their subnet quarantined for the host),
        end expired quarantines and trim the IPAM history. Returns how many things it freed.

        Each lease is freed in its own transaction, guarded by the lease and by the absence of
        any address in it, so a container created meanwhile keeps its host's lease."""
        now = self.now()
        freed = 0
        for lease in ipam.list_leases(self.store):
            if lease.expires_at and lease.expires_at <= now and self._expire(lease, now):
                freed += 1
        for kv, entry in ipam.list_quarantine(self.store):
            if entry.until <= now:
                event = ipam.IpamEvent(now, "quarantine-end", entry.network,
                                       subnet=entry.subject if "/" in entry.subject else "",
                                       address="" if "/" in entry.subject else entry.subject)
                if self.store.txn([Compare(kv.key, kv.mod_revision)],
                                  [Delete(kv.key), ipam.history_put(event)]) is not None:
                    freed += 1
        # History is trimmed in small transactions: nothing needs them atomic, and etcd caps
        # the operations of one transaction (--max-txn-ops, 128 by default).
        trim = ipam.history_trim_ops(self.store)
        for start in range(0, len(trim), TRIM_BATCH):
            self.store.txn([], trim[start:start + TRIM_BATCH])
        return freed

    def _expire(self, lease: Lease, now: int) -> bool:
        key = keys.lease_key(lease.network, lease.host)
        kv = self.store.get(key)
        if kv is None or from_json(Lease, kv.value) != lease:
            return False  # renewed or released since we listed
        # Every allocation in a lease rewrites the lease (ipam.plan_address), so the compare
        # on it fails if an address was taken after we read the addresses below.
        addresses, _ = self.store.range(f"/ipam/{lease.network}/addr/")
        subnets = [IPNetwork(cidr) for cidr in (lease.subnet, lease.subnet6) if cidr]
        if any(IPAddress(a.key.rsplit("/", 1)[1]) in subnet for a in addresses
               for subnet in subnets):
            return False  # in use: expiry frees idle leases only
        ops = ipam.lease_release_ops(lease, kind="expire",
                                     quarantine=self.timers.subnet_quarantine, now=now)
        return self.store.txn([Compare(key, kv.mod_revision)], ops) is not None

    # -- helpers ------------------------------------------------------------------------------

    def _host_status(self, host: str) -> HostStatus | None:
        kv = self.store.get(HOST_STATUS + host)
        return from_json(HostStatus, kv.value) if kv else None

    def _require(self, key: str, field: str, name: str) -> KeyValue:
        kv = self.store.get(key)
        if kv is None:
            raise NotFound(field, name)
        return kv

    def _containers(self) -> list[Container]:
        kvs, _ = self.store.range(CONTAINERS)
        return [from_json(Container, kv.value) for kv in kvs]

    def _host_containers(self, host: str) -> list[Container]:
        """The containers of ``host``, through its index (an entry whose container is gone or
        elsewhere, which no transaction of ours leaves, is skipped)."""
        prefix = host_index_prefix(host)
        names, _ = self.store.range(prefix)
        found = get_many(self.store, [container_key(kv.key[len(prefix):]) for kv in names])
        containers = [from_json(Container, kv.value) for kv in found if kv is not None]
        return [c for c in containers if c.host == host]

    def ensure_indexes(self) -> int:
        """Index the containers a store written before the indexes holds (idempotent; one
        small transaction per container, each guarded by the container as read). Returns how
        many entries it wrote."""
        kvs, _ = self.store.range(CONTAINERS)
        wanted = [(kv, host_index_key(from_json(Container, kv.value).host,
                                      kv.key[len(CONTAINERS):])) for kv in kvs]
        present = get_many(self.store, [key for _, key in wanted])
        written = 0
        for (kv, key), there in zip(wanted, present, strict=True):
            if there is None and self.store.txn([Compare(kv.key, kv.mod_revision)],
                                                [Put(key, b"")]) is not None:
                written += 1
        return written

    def _views(self, kvs: list[KeyValue], whole: bool = False) -> list[ContainerView]:
        """The views of containers ``kvs``, their addresses, leases and statuses read at once.
        ``whole``: ``kvs`` are every container, so what they need is read as the ranges that
        hold it (their networks' owners, the leases, the statuses): on etcd, at 1,000
        containers, the 2,100 keys in one read took 90 ms, the ranges 30."""
        containers = [from_json_frozen(Container, kv.value) for kv in kvs]
        if whole:
            networks = sorted({c.bridge_network for c in containers
                               if c.bridge_network is not None})
            prefixes = [*(keys.owners_prefix(n) for n in networks), keys.LEASES,
                        keys.CONTAINER_STATUS]
            by_key = {kv.key: kv for prefix in prefixes for kv in self.store.range(prefix)[0]}
        else:
            wanted: list[str] = []
            for container in containers:
                if container.bridge_network is not None:
                    wanted += [keys.owner_key(container.bridge_network, container.name,
                                              container.interface),
                               keys.lease_key(container.bridge_network, container.host)]
                wanted.append(status_key(container.name))
            unique = sorted(set(wanted))
            by_key = {key: kv for key, kv in zip(unique, get_many(self.store, unique),
                                                 strict=True) if kv is not None}
        return [self._view(kv, by_key) for kv in kvs]

    def _bridge_users(self, network: str) -> list[str]:
        return sorted(c.name for c in self._containers() if c.bridge_network == network)

    def _with_default_network(self, container: Container) -> Container:
        """An empty ``network`` means the default bridge network."""
        if container.network:
            return container
        kvs, _ = self.store.range(NETWORKS)
        for kv in kvs:
            if from_json(Network, kv.value).builtin:
                return dataclasses.replace(container, network=kv.key[len(NETWORKS):])
        raise Invalid("container.network", "required: this controller has no default bridge "
                      "network (none, host, container:<name> or a network name)")

    def _with_image(self, container: Container) -> tuple[Container, list[Compare]]:
        """The container with its image resolved to an ID, and a compare that keeps the image
        from going away before the container is written."""
        if not container.image:  # (replace copies 30 fields: not when there is nothing to do)
            return (dataclasses.replace(container, image_id="") if container.image_id
                    else container), []
        record, kv = images.resolve(self.store, container.image, "container.image")
        return (dataclasses.replace(container, image_id=record.id),
                [Compare(kv.key, kv.mod_revision)])

    def _allocation(self, container: Container) -> Allocation | None:
        if container.bridge_network is None:
            return None
        kv = self.store.get(
            keys.owner_key(container.bridge_network, container.name, container.interface))
        return from_json(Allocation, kv.value) if kv else None

    def _plan_placement(self, container: Container,
                        releasing: Allocation | None) -> tuple[list[Compare], Ops]:
        """What attaching ``container`` in its network mode takes: for a bridged one its lease
        and address, for a joined one a donor that stays as read. ``releasing`` (an address the
        container held) is freed in the same transaction."""
        compares: list[Compare] = []
        release: Ops = []
        now = self.now()
        if releasing is not None:
            owner = keys.owner_key(releasing.network, releasing.container, releasing.interface)
            owner_kv = self._require(owner, "allocation", owner)
            compares.append(Compare(owner, owner_kv.mod_revision))
            release = ipam.release_ops(self.store, releasing.network, releasing.container,
                                       releasing.interface, timers=self.timers, now=now,
                                       host=container.host)
        if container.bridge_network is not None:
            name = container.bridge_network
            net_kv = self._require(network_key(name), "container.network", name)
            network = from_json(Network, net_kv.value)
            _check_ipv6_ports(container, network)
            lease, lease_cmp, lease_ops = ipam.plan_lease(self.store, network, container.host,
                                                          timers=self.timers, now=now)
            _, addr_cmp, addr_ops = ipam.plan_address(
                self.store, network, lease, container.name, container.interface,
                container.fixed_ip, releasing=releasing, field="container.fixed_ip", now=now,
                new_lease=bool(lease_ops), fixed_ip6=container.fixed_ip6)
            compares += [Compare(net_kv.key, net_kv.mod_revision), *lease_cmp, *addr_cmp]
            return compares, [*lease_ops, *ipam.merge_ops(release, addr_ops)]
        if container.donor is not None:
            compares.append(self._donor_compare(container, container.donor))
        return compares, list(release)

    def _donor_compare(self, container: Container, donor_name: str) -> Compare:
        donor_kv = self._require(container_key(donor_name), "container.network", donor_name)
        donor = from_json(Container, donor_kv.value)
        if donor.host != container.host:
            raise FailedPrecondition(
                f"container.network: {donor_name!r} runs on host {donor.host!r}, not "
                f"{container.host!r}; a container can only join one on its own host")
        if donor.donor is not None:
            raise FailedPrecondition(
                f"container.network: {donor_name!r} itself joins {donor.donor!r}; "
                f"join {donor.donor!r} instead")
        return Compare(donor_kv.key, donor_kv.mod_revision)

    def _view(self, kv: KeyValue, by_key: dict[str, KeyValue] | None = None) -> ContainerView:
        def get(key: str) -> KeyValue | None:
            return by_key.get(key) if by_key is not None else self.store.get(key)

        container = from_json_frozen(Container, kv.value)
        alloc_kv = lease_kv = None
        if container.bridge_network is not None:  # other modes have no address of their own
            network = container.bridge_network
            alloc_kv = get(keys.owner_key(network, container.name, container.interface))
            lease_kv = get(keys.lease_key(network, container.host))
        status_kv = get(status_key(container.name))
        return ContainerView(
            container=container,
            allocation=from_json_frozen(Allocation, alloc_kv.value) if alloc_kv else None,
            lease=from_json_frozen(Lease, lease_kv.value) if lease_kv else None,
            status=(from_json_frozen(ContainerStatus, status_kv.value) if status_kv
                    else ContainerStatus(container.name)),
            revision=kv.mod_revision,
        )


def _with_overlay_defaults(network: Network) -> Network:
    """An overlay network's UDP port 0 means the IANA VXLAN port."""
    if spans_hosts(network.driver) and not network.vxlan_port:
        return dataclasses.replace(network, vxlan_port=DEFAULT_VXLAN_PORT)
    return network


def _immutable_change(stored: Network, wanted: Network) -> str | None:
    """The first field that differs and may not change (``builtin`` is the controller's)."""
    for field in dataclasses.fields(Network):
        if field.name in (*Network.MUTABLE, "builtin"):
            continue
        if getattr(stored, field.name) != getattr(wanted, field.name):
            return field.name
    return None


def _address_moves(current: Allocation | None, container: Container) -> bool:
    """Whether ``container``'s new spec cannot keep the address it holds."""
    if current is None:
        return False
    return (container.bridge_network != current.network
            or container.interface != current.interface
            or (bool(container.fixed_ip) and container.fixed_ip != current.address)
            or (bool(container.fixed_ip6) and container.fixed_ip6 != current.address6))


def _check_ipv6_ports(container: Container, network: Network) -> None:
    """A port published on an IPv6 host address needs an IPv6 address to DNAT to, one on an
    IPv4 host address an IPv4 one (an IPv6-only network has none)."""
    for i, spec in enumerate(container.ports):
        host_ip = parse_port(spec, f"container.ports[{i}]").host_ip
        if is_ipv6_host(host_ip) and not network.subnet6:
            raise Invalid(f"container.ports[{i}]", f"{spec!r} is published on an IPv6 address, "
                          f"but network {network.name!r} has no IPv6 subnet (subnet6)")
        if host_ip and not is_ipv6_host(host_ip) and not network.subnet:
            raise Invalid(f"container.ports[{i}]", f"{spec!r} is published on an IPv4 address, "
                          f"but network {network.name!r} is IPv6-only (no subnet)")


def _check_host_ports(container: Container, others: Iterable[Container]) -> None:
    """No other container on the same host publishes one of ``container``'s host ports."""
    published: dict[tuple[int, str], list[tuple[str, str]]] = {}
    for other in others:
        if other.host != container.host or other.name == container.name:
            continue
        for spec in other.ports:
            m = parse_port(spec, "ports")
            published.setdefault((m.host_port, m.protocol), []).append((m.host_ip, other.name))
    for i, spec in enumerate(container.ports):
        m = parse_port(spec, f"container.ports[{i}]")
        for host_ip, owner in published.get((m.host_port, m.protocol), []):
            if host_ips_overlap(host_ip, m.host_ip):
                raise AlreadyExists(
                    f"container.ports[{i}]", spec,
                    f"host port {m.host_port}/{m.protocol} of host {container.host!r} is "
                    f"already published by container {owner!r}")
