"""Validation of networks and containers: pure, and every error names its exact field."""

from __future__ import annotations

import pytest

from sdnctl.api.model import Container, Host, Invalid, Network, default_host_prefix
from sdnctl.api.validate import (
    validate_container,
    validate_host,
    validate_network,
)

ONE_LEASE = {"subnet": "10.88.0.0/24", "host_prefix": 24}


def network(**fields: object) -> Network:
    return Network(**{"name": "front", "subnet": "10.88.0.0/16", **fields})  # type: ignore[arg-type]


def container(**fields: object) -> Container:
    return Container(**{"name": "web", "host": "h1", "network": "front", **fields})  # type: ignore[arg-type]


def invalid(call: object, *args: object, **kwargs: object) -> Invalid:
    with pytest.raises(Invalid) as caught:
        call(*args, **kwargs)  # type: ignore[operator]
    return caught.value


# -- networks -------------------------------------------------------------------------------------


def test_a_docker_style_network_is_valid() -> None:
    net = network(**ONE_LEASE, gateway="10.88.0.254", ip_range="10.88.0.128/25",
                  internal=True, allow=("back", "db"))
    assert validate_network(net) is net


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        pytest.param({"gateway": "10.88.1.1"}, "network.gateway", "is not inside 10.88.0.0/24",
                     id="gateway-outside"),
        pytest.param({"gateway": "10.88.0.0"}, "network.gateway", "network or broadcast",
                     id="gateway-network-address"),
        pytest.param({"gateway": "10.88.0.255"}, "network.gateway", "network or broadcast",
                     id="gateway-broadcast"),
        pytest.param({"gateway": "10.88.0"}, "network.gateway", "not an IPv4 address",
                     id="gateway-malformed"),
        pytest.param({"ip_range": "10.88.0.129/25"}, "network.ip_range", "host bits set",
                     id="ip-range-host-bits"),
        pytest.param({"ip_range": "10.89.0.0/25"}, "network.ip_range", "is not inside",
                     id="ip-range-outside"),
        pytest.param({"ip_range": "10.88.0.0/23"}, "network.ip_range", "is not inside",
                     id="ip-range-bigger"),
        pytest.param({"ip_range": "fd00::/64"}, "network.ip_range", "only IPv4",
                     id="ip-range-v6"),
        pytest.param({"allow": ("back", "Back")}, "network.allow[1]", "not a valid name",
                     id="allow-name"),
        pytest.param({"allow": ("front",)}, "network.allow[0]", "reaches itself",
                     id="allow-itself"),
        pytest.param({"allow": ("back", "back")}, "network.allow[1]", "listed twice",
                     id="allow-twice"),
    ],
)
def test_invalid_network_fields(fields: dict[str, object], field: str, words: str) -> None:
    error = invalid(validate_network, network(**{**ONE_LEASE, **fields}))
    assert error.field == field
    assert words in error.message


@pytest.mark.parametrize("field", ["gateway", "ip_range"])
def test_gateway_or_ip_range_needs_one_lease(field: str) -> None:
    value = {"gateway": "10.88.0.1", "ip_range": "10.88.0.0/24"}[field]
    error = invalid(validate_network, network(host_prefix=24, **{field: value}), "networks[3]")
    assert error.field == f"networks[3].{field}"
    assert "set host_prefix to the subnet's prefix (16)" in error.message


@pytest.mark.parametrize("name", ["none", "host"])
def test_mode_names_are_not_network_names(name: str) -> None:
    assert invalid(validate_network, network(name=name)).field == "network.name"


def test_default_host_prefix() -> None:
    assert default_host_prefix("10.88.0.0/16") == 24
    assert default_host_prefix("10.88.0.0/16", gateway="10.88.0.1") == 16
    assert default_host_prefix("10.88.0.0/20", ip_range="10.88.1.0/24") == 20
    assert default_host_prefix("junk", gateway="10.88.0.1") == 24  # validation says why


