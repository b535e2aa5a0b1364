"""Topology files: YAML in, frozen model objects out (nothing else happens here).

Errors name the file, the line, the path in the document and what was expected:
    topology-examples/bad.yaml:7: networks[0].subnet: '10.88.0.1/16' has host bits set; ...

    name: single
    hosts:
      - {name: h1, lab: true}
    networks:
      - {name: front, driver: bridge, subnet: 10.88.0.0/16}
    containers:
      - {name: web, host: h1, network: front, command: [sleep, infinity]}
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import netaddr
import yaml

from sdnctl.api.addrfields import check_ipv4, check_ipv6
from sdnctl.api.fields import check_name
from sdnctl.api.model import (
    DEFAULT_HOST_PREFIX,
    DEFAULT_HOST_PREFIX6,
    DEFAULT_INTERFACE,
    DEFAULT_MTU,
    POLICY_ALL_NETWORKS,
    USERNS_AUTO,
    USERNS_HOST,
    USERNS_MODES,
    USERNS_PRIVATE,
    Container,
    Host,
    Invalid,
    Network,
    Policy,
    PolicyPeer,
    PolicyRule,
    labels_tuple,
    network_driver,
)
from sdnctl.api.units import parse_rate, parse_size
from sdnctl.api.validate import (
    validate_container,
    validate_host,
    validate_network,
    validate_policy,
)
from sdnctl.lab.lab import EXTERNAL_IP, EXTERNAL_PREFIXLEN, SEGMENTS
from sdnctl.topology import schema

DEFAULT_COMMAND = ("sleep", "infinity")
#: A container without `network` goes to the controller's default bridge, as in Docker.
DEFAULT_NETWORK = "bridge"
_PARENT = re.compile(r"(\.[^.\[]+|\[\d+\])$")


class TopologyError(ValueError):
    def __init__(self, file: str, line: int | None, path: str, message: str) -> None:
        where = f"{file}:{line}" if line else file
        super().__init__(f"{where}: {path}: {message}" if path else f"{where}: {message}")
        self.file, self.line, self.path, self.message = file, line, path, message


@dataclass(frozen=True)
class LabOptions:
    """How `sdnctl up` builds lab hosts: the simulated underlay's MTU, and whether hosts sit on
    two underlay subnets joined by a router (a routed underlay) instead of one; whether the
    lab runs a registry in its outside world (203.0.113.1:5000)."""

    underlay_mtu: int = DEFAULT_MTU
    routed: bool = False
    registry: bool = False
    #: The hosts' underlay addresses (their agents' VXLAN endpoints) are IPv6 (issue 20).
    underlay6: bool = False


#: What an expectation's `to:` may name besides a container, a network or an address.
EXTERNAL = "external"
PROBE_PROTOCOLS = ("icmp", "tcp", "udp")
#: What a probe can measure: a completed exchange (a TCP handshake, a UDP answer, an ICMP echo
#: reply), a refusal by the target's kernel (a TCP reset, an ICMP port-unreachable for UDP), or
#: nothing (a timeout, or an ICMP host/network-unreachable on the way).
OPEN, REFUSED, FILTERED = "open", "refused", "filtered"
OUTCOMES = (OPEN, REFUSED, FILTERED)


@dataclass(frozen=True)
class Expectation:
    """One line of a topology's `expect:` block: must (or must not) ``src`` reach ``dst``?

    ``dst`` is a container, a network (every container on it), ``external`` (the lab's outside
    world) or an IPv4 address. ``port`` 0 with ``proto`` icmp is a ping. ``reach`` is the
    outcome wanted, one of :data:`OUTCOMES`: the file's ``reach: true`` is ``open`` and
    ``reach: false`` is ``filtered`` (a refusal matches neither: ask for ``refused``).
    """

    src: str
    dst: str
    reach: str = OPEN
    proto: str = "icmp"
    port: int = 0
    line: int = 0  # where it was written, for messages


@dataclass(frozen=True)
class Topology:
    name: str
    hosts: tuple[Host, ...]
    networks: tuple[Network, ...]
    containers: tuple[Container, ...]
    lab: LabOptions = LabOptions()
    expect: tuple[Expectation, ...] = ()
    images: tuple[str, ...] = ()  # archives `up` loads first (absolute paths)
    #: Where it was read from, and the line of each path in the document (``containers[1]``,
    #: ``containers[1].ports``), so that a later refusal can point at the line.
    file: str = field(default="<topology>", compare=False)
    lines: dict[str, int] = field(default_factory=dict, compare=False, hash=False, repr=False)
    policies: tuple[Policy, ...] = ()  # network policies (issue 22)

    @property
    def lab_hosts(self) -> tuple[Host, ...]:
        return tuple(h for h in self.hosts if h.lab)

    def error(self, path: str, message: str) -> TopologyError:
        """A refusal of what ``path`` (``containers[1].ports[0]``) says, at its line, or the
        line of the nearest enclosing thing that has one."""
        return _Reader(self.file, self.lines).error(path, message)


def _line_map(node: yaml.Node, path: str = "",
              lines: dict[str, int] | None = None) -> dict[str, int]:
    """Path in the document (``networks[0].subnet``) -> 1-based line number."""
    lines = {} if lines is None else lines
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            child = f"{path}.{key.value}" if path else str(key.value)
            lines[child] = key.start_mark.line + 1
            _line_map(value, child, lines)
            lines[child] = key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _line_map(item, f"{path}[{i}]", lines)
    return lines


class _Reader:
    """Typed access to the parsed document that reports errors with their line."""

    def __init__(self, file: str, lines: dict[str, int]) -> None:
        self.file, self.lines = file, lines

    def line_of(self, path: str) -> int | None:
        probe = path  # the field itself, or the nearest enclosing thing that has a line
        while probe and probe not in self.lines:
            parent = _PARENT.sub("", probe)
            if parent == probe:  # a top-level key the line map lacks (`? ` makes a null key)
                return None
            probe = parent
        return self.lines.get(probe)

    def error(self, path: str, message: str) -> TopologyError:
        return TopologyError(self.file, self.line_of(path), path, message)

    def mapping(self, value: Any, path: str, allowed: set[str], required: set[str]) -> dict:
        if not isinstance(value, dict):
            raise self.error(path, f"expected a mapping, got {type(value).__name__}")
        for key in value:
            if key not in allowed:
                raise self.error(f"{path}.{key}" if path else str(key),
                                 f"unknown field; expected one of {', '.join(sorted(allowed))}")
        for key in sorted(required - value.keys()):
            raise self.error(path, f"missing required field {key!r}")
        return value

    def typed(self, mapping: dict, key: str, path: str, kind: type, default: Any) -> Any:
        if key not in mapping:
            return default
        value = mapping[key]
        if (kind is int and isinstance(value, bool)) or not isinstance(value, kind):
            raise self.error(f"{path}.{key}",
                             f"expected {kind.__name__}, got {type(value).__name__} {value!r}")
        return value

    def sequence(self, doc: dict, key: str) -> list:
        value = doc.get(key, [])
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.error(key, f"expected a list, got {type(value).__name__}")
        return value


def load(path: str) -> Topology:
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        raise TopologyError(path, None, "", f"cannot read: {e.strerror}") from e
    return parse(text, path)


#: The most YAML nodes a topology may hold once its aliases are expanded: a "billion laughs"
#: (aliases of aliases) or a recursive alias would otherwise take the parser down.
MAX_NODES = 100_000


def _expanded_size(node: yaml.Node, memo: dict[int, int], active: set[int]) -> int:
    """How many nodes ``node`` stands for with its aliases expanded (stops past MAX_NODES)."""
    key = id(node)
    if key in memo:
        return memo[key]
    if key in active:
        return MAX_NODES + 1  # an alias of one of its own ancestors: infinite
    active.add(key)
    children: list[yaml.Node] = []
    if isinstance(node, yaml.MappingNode):
        children = [part for pair in node.value for part in pair]
    elif isinstance(node, yaml.SequenceNode):
        children = list(node.value)
    total = 1
    for child in children:
        total += _expanded_size(child, memo, active)
        if total > MAX_NODES:
            break
    active.discard(key)
    memo[key] = total
    return total


#: libyaml's safe loader when PyYAML was built with it: the pure-Python one took seconds for a
#: file of 1,000 containers (issue 21), and the file is read twice (nodes for lines, values).
FAST_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _compose_and_load(text: str,
                      check: Callable[[yaml.Node | None], None] = lambda node: None,
                      ) -> tuple[yaml.Node | None, Any]:
    """The file's node tree (for lines; ``check`` sees it before any value is built) and its
    values. A file libyaml refuses is read again by the pure-Python loader, whose errors (and
    their lines) are the ones users see."""
    loaders = list(dict.fromkeys([FAST_LOADER, yaml.SafeLoader]))
    for loader in loaders:
        try:
            node = yaml.compose(text, Loader=loader)
            check(node)
            return node, yaml.load(text, Loader=loader)
        except yaml.YAMLError:
            if loader is loaders[-1]:
                raise
    raise AssertionError("not reached")


def parse(text: str, file: str = "<topology>") -> Topology:
    try:
        def bounded(node: yaml.Node | None) -> None:
            if node is not None and _expanded_size(node, {}, set()) > MAX_NODES:
                raise TopologyError(file, None, "", f"more than {MAX_NODES} YAML nodes once "
                                    "its aliases are expanded (or a recursive alias)")

        node, doc = _compose_and_load(text, bounded)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise TopologyError(file, mark.line + 1 if mark else None, "",
                            f"not valid YAML: {getattr(e, 'problem', e)}") from e
    except RecursionError as e:
        raise TopologyError(file, None, "", "nested too deeply") from e
    if node is None:
        raise TopologyError(file, None, "", "empty document")
    lines = _line_map(node)
    r = _Reader(file, lines)
    # The shape first (keys, types, enumerations: topology.schema.json), then what it means.
    shape = schema.first_error(doc, r.line_of)
    if shape is not None:
        raise r.error(shape.path, shape.message)
    r.mapping(doc, "", {"name", "hosts", "networks", "containers", "routes", "lab", "expect",
                        "images", "policies"}, {"name"})
    name = _named(r, doc.get("name"), "name")

    hosts = tuple(_collect(r, doc, "hosts", _host))
    networks = tuple(_collect(r, doc, "networks", _network))
    containers = tuple(_collect(r, doc, "containers", _container))
    networks = _apply_routes(r, doc, networks)
    _check_references(r, hosts, networks, containers)
    lab = _lab(r, doc.get("lab"))
    if any(h.lab for h in hosts):
        _check_lab_ranges(r, networks, lab)
    expect = _expectations(r, doc, containers, networks)
    policies = tuple(_collect(r, doc, "policies", _policy))
    _check_policy_networks(r, policies, networks)
    return Topology(name, hosts, networks, containers, lab, expect,
                    _images(r, doc, os.path.dirname(os.path.abspath(file))), file, lines,
                    policies)


def parse_policies(text: str, file: str = "<policies>") -> tuple[Policy, ...]:
    """Policies from a file for `sdnctl policy create -f`: one policy, a list of them, or a
    mapping with ``policies:`` (a topology's block), in the topology's form."""
    try:
        node, doc = _compose_and_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise TopologyError(file, mark.line + 1 if mark else None, "",
                            f"not valid YAML: {getattr(e, 'problem', e)}") from e
    if node is None:
        raise TopologyError(file, None, "", "empty document")
    if isinstance(doc, list) or (isinstance(doc, dict) and "name" in doc):
        doc = {"policies": doc if isinstance(doc, list) else [doc]}
        lines = {}  # a bare policy or list: its paths are not the document's
    else:
        lines = _line_map(node)
    r = _Reader(file, lines)
    r.mapping(doc, "", {"policies"}, {"policies"})
    return tuple(_collect(r, doc, "policies", _policy))


def _images(r: _Reader, doc: dict, base: str) -> tuple[str, ...]:
    """Image archives, relative to the topology file; each must exist."""
    result = []
    for i, raw in enumerate(r.sequence(doc, "images")):
        path = os.path.join(base, str(raw))
        if not os.path.isfile(path):
            raise r.error(f"images[{i}]", f"no such file: {path}")
        result.append(path)
    return tuple(result)


_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_DNS_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})+\.?")


def is_dns_target(dst: str, containers: tuple[Container, ...]) -> bool:
    """An ``expect:`` target that `check` resolves through the source's DNS resolver: a
    container's alias, or a dotted name (``db.svc.lab``). A bare word that is no container,
    alias or network stays an error (a typo), not a name that fails to resolve."""
    if any(dst in c.aliases for c in containers):
        return True
    try:
        ipaddress.IPv4Address(dst)
        return False
    except ValueError:
        return bool(_DNS_NAME.fullmatch(dst.lower())) and len(dst) <= 253


def _expectations(r: _Reader, doc: dict, containers: tuple[Container, ...],
                  networks: tuple[Network, ...]) -> tuple[Expectation, ...]:
    names = {c.name for c in containers}
    targets = names | {n.name for n in networks} | {EXTERNAL}
    result = []
    for i, raw in enumerate(r.sequence(doc, "expect")):
        where = f"expect[{i}]"
        m = r.mapping(raw, where, {"from", "to", "reach", "proto", "port"}, {"from", "to"})
        src, dst = r.typed(m, "from", where, str, ""), r.typed(m, "to", where, str, "")
        if src not in names:
            raise r.error(f"{where}.from", f"unknown container {src!r}")
        if dst not in targets and not is_dns_target(dst, containers):
            try:
                check_ipv6(dst, f"{where}.to") if ":" in dst else check_ipv4(dst, f"{where}.to")
            except Invalid as e:
                raise r.error(f"{where}.to", f"{dst!r} is not a container, an alias, a "
                              f"network, {EXTERNAL!r}, an IPv4 or IPv6 address or a dotted "
                              "DNS name") from e
        proto = r.typed(m, "proto", where, str, "tcp" if "port" in m else "icmp")
        if proto not in PROBE_PROTOCOLS:
            raise r.error(f"{where}.proto", f"expected one of {', '.join(PROBE_PROTOCOLS)}")
        port = r.typed(m, "port", where, int, 0)
        if (proto == "icmp") != (port == 0) or not 0 <= port <= 65535:
            raise r.error(f"{where}.port", "tcp and udp need a port (1-65535); icmp takes none")
        result.append(Expectation(src, dst, _reach(r, m, where, proto), proto, port,
                                  r.lines.get(where, 0)))
    return tuple(result)


def _reach(r: _Reader, mapping: dict, where: str, proto: str) -> str:
    """``reach``: open | refused | filtered; true and false stand for open and filtered."""
    value = mapping.get("reach", True)
    if isinstance(value, bool):
        return OPEN if value else FILTERED
    if value not in OUTCOMES:
        raise r.error(f"{where}.reach", f"expected true, false or one of "
                      f"{', '.join(OUTCOMES)}, got {value!r}")
    if value == REFUSED and proto == "icmp":
        raise r.error(f"{where}.reach", "only a tcp or udp port can be refused; a ping is "
                      "open (true) or filtered (false)")
    return str(value)


def _lab(r: _Reader, raw: Any) -> LabOptions:
    if raw is None:
        return LabOptions()
    m = r.mapping(raw, "lab", {"underlay_mtu", "routed", "registry", "underlay6"}, set())
    mtu = r.typed(m, "underlay_mtu", "lab", int, DEFAULT_MTU)
    if not 1280 <= mtu <= 9216:
        raise r.error("lab.underlay_mtu", f"{mtu} is outside 1280..9216")
    return LabOptions(mtu, r.typed(m, "routed", "lab", bool, False),
                      r.typed(m, "registry", "lab", bool, False),
                      r.typed(m, "underlay6", "lab", bool, False))


def _apply_routes(r: _Reader, doc: dict, networks: tuple[Network, ...]) -> tuple[Network, ...]:
    """``routes: [[front, back], ...]``: each pair may talk, routed without NAT. Sugar for
    ``allow`` on the first network of the pair (allowing is symmetric)."""
    by_name = {n.name: n for n in networks}
    for i, pair in enumerate(r.sequence(doc, "routes")):
        where = f"routes[{i}]"
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str)
                                                                  for p in pair)):
            raise r.error(where, "expected a pair of network names, e.g. [front, back]")
        for j, name in enumerate(pair):
            if name not in by_name:
                raise r.error(f"{where}[{j}]", f"unknown network {name!r}")
        a, b = pair
        if a == b:
            raise r.error(where, "a network always reaches itself; name two networks")
        if b not in by_name[a].allow:
            by_name[a] = dataclasses.replace(by_name[a], allow=(*by_name[a].allow, b))
    return tuple(by_name[n.name] for n in networks)


def _check_references(r: _Reader, hosts: tuple[Host, ...], networks: tuple[Network, ...],
                      containers: tuple[Container, ...]) -> None:
    host_names = {h.name for h in hosts}
    network_names = {n.name for n in networks}
    by_name = {c.name: c for c in containers}
    _check_overlaps(r, networks)
    for i, n in enumerate(networks):
        for j, other in enumerate(n.allow):
            if other not in network_names:
                raise r.error(f"networks[{i}].allow[{j}]", f"unknown network {other!r}")
    for i, c in enumerate(containers):
        if c.host not in host_names:
            raise r.error(f"containers[{i}].host", f"unknown host {c.host!r}; hosts are "
                          f"{', '.join(sorted(host_names)) or '(none)'}")
        bridge, donor = c.bridge_network, c.donor
        if bridge is not None and bridge not in network_names and bridge != DEFAULT_NETWORK:
            raise r.error(f"containers[{i}].network", f"unknown network {bridge!r}; networks "
                          f"are {', '.join(sorted(network_names)) or '(none)'} (or none, host, "
                          "container:<name>)")
        if donor is not None:
            giver = by_name.get(donor)
            if giver is None:
                raise r.error(f"containers[{i}].network", f"unknown container {donor!r}")
            if giver.host != c.host:
                raise r.error(f"containers[{i}].network", f"container {donor!r} runs on host "
                              f"{giver.host!r}, not {c.host!r}: a network namespace is local")
            if giver.donor is not None:
                raise r.error(f"containers[{i}].network", _join_chain(c, by_name))


def _join_chain(ctr: Container, by_name: dict[str, Container]) -> str:
    """Why joining a joined container is refused, naming the chain (or the cycle) it makes."""
    chain = [ctr.name]
    current: Container | None = ctr
    while current is not None and current.donor is not None:
        chain.append(current.donor)
        if current.donor in chain[:-1]:
            return (f"containers join each other in a cycle ({' -> '.join(chain)}): none of them "
                    "has a network namespace of its own to give; make one of them bridged, "
                    "none or host")
        current = by_name.get(current.donor)
    return (f"{chain[1]!r} itself joins {chain[2]!r}; join the container that owns the "
            f"namespace instead (network: \"container:{chain[-1]}\")")


def _check_overlaps(r: _Reader, networks: tuple[Network, ...]) -> None:
    """Two networks whose subnets overlap would give two containers one address, and routes
    that cannot tell the networks apart."""
    for key in ("subnet", "subnet6"):  # each family apart (issue 20)
        seen: list[tuple[int, Network, netaddr.IPNetwork]] = []
        for i, n in enumerate(networks):
            if not getattr(n, key):
                continue
            cidr = netaddr.IPNetwork(getattr(n, key))
            for j, other, other_cidr in seen:
                if cidr.first <= other_cidr.last and other_cidr.first <= cidr.last:
                    raise r.error(f"networks[{i}].{key}",
                                  f"{getattr(n, key)} overlaps {getattr(other, key)} of "
                                  f"network {other.name!r} (networks[{j}]); give each network "
                                  "its own range")
            seen.append((i, n, cidr))


#: The lab's IPv6 underlay and outside world (documentation prefix).
LAB_IPV6 = netaddr.IPNetwork("2001:db8::/32")


def _check_lab_ranges(r: _Reader, networks: tuple[Network, ...], lab: LabOptions) -> None:
    """A lab's own ranges are not for networks: a host would route its underlay (its
    neighbours, its default gateway) or the lab's outside world into a bridge."""
    ranges = [("underlay", netaddr.IPNetwork(str(s.network)))
              for s in (SEGMENTS if lab.routed else SEGMENTS[:1])]
    ranges.append(("outside world", netaddr.IPNetwork(f"{EXTERNAL_IP}/{EXTERNAL_PREFIXLEN}")))
    for i, n in enumerate(networks):
        if (n.subnet6 and netaddr.IPNetwork(n.subnet6) in LAB_IPV6) or \
                (n.subnet6 and LAB_IPV6 in netaddr.IPNetwork(n.subnet6)):
            raise r.error(f"networks[{i}].subnet6", f"{n.subnet6} overlaps {LAB_IPV6}, the "
                          "lab's IPv6 underlay; give the network a range of its own")
        if not n.subnet:
            continue
        cidr = netaddr.IPNetwork(n.subnet)
        for what, taken in ranges:
            if cidr.first <= taken.last and taken.first <= cidr.last:
                raise r.error(f"networks[{i}].subnet", f"{n.subnet} overlaps {taken}, the lab's "
                              f"{what}; give the network a range of its own")


