"""The Docker plugin's IPv6 (issue 18 and 20), against the small fakes of dockerfakes.py: the
calls dockerd 20.10 makes for ``docker network create --ipv6`` and ``docker run`` on a
dual-stack sdnctl network, in its order. Its two RequestAddress calls of one endpoint (IPv4,
then IPv6, no endpoint ID in either) make ONE attachment; a refused call answers ``{"Err"}``
and writes nothing; the addresses go when Docker released both families, and not before."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from dockerfakes import FakeController, make_plugin

from agent.dockerplugin import Plugin
from sdnctl.api.model import ContainerStatus

GATEWAY = {"RequestAddressType": "com.docker.network.gateway"}
V4, V6 = "10.89.0.0/16", "fd00:89::/48"


def call(plugin: Plugin, method: str, request: dict[str, Any]) -> dict[str, Any]:
    status, answer = plugin.call(method, json.dumps(request).encode())
    assert status == 200, answer
    return answer


def refused(plugin: Plugin, method: str, request: dict[str, Any]) -> str:
    status, answer = plugin.call(method, json.dumps(request).encode())
    assert status != 200 and set(answer) == {"Err"}, answer
    return str(answer["Err"])


def create_dual(plugin: Plugin, nid: str, v4: str = V4, v6: str = V6,
                **generic: str) -> tuple[str, str]:
    """``docker network create --ipv6 --subnet V4 --subnet V6``: pools, gateways, the network
    (dockerd's order). Returns the two PoolIDs."""
    pool4 = call(plugin, "IpamDriver.RequestPool", {"Pool": v4, "V6": False})["PoolID"]
    call(plugin, "IpamDriver.RequestAddress", {"PoolID": pool4, "Options": GATEWAY})
    pool6 = call(plugin, "IpamDriver.RequestPool", {"Pool": v6, "V6": True})["PoolID"]
    gateway6 = call(plugin, "IpamDriver.RequestAddress", {"PoolID": pool6, "Options": GATEWAY})
    assert gateway6["Address"] == "fd00:89::1/48"
    call(plugin, "NetworkDriver.CreateNetwork", {
        "NetworkID": nid, "Options": {"com.docker.network.generic": generic},
        "IPv4Data": [{"AddressSpace": "sdnctl", "Pool": v4, "Gateway": "10.89.0.1/16"}],
        "IPv6Data": [{"AddressSpace": "sdnctl", "Pool": v6, "Gateway": "fd00:89::1/48"}]})
    return pool4, pool6


def addresses(plugin: Plugin, pool4: str, pool6: str, ip6: str = "") -> tuple[str, str]:
    a = call(plugin, "IpamDriver.RequestAddress", {"PoolID": pool4, "Options": {}})["Address"]
    b = call(plugin, "IpamDriver.RequestAddress",
             {"PoolID": pool6, "Address": ip6, "Options": {}})["Address"]
    return a, b


def attached(controller: FakeController) -> dict[str, tuple[str, str]]:
    return {name: (c.ip, c.ip6) for name, c in controller.held.items()}


def test_one_endpoint_is_one_attachment_with_both_addresses() -> None:
    plugin, controller = make_plugin()
    pool4, pool6 = create_dual(plugin, "d" * 64)
    assert plugin.networks["d" * 64] == "dual" and controller.writes == []
    a4, a6 = addresses(plugin, pool4, pool6)
    assert (a4, a6) == ("10.89.3.5/24", "fd00:89:0:3::5/64")
    assert [w for w, _ in controller.writes] == ["Attach"]  # one attachment, not two
    (name,) = controller.held
    assert attached(controller) == {name: ("10.89.3.5", "fd00:89:0:3::5")}
    answer = call(plugin, "NetworkDriver.CreateEndpoint", {
        "NetworkID": "d" * 64, "EndpointID": "x" * 64,
        "Interface": {"Address": a4, "AddressIPv6": a6}, "Options": {}})
    assert answer == {"Interface": {"MacAddress": "02:42:0a:59:03:05"}}
    plugin.side.realised.publish(101, [ContainerStatus(name=name, state="running")])
    joined = call(plugin, "NetworkDriver.Join", {"NetworkID": "d" * 64, "EndpointID": "x" * 64,
                                                 "SandboxKey": "/x", "Options": {}})
    assert (joined["Gateway"], joined["GatewayIPv6"]) == ("10.89.3.1", "fd00:89:0:3::1")
    # docker rm: Leave, DeleteEndpoint, then each family's address is released; the
    # attachment goes with the second (before it, its IPv6 address could be handed out again
    # and that release would take another endpoint's).
    call(plugin, "NetworkDriver.Leave", {"NetworkID": "d" * 64, "EndpointID": "x" * 64})
    call(plugin, "NetworkDriver.DeleteEndpoint", {"NetworkID": "d" * 64, "EndpointID": "x" * 64})
    call(plugin, "IpamDriver.ReleaseAddress", {"PoolID": pool4, "Address": "10.89.3.5"})
    assert name in controller.held
    call(plugin, "IpamDriver.ReleaseAddress", {"PoolID": pool6, "Address": "fd00:89:0:3::5"})
    assert controller.held == {} and [w for w, _ in controller.writes][-1] == "Detach"
    # docker network rm: the gateways and pools; nothing else is detached
    before = len(controller.writes)
    call(plugin, "IpamDriver.ReleaseAddress", {"PoolID": pool6, "Address": "fd00:89::1"})
    call(plugin, "IpamDriver.ReleasePool", {"PoolID": pool6})
    call(plugin, "IpamDriver.ReleasePool", {"PoolID": pool4})
    call(plugin, "NetworkDriver.DeleteNetwork", {"NetworkID": "d" * 64})
    assert len(controller.writes) == before and plugin.pools6 == {} and plugin.held == {}



def test_interleaved_endpoints_of_two_docker_networks_pair_with_their_own() -> None:
    """An IPv4-only Docker network on the same sdnctl network asks for an address between a
    dual-stack endpoint's two requests: the IPv6 one still pairs with its own IPv4 one."""
    plugin, controller = make_plugin()
    only4 = call(plugin, "IpamDriver.RequestPool", {"Pool": V4})["PoolID"]
    pool4, pool6 = create_dual(plugin, "d" * 64)
    assert only4 != pool4
    a4 = call(plugin, "IpamDriver.RequestAddress", {"PoolID": pool4})["Address"]
    other = call(plugin, "IpamDriver.RequestAddress", {"PoolID": only4})["Address"]
    a6 = call(plugin, "IpamDriver.RequestAddress", {"PoolID": pool6})["Address"]
    assert (a4, other, a6) == ("10.89.3.5/24", "10.89.3.6/24", "fd00:89:0:3::5/64")
    assert len(controller.held) == 2
    # the IPv4-only endpoint's release frees it at once; the other stays whole
    call(plugin, "IpamDriver.ReleaseAddress", {"PoolID": only4, "Address": "10.89.3.6"})
    assert list(attached(controller).values()) == [("10.89.3.5", "fd00:89:0:3::5")]
    # CreateEndpoint checks the pairing: another reservation's IPv6 address is refused
    b4, _ = addresses(plugin, pool4, pool6)
    writes = len(controller.writes)
    err = refused(plugin, "NetworkDriver.CreateEndpoint", {
        "NetworkID": "d" * 64, "EndpointID": "y" * 64,
        "Interface": {"Address": b4, "AddressIPv6": a6}})
    assert "Interface.AddressIPv6" in err and len(controller.writes) == writes
    assert "y" * 64 not in plugin.endpoints


def test_fixed_ip6_moves_only_the_ipv6_address() -> None:
    plugin, controller = make_plugin()
    pool4, pool6 = create_dual(plugin, "d" * 64)
    a4, a6 = addresses(plugin, pool4, pool6, ip6="fd00:89:0:3::77")
    assert (a4, a6) == ("10.89.3.5/24", "fd00:89:0:3::77/64")
    assert [(w, r.container.fixed_ip6) for w, r in controller.writes] == [
        ("Attach", ""), ("Attach", "fd00:89:0:3::77")]
    assert list(attached(controller).values()) == [("10.89.3.5", "fd00:89:0:3::77")]
    call(plugin, "NetworkDriver.CreateEndpoint", {
        "NetworkID": "d" * 64, "EndpointID": "x" * 64,
        "Interface": {"Address": a4, "AddressIPv6": a6}})
    assert plugin.endpoints6["x" * 64] == "fd00:89:0:3::77"


def test_a_refused_ipv6_address_rolls_the_endpoint_back() -> None:
    """--ip6 outside this host's lease: the controller refuses, dockerd releases the IPv4
    address it had, and the attachment goes."""
    plugin, controller = make_plugin()
    pool4, pool6 = create_dual(plugin, "d" * 64)
    a4 = call(plugin, "IpamDriver.RequestAddress", {"PoolID": pool4})["Address"]
    err = refused(plugin, "IpamDriver.RequestAddress",
                  {"PoolID": pool6, "Address": "fd00:89:0:9::7"})
    assert "fixed_ip6" in err and "fd00:89:0:9::7" in err
    assert list(attached(controller).values()) == [("10.89.3.5", "fd00:89:0:3::5")]
    call(plugin, "IpamDriver.ReleaseAddress", {"PoolID": pool4, "Address": a4.split("/")[0]})
    assert controller.held == {} and plugin.held == {}
    # an IPv6 request that pairs with nothing (no IPv4 address awaits it) is refused
    err = refused(plugin, "IpamDriver.RequestAddress", {"PoolID": pool6})
    assert "awaits" in err and controller.held == {}


@pytest.mark.parametrize(("pools", "words"), [
    ([{"Pool": V4}, {"Pool": "fd00:99::/48", "V6": True}], ["subnet6 fd00:99::/48"]),
    ([{"Pool": V4}, {"Pool": "fd00:93::/48", "V6": True}], ["only6", "IPv6-only"]),
    ([{"Pool": "10.88.0.0/16"}, {"Pool": V6, "V6": True}], ["'dual'", V4, "not 10.88.0.0/16"]),
    ([{"Pool": V6, "V6": True}], ["no IPv4 pool"]),
    ([{"Pool": V4}, {"Pool": "", "V6": True}], ["--subnet", "subnet6"]),
    ([{"Pool": "", "V6": False}], ["--subnet", "IPv6-only"]),
    ([{"Pool": V4}, {"Pool": "10.89.0.0/16", "V6": True}], ["Pool", "not an IPv6 CIDR"]),
    ([{"Pool": V4}, {"Pool": V6, "V6": "yes"}], ["V6"]),
])
def test_ipv6_pools_that_are_no_networks_subnet6_are_refused(pools: list[dict[str, Any]],
                                                            words: list[str]) -> None:
    plugin, controller = make_plugin()
    for pool in pools[:-1]:
        call(plugin, "IpamDriver.RequestPool", pool)
    err = refused(plugin, "IpamDriver.RequestPool", pools[-1])
    assert all(w in err for w in words), err
    assert controller.writes == [] and plugin.pools6 == {}


@pytest.mark.parametrize(("generic", "v6", "words"), [
    ({"sdnctl.network": "front"}, V6, ["front", "subnet6 none"]),
    ({"sdnctl.network": "nosuch"}, V6, ["nosuch", "does not exist"]),
    ({}, "fd00:99::/48", ["IPv6Data.Pool", "fd00:99::/48"]),
])
def test_create_network_refuses_an_ipv6_pool_that_is_not_the_networks(
        generic: dict[str, str], v6: str, words: list[str]) -> None:
    plugin, controller = make_plugin()
    err = refused(plugin, "NetworkDriver.CreateNetwork", {
        "NetworkID": "d" * 64, "Options": {"com.docker.network.generic": generic},
        "IPv4Data": [{"Pool": V4 if "front" not in generic.values() else "10.88.0.0/16"}],
        "IPv6Data": [{"Pool": v6}]})
    assert all(w in err for w in words), err
    assert controller.writes == [] and "d" * 64 not in plugin.networks


def test_an_agent_restarted_between_the_releases_still_frees_the_endpoint_once(
        tmp_path: Path) -> None:
    state = str(tmp_path / "docker.json")
    plugin, controller = make_plugin(state)
    pool4, pool6 = create_dual(plugin, "d" * 64)
    a4, a6 = addresses(plugin, pool4, pool6)
    call(plugin, "NetworkDriver.CreateEndpoint", {
        "NetworkID": "d" * 64, "EndpointID": "x" * 64,
        "Interface": {"Address": a4, "AddressIPv6": a6}})
    again = Plugin(plugin.side, state)  # the same controller, a new agent
    assert again.endpoints6 == {"x" * 64: "fd00:89:0:3::5"} and again.pools6 == plugin.pools6
    call(again, "IpamDriver.ReleaseAddress", {"PoolID": pool6, "Address": "fd00:89:0:3::5"})
    assert len(controller.held) == 1
    call(again, "IpamDriver.ReleaseAddress", {"PoolID": pool4, "Address": "10.89.3.5"})
    assert controller.held == {}