# -- containers -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        {"network": "none"},
        {"network": "host", "restart": "always"},
        {"network": "container:db", "share": ("uts", "ipc")},
        {"fixed_ip": "10.88.0.5", "ports": ("8080:80", "127.0.0.1:5353:53/udp", "5353:53/tcp")},
        {"ports": ("127.0.0.1:8080:80", "127.0.0.2:8080:80", "8080:80/udp")},
        {"restart": "on-failure"},
    ],
)
def test_valid_containers(fields: dict[str, object]) -> None:
    c = container(**fields)
    assert validate_container(c) is c


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        pytest.param({"network": "container:"}, "container.network", "container:<name",
                     id="join-nobody"),
        pytest.param({"network": "container:Db"}, "container.network", "not a valid name",
                     id="join-bad-name"),
        pytest.param({"network": "container:web"}, "container.network", "its own",
                     id="join-itself"),
        pytest.param({"network": ""}, "container.network", "required", id="no-network"),
        pytest.param({"network": "bridge:x"}, "container.network", "not a valid name",
                     id="unknown-mode"),
        pytest.param({"network": "none", "fixed_ip": "10.88.0.5"}, "container.fixed_ip",
                     "only for bridged containers", id="fixed-ip-not-bridged"),
        pytest.param({"fixed_ip": "10.88.0.300"}, "container.fixed_ip", "not an IPv4",
                     id="fixed-ip-malformed"),
        pytest.param({"network": "host", "ports": ("80:80",)}, "container.ports",
                     "only for bridged containers", id="ports-not-bridged"),
        pytest.param({"ports": ("80:80", "80")}, "container.ports[1]", "HOST_PORT",
                     id="port-malformed"),
        pytest.param({"ports": ("80:80", "81:80", "70000:80")}, "container.ports[2]",
                     "is not a port", id="port-range"),
        pytest.param({"ports": ("80:80/sctp",)}, "container.ports[0]", "unknown protocol",
                     id="port-protocol"),
        pytest.param({"ports": ("8080:80", "8080:81")}, "container.ports[1]",
                     "host port 8080/tcp is already published by ports[0]", id="port-twice"),
        pytest.param({"ports": ("127.0.0.1:8080:80", "8080:81")}, "container.ports[1]",
                     "already published by ports[0]", id="port-overlaps-every-address"),
        pytest.param({"share": ("uts",)}, "container.share",
                     "only for joined (container:) containers", id="share-not-joined"),
        pytest.param({"network": "container:db", "share": ("uts", "pid")},
                     "container.share[1]", "cannot share 'pid'", id="share-unknown"),
        pytest.param({"network": "container:db", "share": ("ipc", "ipc")},
                     "container.share[1]", "listed twice", id="share-twice"),
        pytest.param({"restart": "unless-stopped"}, "container.restart",
                     "unknown restart policy", id="restart"),
    ],
)
def test_invalid_container_fields(fields: dict[str, object], field: str, words: str) -> None:
    error = invalid(validate_container, container(**fields))
    assert error.field == field, error
    assert words in error.message, error


def test_container_errors_carry_the_where_prefix() -> None:
    error = invalid(validate_container, container(ports=("80:80", "x:80")), "containers[4]")
    assert error.field == "containers[4].ports[1]"
    error = invalid(validate_container, container(network="container:web"), "containers[4]")
    assert error.field == "containers[4].network"


@pytest.mark.parametrize("docker_host", ["tcp://10.0.0.1:2375", "unix://relative.sock",
                                         "unix:///a\0b", "unix:///" + "a" * 5000])
def test_a_reported_docker_host_is_a_unix_socket(docker_host: str) -> None:
    with pytest.raises(Invalid) as info:
        validate_host(Host("h1", docker_host=docker_host))
    assert info.value.field == "host.docker_host"


def test_a_docker_host_is_reported() -> None:
    assert validate_host(Host("h1", docker_host="unix:///run/docker.sock")).docker_host