def _named(r: _Reader, value: Any, path: str) -> str:
    try:
        return check_name(value, path)
    except Invalid as e:
        raise r.error(path, e.message) from e


def _collect(r: _Reader, doc: dict, key: str, build: Callable[[_Reader, dict, str], Any]) -> list:
    items: list[Any] = []
    seen: dict[str, str] = {}
    for i, raw in enumerate(r.sequence(doc, key)):
        where = f"{key}[{i}]"
        try:
            item = build(r, raw, where)
        except Invalid as e:
            raise r.error(e.field, e.message) from e
        if item.name in seen:
            raise r.error(f"{where}.name", f"duplicate name {item.name!r} (also {seen[item.name]})")
        seen[item.name] = where
        items.append(item)
    return items


def _host(r: _Reader, raw: Any, where: str) -> Host:
    m = r.mapping(raw, where, {"name", "lab", "underlay_ip", "docker"}, {"name"})
    host = Host(name=m["name"], lab=r.typed(m, "lab", where, bool, False),
                underlay_ip=r.typed(m, "underlay_ip", where, str, ""),
                docker=r.typed(m, "docker", where, bool, False))
    if not host.lab:
        raise r.error(f"{where}.lab", "only lab hosts (lab: true) are supported by `sdnctl up` "
                      "so far; run sdnctl-agent on a real host and it registers itself")
    return validate_host(host, where)


