"""Dual-stack (issue 20), the pure and API side: IPv6 subnets and addresses validated with the
field named, the topology file's errors with file and line, overlaps per family, IPv6 IPAM
that never enumerates a /64, and the address in each family reaching the API's JSON."""

from __future__ import annotations

import time
from typing import Any

import grpc
import pytest
from apitest import TIMEOUT, Api, connect, details, rpc_error, unchanged

from sdnctl.api.model import Container, Invalid, Network
from sdnctl.api.validate import validate_container, validate_network
from sdnctl.cli.output import container_json
from sdnctl.controller import ipam
from sdnctl.controller.server import RunningServer
from sdnctl.controller.store.memory import MemoryStore
from sdnctl.topology.topology import TopologyError, parse
from sdnctl.v1 import sdnctl_pb2 as pb


def net(**fields: Any) -> Network:
    return Network(**{"name": "front", "subnet": "10.88.0.0/16", **fields})


@pytest.mark.parametrize(
    ("subnet6", "needle"),
    [
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("fe80::/64", "link-local"),
        ("fe90::/16", "link-local"),  # a pool inside fe80::/10
        ("ff02::/16", "multicast"),
        ("::ffff:0:0/96", "IPv4-mapped"),
        ("fd00:88::1/64", "host bits"),
        ("fd00:88::/300", "not an IPv6 CIDR"),
        ("10.99.0.0/16", "not an IPv6 CIDR"),
        ("fd00::/8", "too large"),
        ("fd00:88::/127", "no room"),
    ],
)
def test_bad_ipv6_subnets_name_the_field(subnet6: str, needle: str) -> None:
    with pytest.raises(Invalid) as info:
        validate_network(net(subnet6=subnet6), "networks[0]")
    assert info.value.field == "networks[0].subnet6", info.value
    assert needle in info.value.message


def test_ipv6_host_prefix_is_checked_and_a_good_network_passes() -> None:
    with pytest.raises(Invalid) as info:
        validate_network(net(subnet6="fd00:88::/48", host_prefix6=127), "network")
    assert info.value.field == "network.host_prefix6"
    assert validate_network(net(subnet6="fd00:88::/48")).subnet6 == "fd00:88::/48"


def test_fixed_ip6_must_be_ipv6_and_bridged() -> None:
    with pytest.raises(Invalid) as info:
        validate_container(Container("a", "h1", "front", fixed_ip6="10.88.0.9"), "c")
    assert info.value.field == "c.fixed_ip6"
    with pytest.raises(Invalid) as info:
        validate_container(Container("a", "h1", "none", fixed_ip6="fd00:88::9"), "c")
    assert info.value.field == "c.fixed_ip6"


HEAD = "name: t\nhosts:\n  - {name: h1, lab: true}\nnetworks:\n"  # lines 1-4


def test_topology_errors_name_file_line_and_field() -> None:
    text = (HEAD + "  - {name: a, subnet: 10.88.0.0/16, subnet6: 'fd00:88::/48'}\n"
            "  - {name: b, subnet: 10.89.0.0/16, subnet6: 'fd00:88:0:1::/64'}\n")
    with pytest.raises(TopologyError) as info:
        parse(text, "x.yaml")
    assert str(info.value).startswith("x.yaml:6: networks[1].subnet6: fd00:88:0:1::/64 overlaps "
                                      "fd00:88::/48"), info.value
    text = (HEAD + "  - {name: a, subnet: 10.88.0.0/16, subnet6: 'fe80::/64'}\n")
    with pytest.raises(TopologyError) as info:
        parse(text, "x.yaml")
    assert str(info.value).startswith("x.yaml:5: networks[0].subnet6:"), info.value
    text = (HEAD + "  - {name: a, subnet: 10.88.0.0/16, subnet6: 'fd00:88::/48'}\n"
            "containers:\n  - {name: c, host: h1, network: a, ip6: 'nope'}\n")
    with pytest.raises(TopologyError) as info:
        parse(text, "x.yaml")
    assert str(info.value).startswith("x.yaml:7: containers[0].ip6:"), info.value


def test_topology_reads_subnet6_and_ip6() -> None:
    topo = parse(HEAD + "  - {name: a, subnet: 10.88.0.0/16, subnet6: 'fd00:88::/48',"
                 " host_prefix6: 80}\ncontainers:\n"
                 "  - {name: c, host: h1, network: a, ip6: 'fd00:88::9'}\n", "x.yaml")
    assert (topo.networks[0].subnet6, topo.networks[0].host_prefix6) == ("fd00:88::/48", 80)
    assert topo.containers[0].fixed_ip6 == "fd00:88::9"
