"""The controller's gRPC API, through a real server on a unix socket and real stubs.

Every test runs against the in-memory store and the SQLite store (the fixtures are in
``apitest.py``). Errors must name the field and leave the store exactly as it was (same
revision, same keys).
"""

from __future__ import annotations

import os
import stat
import time
from typing import Any

import grpc
import pytest
from apitest import (
    TIMEOUT,
    Api,
    StartServer,
    connect,
    details,
    eventually,
    is_progress,
    keyspace,
    rpc_error,
    unchanged,
    watch,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from netaddr import IPAddress, IPNetwork

from sdnctl.controller import ipam, keys
from sdnctl.controller.server import RunningServer
from sdnctl.controller.store.base import Store
from sdnctl.controller.store.memory import MemoryStore
from sdnctl.v1 import sdnctl_pb2 as pb

# -- hosts -------------------------------------------------------------------------------------


def test_create_get_list_delete_hosts(api: Api) -> None:
    created = api.host("h1", underlay_ip="192.0.2.1", lab=True)
    assert (created.name, created.underlay_ip, created.lab) == ("h1", "192.0.2.1", True)
    assert created.revision == api.store.revision()
    api.host("h2")

    got = api.get_host("h1")
    assert (got.name, got.underlay_ip, got.lab, got.revision) == \
        ("h1", "192.0.2.1", True, created.revision)
    assert not got.agent_connected
    listed = api.ctl.ListHosts(pb.ListRequest(), timeout=TIMEOUT)
    assert [h.name for h in listed.hosts] == ["h1", "h2"]
    assert listed.revision == api.store.revision()

    api.delete("Host", "h1")
    rpc_error(lambda: api.get_host("h1"), grpc.StatusCode.NOT_FOUND)
    assert [h.name for h in api.ctl.ListHosts(pb.ListRequest(), timeout=TIMEOUT).hosts] == ["h2"]


def test_duplicate_host_is_already_exists(api: Api) -> None:
    api.host("h1", underlay_ip="192.0.2.1")
    with unchanged(api.store):
        e = rpc_error(lambda: api.host("h1", underlay_ip="192.0.2.9"),
                      grpc.StatusCode.ALREADY_EXISTS)
    assert details(e) == "host 'h1' already exists"
    assert api.get_host("h1").underlay_ip == "192.0.2.1"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"name": "a" * 64}, "host.name:"),
        ({"name": "H1"}, "host.name:"),
        ({"name": ""}, "host.name:"),
        ({"name": "h1", "underlay_ip": "192.0.2"}, "host.underlay_ip:"),
    ],
)
def test_invalid_host_names_the_field(api: Api, fields: dict[str, Any], field: str) -> None:
    with unchanged(api.store):
        e = rpc_error(lambda: api.ctl.CreateHost(pb.CreateHostRequest(host=pb.Host(**fields)),
                                                 timeout=TIMEOUT),
                      grpc.StatusCode.INVALID_ARGUMENT)
    assert details(e).startswith(field), details(e)


def test_unknown_host_is_not_found(api: Api) -> None:
    with unchanged(api.store):
        e = rpc_error(lambda: api.get_host("ghost"), grpc.StatusCode.NOT_FOUND)
        assert details(e) == "host 'ghost' not found"
        e = rpc_error(lambda: api.delete("Host", "ghost"), grpc.StatusCode.NOT_FOUND)
        assert details(e) == "host 'ghost' not found"


# -- networks ----------------------------------------------------------------------------------


def test_create_get_list_delete_networks(api: Api) -> None:
    created = api.network("front", "10.88.0.0/16")
    assert (created.name, created.subnet, created.driver, created.host_prefix, created.mtu,
            created.masquerade) == ("front", "10.88.0.0/16", "bridge", 24, 1500, True)
    assert created.revision == api.store.revision()
    api.network("back", "10.89.0.0/16", host_prefix=26, mtu=9000, masquerade=False)

    got = api.ctl.GetNetwork(pb.GetRequest(name="back"), timeout=TIMEOUT)
    assert (got.subnet, got.host_prefix, got.mtu, got.masquerade) == \
        ("10.89.0.0/16", 26, 9000, False)
    listed = api.ctl.ListNetworks(pb.ListRequest(), timeout=TIMEOUT)
    assert [n.name for n in listed.networks] == ["back", "front"]
    assert listed.revision == api.store.revision()

    api.delete("Network", "back")
    rpc_error(lambda: api.ctl.GetNetwork(pb.GetRequest(name="back"), timeout=TIMEOUT),
              grpc.StatusCode.NOT_FOUND)
    assert [n.name for n in api.ctl.ListNetworks(pb.ListRequest(), timeout=TIMEOUT).networks] \
        == ["front"]


