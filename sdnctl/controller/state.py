"""The controller's desired state: hosts, networks and containers over a :class:`Store`.

Every operation validates first, then writes in ONE store transaction guarded by compares on what
it read (compare-and-swap), retried with a fresh read when another writer got there first. So a
container record, its host's subnet lease and its address appear together or not at all, and a
failed call changes nothing.

Key layout (values are ``sdnctl.model.to_json`` of model objects):
    /hosts/<name>                         Host
    /networks/<name>                      Network
    /containers/<name>                    Container
    /status/containers/<name>             ContainerStatus (written by agents' reports)
    /leases/..., /ipam/...                owned by sdnctl.controller.ipam
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass

from sdnctl.controller import ipam
from sdnctl.controller.errors import AlreadyExists, FailedPrecondition, NotFound
from sdnctl.controller.store.base import Compare, Delete, KeyValue, Put, Store
from sdnctl.model import (
    Allocation,
    Container,
    ContainerStatus,
    Host,
    HostStatus,
    Lease,
    Network,
    check_name,
    from_json,
    to_json,
)
from sdnctl.validate import validate_container, validate_host, validate_network

HOSTS = "/hosts/"
NETWORKS = "/networks/"
CONTAINERS = "/containers/"
CONTAINER_STATUS = "/status/containers/"
HOST_STATUS = "/status/hosts/"


def host_key(name: str) -> str:
    return HOSTS + name


def network_key(name: str) -> str:
    return NETWORKS + name


def container_key(name: str) -> str:
    return CONTAINERS + name


def status_key(name: str) -> str:
    return CONTAINER_STATUS + name


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
class Snapshot:
    """Everything one host must run, read at one store revision."""

    revision: int
    networks: dict[str, tuple[Network, Lease]]
    containers: dict[str, ContainerView]


class State:
    def __init__(self, store: Store) -> None:
        self.store = store

    # -- hosts ------------------------------------------------------------------------------

    def create_host(self, host: Host) -> HostView:
        validate_host(host)
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
        validate_host(host)

        def build() -> tuple[list[Compare], list[Put | Delete], None]:
            kv = self.store.get(host_key(host.name))
            merged = host
            if kv is not None:
                merged = dataclasses.replace(host, lab=from_json(Host, kv.value).lab or host.lab)
                if kv.value == to_json(merged):
                    return [Compare(kv.key, kv.mod_revision)], [], None
            return ([Compare(host_key(host.name), kv.mod_revision if kv else 0)],
                    [Put(host_key(host.name), to_json(merged)),
                     Delete(HOST_STATUS + host.name)], None)

        ipam.commit_with_retry(self.store, build)
        return self.get_host(host.name)

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
        views = []
        for kv in kvs:
            host = from_json(Host, kv.value)
            mine = tuple(lease for lease in leases if lease.host == host.name)
            views.append(HostView(host, mine, kv.mod_revision, self._host_status(host.name)))
        return views, revision

    def delete_host(self, name: str) -> None:
        check_name(name, "name")

        def build() -> tuple[list[Compare], list[Put | Delete], None]:
            kv = self.store.get(host_key(name))
            if kv is None:
                raise NotFound("host", name)
            users = [c.name for c in self._containers() if c.host == name]
            if users:
                raise FailedPrecondition(
                    f"host {name!r} still runs containers: {', '.join(sorted(users))}")
            ops: list[Put | Delete] = [Delete(kv.key), Delete(HOST_STATUS + name)]
            for lease in ipam.list_leases(self.store, host=name):
                ops += ipam.lease_release_ops(lease)
            return [Compare(kv.key, kv.mod_revision)], ops, None

        ipam.commit_with_retry(self.store, build)

    # -- networks ---------------------------------------------------------------------------

    def create_network(self, network: Network) -> tuple[Network, int]:
        validate_network(network)
        revision = self.store.txn([Compare(network_key(network.name), 0)],
                                  [Put(network_key(network.name), to_json(network))])
        if revision is None:
            raise AlreadyExists("network", network.name)
        return network, revision

    def get_network(self, name: str) -> tuple[Network, int]:
        check_name(name, "name")
        kv = self.store.get(network_key(name))
        if kv is None:
            raise NotFound("network", name)
        return from_json(Network, kv.value), kv.mod_revision

    def list_networks(self) -> tuple[list[tuple[Network, int]], int]:
        kvs, revision = self.store.range(NETWORKS)
        return [(from_json(Network, kv.value), kv.mod_revision) for kv in kvs], revision

    def delete_network(self, name: str) -> None:
        check_name(name, "name")

        def build() -> tuple[list[Compare], list[Put | Delete], None]:
            kv = self.store.get(network_key(name))
            if kv is None:
                raise NotFound("network", name)
            users = [c.name for c in self._containers() if c.network == name]
            if users:
                raise FailedPrecondition(
                    f"network {name!r} still has containers: {', '.join(sorted(users))}")
            ops: list[Put | Delete] = [Delete(kv.key)]
            for lease in ipam.list_leases(self.store, network=name):
                ops += ipam.lease_release_ops(lease)
            return [Compare(kv.key, kv.mod_revision)], ops, None

        ipam.commit_with_retry(self.store, build)

    # -- containers -------------------------------------------------------------------------

    def create_container(self, container: Container) -> ContainerView:
        """Record a container with its host's lease and its address, in one transaction."""
        validate_container(container)

        def build() -> tuple[list[Compare], list[Put | Delete], None]:
            if self.store.get(container_key(container.name)) is not None:
                raise AlreadyExists("container", container.name)
            host_kv = self._require(host_key(container.host), "container.host", container.host)
            net_kv = self._require(network_key(container.network), "container.network",
                                   container.network)
            network = from_json(Network, net_kv.value)
            lease, lease_cmp, lease_ops = ipam.plan_lease(self.store, network, container.host)
            _, addr_cmp, addr_ops = ipam.plan_address(
                self.store, network, lease, container.name, container.interface)
            compares = [
                Compare(container_key(container.name), 0),
                Compare(host_kv.key, host_kv.mod_revision),
                Compare(net_kv.key, net_kv.mod_revision),
                *lease_cmp,
                *addr_cmp,
            ]
            ops: list[Put | Delete] = [
                *lease_ops,
                *addr_ops,
                Put(container_key(container.name), to_json(container)),
                Delete(status_key(container.name)),
            ]
            return compares, ops, None

        ipam.commit_with_retry(self.store, build)
        return self.get_container(container.name)

    def get_container(self, name: str) -> ContainerView:
        check_name(name, "name")
        kv = self.store.get(container_key(name))
        if kv is None:
            raise NotFound("container", name)
        return self._view(kv)

    def list_containers(self, host: str = "", network: str = "") -> tuple[list[ContainerView], int]:
        kvs, revision = self.store.range(CONTAINERS)
        views = [self._view(kv) for kv in kvs]
        views = [v for v in views
                 if (not host or v.container.host == host)
                 and (not network or v.container.network == network)]
        return views, revision

    def delete_container(self, name: str) -> None:
        check_name(name, "name")

        def build() -> tuple[list[Compare], list[Put | Delete], None]:
            kv = self.store.get(container_key(name))
            if kv is None:
                raise NotFound("container", name)
            container = from_json(Container, kv.value)
            ops: list[Put | Delete] = [Delete(kv.key), Delete(status_key(name))]
            ops += ipam.release_ops(self.store, container.network, name, container.interface)
            return [Compare(kv.key, kv.mod_revision)], ops, None

        ipam.commit_with_retry(self.store, build)

    def report_status(self, host: str, statuses: Iterable[ContainerStatus],
                      observed_revision: int = 0) -> None:
        """Record what an agent says runs on its host; only changes are written."""
        check_name(host, "host")
        host_kv = self._require(host_key(host), "host", host)
        mine = {c.name for c in self._containers() if c.host == host}
        statuses = [s for s in statuses if s.name in mine]  # deleted meanwhile, or not ours
        host_status = HostStatus(observed_revision, tuple(sorted(s.name for s in statuses)))
        if host_status != self._host_status(host):
            self.store.txn([Compare(host_kv.key, host_kv.mod_revision)],
                           [Put(HOST_STATUS + host, to_json(host_status))])
        for status in statuses:
            kv = self.store.get(container_key(status.name))
            if kv is None:
                continue  # deleted since we listed
            key = status_key(status.name)
            current = self.store.get(key)
            if current is not None and current.value == to_json(status):
                continue
            self.store.txn([Compare(kv.key, kv.mod_revision)], [Put(key, to_json(status))])

    # -- what one host must run ---------------------------------------------------------------

    def snapshot(self, host: str) -> Snapshot:
        kvs, revision = self.store.range("/")
        by_key = {kv.key: kv for kv in kvs}
        networks: dict[str, tuple[Network, Lease]] = {}
        for kv in kvs:
            if kv.key.startswith(ipam.LEASES) and kv.key.endswith("/" + host):
                lease = from_json(Lease, kv.value)
                net_kv = by_key.get(network_key(lease.network))
                if net_kv is not None and lease.host == host:
                    networks[lease.network] = (from_json(Network, net_kv.value), lease)
        containers = {}
        for kv in kvs:
            if kv.key.startswith(CONTAINERS):
                view = self._view(kv, by_key)
                if view.container.host == host:
                    containers[view.container.name] = view
        return Snapshot(revision, networks, containers)

    def host_network(self, network: str, host: str) -> tuple[Network, Lease] | None:
        net_kv = self.store.get(network_key(network))
        lease = ipam.get_lease(self.store, network, host)
        if net_kv is None or lease is None:
            return None
        return from_json(Network, net_kv.value), lease

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

    def _view(self, kv: KeyValue, by_key: dict[str, KeyValue] | None = None) -> ContainerView:
        def get(key: str) -> KeyValue | None:
            return by_key.get(key) if by_key is not None else self.store.get(key)

        container = from_json(Container, kv.value)
        alloc_kv = get(ipam.owner_key(container.network, container.name, container.interface))
        lease_kv = get(ipam.lease_key(container.network, container.host))
        status_kv = get(status_key(container.name))
        return ContainerView(
            container=container,
            allocation=from_json(Allocation, alloc_kv.value) if alloc_kv else None,
            lease=from_json(Lease, lease_kv.value) if lease_kv else None,
            status=(from_json(ContainerStatus, status_kv.value) if status_kv
                    else ContainerStatus(container.name)),
            revision=kv.mod_revision,
        )
