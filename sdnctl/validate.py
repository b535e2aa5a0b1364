"""Validation of model objects, shared by the controller (API input) and the topology loader.

Each function takes the object and ``where``, the path of the object in its document
(``network`` for an API request, ``networks[2]`` for a topology file), and raises
:class:`sdnctl.model.Invalid` naming the exact field.
"""

from __future__ import annotations

import netaddr

from sdnctl.controller.ipam import host_prefix_for, validate_cidr
from sdnctl.model import DRIVERS, Container, Host, Invalid, Network, check_name

IFNAMSIZ = 15
MTU_MIN, MTU_MAX = 576, 65535


def validate_host(host: Host, where: str = "host") -> Host:
    check_name(host.name, f"{where}.name")
    if host.underlay_ip:
        check_ipv4(host.underlay_ip, f"{where}.underlay_ip")
    return host


def validate_network(network: Network, where: str = "network") -> Network:
    check_name(network.name, f"{where}.name")
    if network.driver not in DRIVERS:
        raise Invalid(
            f"{where}.driver",
            f"unknown driver {network.driver!r}; expected one of {', '.join(DRIVERS)}",
        )
    if not network.subnet:
        raise Invalid(f"{where}.subnet", "required (a CIDR such as 10.88.0.0/16)")
    validate_cidr(network.subnet, f"{where}.subnet")
    host_prefix_for(network.subnet, network.host_prefix, f"{where}.host_prefix")
    if not MTU_MIN <= network.mtu <= MTU_MAX:
        raise Invalid(f"{where}.mtu", f"{network.mtu} is outside {MTU_MIN}..{MTU_MAX}")
    return network


def validate_container(container: Container, where: str = "container") -> Container:
    check_name(container.name, f"{where}.name")
    check_name(container.host, f"{where}.host")
    check_name(container.network, f"{where}.network")
    if not container.command or not all(isinstance(a, str) and a for a in container.command):
        raise Invalid(f"{where}.command", "expected a non-empty list of non-empty strings")
    check_ifname(container.interface, f"{where}.interface")
    return container


def check_ipv4(value: str, field: str) -> str:
    try:
        address = netaddr.IPAddress(value, version=4)
    except (netaddr.AddrFormatError, ValueError, TypeError) as e:
        raise Invalid(field, f"{value!r} is not an IPv4 address") from e
    return str(address)


def check_ifname(value: str, field: str) -> str:
    bad_chars = "/" in value or any(c.isspace() for c in value)
    if not value or len(value.encode()) > IFNAMSIZ or bad_chars:
        raise Invalid(field, f"{value!r} is not a valid interface name (1-{IFNAMSIZ} bytes)")
    return value
