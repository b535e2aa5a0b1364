"""Validation of model objects, shared by the controller (API input) and the topology loader.
One field's parsing and checking is ``sdnctl.api.fields``'s; this module checks whole objects
with it: which fields, in which combinations.

Each function takes the object and ``where``, the path of the object in its document
(``network`` for an API request, ``networks[2]`` for a topology file), and raises
:class:`sdnctl.api.model.Invalid` naming the exact field.

Only what one object says about itself is checked here; what depends on other objects (does
the donor exist, is an address or a host port taken, does a subnet overlap another network's or
hold a host's underlay address) is the controller's business (``sdnctl.controller.state``).

Every field that crosses the API is bounded here: names are DNS labels (and never become
interface names: those are a prefix plus a hash, within IFNAMSIZ), interface names are at most
15 bytes of a safe alphabet, subnets keep clear of reserved ranges and have at least
``POOL_PREFIX_MIN`` bits of prefix, paths are absolute without ``..`` or NUL, lists and strings
have a length limit, and image references follow Docker's reference grammar.
"""

from __future__ import annotations

import re

import netaddr

from sdnctl.api.addrfields import (
    check_ipv4,
    check_ipv6,
    check_not_reserved,
    check_pool,
    validate_cidr,
    validate_cidr6,
)
from sdnctl.api.fields import (
    check_count,
    check_http_url,
    check_ifname,
    check_name,
    check_unicast_mac,
    clean_path,
    host_ips_overlap,
    image_name,
    parse_port,
    parse_volume,
)
from sdnctl.api.model import (
    CAPABILITIES,
    DEFAULT_DENY,
    DRIVERS,
    MODE_BRIDGE,
    MODE_CONTAINER,
    MODE_HOST,
    MODE_NONE,
    POLICY_ALL_NETWORKS,
    RESTART_POLICIES,
    SHAREABLE,
    USERNS_MODES,
    Container,
    ContainerStatus,
    Host,
    Invalid,
    Network,
    Policy,
    PolicyRule,
    network_mode,
    spans_hosts,
)
from sdnctl.api.policyeval import parse_policy_port

COMMAND_MAX = 256  # arguments
ARG_MAX = 4096  # bytes of one argument, of a status message
PID_MAX = 4194304  # the kernel's pid_max limit
REPORT_MAX = 10000  # container statuses in one report
CONTAINER_STATES = ("pending", "created", "running", "restarting", "exited", "error", "")
MTU_MIN, MTU_MAX = 576, 65535
VNI_MIN, VNI_MAX = 1, 16777215
PORT_MAX = 65535
#: Network names that mean a container mode instead.
RESERVED_NETWORK_NAMES = (MODE_NONE, MODE_HOST)
#: The longest host prefix: a /30 still leaves a gateway and one container.
MAX_HOST_PREFIX = 30
#: The same for IPv6: a /126 leaves the subnet-router anycast address, a gateway and two more.
MAX_HOST_PREFIX6 = 126


def host_prefix6_for(network_cidr: str, host_prefix: int, field: str = "host_prefix6") -> int:
    """The prefix length of one host's IPv6 lease in ``network_cidr`` (a network smaller than
    ``host_prefix`` is leased whole). Errors about the CIDR name the sibling ``subnet6``."""
    net = validate_cidr6(network_cidr, field.removesuffix("host_prefix6") + "subnet6")
    if isinstance(host_prefix, bool) or not isinstance(host_prefix, int) or host_prefix < 1:
        raise Invalid(field, f"expected a prefix length, got {host_prefix!r}")
    if host_prefix > MAX_HOST_PREFIX6:
        raise Invalid(field, f"/{host_prefix} leaves no room for a gateway and a container; "
                      f"at most /{MAX_HOST_PREFIX6}")
    if net.prefixlen > MAX_HOST_PREFIX6:
        raise Invalid(field.removesuffix("host_prefix6") + "subnet6",
                      f"{network_cidr} leaves no room for a gateway and a container")
    return max(net.prefixlen, host_prefix)


