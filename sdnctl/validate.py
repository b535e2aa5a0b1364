"""Validation of model objects, shared by the controller (API input) and the topology loader.

Each function takes the object and ``where``, the path of the object in its document
(``network`` for an API request, ``networks[2]`` for a topology file), and raises
:class:`sdnctl.model.Invalid` naming the exact field.

Only what one object says about itself is checked here; what depends on other objects (does
the donor exist, is an address or a host port taken) is the controller's business.
"""

from __future__ import annotations

import re

import netaddr

from sdnctl.controller.ipam import host_prefix_for, validate_cidr
from sdnctl.model import (
    CAPABILITIES,
    DEFAULT_HOST_PREFIX,
    DRIVERS,
    MODE_BRIDGE,
    MODE_CONTAINER,
    MODE_HOST,
    MODE_NONE,
    RESTART_POLICIES,
    SHAREABLE,
    Container,
    Host,
    Invalid,
    Network,
    check_name,
    clean_path,
    network_mode,
    parse_port,
    parse_volume,
)

IFNAMSIZ = 15
MTU_MIN, MTU_MAX = 576, 65535
VNI_MIN, VNI_MAX = 1, 16777215
PORT_MAX = 65535
OVERLAY = "overlay"
MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
#: Network names that mean a container mode instead.
RESERVED_NETWORK_NAMES = (MODE_NONE, MODE_HOST)


def default_host_prefix(subnet: str, gateway: str = "", ip_range: str = "") -> int:
    """The host prefix a network gets when none is given.

    A network with a gateway or an ip_range is one lease, as a Docker bridge network is: its
    host prefix is the subnet's own. Else each host gets a /24 of it.
    """
    prefix = subnet.rpartition("/")[2]
    if (gateway or ip_range) and prefix.isdigit():
        return int(prefix)
    return DEFAULT_HOST_PREFIX


def validate_host(host: Host, where: str = "host") -> Host:
    check_name(host.name, f"{where}.name")
    if host.underlay_ip:
        check_ipv4(host.underlay_ip, f"{where}.underlay_ip")
    if host.vtep_mac:
        check_unicast_mac(host.vtep_mac, f"{where}.vtep_mac")
    if host.underlay_mtu and not MTU_MIN <= host.underlay_mtu <= MTU_MAX:
        raise Invalid(f"{where}.underlay_mtu",
                      f"{host.underlay_mtu} is outside {MTU_MIN}..{MTU_MAX} (0: unknown)")
    return host


def check_unicast_mac(value: str, field: str) -> str:
    """A unicast Ethernet address written ``aa:bb:cc:dd:ee:ff`` (lower-case)."""
    if not isinstance(value, str) or not MAC_RE.match(value):
        raise Invalid(field, f"{value!r} is not a MAC address such as 0a:58:0a:00:00:01 "
                      "(lower-case)")
    if int(value[:2], 16) & 1:
        raise Invalid(field, f"{value} is a multicast address; a VTEP needs a unicast one")
    if value == "00:00:00:00:00:00":
        raise Invalid(field, "00:00:00:00:00:00 is not a usable MAC address")
    return value


def validate_network(network: Network, where: str = "network") -> Network:
    check_name(network.name, f"{where}.name")
    if network.name in RESERVED_NETWORK_NAMES:
        raise Invalid(f"{where}.name",
                      f"{network.name!r} is a container network mode, not a network name")
    if network.driver not in DRIVERS:
        raise Invalid(
            f"{where}.driver",
            f"unknown driver {network.driver!r}; expected one of {', '.join(DRIVERS)}",
        )
    if not network.subnet:
        raise Invalid(f"{where}.subnet", "required (a CIDR such as 10.88.0.0/16)")
    subnet = validate_cidr(network.subnet, f"{where}.subnet")
    lease_prefix = host_prefix_for(network.subnet, network.host_prefix, f"{where}.host_prefix")
    overlay = network.driver == OVERLAY
    if not (MTU_MIN <= network.mtu <= MTU_MAX or (overlay and network.mtu == 0)):
        auto = " (or 0: the underlay's MTU - 50)" if overlay else ""
        raise Invalid(f"{where}.mtu", f"{network.mtu} is outside {MTU_MIN}..{MTU_MAX}{auto}")
    _check_vxlan(network, where)
    for field in ("gateway", "ip_range"):
        if getattr(network, field) and lease_prefix != subnet.prefixlen:
            raise Invalid(
                f"{where}.{field}",
                f"a {field} needs the network to be one lease, but host_prefix "
                f"/{network.host_prefix} carves {network.subnet} into several: set host_prefix "
                f"to the subnet's prefix ({subnet.prefixlen})",
            )
    if network.gateway:
        _check_gateway(network.gateway, subnet, f"{where}.gateway")
    if network.ip_range:
        ip_range = validate_cidr(network.ip_range, f"{where}.ip_range")
        if ip_range not in subnet:
            raise Invalid(f"{where}.ip_range", f"{ip_range} is not inside {subnet}")
    _check_allow(network, where)
    return network


