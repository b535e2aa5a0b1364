"""`sdnctl check FILE`: prove with real packets that a topology reaches what it should, and
nothing else.

Design note. Checking is two halves, as building is:

- **The plan is pure.** :func:`plan` turns a
  :class:`~sdnctl.topology.topology.Topology` into a list of
  :class:`Probe` (source container, target, protocol, port, expected verdict, and why it is
  expected). It holds every line of the ``expect:`` block (a network target expands to each
  container attached to it) and, unless ``--no-implied``, the *implied matrix* that the modes
  and networks promise (:func:`implied_reach`, :func:`implied_egress`). An expectation
  overrides the implied probe for the same (source, target, protocol, port).
- **The probes are real packets, sent from inside the source's network namespace** (the
  ``netns`` path its agent reports): ``ping -c1`` through ``nsenter`` for ICMP, and for TCP and
  UDP a socket born in that namespace (a throw-away thread enters it, see
  ``agent.kernel.netns.run_in_netns``). Nothing is sent from the root namespace, and only to
  addresses the topology names: its containers', the lab's outside world (203.0.113.1,
  2001:db8:0:ff::1), and addresses written in ``expect:``.
- **Both families.** Between two dual-stack containers (both networks have a ``subnet6``) the
  implied matrix holds an ICMPv6 probe beside the ICMP one, to the target's IPv6 address, with
  the same expectation (isolation, routing and network policies hold per family),
  and one to the outside world's IPv6 address, expected to answer only with ``masquerade6``.
  The report draws an ``icmp6`` matrix under the ``icmp`` one, so a broken IPv6 path shows as
  its own failing cell while IPv4 passes. An IPv6 literal in ``expect:`` is probed over IPv6.

What a probe measures, honestly: one of three outcomes (:data:`~sdnctl.topology.topology.OUTCOMES`),
and ``expect:`` names the one it wants (``reach: true`` is *open*, ``reach: false`` is
*filtered*; a refusal matches neither, so a port where nothing listens is never taken for a
working service, nor for a firewall):

- ICMP: an echo reply within the timeout is *open* (shown as reachable); anything else is
  *filtered* (shown as blocked).
- TCP: a completed handshake is *open*; a reset (RST) is *refused*: the path works, the
  target's kernel answered, nothing listens on the port. A timeout or an ICMP error
  (host/network unreachable) is *filtered*. Our isolation rules drop silently; a firewall that
  answers with a TCP reset would look *refused*.
- UDP: a connected socket sends one datagram and waits. An answer is *open*; an ICMP
  port-unreachable (the socket reports ECONNREFUSED) is *refused*; silence is *filtered*.
  Silence is ambiguous (a listening application that does not answer looks the same as a
  drop), and the target's kernel rate-limits port-unreachables, so UDP outcomes are the least
  certain.
- *open* proves that something accepted the connection, never that the application works.

CNI attachments (containers a runtime such as Podman or containerd put on a network through
the ``sdnctl`` CNI plugin) are not in the file, but they are on its hosts and networks: each one
the controller reports on a host and a network of the topology joins the check as a bridged
container of that network (:func:`with_attachments`), probed from inside its runtime's
namespace and as a target, under its attachment name (``cni-…``; ``sdnctl ps`` shows the
runtime's container ID beside it).

Probes run in parallel threads (:data:`WORKERS` at once); probes that would send the same
packet from the same namespace (a joined container shares its donor's) are sent once.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import ipaddress
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any

from agent.kernel.netns import run_in_netns
from sdnctl.api.client import CommandError, connect
from sdnctl.api.fields import ip_version
from sdnctl.api.model import MODE_HOST, MODE_NONE, Container, Network, spans_hosts
from sdnctl.api.policyeval import (
    DIRECTIONS,
    Evaluator,
    Verdict,
    default_policies,
    parse_policy_port,
    rules_of,
)
from sdnctl.api.policyeval import (
    Endpoint as PolicyEndpoint,
)
from sdnctl.lab import local
from sdnctl.lab.lab import EXTERNAL_IP, EXTERNAL_IP6
from sdnctl.topology import topology
from sdnctl.topology.deploy import Progress
from sdnctl.topology.topology import (
    DEFAULT_NETWORK,
    EXTERNAL,
    FILTERED,
    OPEN,
    REFUSED,
    Topology,
)
from sdnctl.v1 import sdnctl_pb2 as pb

#: An expected outcome for policy probes: open or refused (the path is there; whether anything
#: listens on the port is the application's business).
REACHABLE = "reachable"
#: How many probes are in flight at once.
WORKERS = 16
#: Seconds a probe waits for an answer (``--timeout``).
DEFAULT_TIMEOUT = 1.0
#: The controller's default bridge (``sdnctl-controller --default-bridge``), for containers
#: whose network the topology does not define.
DEFAULT_BRIDGE = Network(DEFAULT_NETWORK, "172.17.0.0/16", builtin=True)
UDP_PAYLOAD = b"sdnctl check\n"


# -- the plan (pure) ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """Must ``src`` reach ``dst``? ``dst`` is a container, ``external`` or an address;
    ``family`` 6 sends the packet to a container's IPv6 address (an IPv6 literal is always
    family 6)."""

    src: str
    dst: str
    proto: str = "icmp"
    port: int = 0
    expect: str = OPEN  # the outcome wanted: open, refused or filtered
    why: str = ""  # for an implied probe, the rule; for an expectation, "expect"
    line: int = 0  # the expectation's line in the file; 0 for implied probes
    family: int = 4

    @property
    def key(self) -> tuple[str, str, str, int]:
        """(source, target, protocol, port); the protocol is ``icmp6``, ``tcp6``... for IPv6."""
        return (self.src, self.dst, self.proto + ("6" if self.family == 6 else ""), self.port)

    @property
    def service(self) -> str:
        """``icmp``, ``tcp/80``; ``icmp6``, ``tcp6/80`` for IPv6."""
        return self.key[2] if self.proto == "icmp" else f"{self.key[2]}/{self.port}"

    @property
    def label(self) -> str:
        return f"{self.src} -> {self.dst} {self.service}"


def plan(topo: Topology, implied: bool = True,
         addresses: Mapping[str, str] | None = None,
         addresses6: Mapping[str, str] | None = None) -> list[Probe]:
    """Every probe ``check`` sends for ``topo``: the implied matrix (unless ``implied`` is
    False), then the ``expect:`` block, which overrides an implied probe with the same key.
    With the containers' ``addresses`` (and IPv6 ``addresses6``, as the controller reports
    them), the topology's network policies are part of the implied matrix
    (:func:`policy_probes`)."""
    probes: dict[tuple[str, str, str, int], Probe] = {}
    if implied:
        policy = PolicyView.of(topo, addresses, addresses6 or {}) \
            if addresses is not None else None
        for probe in implied_matrix(topo, policy):
            probes[probe.key] = probe
    for probe in expected(topo):
        probes[probe.key] = probe
    return list(probes.values())


def expected(topo: Topology) -> list[Probe]:
    """The ``expect:`` block as probes; a network target becomes one probe per container
    attached to it (the source itself left out)."""
    containers = {c.name for c in topo.containers}
    networks = {n.name for n in topo.networks}
    probes = []
    for e in topo.expect:
        if e.dst in containers or e.dst not in networks:
            targets = [e.dst]
        else:
            targets = [c.name for c in topo.containers if c.bridge_network == e.dst]
        probes += [Probe(e.src, dst, e.proto, e.port, e.reach, "expect", e.line,
                         6 if ip_version(dst) == 6 else 4)
                   for dst in targets if dst != e.src]
    return probes


@dataclass(frozen=True)
class PolicyView:
    """The topology's network policies (issue 22) evaluated on the containers' addresses by
    ``sdnctl.api.policyeval``, the very evaluation the agents enforce."""

    evaluator: Evaluator
    addresses: Mapping[str, str]  # container -> its address (its donor's, when joined)
    ports: tuple[tuple[str, int], ...]  # (proto, port) that some policy rule names
    addresses6: Mapping[str, str] = dataclasses.field(default_factory=dict)  # IPv6, likewise

    @classmethod
    def of(cls, topo: Topology, addresses: Mapping[str, str],
           addresses6: Mapping[str, str] | None = None) -> PolicyView | None:
        policies = [*topo.policies, *default_policies(topo.networks)]
        if not policies:
            return None
        where, where6 = {}, {}
        endpoints = []
        for c in topo.containers:
            donor = donor_of(topo, c)
            if donor.bridge_network is not None and addresses.get(donor.name):
                where[c.name] = addresses[donor.name]
                if (addresses6 or {}).get(donor.name):
                    where6[c.name] = (addresses6 or {})[donor.name]
                endpoints.append(PolicyEndpoint(c.name, donor.bridge_network, where[c.name],
                                                c.labels, where6.get(c.name, "")))
        ports = sorted({(r.protocol, r.first) for p in policies for d in DIRECTIONS
                        for rule in rules_of(p, d) or () for r in
                        (parse_policy_port(t, "ports") for t in rule.ports)
                        if r.protocol in ("tcp", "udp")})
        return cls(Evaluator(policies, endpoints, {n.name: n.subnet for n in topo.networks},
                             {n.name: n.subnet6 for n in topo.networks if n.subnet6}),
                   where, tuple(ports), where6)

    def verdict(self, src: str, dst: str, proto: str, port: int, family: int = 4) -> Verdict:
        """What the policies say of a new connection, between the two containers' addresses
        of ``family`` (the evaluation the agents enforce, in either family)."""
        at, external = (self.addresses6, EXTERNAL_IP6) if family == 6 else \
            (self.addresses, EXTERNAL_IP)
        a = at.get(src)
        b = at.get(dst) or (external if dst == EXTERNAL else "")
        if not a or not b:
            return Verdict(True)  # not a container of a network: policies do not apply
        return self.evaluator.verdict(a, b, proto, port)


def _with_policy(probe: Probe, policy: PolicyView | None) -> Probe:
    """An implied ICMP probe, filtered when the policies drop it."""
    if policy is None or probe.expect != OPEN:
        return probe
    v = policy.verdict(probe.src, probe.dst, probe.proto, probe.port, probe.family)
    return probe if v.allowed else dataclasses.replace(
        probe, expect=FILTERED, why=f"policy {v.policy}: {v.reason}")


def policy_probes(topo: Topology, policy: PolicyView) -> list[Probe]:
    """Per port that a policy names, each pair the topology lets talk: reachable (open, or
    refused when nothing listens: the path is there) when the policies allow it, else
    filtered. Between two dual-stack containers, the same over IPv6."""
    probes = []
    targets = [c for c in topo.containers if c.bridge_network is not None]
    for src in topo.containers:
        if donor_of(topo, src).bridge_network is None:
            continue
        for dst in targets:
            if dst.name == donor_of(topo, src).name or not implied_reach(topo, src, dst)[0]:
                continue
            families = (4, 6) if policy.addresses6.get(src.name) and \
                policy.addresses6.get(dst.name) else (4,)
            for family in families:
                for proto, port in policy.ports:
                    v = policy.verdict(src.name, dst.name, proto, port, family)
                    probes.append(Probe(src.name, dst.name, proto, port,
                                        REACHABLE if v.allowed else FILTERED,
                                        f"allowed by {v.policy}" if v.allowed and v.policy
                                        else "not isolated" if v.allowed
                                        else f"policy {v.policy}: {v.reason}", family=family))
    return probes


def implied_matrix(topo: Topology, policy: PolicyView | None = None) -> list[Probe]:
    """What the modes and networks promise, by ICMP: each source to each container with an
    address of its own (a bridged one), then to ``external``; and, between dual-stack
    containers (both networks have a ``subnet6``), the same by ICMPv6 (:func:`implied_reach`
    holds for both families, and so do the policies, :meth:`PolicyView.verdict`).

    An open (host-mode) container is probed only towards ``external``: it reaches whatever its
    host reaches, which the topology does not describe. Closed and open containers are never
    targets (no address of their own); a joined container is reached as its donor.
    """
    targets = [c for c in topo.containers if c.bridge_network is not None]
    probes = []
    for src in topo.containers:
        effective = donor_of(topo, src)
        if effective.mode != MODE_HOST:
            for dst in targets:
                if dst.name != effective.name:
                    reach, why = implied_reach(topo, src, dst)
                    probes.append(_with_policy(
                        Probe(src.name, dst.name, expect=_outcome(reach), why=why), policy))
                    if dual_stack(topo, effective) and dual_stack(topo, dst):
                        probes.append(_with_policy(
                            Probe(src.name, dst.name, expect=_outcome(reach), why=why,
                                  family=6), policy))
        reach, why = implied_egress(topo, src)
        probes.append(_with_policy(Probe(src.name, EXTERNAL, expect=_outcome(reach), why=why),
                                   policy))
        if dual_stack(topo, effective):
            reach, why = implied_egress6(topo, src)
            probes.append(_with_policy(Probe(src.name, EXTERNAL, expect=_outcome(reach),
                                             why=why, family=6), policy))
    return probes + (policy_probes(topo, policy) if policy is not None else [])


def dual_stack(topo: Topology, ctr: Container) -> bool:
    """Whether ``ctr`` (a donor, not a joined container) has an IPv6 address: it is bridged
    on a network with a ``subnet6``."""
    return ctr.bridge_network is not None and bool(network_of(topo, ctr.bridge_network).subnet6)



def _outcome(reach: bool) -> str:
    return OPEN if reach else FILTERED


def donor_of(topo: Topology, ctr: Container) -> Container:
    """A joined container behaves as its donor: it lives in the donor's network namespace
    (following a chain of joins; the topology rejects cycles)."""
    by_name = {c.name: c for c in topo.containers}
    seen = {ctr.name}
    while ctr.donor is not None and ctr.donor in by_name and ctr.donor not in seen:
        ctr = by_name[ctr.donor]
        seen.add(ctr.name)
    return ctr


def network_of(topo: Topology, name: str) -> Network:
    for n in topo.networks:
        if n.name == name:
            return n
    if name == DEFAULT_NETWORK:
        return DEFAULT_BRIDGE
    raise KeyError(f"unknown network {name!r}")


def _joined(topo: Topology, ctr: Container, verdict: tuple[bool, str]) -> tuple[bool, str]:
    donor = donor_of(topo, ctr)
    if donor.name == ctr.name:
        return verdict
    return verdict[0], f"joined to {donor.name}: {verdict[1]}"


def implied_reach(topo: Topology, src: Container, dst: Container) -> tuple[bool, str]:
    """Whether ``src`` should reach bridged ``dst``, and the rule that says so."""
    a, b = donor_of(topo, src), donor_of(topo, dst)
    if a.mode == MODE_NONE:
        return _joined(topo, src, (False, f"{a.name} is closed (network: none)"))
    if a.bridge_network is None or b.bridge_network is None:
        raise ValueError(f"{src.name} -> {dst.name}: implied only between bridged containers")
    na, nb = network_of(topo, a.bridge_network), network_of(topo, b.bridge_network)
    if na.name == nb.name:
        if a.host == b.host:
            verdict = (True, f"same network {na.name} on {a.host}")
        elif spans_hosts(na.driver):
            verdict = (True, f"overlay {na.name} spans {a.host} and {b.host}")
        else:
            verdict = (False, f"bridge {na.name} does not span hosts ({a.host}, {b.host})")
    elif nb.name in na.allow or na.name in nb.allow:
        if a.host == b.host:
            verdict = (True, f"{na.name} and {nb.name} are allowed to talk")
        else:
            verdict = (False, f"{na.name} and {nb.name} are allowed, but only a host routes "
                       f"between them, and {a.name} and {b.name} are on {a.host} and {b.host}")
    else:
        verdict = (False, f"{na.name} and {nb.name} are isolated from each other")
    return _joined(topo, src, verdict)


def implied_egress(topo: Topology, ctr: Container) -> tuple[bool, str]:
    """Whether ``ctr`` should reach the outside world, and the rule that says so."""
    c = donor_of(topo, ctr)
    if c.mode == MODE_NONE:
        verdict = (False, f"{c.name} is closed (network: none)")
    elif c.mode == MODE_HOST:
        verdict = (True, f"{c.name} is open: it is in {c.host}'s namespace")
    else:
        assert c.bridge_network is not None
        net = network_of(topo, c.bridge_network)
        if net.internal:
            verdict = (False, f"{net.name} is internal")
        elif not net.masquerade:
            # The outside world has no route back to container subnets: only NAT answers.
            verdict = (False, f"{net.name} does not masquerade, so nothing outside can answer")
        else:
            verdict = (True, f"{net.name} has egress NAT")
    return _joined(topo, ctr, verdict)


def implied_egress6(topo: Topology, ctr: Container) -> tuple[bool, str]:
    """Whether dual-stack ``ctr`` should reach the outside world over IPv6: only with NAT66
    (``masquerade6``); routed IPv6 leaves with the container's address, to which the lab's
    outside world has no route back."""
    c = donor_of(topo, ctr)
    assert c.bridge_network is not None
    net = network_of(topo, c.bridge_network)
    if net.internal:
        verdict = (False, f"{net.name} is internal")
    elif not net.masquerade6:
        verdict = (False, f"{net.name} routes IPv6 without NAT66 (no masquerade6), so nothing "
                   "outside can answer")
    else:
        verdict = (True, f"{net.name} has NAT66 (masquerade6)")
    return _joined(topo, ctr, verdict)


# -- measuring (real packets) ---------------------------------------------------------------------


@dataclass(frozen=True)
class Measurement:
    outcome: str | None  # open, refused, filtered; None: could not probe (no namespace, ...)
    detail: str


@dataclass(frozen=True)
class Result:
    probe: Probe
    address: str  # where the packet went ("" when the target has no address)
    measured: str | None  # an outcome, as Measurement.outcome
    detail: str

    @property
    def match(self) -> bool:
        if self.probe.expect == REACHABLE:
            return self.measured in (OPEN, REFUSED)
        return self.measured == self.probe.expect


def ping(netns: str, address: str, timeout: float) -> Measurement:
    argv = ["nsenter", f"--net={netns}", "ping", "-n", "-q", "-c1", f"-W{timeout:g}", address]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 10,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return Measurement(None, f"could not run ping: {e}")
    if done.returncode == 0:
        return Measurement(OPEN, "echo reply")
    if done.returncode == 1:
        return Measurement(FILTERED, f"no reply within {timeout:g}s")
    error = (done.stderr.strip().splitlines() or ["ping failed"])[-1]
    if "unreachable" in error.lower():  # ping: connect: Network is unreachable
        return Measurement(FILTERED, error.removeprefix("ping: "))
    return Measurement(None, error)


def _socket_probe(netns: str, address: str, proto: str, port: int,
                  timeout: float) -> Measurement:
    """A TCP connect or a UDP exchange from a socket born in ``netns``."""

    def probe() -> Measurement:
        kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        with socket.socket(family, kind) as s:
            s.settimeout(timeout)
            try:
                s.connect((address, port))
                if proto == "tcp":
                    return Measurement(OPEN, "connected")
                s.send(UDP_PAYLOAD)
                s.recv(512)
                return Measurement(OPEN, "answered")
            except ConnectionRefusedError:
                what = "reset (RST)" if proto == "tcp" else "port unreachable"
                return Measurement(REFUSED, what)
            except TimeoutError:
                return Measurement(FILTERED, f"no answer within {timeout:g}s")
            except OSError as e:
                if e.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
                    return Measurement(FILTERED, os.strerror(e.errno))
                return Measurement(None, f"{proto} probe failed: {e}")

    try:
        return run_in_netns(netns, probe)
    except OSError as e:  # the namespace went away
        return Measurement(None, f"cannot enter {netns}: {e}")


def measure(netns: str, address: str, proto: str, port: int, timeout: float) -> Measurement:
    """Send one probe from the network namespace at ``netns`` to ``address``."""
    if proto == "icmp":
        return ping(netns, address, timeout)
    return _socket_probe(netns, address, proto, port, timeout)


Measure = Callable[[str, str, str, int, float], Measurement]


@dataclass(frozen=True)
class Endpoint:
    """What the controller reports about a container: where to send from, and to."""

    netns: str  # "" when it has none yet (not created, failed)
    address: str  # its own address, or its donor's; "" for closed and open containers
    state: str
    mode: str
    resolver: str = ""  # its network's DNS resolver (its gateway), "" for closed and open ones
    address6: str = ""  # its IPv6 address (or its donor's) on a dual-stack network, else ""


def with_attachments(topo: Topology, reported: Iterable[pb.Container]) -> Topology:
    """``topo`` plus the CNI attachments the controller reports on its hosts and networks,
    as bridged containers of their network (see the module note)."""
    hosts = {h.name for h in topo.hosts}
    networks = {n.name for n in topo.networks}
    names = {c.name for c in topo.containers}
    extra = tuple(Container(name=c.name, host=c.host, network=c.network, interface=c.interface,
                            cni_id=c.cni.container_id, cni_netns=c.cni.netns)
                  for c in sorted(reported, key=lambda c: c.name)
                  if c.cni.netns and c.host in hosts and c.network in networks
                  and c.name not in names)
    return dataclasses.replace(topo, containers=topo.containers + extra) if extra else topo


def endpoints(topo: Topology, reported: Iterable[pb.Container]) -> dict[str, Endpoint]:
    """Each of the topology's containers as the controller reports it; CommandError when the
    controller does not know one (the topology is not up)."""
    by_name = {c.name: c for c in reported}
    missing = [c.name for c in topo.containers if c.name not in by_name]
    if missing:
        raise CommandError(f"the controller does not know container(s) {', '.join(missing)} of "
                           f"topology {topo.name!r}; run `sdnctl up` on it first")
    result = {}
    for ctr in topo.containers:
        donor = by_name.get(donor_of(topo, ctr).name, by_name[ctr.name])
        result[ctr.name] = Endpoint(by_name[ctr.name].status.netns or ctr.cni_netns, donor.ip,
                                    by_name[ctr.name].status.state or "pending", ctr.mode,
                                    donor.gateway, donor.ip6)
    return result


def is_name(dst: str, where: dict[str, Endpoint]) -> bool:
    """A target to resolve through DNS: not a container, ``external`` or an address."""
    if dst == EXTERNAL or dst in where:
        return False
    try:
        ipaddress.ip_address(dst)
        return False
    except ValueError:
        return True


def resolve(netns: str, resolver: str, name: str, timeout: float) -> tuple[str, str]:
    """``name`` through the source's resolver, asked from inside its namespace: (address, "")
    or ("", why it does not resolve)."""
    return local.lookup_a(netns, resolver, name, timeout)


def target_address(probe: Probe, where: dict[str, Endpoint],
                   names: dict[tuple[str, str], str] | None = None) -> str:
    if probe.dst == EXTERNAL:
        return EXTERNAL_IP6 if probe.family == 6 else EXTERNAL_IP
    if probe.dst in where:
        return where[probe.dst].address6 if probe.family == 6 else where[probe.dst].address
    if names is not None and (probe.src, probe.dst) in names:
        return names[(probe.src, probe.dst)]
    return str(ipaddress.ip_address(probe.dst))


def run(probes: Sequence[Probe], where: dict[str, Endpoint], timeout: float,
        progress: Progress | None = None, send: Measure = measure) -> list[Result]:
    """Measure every probe (each distinct packet once, :data:`WORKERS` at a time)."""
    packets: dict[tuple[str, str, str, int], list[int]] = {}
    results: list[Result | None] = [None] * len(probes)
    names: dict[tuple[str, str], str] = {}  # (source, name) -> address
    unresolved: dict[tuple[str, str], str] = {}  # (source, name) -> why not
    for probe in probes:
        src = where[probe.src]
        if not is_name(probe.dst, where) or (probe.src, probe.dst) in {**names, **unresolved}:
            continue
        if not src.netns:
            unresolved[(probe.src, probe.dst)] = \
                f"{probe.src} has no network namespace (state {src.state})"
        else:
            address, why = resolve(src.netns, src.resolver, probe.dst, timeout)
            if address:
                names[(probe.src, probe.dst)] = address
            else:
                unresolved[(probe.src, probe.dst)] = why
    for i, probe in enumerate(probes):
        if (probe.src, probe.dst) in unresolved:
            results[i] = Result(probe, "", None, unresolved[(probe.src, probe.dst)])
            continue
        src, address = where[probe.src], target_address(probe, where, names)
        if not address:
            mode = where[probe.dst].mode
            why = "it is closed" if mode == MODE_NONE else \
                "it is open, in its host's namespace" if mode == MODE_HOST else "none assigned"
            results[i] = Result(probe, "", FILTERED, f"{probe.dst} has no address ({why})")
        elif not src.netns:
            results[i] = Result(probe, address, None,
                                f"{probe.src} has no network namespace (state {src.state})")
        else:
            packets.setdefault((src.netns, address, probe.proto, probe.port), []).append(i)
    done = 0
    with ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="probe") as pool:
        futures = {pool.submit(send, *packet, timeout): packet for packet in packets}
        for future in as_completed(futures):
            m = future.result()
            for i in packets[futures[future]]:
                results[i] = Result(probes[i], futures[future][1], m.outcome, m.detail)
            done += 1
            if progress is not None and progress.tty:  # a log gets only the step lines
                progress.waiting(f"probed {done}/{len(packets)}")
    return [r for r in results if r is not None]


# -- output ---------------------------------------------------------------------------------------

_GREEN, _DIM, _RED, _RESET = "\033[32m", "\033[2m", "\033[1;31m", "\033[0m"


#: A ping is open or filtered; it reads better as reachable or blocked.
_PING_WORDS = {OPEN: "reachable", FILTERED: "blocked"}
MARKS = {OPEN: "✓", REFUSED: "⊘", FILTERED: "✗", None: "?"}
LEGEND = "✓ open  ⊘ refused  ✗ filtered  ? not measured  ≠ not as expected"


def verdict(outcome: str | None, proto: str = "tcp") -> str:
    if outcome is None:
        return "not measured"
    return _PING_WORDS.get(outcome, outcome) if proto == "icmp" else outcome


def cell(result: Result | None, color: bool = False) -> str:
    """✓ open (reachable), ⊘ refused, ✗ filtered (blocked), ? not measured; ≠ marks a
    mismatch."""
    if result is None:
        return "·"
    mark = MARKS[result.measured]
    text = mark if result.match else f"{mark}≠"
    if not color:
        return text
    colour = _RED if not result.match else _GREEN if result.measured == OPEN else _DIM
    return f"{colour}{text}{_RESET}"


def matrix(topo: Topology, results: Sequence[Result], color: bool = False,
           family: int = 4) -> str:
    """The ICMP results of one address family as a table: rows are sources, columns targets
    (``external`` last); headed ``icmp``, or ``icmp6`` for IPv6."""
    icmp = {(r.probe.src, r.probe.dst): r for r in results
            if r.probe.proto == "icmp" and r.probe.family == family}
    if not icmp:
        return ""
    head = "icmp6" if family == 6 else "icmp"
    order = [c.name for c in topo.containers]
    dsts = {dst for _, dst in icmp}
    columns = [n for n in order if n in dsts] + sorted(dsts - {*order, EXTERNAL}) + \
        ([EXTERNAL] if EXTERNAL in dsts else [])
    rows = [n for n in order if any(src == n for src, _ in icmp)]
    first = max(len(head), *(len(r) for r in rows))
    lines = [head.ljust(first) + "  " + "  ".join(columns)]
    for src in rows:
        cells = []
        for dst in columns:
            text = cell(icmp.get((src, dst)))
            pad = " " * (len(dst) - len(text))
            cells.append(cell(icmp.get((src, dst)), color) + pad)
        lines.append(src.ljust(first) + "  " + "  ".join(cells).rstrip())
    return "\n".join(lines)


def where_from(result: Result, file: str) -> str:
    p = result.probe
    return f"{file}:{p.line}" if p.line else f"implied: {p.why}"


def mismatch_line(result: Result, file: str) -> str:
    p = result.probe
    return (f"{p.label}: expected {verdict(p.expect, p.proto)}, measured "
            f"{verdict(result.measured, p.proto)} "
            f"[{result.detail}] ({where_from(result, file)})")


def report(topo: Topology, file: str, results: Sequence[Result], elapsed: float,
           color: bool = False) -> str:
    parts = []
    for family in (4, 6):
        drawn = matrix(topo, results, color, family)
        if drawn:
            parts.append(drawn)
    others = [r for r in results if r.probe.proto != "icmp"]
    if others:
        width = max(len(r.probe.label) for r in others)
        parts.append("\n".join(
            f"{r.probe.label.ljust(width)}  {cell(r, color)}{' ' * (3 - len(cell(r)))}"
            f"{verdict(r.measured)}: {r.detail}" for r in others))
    if parts:
        parts.append(LEGEND)
    unprobed = _not_targets(topo)
    if unprobed:
        parts.append("not targets: " + "; ".join(unprobed))
    bad = [r for r in results if not r.match]
    if bad:
        parts.append("MISMATCHES\n" + "\n".join(f"  {mismatch_line(r, file)}" for r in bad))
    summary = (f"{len(results)} probes, all as expected" if not bad else
               f"{len(results)} probes, {len(bad)} mismatch{'es' if len(bad) > 1 else ''}")
    mark = "✔" if not bad else "✘"
    parts.append(f"{mark} check {topo.name}: {summary} ({elapsed:.1f}s)")
    return "\n\n".join(parts)


def _not_targets(topo: Topology) -> list[str]:
    notes = []
    for c in topo.containers:
        if c.mode == MODE_NONE:
            notes.append(f"{c.name} (closed: no address)")
        elif c.mode == MODE_HOST:
            notes.append(f"{c.name} (open: in {c.host}'s namespace)")
        elif c.donor is not None:
            notes.append(f"{c.name} (joined: reached as {donor_of(topo, c).name})")
    return notes


def result_json(result: Result, file: str) -> dict[str, Any]:
    p = result.probe
    return {"from": p.src, "to": p.dst, "address": result.address, "proto": p.proto,
            "port": p.port, "family": p.family, "expected": p.expect, "measured": result.measured,
            "match": result.match, "detail": result.detail, "why": p.why,
            "where": where_from(result, file)}


# -- the verb -------------------------------------------------------------------------------------


def _timeout(text: str) -> float:
    value = float(text)
    if not 0.1 <= value <= 30:
        raise argparse.ArgumentTypeError(f"{text} is outside 0.1..30 seconds")
    return value


def cmd_check(args: argparse.Namespace) -> int:
    topo = topology.load(args.file)  # a bad file is refused before anything is asked
    client = connect()
    try:
        reported = client.api.ListContainers(pb.ListRequest(), timeout=10).containers
    finally:
        client.close()
    topo = with_attachments(topo, reported)
    where = endpoints(topo, reported)
    probes = plan(topo, implied=not args.no_implied,
                  addresses={name: e.address for name, e in where.items() if e.address},
                  addresses6={name: e.address6 for name, e in where.items() if e.address6})
    progress = Progress()
    progress.step(f"probing {topo.name}: {len(probes)} probes from inside its containers")
    started = time.monotonic()
    results = run(probes, where, args.timeout, progress)
    elapsed = time.monotonic() - started
    ok = all(r.match for r in results)
    progress.step(f"probed in {elapsed:.1f}s")
    if args.json:
        print(json.dumps({"topology": topo.name, "file": args.file, "ok": ok,
                          "elapsed": round(elapsed, 3),
                          "probes": [result_json(r, args.file) for r in results]}, indent=2))
    else:
        color = sys.stdout.isatty() and "NO_COLOR" not in os.environ
        print(report(topo, args.file, results, elapsed, color))
    return 0 if ok else 1


def register(sub: Any) -> None:
    """Add this module's verbs to the sdnctl argument parser's sub-parsers."""
    p = sub.add_parser(
        "check", help="probe a topology with real packets: its expect: block and the matrix its "
        "modes and networks imply (exit 1 on any mismatch)")
    p.add_argument("file")
    p.add_argument("--json", action="store_true", help="print every probe, expected and measured")
    p.add_argument("--no-implied", action="store_true",
                   help="probe only the expect: block, not the implied matrix")
    p.add_argument("--timeout", type=_timeout, default=DEFAULT_TIMEOUT,
                   help="seconds each probe waits for an answer (default %(default)s)")
    p.set_defaults(func=cmd_check)