def host_prefix_for(network_cidr: str, host_prefix: int, field: str = "host_prefix") -> int:
    """The prefix length of one host's lease in ``network_cidr``.

    A network smaller than ``host_prefix`` is leased whole (to a single host). ``field`` names
    the host prefix in errors (``networks[2].host_prefix``); errors about the CIDR itself name
    the sibling ``subnet`` field (``networks[2].subnet``).
    """
    subnet_field = field.removesuffix("host_prefix") + "subnet"
    net = validate_cidr(network_cidr, subnet_field)
    if isinstance(host_prefix, bool) or not isinstance(host_prefix, int) or host_prefix < 1:
        raise Invalid(field, f"expected a prefix length, got {host_prefix!r}")
    if host_prefix > MAX_HOST_PREFIX:
        raise Invalid(
            field,
            f"/{host_prefix} leaves no room for a gateway and a container; "
            f"use /{MAX_HOST_PREFIX} or shorter",
        )
    if net.prefixlen > MAX_HOST_PREFIX:
        raise Invalid(subnet_field, f"{network_cidr} leaves no room for a gateway and a container")
    return max(net.prefixlen, host_prefix)

def validate_host(host: Host, where: str = "host") -> Host:
    check_name(host.name, f"{where}.name")
    if host.underlay_ip:
        if ":" in host.underlay_ip:  # an IPv6 underlay (issue 20)
            check_ipv6(host.underlay_ip, f"{where}.underlay_ip")
        else:
            check_ipv4(host.underlay_ip, f"{where}.underlay_ip")
        check_not_reserved(host.underlay_ip, f"{where}.underlay_ip")
    if host.netns:
        clean_path(host.netns, f"{where}.netns")
    if not 0 <= host.agent_pid <= PID_MAX:
        raise Invalid(f"{where}.agent_pid", f"{host.agent_pid} is outside 0..{PID_MAX}")
    if host.vtep_mac:
        check_unicast_mac(host.vtep_mac, f"{where}.vtep_mac")
    if host.underlay_mtu and not MTU_MIN <= host.underlay_mtu <= MTU_MAX:
        raise Invalid(f"{where}.underlay_mtu",
                      f"{host.underlay_mtu} is outside {MTU_MIN}..{MTU_MAX} (0: unknown)")
    if host.metrics_url:
        check_http_url(host.metrics_url, f"{where}.metrics_url")
    if host.docker_host and (not host.docker_host.startswith("unix:///")
                             or len(host.docker_host) > 4096 or "\0" in host.docker_host):
        raise Invalid(f"{where}.docker_host", f"{host.docker_host[:80]!r}: expected "
                      "unix:///path/to/docker.sock")
    return host


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
    if not network.subnet and not network.subnet6:
        raise Invalid(f"{where}.subnet", "required (a CIDR such as 10.88.0.0/16), or only a "
                      "subnet6 for an IPv6-only network")
    overlay = spans_hosts(network.driver)
    if not (MTU_MIN <= network.mtu <= MTU_MAX or (overlay and network.mtu == 0)):
        auto = " (or 0: the underlay's MTU - 50)" if overlay else ""
        raise Invalid(f"{where}.mtu", f"{network.mtu} is outside {MTU_MIN}..{MTU_MAX}{auto}")
    _check_vxlan(network, where)
    if network.default_policy not in ("", "allow", DEFAULT_DENY):
        raise Invalid(f"{where}.default", f"{network.default_policy!r}: expected allow or deny")
    if network.subnet:
        _check_subnet4(network, where)
    else:  # IPv6-only (issue 20): what only IPv4 has needs an IPv4 subnet
        for field in ("gateway", "ip_range"):
            if getattr(network, field):
                raise Invalid(f"{where}.{field}", "needs an IPv4 subnet (subnet); this network "
                              "is IPv6-only")
    if network.subnet6:
        check_pool(validate_cidr6(network.subnet6, f"{where}.subnet6"), f"{where}.subnet6")
        host_prefix6_for(network.subnet6, network.host_prefix6, f"{where}.host_prefix6")
    if network.masquerade6 and not network.subnet6:
        raise Invalid(f"{where}.masquerade6", "needs an IPv6 subnet (subnet6)")
    _check_allow(network, where)
    _check_dns(network.dns_domain, network.dns, where)
    return network


