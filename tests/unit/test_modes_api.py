"""Network modes, Docker-style networks, updates and the default bridge, through the gRPC API.

As in test_api.py: a real server on a unix socket, both stores, and every failing call must name
its field and leave the store exactly as it was.
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from apitest import (
    TIMEOUT,
    Api,
    StartServer,
    connect,
    details,
    keyspace,
    rpc_error,
    unchanged,
    watch,
)

from sdnctl.api.model import Invalid
from sdnctl.controller import ipam
from sdnctl.controller.store.base import Store
from sdnctl.v1 import sdnctl_pb2 as pb

INVALID = grpc.StatusCode.INVALID_ARGUMENT
FAILED = grpc.StatusCode.FAILED_PRECONDITION


def create_network(api: Api, **fields: Any) -> pb.Network:
    return api.ctl.CreateNetwork(pb.CreateNetworkRequest(network=pb.Network(**fields)),
                                 timeout=TIMEOUT)


def create_container(api: Api, **fields: Any) -> pb.Container:
    return api.ctl.CreateContainer(pb.CreateContainerRequest(container=pb.Container(**fields)),
                                   timeout=TIMEOUT)


def spec_of(got: pb.Container) -> pb.Container:
    """The spec part of a container as the API returned it, ready to send back changed."""
    return pb.Container(name=got.name, host=got.host, network=got.network,
                        command=list(got.command), interface=got.interface,
                        fixed_ip=got.fixed_ip, ports=list(got.ports), share=list(got.share),
                        restart=got.restart)


def copy_of(msg: pb.Network) -> pb.Network:
    copy = pb.Network()
    copy.CopyFrom(msg)
    return copy


def allocations(api: Api, network: str) -> dict[str, str]:
    return {a.container: a.address for a in ipam.list_allocations(api.store, network)}


# -- validation through the API ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "prefix"),
    [
        ({"subnet": "10.77.0.0/24", "gateway": "10.77.1.1"}, "network.gateway: "),
        ({"subnet": "10.77.0.0/24", "gateway": "10.77.0.255"}, "network.gateway: "),
        ({"subnet": "10.77.0.0/24", "ip_range": "10.77.0.1/30"}, "network.ip_range: "),
        ({"subnet": "10.77.0.0/16", "host_prefix": 24, "gateway": "10.77.0.1"},
         "network.gateway: a gateway needs the network to be one lease"),
        ({"subnet": "10.77.0.0/16", "allow": ["ok", "Bad"]}, "network.allow[1]: "),
        ({"subnet": "10.77.0.0/16", "allow": ["dock"]}, "network.allow[0]: "),
        ({"name": "none", "subnet": "10.77.0.0/16"}, "network.name: "),
    ],
)
def test_invalid_network_fields_name_the_field(front: Api, fields: dict[str, Any],
                                               prefix: str) -> None:
    with unchanged(front.store):
        e = rpc_error(lambda: create_network(front, **{"name": "dock", **fields}), INVALID)
    assert details(e).startswith(prefix), details(e)


@pytest.mark.parametrize(
    ("fields", "prefix"),
    [
        ({"network": "none", "fixed_ip": "10.88.0.9"}, "container.fixed_ip: only for bridged"),
        ({"ports": ["8080:80", "8080:80/tcp"]}, "container.ports[1]: host port 8080/tcp"),
        ({"ports": ["80:80", "1.2.3:80:80"]}, "container.ports[1]: "),
        ({"network": "host", "ports": ["80:80"]}, "container.ports: only for bridged"),
        ({"share": ["uts"]}, "container.share: only for joined"),
        ({"network": "container:db", "share": ["net"]}, "container.share[0]: "),
        ({"network": "container:web"}, "container.network: a container cannot join its own"),
        ({"restart": "sometimes"}, "container.restart: "),
        ({"fixed_ip": "10.88.0.1"}, "container.fixed_ip: 10.88.0.1 is the gateway"),
        ({"fixed_ip": "10.88.7.1"}, "container.fixed_ip: 10.88.7.1 is outside 10.88.0.0/24"),
    ],
)
def test_invalid_container_fields_name_the_field(front: Api, fields: dict[str, Any],
                                                 prefix: str) -> None:
    with unchanged(front.store):
        e = rpc_error(lambda: front.container("web", **fields), INVALID)
    assert details(e).startswith(prefix), details(e)


# -- Docker-style bridge networks --------------------------------------------------------------


def test_gateway_and_ip_range_make_one_lease(front: Api) -> None:
    api = front
    net = create_network(api, name="dock", subnet="10.77.0.0/24", gateway="10.77.0.254",
                         ip_range="10.77.0.16/30")
    assert (net.host_prefix, net.gateway, net.ip_range) == (24, "10.77.0.254", "10.77.0.16/30")
    ips = [api.container(f"c{i}", network="dock").ip for i in range(4)]
    assert ips == ["10.77.0.16", "10.77.0.17", "10.77.0.18", "10.77.0.19"]
    assert api.get_container("c0").gateway == "10.77.0.254"
    lease = [le for le in api.get_host("h1").leases if le.network == "dock"]
    assert [(le.subnet, le.gateway) for le in lease] == [("10.77.0.0/24", "10.77.0.254")]

    with unchanged(api.store):
        e = rpc_error(lambda: api.container("c4", network="dock"),
                      grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert details(e) == ("ip_range 10.77.0.16/30 of network 'dock' on host 'h1' "
                          "has no free address")
    # A fixed address outside the range but inside the subnet is still allowed, as in Docker.
    assert api.container("c4", network="dock", fixed_ip="10.77.0.100").ip == "10.77.0.100"


def test_fixed_ip_is_exact_and_exclusive(front: Api) -> None:
    api = front
    web = api.container("web", fixed_ip="10.88.0.77")
    assert (web.ip, web.fixed_ip, web.prefixlen) == ("10.88.0.77", "10.88.0.77", 24)
    with unchanged(api.store):
        e = rpc_error(lambda: api.container("db", fixed_ip="10.88.0.77"),
                      grpc.StatusCode.ALREADY_EXISTS)
    assert details(e) == "container.fixed_ip: 10.88.0.77 is taken by container 'web'"
    assert api.container("db").ip == "10.88.0.2"


# -- modes -------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["none", "host", "container:donor"])
def test_only_bridged_containers_get_an_address(front: Api, mode: str) -> None:
    api = front
    api.container("donor", network="none")
    got = api.container("web", network=mode, restart="always")
    assert (got.network, got.ip, got.prefixlen, got.gateway, got.restart) == \
        (mode, "", 0, "", "always")
    assert api.get_container("web").ip == ""
    assert api.get_host("h1").leases == []  # nothing bridged: no lease either
    assert ipam.list_allocations(api.store, "front") == []
    api.delete("Container", "web")


def test_joined_container_in_the_watch_with_its_donor(front: Api) -> None:
    api = front
    donor = api.container("donor", ports=["8080:80", "127.0.0.1:5353:53/udp"])
    api.container("side", network="container:donor", share=["uts", "ipc"])
    with watch(api, "h1") as stream:
        event = stream.next()
    by_name = {c.name: c for c in event.containers}
    assert set(by_name) == {"donor", "side"}
    assert (by_name["side"].network, list(by_name["side"].share), by_name["side"].ip) == \
        ("container:donor", ["uts", "ipc"], "")
    assert list(by_name["donor"].ports) == ["8080:80", "127.0.0.1:5353:53/udp"]
    assert by_name["donor"].ip == donor.ip


def test_joined_donor_rules(front: Api) -> None:
    api = front
    api.host("h2")
    api.container("donor")
    api.container("far", host="h2")
    api.container("side", network="container:donor")
    with unchanged(api.store):
        e = rpc_error(lambda: api.container("x", network="container:ghost"),
                      grpc.StatusCode.NOT_FOUND)
        assert details(e) == "container.network 'ghost' not found"
        e = rpc_error(lambda: api.container("x", network="container:far"), FAILED)
        assert details(e).startswith("container.network: 'far' runs on host 'h2', not 'h1'")
        e = rpc_error(lambda: api.container("x", network="container:side"), FAILED)
        assert details(e).startswith("container.network: 'side' itself joins 'donor'")
        e = rpc_error(lambda: api.delete("Container", "donor"), FAILED)
        assert details(e) == "container 'donor' still has containers joined to it: side"
    api.delete("Container", "side")
    api.delete("Container", "donor")


def test_published_host_ports_are_exclusive_per_host(front: Api) -> None:
    api = front
    api.host("h2")
    api.container("web", ports=["8080:80"])
    with unchanged(api.store):
        e = rpc_error(lambda: api.container("db", ports=["9000:90", "127.0.0.1:8080:80"]),
                      grpc.StatusCode.ALREADY_EXISTS)
    assert details(e) == ("container.ports[1]: host port 8080/tcp of host 'h1' is already "
                          "published by container 'web'")
    api.container("db", ports=["8080:80/udp"])
    api.container("far", host="h2", ports=["8080:80"])


# -- UpdateNetwork -----------------------------------------------------------------------------


def test_update_network_changes_allow_internal_and_masquerade(front: Api) -> None:
    api = front
    back = api.network("back", "10.89.0.0/16")
    msg = api.get_network("front")
    msg.allow.append("back")
    msg.internal = True
    msg.masquerade = False
    updated = api.update_network(msg)
    assert (list(updated.allow), updated.internal, updated.masquerade) == (["back"], True, False)
    assert updated.revision == api.store.revision() > back.revision
    got = api.get_network("front")
    assert (list(got.allow), got.internal, got.masquerade, got.revision) == \
        (["back"], True, False, updated.revision)
    revision = api.store.revision()
    assert api.update_network(got).revision == revision  # the same again writes nothing
    assert api.store.revision() == revision


def test_update_network_refuses_immutable_fields_and_unknown_allow(front: Api) -> None:
    api = front
    msg = api.get_network("front")
    with unchanged(api.store):
        changed = copy_of(msg)
        changed.mtu = 9000
        e = rpc_error(lambda: api.update_network(changed), INVALID)
        assert details(e).startswith("network.mtu: cannot change from 1500 to 9000"), details(e)
        changed = copy_of(msg)
        changed.allow.append("ghost")
        e = rpc_error(lambda: api.update_network(changed), grpc.StatusCode.NOT_FOUND)
        assert details(e) == "network.allow[0] 'ghost' not found"
        e = rpc_error(lambda: api.update_network(pb.Network(name="nope", subnet="10.0.0.0/8")),
                      grpc.StatusCode.NOT_FOUND)
        assert details(e) == "network 'nope' not found"


def test_watch_delivers_a_network_update_to_hosts_with_a_lease(front: Api) -> None:
    api = front
    api.host("h2")
    api.network("back", "10.89.0.0/16")
    api.container("web", network="front")
    api.container("db", network="back")
    api.container("far", host="h2", network="back")
    with watch(api, "h1") as h1, watch(api, "h2") as h2:
        assert {n.network.name for n in h1.next().networks} == {"front", "back"}
        assert {n.network.name for n in h2.next().networks} == {"back"}
        msg = api.get_network("front")
        msg.allow.append("back")
        msg.internal = True
        api.update_network(msg)
        event = h1.next_with_content()
        assert [(n.network.name, list(n.network.allow), n.network.internal, n.lease.host)
                for n in event.networks] == [("front", ["back"], True, "h1")]
        # h2 has no lease of front: its next news is its own container.
        api.container("far2", host="h2", network="back")
        assert [c.name for c in h2.next_with_content().containers] == ["far2"]


def test_deleting_a_network_removes_it_from_allow_lists(front: Api) -> None:
    api = front
    api.network("back", "10.89.0.0/16", allow=["front"])
    msg = api.get_network("front")
    msg.allow.append("back")
    api.update_network(msg)
    api.delete("Network", "back")
    assert list(api.get_network("front").allow) == []


# -- UpdateContainer ---------------------------------------------------------------------------


def test_update_container_bridge_to_none_and_back(front: Api) -> None:
    api = front
    web = api.container("web")
    assert web.ip == "10.88.0.2"
    closed = spec_of(web)
    closed.network = "none"
    got = api.update_container(closed)
    assert (got.network, got.ip, got.revision) == ("none", "", api.store.revision())
    assert allocations(api, "front") == {}
    assert api.container("db").ip == "10.88.0.3"  # .2 is free, but quarantined for a while

    bridged = spec_of(got)
    bridged.network = "front"
    bridged.fixed_ip = "10.88.0.40"
    bridged.ports.append("8080:80")
    got = api.update_container(bridged)
    assert (got.network, got.ip, list(got.ports)) == ("front", "10.88.0.40", ["8080:80"])
    assert allocations(api, "front") == {"db": "10.88.0.3", "web": "10.88.0.40"}


def test_update_container_moves_between_bridges_and_addresses(front: Api) -> None:
    api = front
    api.network("back", "10.89.0.0/16")
    web = api.container("web")
    moved = spec_of(web)
    moved.network = "back"
    got = api.update_container(moved)
    assert (got.ip, got.gateway) == ("10.89.0.2", "10.89.0.1")
    assert allocations(api, "front") == {}
    again = spec_of(got)
    again.fixed_ip = "10.89.0.9"
    assert api.update_container(again).ip == "10.89.0.9"
    assert allocations(api, "back") == {"web": "10.89.0.9"}
    # Dropping the fixed address keeps the one it has: nothing to move.
    again.fixed_ip = ""
    assert api.update_container(again).ip == "10.89.0.9"
    revision = api.store.revision()
    assert api.update_container(again).revision == revision  # unchanged: nothing written
    assert api.store.revision() == revision


def test_failed_update_container_leaves_the_store_unchanged(front: Api) -> None:
    api = front
    api.host("h2")
    api.container("db", fixed_ip="10.88.0.50")
    web = api.container("web")
    api.container("side", network="container:web")
    cases: list[tuple[dict[str, Any], grpc.StatusCode, str]] = [
        ({"fixed_ip": "10.88.0.50"}, grpc.StatusCode.ALREADY_EXISTS,
         "container.fixed_ip: 10.88.0.50 is taken by container 'db'"),
        ({"host": "h2"}, INVALID, "container.host: a container cannot move from host 'h1'"),
        ({"network": "container:db"}, FAILED, "container.network: side join 'web'"),
        ({"network": "ghost"}, grpc.StatusCode.NOT_FOUND, "container.network 'ghost' not found"),
        ({"ports": ["80:80", "80:81"]}, INVALID, "container.ports[1]: "),
        ({"name": "nope"}, grpc.StatusCode.NOT_FOUND, "container 'nope' not found"),
    ]
    for fields, code, prefix in cases:
        msg = spec_of(web)
        for key, value in fields.items():
            if isinstance(value, list):
                msg.ClearField(key)  # type: ignore[arg-type]
                getattr(msg, key).extend(value)
            else:
                setattr(msg, key, value)
        with unchanged(api.store):
            e = rpc_error(lambda msg=msg: api.update_container(msg), code)
        assert details(e).startswith(prefix), (fields, details(e))
    assert api.get_container("web").ip == web.ip


def test_watch_delivers_an_updated_container(front: Api) -> None:
    api = front
    web = api.container("web")
    with watch(api, "h1") as stream:
        stream.next()
        closed = spec_of(web)
        closed.network = "none"
        closed.restart = "on-failure"
        api.update_container(closed)
        event = stream.next_with_content()
        assert [(c.name, c.network, c.ip, c.restart) for c in event.containers] == \
            [("web", "none", "", "on-failure")]


# -- the default bridge ------------------------------------------------------------------------


def test_default_bridge_is_made_once_and_cannot_be_deleted(store: Store,
                                                           start_server: StartServer) -> None:
    server = start_server(store, default_bridge="172.17.0.0/16")
    with connect(server, store) as api:
        bridge = api.get_network("bridge")
        assert (bridge.subnet, bridge.host_prefix, bridge.driver, bridge.builtin,
                bridge.masquerade) == ("172.17.0.0/16", 24, "bridge", True, True)
        msg = copy_of(bridge)
        msg.internal = True
        api.update_network(msg)
        with unchanged(store):
            e = rpc_error(lambda: api.delete("Network", "bridge"), FAILED)
        assert details(e) == "the default bridge network cannot be deleted"
    before = keyspace(store)
    server.stop(grace=0)
    again = start_server(store, name="again.sock", default_bridge="172.17.0.0/16")
    assert keyspace(store) == before  # a restart changes nothing, keeps what was updated
    with connect(again, store) as api:
        assert api.get_network("bridge").internal


def test_default_bridge_moves_to_a_new_subnet_only_when_unused(
        store: Store, start_server: StartServer) -> None:
    first = start_server(store, name="1.sock", default_bridge="172.17.0.0/16")
    with connect(first, store) as api:
        api.host("h1")
        api.container("web", network="")
    first.stop(grace=0)
    second = start_server(store, name="2.sock", default_bridge="172.30.0.0/16")
    with connect(second, store) as api:
        assert api.get_network("bridge").subnet == "172.17.0.0/16"  # web still uses it
        api.delete("Container", "web")
    second.stop(grace=0)
    third = start_server(store, name="3.sock", default_bridge="172.30.0.0/16")
    with connect(third, store) as api:
        assert api.get_network("bridge").subnet == "172.30.0.0/16"
        assert api.get_host("h1").leases == []
        assert api.container("web", network="").ip == "172.30.0.2"


def test_empty_network_means_the_default_bridge(store: Store,
                                                start_server: StartServer) -> None:
    server = start_server(store, default_bridge="172.17.0.0/16")
    with connect(server, store) as api:
        api.host("h1")
        web = api.container("web", network="")
        assert (web.network, web.ip, web.gateway) == ("bridge", "172.17.0.2", "172.17.0.1")
        client_made = create_network(api, name="mine", subnet="10.5.0.0/16", builtin=True)
        assert not client_made.builtin  # output only


def test_without_a_default_bridge_a_network_is_required(front: Api) -> None:
    with unchanged(front.store):
        e = rpc_error(lambda: front.container("web", network=""), INVALID)
    assert details(e).startswith("container.network: required: this controller has no "
                                 "default bridge")


def test_a_bad_default_bridge_is_refused(store: Store, start_server: StartServer) -> None:
    with pytest.raises(Invalid) as caught:
        start_server(store, default_bridge="172.17.0.1/16")
    assert caught.value.field == "default_bridge.subnet"
    assert store.revision() == 0


def test_update_network_keeps_an_allow_entry_made_before_its_network(front: Api) -> None:
    api = front
    api.network("back", "10.89.0.0/16", allow=["later"])  # may name a network made later
    msg = api.get_network("back")
    msg.internal = True
    assert api.update_network(msg).internal
    msg.allow.append("ghost")
    with unchanged(api.store):
        e = rpc_error(lambda: api.update_network(msg), grpc.StatusCode.NOT_FOUND)
    assert details(e) == "network.allow[1] 'ghost' not found"