def _check_vxlan(network: Network, where: str) -> None:
    """VNI (0: the controller allocates one) and UDP port (0: 4789), for overlay networks only."""
    for field, value, low, high in (("vni", network.vni, VNI_MIN, VNI_MAX),
                                    ("vxlan_port", network.vxlan_port, 1, PORT_MAX)):
        if not value:
            continue
        if network.driver != OVERLAY:
            raise Invalid(f"{where}.{field}", f"only for overlay networks; driver is "
                          f"{network.driver!r}")
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise Invalid(f"{where}.{field}", f"{value!r} is outside {low}..{high} "
                          "(0: the default)")


def _check_gateway(value: str, subnet: netaddr.IPNetwork, field: str) -> None:
    gateway = netaddr.IPAddress(check_ipv4(value, field))
    if gateway not in subnet:
        raise Invalid(field, f"{gateway} is not inside {subnet}")
    if gateway in (subnet.network, subnet.broadcast):
        raise Invalid(field, f"{gateway} is the network or broadcast address of {subnet}")


def _check_allow(network: Network, where: str) -> None:
    seen: set[str] = set()
    for i, name in enumerate(network.allow):
        field = f"{where}.allow[{i}]"
        check_name(name, field)
        if name == network.name:
            raise Invalid(field, "a network always reaches itself; list other networks")
        if name in seen:
            raise Invalid(field, f"{name!r} is listed twice")
        seen.add(name)


def validate_container(container: Container, where: str = "container") -> Container:
    check_name(container.name, f"{where}.name")
    check_name(container.host, f"{where}.host")
    mode = _check_network_mode(container, f"{where}.network")
    if (not container.command and not container.image) or \
            not all(isinstance(a, str) and a for a in container.command):
        raise Invalid(f"{where}.command", "expected a non-empty list of non-empty strings")
    check_ifname(container.interface, f"{where}.interface")
    if container.fixed_ip:
        _only_in(mode, MODE_BRIDGE, container, f"{where}.fixed_ip")
        check_ipv4(container.fixed_ip, f"{where}.fixed_ip")
    if container.ports:
        _only_in(mode, MODE_BRIDGE, container, f"{where}.ports")
        _check_ports(container.ports, f"{where}.ports")
    if container.share:
        _only_in(mode, MODE_CONTAINER, container, f"{where}.share")
        _check_share(container.share, f"{where}.share")
    if container.restart not in RESTART_POLICIES:
        raise Invalid(f"{where}.restart", f"unknown restart policy {container.restart!r}; "
                      f"expected one of {', '.join(RESTART_POLICIES)}")
    _check_runtime_fields(container, where)
    return container


MEMORY_MIN = 6 * 1024 * 1024  # Docker's minimum: less cannot even start a shell
CPUS_MAX = 1024
SHARES_MIN, SHARES_MAX = 2, 262144
_ENV = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=[^\0]*", re.S)
_IMAGE_ID = re.compile(r"sha256:[0-9a-f]{64}")


def check_image_ref(ref: str, field: str) -> str:
    """An image ID (``sha256:<hex>``) or a reference, normalised to ``name:tag``."""
    from sdnctl.imagefmt import parse_reference

    if _IMAGE_ID.fullmatch(ref):
        return ref
    try:
        return parse_reference(ref)
    except ValueError as e:
        raise Invalid(field, str(e)) from None