def _check_subnet4(network: Network, where: str) -> None:
    """A network's IPv4 side: its subnet, host prefix, gateway and ip_range."""
    subnet = validate_cidr(network.subnet, f"{where}.subnet")
    check_pool(subnet, f"{where}.subnet")
    lease_prefix = host_prefix_for(network.subnet, network.host_prefix, f"{where}.host_prefix")
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


DNS_UPSTREAMS_MAX = 3  # as resolv.conf's MAXNS


def _check_dns(domain: str, upstreams: tuple[str, ...], where: str) -> None:
    """A network's DNS domain (labels that are names) and upstream resolvers (IPv4)."""
    if domain:
        if len(domain) > 200:
            raise Invalid(f"{where}.dns_domain", "longer than 200 characters")
        for label in domain.split("."):
            check_name(label, f"{where}.dns_domain")
    check_count(upstreams, f"{where}.dns", DNS_UPSTREAMS_MAX)
    for i, address in enumerate(upstreams):
        check_ipv4(address, f"{where}.dns[{i}]")


def _check_vxlan(network: Network, where: str) -> None:
    """VNI (0: the controller allocates one) and UDP port (0: 4789), for overlay networks only."""
    for field, value, low, high in (("vni", network.vni, VNI_MIN, VNI_MAX),
                                    ("vxlan_port", network.vxlan_port, 1, PORT_MAX)):
        if not value:
            continue
        if not spans_hosts(network.driver):
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
    check_count(network.allow, f"{where}.allow")
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
    if container.command or not container.image:  # an image may bring its own command
        _check_command(container.command, f"{where}.command")
    check_ifname(container.interface, f"{where}.interface")
    if container.fixed_ip:
        _only_in(mode, MODE_BRIDGE, container, f"{where}.fixed_ip")
        check_ipv4(container.fixed_ip, f"{where}.fixed_ip")
    if container.fixed_ip6:
        _only_in(mode, MODE_BRIDGE, container, f"{where}.fixed_ip6")
        check_ipv6(container.fixed_ip6, f"{where}.fixed_ip6")
    if container.ports:
        _only_in(mode, MODE_BRIDGE, container, f"{where}.ports")
        _check_ports(container.ports, f"{where}.ports")
    if container.share:
        _only_in(mode, MODE_CONTAINER, container, f"{where}.share")
        _check_share(container.share, f"{where}.share")
    if container.restart not in RESTART_POLICIES:
        raise Invalid(f"{where}.restart", f"unknown restart policy {container.restart!r}; "
                      f"expected one of {', '.join(RESTART_POLICIES)}")
    if container.dns:
        _only_in(mode, MODE_BRIDGE, container, f"{where}.dns")
        _check_dns("", container.dns, where)
    if container.aliases:
        _only_in(mode, MODE_BRIDGE, container, f"{where}.aliases")
        check_count(container.aliases, f"{where}.aliases")
        for i, alias in enumerate(container.aliases):
            check_name(alias, f"{where}.aliases[{i}]")
    _check_runtime_fields(container, where)
    check_labels(container.labels, f"{where}.labels")
    _check_bandwidth(container, where)
    if container.cni_id or container.cni_netns:
        _check_cni(container, mode, where)
    return container


#: The CNI spec's container ID: "alphanumeric, underscore, dot, hyphen", non-empty.
_CNI_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,254}")