def test_duplicate_network_is_already_exists(api: Api) -> None:
    api.network("front", "10.88.0.0/16")
    with unchanged(api.store):
        e = rpc_error(lambda: api.network("front", "10.99.0.0/16"),
                      grpc.StatusCode.ALREADY_EXISTS)
    assert details(e) == "network 'front' already exists"


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        pytest.param({"subnet": "10.88.0/16"},
                     "network.subnet: '10.88.0/16' is not a CIDR such as 10.88.0.0/16",
                     id="malformed-cidr"),
        pytest.param({"subnet": "10.88.0.1/16"},
                     "network.subnet: 10.88.0.1/16 has host bits set; did you mean 10.88.0.0/16?",
                     id="host-bits"),
        pytest.param({"subnet": ""}, "network.subnet: required (a CIDR such as 10.88.0.0/16), "
                     "or only a subnet6 for an IPv6-only network",
                     id="no-subnet"),
        pytest.param({"subnet": "10.88.0.0/16", "mtu": 100},
                     "network.mtu: 100 is outside 576..65535", id="mtu-too-small"),
        pytest.param({"subnet": "10.88.0.0/16", "mtu": 70000},
                     "network.mtu: 70000 is outside 576..65535", id="mtu-too-big"),
        pytest.param({"subnet": "10.88.0.0/16", "driver": "vxlan"},
                     "network.driver: unknown driver 'vxlan'; expected one of bridge, overlay",
                     id="unknown-driver"),
        pytest.param({"subnet": "10.88.0.0/16", "host_prefix": 31},
                     "network.host_prefix: /31 leaves no room for a gateway and a container; "
                     "use /30 or shorter", id="host-prefix"),
        pytest.param({"name": "x" * 64, "subnet": "10.88.0.0/16"},
                     "network.name: 'xxxxxxxxxxxxxxxxxxxx'... is longer than 63 characters",
                     id="name-too-long"),
    ],
)
def test_invalid_network_names_the_field(api: Api, fields: dict[str, Any],
                                         expected: str) -> None:
    msg = pb.Network(**{"name": "front", **fields})
    with unchanged(api.store):
        e = rpc_error(lambda: api.ctl.CreateNetwork(pb.CreateNetworkRequest(network=msg),
                                                    timeout=TIMEOUT),
                      grpc.StatusCode.INVALID_ARGUMENT)
    assert details(e) == expected


# -- containers --------------------------------------------------------------------------------


def lease_of(api: Api, host: str, network: str) -> pb.Lease:
    leases = [lease for lease in api.get_host(host).leases if lease.network == network]
    assert len(leases) == 1, f"host {host} should hold one lease of {network}: {leases}"
    return leases[0]


def test_container_gets_an_address_in_its_hosts_subnet(front: Api) -> None:
    api = front
    web = api.container("web", command=["nc", "-l", "80"])
    db = api.container("db")
    lease = lease_of(api, "h1", "front")
    subnet = IPNetwork(lease.subnet)
    assert subnet.prefixlen == 24
    assert subnet in IPNetwork("10.88.0.0/16")
    assert lease.gateway == str(IPAddress(subnet.first + 1))
    for ctr in (web, db):
        assert IPAddress(ctr.ip) in subnet
        assert ctr.ip not in (lease.gateway, str(subnet.network), str(subnet.broadcast))
        assert ctr.prefixlen == 24
        assert ctr.gateway == lease.gateway
        assert ctr.status.state == "pending"
    assert web.ip != db.ip
    assert (web.host, web.network, list(web.command), web.interface) == \
        ("h1", "front", ["nc", "-l", "80"], "eth0")
    assert list(db.command) == ["sleep", "infinity"]

    got = api.get_container("web")
    assert (got.ip, got.prefixlen, got.gateway, got.revision) == \
        (web.ip, 24, lease.gateway, web.revision)