def _check_runtime_fields(c: Container, where: str) -> None:
    """Image, resources, volumes, capabilities, environment: what the OCI spec is made of."""
    if c.image:
        check_image_ref(c.image, f"{where}.image")
    if c.memory and not MEMORY_MIN <= c.memory <= 1 << 50:
        raise Invalid(f"{where}.resources.memory", f"{c.memory} bytes: give at least 6 MiB "
                      "(0: no limit)")
    if c.cpus and not 0.01 <= c.cpus <= CPUS_MAX:
        raise Invalid(f"{where}.resources.cpus", f"{c.cpus}: expected 0.01 to {CPUS_MAX} "
                      "(0: no limit)")
    if c.cpu_shares and not SHARES_MIN <= c.cpu_shares <= SHARES_MAX:
        raise Invalid(f"{where}.resources.cpu_shares",
                      f"{c.cpu_shares}: expected {SHARES_MIN} to {SHARES_MAX}")
    if c.pids_limit < 0 or c.pids_limit > 4194304:
        raise Invalid(f"{where}.resources.pids_limit", f"{c.pids_limit}: expected 1 to 4194304 "
                      "(0: no limit)")
    targets: set[str] = set()
    for i, spec in enumerate(c.volumes):
        volume = parse_volume(spec, f"{where}.volumes[{i}]")
        if volume.target in targets:
            raise Invalid(f"{where}.volumes[{i}]", f"{volume.target!r} is mounted twice")
        targets.add(volume.target)
    for i, cap in enumerate(c.cap_add):
        if cap.upper().removeprefix("CAP_") not in CAPABILITIES:
            raise Invalid(f"{where}.cap_add[{i}]", f"unknown capability {cap!r}")
    for i, var in enumerate(c.env):
        if not _ENV.fullmatch(var):
            raise Invalid(f"{where}.env[{i}]", f"{var!r} is not KEY=VALUE")
    if c.workdir:
        clean_path(c.workdir, f"{where}.workdir")


def _check_network_mode(container: Container, field: str) -> str:
    """The container's mode; its ``network`` must be none, host, container:<name> or a name."""
    mode, target = network_mode(container.network)
    if mode == MODE_CONTAINER:
        if not target:
            raise Invalid(field, "expected container:<name of the container to join>")
        check_name(target, field)
        if target == container.name:
            raise Invalid(field, "a container cannot join its own network namespace")
    elif mode == MODE_BRIDGE:
        if not container.network:
            raise Invalid(field, "required: none, host, container:<name> or a network name")
        check_name(container.network, field)
    return mode


def _only_in(mode: str, wanted: str, container: Container, field: str) -> None:
    if mode != wanted:
        what = "bridged containers" if wanted == MODE_BRIDGE else "joined (container:) containers"
        raise Invalid(field, f"only for {what}; network is {container.network!r}")


def _check_ports(ports: tuple[str, ...], field: str) -> None:
    seen: dict[tuple[str, int, str], int] = {}
    for i, spec in enumerate(ports):
        mapping = parse_port(spec, f"{field}[{i}]")
        for (host_ip, host_port, protocol), j in seen.items():
            # "every address" overlaps any one address on the same port.
            same_ip = host_ip == mapping.host_ip or not host_ip or not mapping.host_ip
            if same_ip and (host_port, protocol) == (mapping.host_port, mapping.protocol):
                raise Invalid(f"{field}[{i}]", f"host port {host_port}/{protocol} is already "
                              f"published by {field.rpartition('.')[2]}[{j}]")
        seen[(mapping.host_ip, mapping.host_port, mapping.protocol)] = i


def _check_share(share: tuple[str, ...], field: str) -> None:
    for i, name in enumerate(share):
        if name not in SHAREABLE:
            raise Invalid(f"{field}[{i}]", f"cannot share {name!r}; expected one of "
                          f"{', '.join(SHAREABLE)}")
        if name in share[:i]:
            raise Invalid(f"{field}[{i}]", f"{name!r} is listed twice")


def check_ipv4(value: str, field: str) -> str:
    if not isinstance(value, str):
        raise Invalid(field, f"{value!r} is not an IPv4 address")
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