def _check_cni(c: Container, mode: str, where: str) -> None:
    """A CNI attachment (issue 17): a bridged container whose namespace the runtime owns."""
    _only_in(mode, MODE_BRIDGE, c, f"{where}.cni")
    if not _CNI_ID.fullmatch(c.cni_id):
        raise Invalid(f"{where}.cni.container_id", f"{c.cni_id!r}: expected 1 to 255 letters, "
                      "digits, '_', '.' or '-' (the CNI spec's container ID)")
    if not c.cni_netns.startswith("/") or "\0" in c.cni_netns or \
            len(c.cni_netns.encode()) > ARG_MAX:
        raise Invalid(f"{where}.cni.netns", f"{c.cni_netns!r}: expected an absolute path")


MEMORY_MIN = 6 * 1024 * 1024  # Docker's minimum: less cannot even start a shell
CPUS_MAX = 1024
SHARES_MIN, SHARES_MAX = 2, 262144
_ENV = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=[^\0]*", re.S)


def _check_runtime_fields(c: Container, where: str) -> None:
    """Image, resources, volumes, capabilities, environment: what the OCI spec is made of."""
    if c.image:
        image_name(c.image, f"{where}.image")
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
    if c.user_ns not in USERNS_MODES:
        raise Invalid(f"{where}.user_ns", f"{c.user_ns!r}: expected one of "
                      + ", ".join(USERNS_MODES))
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


def _check_command(command: tuple[str, ...], field: str) -> None:
    if not command or not all(isinstance(a, str) and a for a in command):
        raise Invalid(field, "expected a non-empty list of non-empty strings")
    if len(command) > COMMAND_MAX:
        raise Invalid(field, f"{len(command)} arguments; at most {COMMAND_MAX}")
    for i, arg in enumerate(command):
        if "\0" in arg:
            raise Invalid(f"{field}[{i}]", "contains a NUL byte")
        if len(arg.encode()) > ARG_MAX:
            raise Invalid(f"{field}[{i}]", f"longer than {ARG_MAX} bytes")


def _check_ports(ports: tuple[str, ...], field: str) -> None:
    check_count(ports, field)
    seen: dict[tuple[str, int, str], int] = {}
    for i, spec in enumerate(ports):
        mapping = parse_port(spec, f"{field}[{i}]")
        for (host_ip, host_port, protocol), j in seen.items():
            # "every address" overlaps any one address on the same port.
            if host_ips_overlap(host_ip, mapping.host_ip) and \
                    (host_port, protocol) == (mapping.host_port, mapping.protocol):
                raise Invalid(f"{field}[{i}]", f"host port {host_port}/{protocol} is already "
                              f"published by {field.rpartition('.')[2]}[{j}]")
        seen[(mapping.host_ip, mapping.host_port, mapping.protocol)] = i


def _check_share(share: tuple[str, ...], field: str) -> None:
    check_count(share, field)
    for i, name in enumerate(share):
        if name not in SHAREABLE:
            raise Invalid(f"{field}[{i}]", f"cannot share {name!r}; expected one of "
                          f"{', '.join(SHAREABLE)}")
        if name in share[:i]:
            raise Invalid(f"{field}[{i}]", f"{name!r} is listed twice")


def validate_status(status: ContainerStatus, where: str) -> ContainerStatus:
    """A container's status as an agent reports it."""
    check_name(status.name, f"{where}.name")
    if status.state not in CONTAINER_STATES:
        raise Invalid(f"{where}.state", f"unknown state {status.state!r}; expected one of "
                      f"{', '.join(s for s in CONTAINER_STATES if s)}")
    if not 0 <= status.pid <= PID_MAX:
        raise Invalid(f"{where}.pid", f"{status.pid} is outside 0..{PID_MAX}")
    if status.netns:
        clean_path(status.netns, f"{where}.netns")
    return status  # message: free text, truncated to ARG_MAX by the servicer


#: Label keys and values (Kubernetes' shape: a prefix/ is allowed in keys).
_LABEL_KEY = re.compile(r"([a-z0-9.-]{1,253}/)?[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?")
_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?)?")
BANDWIDTH_MAX = 100 * 10**9  # bits/s
BURST_MAX = 1 << 32