def test_containers_on_different_hosts_get_different_subnets(front: Api) -> None:
    api = front
    api.host("h2")
    a = api.container("a", host="h1")
    b = api.container("b", host="h2")
    sub_a = IPNetwork(lease_of(api, "h1", "front").subnet)
    sub_b = IPNetwork(lease_of(api, "h2", "front").subnet)
    assert sub_a != sub_b
    assert IPAddress(a.ip) in sub_a
    assert IPAddress(b.ip) in sub_b


def test_list_containers_filters_by_host_and_network(front: Api) -> None:
    api = front
    api.host("h2")
    api.network("back", "10.89.0.0/16")
    api.container("a", host="h1")
    api.container("b", host="h2")
    api.container("c", host="h2", network="back")

    def names(**kw: str) -> list[str]:
        reply = api.ctl.ListContainers(pb.ListRequest(**kw), timeout=TIMEOUT)
        assert reply.revision == api.store.revision()
        return [c.name for c in reply.containers]

    assert names() == ["a", "b", "c"]
    assert names(host="h2") == ["b", "c"]
    assert names(network="front") == ["a", "b"]
    assert names(host="h2", network="back") == ["c"]


def test_second_create_of_a_container_is_already_exists(front: Api) -> None:
    api = front
    first = api.container("web")
    with unchanged(api.store):
        e = rpc_error(lambda: api.container("web"), grpc.StatusCode.ALREADY_EXISTS)
    assert details(e) == "container 'web' already exists"
    assert api.get_container("web").ip == first.ip


def test_deleted_container_frees_its_address(front: Api) -> None:
    api = front
    web = api.container("web")
    api.container("db")
    api.delete("Container", "web")
    rpc_error(lambda: api.get_container("web"), grpc.StatusCode.NOT_FOUND)
    assert [a.container for a in ipam.list_allocations(api.store, "front")] == ["db"]
    # Quarantined: another container does not get it at once...
    assert api.container("app").ip != web.ip


def test_freed_address_is_reused_after_its_quarantine(store: Store,
                                                      start_server: StartServer) -> None:
    now = [1_000_000.0]
    server = start_server(store, address_quarantine=60, clock=lambda: now[0])
    with connect(server, store) as api:
        api.host("h1")
        api.network("front")
        web = api.container("web")
        api.delete("Container", "web")
        assert api.container("app").ip != web.ip
        now[0] += 61
        assert api.container("cache").ip == web.ip  # the lowest free address again


def test_deleting_everything_leaves_no_ipam_state(front: Api) -> None:
    api = front
    api.container("web")
    api.delete("Container", "web")
    api.delete("Host", "h1")
    api.delete("Network", "front")
    # Only the IPAM history remembers it.
    assert [kv.key for kv in keyspace(api.store)[0] if not kv.key.startswith(keys.HISTORY)] == []


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        pytest.param({"name": "c" * 64},
                     "container.name: 'cccccccccccccccccccc'... is longer than 63 characters",
                     id="name-too-long"),
        pytest.param({"name": "Web"}, "container.name: 'Web' is not a valid name", id="name-case"),
        pytest.param({"host": ""}, "container.host: expected a non-empty string", id="no-host"),
        pytest.param({"network": "-x"}, "container.network: '-x' is not a valid name",
                     id="network-name"),
        pytest.param({"interface": "a-very-long-ifname"},
                     "container.interface: 'a-very-long-ifname' is not a valid interface name",
                     id="interface"),
        pytest.param({"command": ["sleep", ""]},
                     "container.command: expected a non-empty list of non-empty strings",
                     id="empty-argument"),
    ],
)
def test_invalid_container_names_the_field(front: Api, fields: dict[str, Any],
                                           expected: str) -> None:
    api = front
    msg = pb.Container(**{"name": "web", "host": "h1", "network": "front", **fields})
    with unchanged(api.store):
        e = rpc_error(lambda: api.ctl.CreateContainer(pb.CreateContainerRequest(container=msg),
                                                      timeout=TIMEOUT),
                      grpc.StatusCode.INVALID_ARGUMENT)
    assert details(e).startswith(expected), details(e)