def _network(r: _Reader, raw: Any, where: str) -> Network:
    m = r.mapping(raw, where, {"name", "driver", "subnet", "host_prefix", "mtu", "masquerade",
                               "gateway", "ip_range", "internal", "allow", "vni", "vxlan_port",
                               "dns_domain", "dns", "default", "subnet6", "host_prefix6",
                               "masquerade6"},
                  {"name"})  # subnet, subnet6 or both: validate_network says which is missing
    driver = r.typed(m, "driver", where, str, "bridge")
    subnet = r.typed(m, "subnet", where, str, "")
    gateway = r.typed(m, "gateway", where, str, "")
    ip_range = r.typed(m, "ip_range", where, str, "")
    # A network with a fixed gateway or range is one lease, as a Docker bridge network is.
    whole = subnet.rpartition("/")[2]
    default_prefix = int(whole) if (gateway or ip_range) and whole.isdigit() else \
        DEFAULT_HOST_PREFIX
    network = Network(
        name=m["name"],
        subnet=subnet,
        driver=driver,
        host_prefix=r.typed(m, "host_prefix", where, int, default_prefix),
        # an overlay's MTU defaults to each host's underlay MTU - 50 (0 = derive it)
        mtu=r.typed(m, "mtu", where, int, network_driver(driver).default_mtu()),
        masquerade=r.typed(m, "masquerade", where, bool, True),
        gateway=gateway,
        ip_range=ip_range,
        internal=r.typed(m, "internal", where, bool, False),
        allow=tuple(_strings(r, m, "allow", where)),
        vni=r.typed(m, "vni", where, int, 0),
        vxlan_port=r.typed(m, "vxlan_port", where, int, 0),
        dns_domain=r.typed(m, "dns_domain", where, str, "").lower().rstrip("."),
        dns=tuple(_strings(r, m, "dns", where)),
        subnet6=r.typed(m, "subnet6", where, str, ""),
        host_prefix6=r.typed(m, "host_prefix6", where, int, DEFAULT_HOST_PREFIX6),
        masquerade6=r.typed(m, "masquerade6", where, bool, False),
        default_policy=r.typed(m, "default", where, str, ""),
    )
    return validate_network(network, where)