def check_labels(labels: tuple[str, ...], field: str) -> None:
    """``"key=value"`` items, each key once."""
    check_count(labels, field, 64)
    seen: set[str] = set()
    for i, item in enumerate(labels):
        key, eq, value = str(item).partition("=")
        if not eq or not _LABEL_KEY.fullmatch(key) or not _LABEL_VALUE.fullmatch(value):
            raise Invalid(f"{field}[{i}]", f"{item!r}: expected key=value (letters, digits, "
                          "-_. ; at most 63 each)")
        if key in seen:
            raise Invalid(f"{field}[{i}]", f"label {key!r} is given twice")
        seen.add(key)


def _check_bandwidth(c: Container, where: str) -> None:
    for name, value in (("ingress", c.ingress_bps), ("egress", c.egress_bps)):
        if value and not 1000 <= value <= BANDWIDTH_MAX:
            raise Invalid(f"{where}.resources.{name}", f"{value} bit/s: expected 1kbit to 100gbit")
    if c.burst_bytes and not 1500 <= c.burst_bytes <= BURST_MAX:
        raise Invalid(f"{where}.resources.burst", f"{c.burst_bytes} bytes: expected 1500 to 4g")
    if c.burst_bytes and not (c.ingress_bps or c.egress_bps):
        raise Invalid(f"{where}.resources.burst", "a burst needs an ingress or egress rate")
    if (c.ingress_bps or c.egress_bps) and network_mode(c.network)[0] != MODE_BRIDGE:
        raise Invalid(f"{where}.resources", "bandwidth limits need a bridged container "
                      "(they shape its veth)")


def validate_policy(policy: Policy, where: str = "policy") -> Policy:
    """One policy by itself; that its networks exist is the controller's check."""
    check_name(policy.name, f"{where}.name")
    if policy.network != POLICY_ALL_NETWORKS:
        check_name(policy.network, f"{where}.network")
    check_labels(policy.select, f"{where}.select")
    if policy.ingress is None and policy.egress is None:
        raise Invalid(where, "give ingress and/or egress (an empty list isolates and allows "
                      "nothing)")
    for direction in ("ingress", "egress"):
        rules: tuple[PolicyRule, ...] | None = getattr(policy, direction)
        check_count(rules or (), f"{where}.{direction}", 256)
        for i, rule in enumerate(rules or ()):
            _check_policy_rule(rule, f"{where}.{direction}[{i}]",
                               "from" if direction == "ingress" else "to")
    return policy


def _policy_cidr(text: str, field: str) -> netaddr.IPNetwork:
    """A policy peer's prefix: IPv4 (``10.0.0.0/8``) or IPv6 (``fd00::/8``)."""
    return validate_cidr6(text, field) if ":" in str(text) else validate_cidr(text, field)


def _check_policy_rule(rule: PolicyRule, where: str, peers_name: str) -> None:
    check_count(rule.peers, f"{where}.{peers_name}", 256)
    for j, peer in enumerate(rule.peers):
        field = f"{where}.{peers_name}[{j}]"
        if peer.cidr:
            if peer.labels is not None or peer.network:
                raise Invalid(field, "a cidr peer takes no labels or network")
            net = _policy_cidr(peer.cidr, f"{field}.cidr")
            for k, text in enumerate(peer.excepts):
                inner = _policy_cidr(text, f"{field}.except[{k}]")
                if inner.version != net.version or inner not in net:
                    raise Invalid(f"{field}.except[{k}]", f"{text} is not inside {peer.cidr}")
        elif peer.excepts:
            raise Invalid(f"{field}.except", "only with a cidr")
        elif peer.labels is None and not peer.network:
            raise Invalid(field, "give labels, network or cidr")
        else:
            if peer.network:
                check_name(peer.network, f"{field}.network")
            check_labels(peer.labels or (), f"{field}.labels")
    check_count(rule.ports, f"{where}.ports", 256)
    for j, port in enumerate(rule.ports):
        parse_policy_port(port, f"{where}.ports[{j}]")