@pytest.mark.parametrize(
    ("host", "network", "expected"),
    [
        ("h1", "nope", "container.network 'nope' not found"),
        ("nope", "front", "container.host 'nope' not found"),
    ],
)
def test_container_on_unknown_host_or_network_is_not_found(front: Api, host: str, network: str,
                                                           expected: str) -> None:
    api = front
    with unchanged(api.store):
        e = rpc_error(lambda: api.container("web", host=host, network=network),
                      grpc.StatusCode.NOT_FOUND)
    assert details(e) == expected
    assert api.ctl.ListContainers(pb.ListRequest(), timeout=TIMEOUT).containers == []


@pytest.mark.parametrize("kind", ["Network", "Host"])
def test_deleting_what_containers_still_use_fails(front: Api, kind: str) -> None:
    api = front
    api.container("web")
    api.container("db")
    name = "front" if kind == "Network" else "h1"
    with unchanged(api.store):
        e = rpc_error(lambda: api.delete(kind, name), grpc.StatusCode.FAILED_PRECONDITION)
    assert details(e).endswith(": db, web"), details(e)
    assert name in details(e)
    api.delete("Container", "web")
    api.delete("Container", "db")
    api.delete(kind, name)  # free now


def test_exhausted_host_subnet_writes_nothing(front: Api) -> None:
    api = front
    api.network("tiny", "10.99.0.0/16", host_prefix=29)
    # A /29 has 8 addresses: network, broadcast and the gateway leave 5 for containers.
    ips = [api.container(f"c{i}", network="tiny").ip for i in range(5)]
    assert ips == ["10.99.0.2", "10.99.0.3", "10.99.0.4", "10.99.0.5", "10.99.0.6"]
    with unchanged(api.store):
        e = rpc_error(lambda: api.container("c5", network="tiny"),
                      grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert details(e) == ("subnet 10.99.0.0/29 of network 'tiny' on host 'h1' "
                          "has no free address")
    rpc_error(lambda: api.get_container("c5"), grpc.StatusCode.NOT_FOUND)
    assert len(ipam.list_allocations(api.store, "tiny")) == 5
    assert api.store.get(keys.owner_key("tiny", "c5", "eth0")) is None


def test_exhausted_network_gives_no_lease_to_another_host(front: Api) -> None:
    api = front
    api.host("h2")
    api.network("tiny", "10.99.0.0/29", host_prefix=29)
    api.container("a", host="h1", network="tiny")
    with unchanged(api.store):
        e = rpc_error(lambda: api.container("b", host="h2", network="tiny"),
                      grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert details(e) == "network 'tiny' has no free /29 left for host 'h2'"
    assert [lease.network for lease in api.get_host("h2").leases] == []


# -- health, reflection, socket ------------------------------------------------------------------


@pytest.mark.parametrize("service", ["", "sdnctl.v1.Controller", "sdnctl.v1.HostSync"])
def test_health_is_serving(api: Api, service: str) -> None:
    stub = health_pb2_grpc.HealthStub(api.channel)
    reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_health_of_an_unknown_service_is_not_found(api: Api) -> None:
    stub = health_pb2_grpc.HealthStub(api.channel)
    rpc_error(lambda: stub.Check(health_pb2.HealthCheckRequest(service="nope.Service"),
                                 timeout=TIMEOUT), grpc.StatusCode.NOT_FOUND)


def test_reflection_lists_both_services(api: Api) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(api.channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    replies = list(stub.ServerReflectionInfo(iter([request]), timeout=TIMEOUT))
    assert len(replies) == 1
    names = {s.name for s in replies[0].list_services_response.service}
    assert {"sdnctl.v1.Controller", "sdnctl.v1.HostSync"} <= names


def test_socket_is_private(server: RunningServer) -> None:
    path = server.address.removeprefix("unix:")
    mode = os.stat(path).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600


# -- HostSync: Register, ReportStatus ------------------------------------------------------------


def test_register_creates_then_updates_the_host_and_keeps_lab(api: Api) -> None:
    api.host("h1", lab=True)
    host = api.register("h1", underlay_ip="192.0.2.7", agent_pid=4242, netns="/run/netns/h1")
    assert (host.name, host.underlay_ip, host.agent_pid, host.netns, host.lab) == \
        ("h1", "192.0.2.7", 4242, "/run/netns/h1", True)
    fresh = api.register("h9", agent_pid=1)
    assert (fresh.name, fresh.lab) == ("h9", False)
    revision = api.store.revision()
    api.register("h9", agent_pid=1)  # the same again writes nothing
    assert api.store.revision() == revision


def test_report_status_shows_in_get_container_and_get_host(front: Api) -> None:
    api = front
    api.host("h2")
    api.container("web", host="h1")
    api.container("other", host="h2")
    api.register("h1", agent_pid=100)
    assert not api.get_host("h1").agent_synced
    revision = api.store.revision()
    api.sync.ReportStatus(pb.ReportStatusRequest(
        host="h1", observed_revision=revision,
        containers=[
            pb.ContainerStatus(name="web", state="running", pid=1234, netns="/run/sdnctl/h1/web"),
            # Not h1's container: h1's agent cannot speak for it.
            pb.ContainerStatus(name="other", state="error", message="bogus"),
        ]), timeout=TIMEOUT)

    web = api.get_container("web")
    assert (web.status.name, web.status.state, web.status.pid, web.status.netns) == \
        ("web", "running", 1234, "/run/sdnctl/h1/web")
    assert api.get_container("other").status.state == "pending"
    h1 = api.get_host("h1")
    assert (h1.agent_synced, h1.observed_revision) == (True, revision)
    assert "web" in h1.reported_containers
    assert api.get_host("h2").observed_revision == 0

    # A new agent (another PID) may not inherit the old one's word.
    api.register("h1", agent_pid=101)
    h1 = api.get_host("h1")
    assert (h1.agent_synced, h1.observed_revision, list(h1.reported_containers)) == \
        (False, 0, [])


def test_report_status_of_unknown_host_is_not_found(api: Api) -> None:
    with unchanged(api.store):
        e = rpc_error(lambda: api.sync.ReportStatus(pb.ReportStatusRequest(host="ghost"),
                                                    timeout=TIMEOUT),
                      grpc.StatusCode.NOT_FOUND)
    assert details(e) == "host 'ghost' not found"


# -- HostSync: Watch ---------------------------------------------------------------------------


def test_watch_starts_with_a_snapshot_of_this_host(front: Api) -> None:
    api = front
    api.register("h1")
    api.host("h2")
    web = api.container("web", host="h1")
    api.container("elsewhere", host="h2")
    with watch(api, "h1") as stream:
        event = stream.next()
        assert event.snapshot
        assert event.revision == api.store.revision()
        assert [c.name for c in event.containers] == ["web"]
        assert (event.containers[0].ip, event.containers[0].prefixlen) == (web.ip, 24)
        assert [(n.network.name, n.lease.host, n.lease.subnet, n.lease.gateway)
                for n in event.networks] == [("front", "h1", "10.88.0.0/24", "10.88.0.1")]
        assert not event.deleted_containers
        assert not event.deleted_networks


def test_watch_follows_creates_and_deletes(front: Api) -> None:
    api = front
    api.register("h1")
    api.host("h2")
    with watch(api, "h1") as stream:
        first = stream.next()
        assert first.snapshot
        assert (list(first.containers), list(first.networks)) == ([], [])

        web = api.container("web", host="h1")
        event = stream.next_with_content()
        assert not event.snapshot
        assert event.revision == web.revision
        assert [(c.name, c.ip, c.prefixlen) for c in event.containers] == [("web", web.ip, 24)]
        assert web.ip
        # The host's first container brings its lease of the network.
        assert [(n.network.name, n.lease.subnet) for n in event.networks] == \
            [("front", "10.88.0.0/24")]

        api.delete("Container", "web")
        event = stream.next_with_content()
        assert list(event.deleted_containers) == ["web"]
        assert list(event.containers) == []
        assert event.revision == api.store.revision()

        # Another host's container on a network h1 holds is not a container for h1 to run,
        # but its name is news (DNS): a name delta of that network, not the whole table.
        other = api.container("elsewhere", host="h2")
        event = stream.next_with_content()
        assert list(event.containers) == []
        assert [(d.network, list(d.containers), [(n.container, n.address) for n in d.names])
                for d in event.name_deltas] == [("front", ["elsewhere"], [("elsewhere", other.ip)])]
        assert all(not net.names for net in event.networks)
        db = api.container("db", host="h1")
        event = stream.next_with_content()
        assert [c.name for c in event.containers] == ["db"]
        assert [[n.container for n in d.names] for d in event.name_deltas] == [["db"]]
        assert event.revision == db.revision
        assert not event.deleted_containers
        api.delete("Container", "elsewhere")  # its name leaves: a delta with no entry for it
        event = stream.next_with_content()
        assert [(d.network, list(d.containers), list(d.names)) for d in event.name_deltas] == \
            [("front", ["elsewhere"], [])]


def test_watch_resumes_after_a_revision_without_a_snapshot(front: Api) -> None:
    api = front
    api.host("h2")
    api.container("web", host="h1")
    with watch(api, "h1") as stream:
        last = stream.next().revision
    api.container("elsewhere", host="h2")
    db = api.container("db", host="h1")
    api.delete("Container", "web")
    with watch(api, "h1", since=last) as stream:
        event = stream.next_with_content()
        assert not event.snapshot
        assert event.revision > last
        seen_containers = [c.name for c in event.containers]
        seen_deleted = list(event.deleted_containers)
        # The changes may arrive as one delta or two; both must be there, nothing else.
        while event.revision < api.store.revision():
            event = stream.next_with_content()
            assert not event.snapshot
            seen_containers += [c.name for c in event.containers]
            seen_deleted += list(event.deleted_containers)
        assert seen_containers == ["db"]
        assert seen_deleted == ["web"]
        assert db.revision > last


def test_watch_from_a_compacted_revision_gets_a_snapshot(start_server: StartServer) -> None:
    store = MemoryStore(history=3)
    server = start_server(store, name="small.sock")
    with connect(server, store) as api:
        api.host("h1")
        api.network("front")
        web = api.container("web")
        stale = api.store.revision()
        for i in range(5):  # five single-key writes push the container's changes out
            api.host(f"x{i}")
        with watch(api, "h1", since=stale) as stream:
            event = stream.next()
            assert event.snapshot
            assert event.revision == store.revision()
            assert [(c.name, c.ip) for c in event.containers] == [("web", web.ip)]
            assert [n.network.name for n in event.networks] == ["front"]


def test_watch_from_a_revision_the_store_never_reached_gets_a_snapshot(front: Api) -> None:
    # An agent that outlived its controller's store (a memory store, or a new database file)
    # resumes from a revision of the old history: only a snapshot can tell it the truth.
    api = front
    web = api.container("web")
    future = api.store.revision() + 100
    with watch(api, "h1", since=future) as stream:
        event = stream.next()
        assert event.snapshot
        assert event.revision == api.store.revision()
        assert [(c.name, c.ip) for c in event.containers] == [("web", web.ip)]


def test_watch_sends_progress_notices(store: Store, start_server: StartServer) -> None:
    server = start_server(store, progress_interval=0.2)
    with connect(server, store) as api:
        api.host("h1")
        api.host("h2")
        api.network("front")
        with watch(api, "h1") as stream:
            snapshot = stream.next()
            assert snapshot.snapshot
            notice = stream.next(timeout=3)
            assert is_progress(notice)
            assert notice.revision == snapshot.revision
            # A change that is not h1's moves the revision the notices carry.
            api.container("elsewhere", host="h2")
            target = store.revision()
            deadline = time.monotonic() + 3
            while notice.revision < target:
                notice = stream.next(timeout=max(0.01, deadline - time.monotonic()))
                assert is_progress(notice), notice
            assert notice.revision == target


def test_watch_marks_the_agent_connected(front: Api) -> None:
    api = front
    with watch(api, "h1") as stream:
        stream.next()
        assert api.get_host("h1").agent_connected
    eventually(lambda: not api.get_host("h1").agent_connected)


def test_watch_of_an_unknown_host_is_not_found(api: Api) -> None:
    with watch(api, "ghost") as stream, pytest.raises(grpc.RpcError) as info:
        stream.next()
    assert info.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
    assert details(info.value) == "host 'ghost' not found"