def _resources(r: _Reader, raw: Any, where: str) -> dict[str, Any]:
    """A container's ``resources:`` as Container fields."""
    if raw is None:
        return {}
    m = r.mapping(raw, where, {"memory", "cpus", "cpu_shares", "pids", "ingress", "egress",
                               "burst"}, set())
    try:
        memory = parse_size(m.get("memory", 0), f"{where}.memory")
        bandwidth = {"ingress_bps": parse_rate(m.get("ingress", 0), f"{where}.ingress"),
                     "egress_bps": parse_rate(m.get("egress", 0), f"{where}.egress"),
                     "burst_bytes": parse_size(m.get("burst", 0), f"{where}.burst")}
    except Invalid as e:
        raise r.error(e.field, e.message) from e
    cpus = m.get("cpus", 0)
    if isinstance(cpus, bool) or not isinstance(cpus, int | float):
        raise r.error(f"{where}.cpus", "expected a number of CPUs, e.g. 0.5")
    return {"memory": memory, "cpus": float(cpus),
            "cpu_shares": r.typed(m, "cpu_shares", where, int, 0),
            "pids_limit": r.typed(m, "pids", where, int, 0), **bandwidth}


def _strings(r: _Reader, mapping: dict, key: str, where: str) -> list[str]:
    value = mapping.get(key, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise r.error(f"{where}.{key}", "expected a list of strings")
    return value


def _labels(r: _Reader, raw: Any, where: str) -> tuple[str, ...]:
    """``{app: web}`` as ``("app=web",)``; checked by ``validate``."""
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise r.error(where, "expected a mapping of labels, e.g. {app: web}")
    return labels_tuple({str(k): str(v).lower() if isinstance(v, bool) else str(v)
                         for k, v in raw.items()})


def _peers(r: _Reader, raw: Any, where: str) -> tuple[PolicyPeer, ...]:
    if raw is None:
        return ()
    peers = []
    for j, item in enumerate(raw):
        m = r.mapping(item, f"{where}[{j}]", {"labels", "network", "cidr", "except"}, set())
        peers.append(PolicyPeer(
            labels=_labels(r, m["labels"], f"{where}[{j}].labels") if "labels" in m else None,
            network=r.typed(m, "network", f"{where}[{j}]", str, ""),
            cidr=r.typed(m, "cidr", f"{where}[{j}]", str, ""),
            excepts=tuple(_strings(r, m, "except", f"{where}[{j}]"))))
    return tuple(peers)


def _policy_rules(r: _Reader, m: dict, direction: str,
                  where: str) -> tuple[PolicyRule, ...] | None:
    if direction not in m:
        return None
    peers_key = "from" if direction == "ingress" else "to"
    rules = []
    for i, raw in enumerate(m[direction] or ()):
        path = f"{where}.{direction}[{i}]"
        rm = r.mapping(raw or {}, path, {peers_key, "ports"}, set())
        rules.append(PolicyRule(peers=_peers(r, rm.get(peers_key), f"{path}.{peers_key}"),
                                ports=tuple(str(p) for p in rm.get("ports") or ())))
    return tuple(rules)


def _policy(r: _Reader, raw: Any, where: str) -> Policy:
    m = r.mapping(raw, where, {"name", "network", "networks", "select", "ingress", "egress"},
                  {"name"})
    if ("network" in m) == ("networks" in m):
        raise r.error(where, "give network: NAME or networks: all")
    policy = Policy(name=m["name"],
                    network=r.typed(m, "network", where, str, "") if "network" in m
                    else POLICY_ALL_NETWORKS,
                    select=_labels(r, m.get("select"), f"{where}.select"),
                    ingress=_policy_rules(r, m, "ingress", where),
                    egress=_policy_rules(r, m, "egress", where))
    try:
        return validate_policy(policy, where)
    except Invalid as e:  # the topology calls peers from/to and excepts except
        field = e.field.replace(".peers", ".from" if ".ingress" in e.field else ".to")
        raise r.error(field.replace(".excepts", ".except"), e.message) from e


def _check_policy_networks(r: _Reader, policies: tuple[Policy, ...],
                           networks: tuple[Network, ...]) -> None:
    known = {n.name for n in networks}
    for i, p in enumerate(policies):
        if p.network != POLICY_ALL_NETWORKS and p.network not in known:
            raise r.error(f"policies[{i}].network", f"no network {p.network!r} in this file")
        for direction in ("ingress", "egress"):
            for k, rule in enumerate(getattr(p, direction) or ()):
                for j, peer in enumerate(rule.peers):
                    if peer.network and peer.network not in known:
                        side = "from" if direction == "ingress" else "to"
                        raise r.error(f"policies[{i}].{direction}[{k}].{side}[{j}].network",
                                      f"no network {peer.network!r} in this file")


def _user_ns(r: _Reader, mapping: dict, where: str) -> str:
    """``user_ns``: auto | private | host; true and false stand for private and host."""
    value = mapping.get("user_ns", USERNS_AUTO)
    if isinstance(value, bool):
        return USERNS_PRIVATE if value else USERNS_HOST
    if value not in USERNS_MODES:
        raise r.error(f"{where}.user_ns", f"expected true, false or one of "
                      f"{', '.join(USERNS_MODES)}, got {value!r}")
    return str(value)


def _container(r: _Reader, raw: Any, where: str) -> Container:
    m = r.mapping(raw, where, {"name", "host", "network", "command", "interface", "ip", "ip6",
                               "ports", "share", "restart", "image", "resources", "volumes",
                               "cap_add", "user_ns", "env", "workdir", "aliases", "dns", "labels"},
                  {"name", "host"})
    image = r.typed(m, "image", where, str, "")
    command = m.get("command", [] if image else list(DEFAULT_COMMAND))
    if isinstance(command, str):
        command = command.split()
    if not isinstance(command, list) or not all(isinstance(a, str | int) for a in command):
        raise r.error(f"{where}.command", "expected a list of strings")
    container = Container(
        name=m["name"],
        host=r.typed(m, "host", where, str, ""),
        network=r.typed(m, "network", where, str, DEFAULT_NETWORK),
        command=tuple(str(a) for a in command),
        interface=r.typed(m, "interface", where, str, DEFAULT_INTERFACE),
        fixed_ip=r.typed(m, "ip", where, str, ""),
        fixed_ip6=r.typed(m, "ip6", where, str, ""),
        ports=tuple(_strings(r, m, "ports", where)),
        share=tuple(_strings(r, m, "share", where)),
        restart=r.typed(m, "restart", where, str, "no"),
        image=image,
        volumes=tuple(_strings(r, m, "volumes", where)),
        cap_add=tuple(_strings(r, m, "cap_add", where)),
        user_ns=_user_ns(r, m, where),
        env=tuple(_strings(r, m, "env", where)),
        workdir=r.typed(m, "workdir", where, str, ""),
        aliases=tuple(_strings(r, m, "aliases", where)),
        dns=tuple(_strings(r, m, "dns", where)),
        labels=_labels(r, m.get("labels"), f"{where}.labels"),
        **_resources(r, m.get("resources"), f"{where}.resources"),
    )
    try:
        return validate_container(container, where)
    except Invalid as e:  # the topology calls it `ip`
        field = e.field.replace(".fixed_ip6", ".ip6").replace(".fixed_ip", ".ip")
        field = field.replace(".pids_limit", ".pids")
        raise r.error(field, e.message) from e
