"""What the agent's host must run, as received from the controller's Watch stream.

The stream's messages are folded into one :class:`DesiredState`: a snapshot replaces it, a delta
changes it. A network's DNS name table arrives whole with the network and then as name deltas
(issue 21): each replaces the entries of the containers it lists. The reconciler only ever reads
a consistent copy (:meth:`DesiredState.copy`).
"""

from __future__ import annotations

import enum
import functools
import hashlib
import json
from dataclasses import asdict, dataclass, field, replace

from agent.names import container_mac
from agent.netpolicy import PolicyInput
from agent.observed import PeerEntries
from sdnctl.api import convert
from sdnctl.api.fields import parse_port
from sdnctl.api.model import (
    DEFAULT_MTU,
    DEFAULT_VXLAN_PORT,
    USERNS_AUTO,
    USERNS_MODES,
    PortMapping,
    network_driver,
    network_mode,
    wants_user_ns,
)
from sdnctl.api.policyeval import Endpoint
from sdnctl.v1 import sdnctl_pb2 as pb


@dataclass(frozen=True)
class LocalHost:
    """What the agent knows of its own host (flags and the underlay interface)."""

    underlay_ip: str = ""
    underlay_dev: str = ""
    vtep_mac: str = ""
    underlay_mtu: int = DEFAULT_MTU


@dataclass(frozen=True)
class DesiredPeer:
    """Another host holding a lease of an overlay network: one route, neighbour and FDB entry."""

    host: str
    subnet: str
    underlay_ip: str
    vtep_mac: str
    vtep_ip: str
    subnet6: str = ""  # dual-stack (issue 20): its IPv6 lease, and that lease's first address
    vtep_ip6: str = ""

    def entries(self) -> PeerEntries:
        """What the kernel keeps for this peer (route and neighbour per family, one FDB)."""
        return PeerEntries(self.subnet, self.vtep_ip, self.vtep_mac, self.underlay_ip,
                           self.subnet6, self.vtep_ip6)


@dataclass(frozen=True)
class DesiredName:
    """A container of a network, on any host, as the network's resolver answers it."""

    container: str
    aliases: tuple[str, ...]
    address: str
    dns: tuple[str, ...] = ()  # its own upstream resolvers (default: the network's)
    address6: str = ""  # dual-stack (issue 20): answered for AAAA


@dataclass(frozen=True)
class DesiredNetwork:
    name: str
    driver: str
    subnet: str  # this host's lease, e.g. 10.88.0.0/24
    gateway: str  # held by the bridge
    prefixlen: int
    mtu: int  # resolved: an overlay's 0 became the underlay MTU - 50
    masquerade: bool
    internal: bool = False
    allow: tuple[str, ...] = ()
    cidr: str = ""  # the whole network (an overlay spans hosts: other hosts' slices are in it)
    vni: int = 0
    vxlan_port: int = DEFAULT_VXLAN_PORT
    peers: tuple[DesiredPeer, ...] = ()
    dns_domain: str = ""
    dns: tuple[str, ...] = ()  # upstream resolvers (empty: the host's resolv.conf)
    names: tuple[DesiredName, ...] = ()
    subnet6: str = ""  # dual-stack (issue 20): this host's IPv6 lease, e.g. fd00:88::/64
    gateway6: str = ""  # held by the bridge too
    cidr6: str = ""  # the whole network's IPv6 CIDR
    masquerade6: bool = False  # NAT66 of IPv6 egress (default: routed)

    @property
    def gateway_cidr(self) -> str:
        return f"{self.gateway}/{self.prefixlen}" if self.subnet else ""  # "": IPv6-only

    @property
    def gateway6_cidr(self) -> str:
        return f"{self.gateway6}/{self.subnet6.split('/')[1]}" if self.subnet6 else ""

    @property
    def gateway_cidrs(self) -> tuple[str, ...]:
        """Every address the bridge holds, sorted as the kernel's are observed."""
        return tuple(sorted(filter(None, (self.gateway_cidr, self.gateway6_cidr))))

    @property
    def vtep_cidr(self) -> str:
        """The address of this host's VXLAN device: its lease's network address (flannel);
        none on an IPv6-only network."""
        return f"{self.subnet.split('/')[0]}/32" if self.subnet else ""

    @property
    def vtep6_cidr(self) -> str:
        """Its IPv6 address on a dual-stack overlay: the IPv6 lease's network address."""
        return f"{self.subnet6.split('/')[0]}/128" if self.subnet6 else ""

    @property
    def vtep_cidrs(self) -> tuple[str, ...]:
        return tuple(sorted(filter(None, (self.vtep_cidr, self.vtep6_cidr))))


@dataclass(frozen=True)
class DesiredContainer:
    name: str
    network: str  # the mode: none | host | container:<name> | <bridge network>
    command: tuple[str, ...]
    interface: str = "eth0"
    ip: str = ""  # allocated (bridge mode)
    prefixlen: int = 0
    gateway: str = ""
    ip6: str = ""  # dual-stack (issue 20): its IPv6 address, lease prefix and gateway
    prefixlen6: int = 0
    gateway6: str = ""
    ports: tuple[PortMapping, ...] = ()
    share: tuple[str, ...] = ()
    restart: str = "no"
    image_id: str = ""  # empty: the host's root filesystem, read-only
    memory: int = 0
    cpus: float = 0.0
    cpu_shares: int = 0
    pids_limit: int = 0
    volumes: tuple[str, ...] = ()
    cap_add: tuple[str, ...] = ()
    user_ns: str = USERNS_AUTO  # auto | private | host (see sdnctl.api.model.wants_user_ns)
    stopped: bool = False
    env: tuple[str, ...] = ()
    workdir: str = ""
    generation: int = 0
    cni_id: str = ""  # a CNI attachment: the runtime's container ID
    cni_netns: str = ""  # ... and its namespace (the runtime's: never created nor removed here)
    cni_docker: bool = False  # a Docker endpoint: the Docker plugin builds its veth (issue 18)
    aliases: tuple[str, ...] = ()
    ingress_bps: int = 0  # bandwidth limits (issue 22): changed in place, not in spec_hash
    egress_bps: int = 0
    burst_bytes: int = 0

    @property
    def mode(self) -> str:
        return network_mode(self.network)[0]

    @property
    def target(self) -> str:
        """The bridge network (bridged) or the donor container (joined); else empty."""
        return network_mode(self.network)[1]

    @property
    def address_cidr(self) -> str:
        return f"{self.ip}/{self.prefixlen}" if self.ip else ""  # "": IPv6-only

    @property
    def addressed(self) -> bool:
        """It holds an address (either family: an IPv6-only network's have ``ip6`` only)."""
        return bool(self.ip or self.ip6)

    @property
    def mac(self) -> str:
        """Its interface's MAC, derived from its address (IPv4, else IPv6)."""
        return container_mac(self.ip or self.ip6)

    @property
    def address6_cidr(self) -> str:
        return f"{self.ip6}/{self.prefixlen6}" if self.ip6 else ""

    @property
    def address_cidrs(self) -> tuple[str, ...]:
        """Every address its interface holds, sorted as the kernel's are observed."""
        return tuple(sorted(filter(None, (self.address_cidr, self.address6_cidr))))

    def runs_user_ns(self, host_supports: bool) -> bool:
        """Whether it gets a user namespace on this host."""
        return wants_user_ns(self.user_ns, self.network, bool(self.image_id), self.cap_add,
                             host_supports)

    def spec_hash(self) -> str:
        """Changes whenever the container must be restarted to match its spec."""
        raw = json.dumps({"command": self.command, "network": self.network,
                          "share": sorted(self.share), "image": self.image_id,
                          "limits": [self.memory, self.cpus, self.cpu_shares, self.pids_limit],
                          "volumes": self.volumes, "caps": sorted(self.cap_add),
                          "userns": self.user_ns, "env": self.env, "workdir": self.workdir,
                          "generation": self.generation},
                         sort_keys=True).encode()
        return hashlib.sha256(raw).hexdigest()[:16]


def resolve_mtu(driver: str, mtu: int, underlay_mtu: int, underlay6: bool = False) -> int:
    """A network's MTU on this host: as given, else 1500 for a bridge and the underlay's minus
    the VXLAN overhead for an overlay (50 bytes, 70 over an IPv6 underlay: a bigger one would
    be dropped or fragmented)."""
    return network_driver(driver).mtu_on(mtu, underlay_mtu, underlay6)


def network_from_pb(msg: pb.HostNetwork, local: LocalHost | None = None) -> DesiredNetwork:
    driver = msg.network.driver or "bridge"
    underlay_mtu = local.underlay_mtu if local is not None else DEFAULT_MTU
    underlay6 = local is not None and ":" in local.underlay_ip
    return DesiredNetwork(
        name=msg.network.name,
        driver=driver,
        subnet=msg.lease.subnet,
        gateway=msg.lease.gateway,
        prefixlen=int(msg.lease.subnet.split("/")[1]) if msg.lease.subnet else 0,
        mtu=resolve_mtu(driver, msg.network.mtu, underlay_mtu, underlay6),
        masquerade=msg.network.masquerade if msg.network.HasField("masquerade") else True,
        cidr=msg.network.subnet,
        vni=msg.network.vni,
        vxlan_port=msg.network.vxlan_port or DEFAULT_VXLAN_PORT,
        peers=tuple(sorted((DesiredPeer(p.host, p.subnet, p.underlay_ip, p.vtep_mac, p.vtep_ip,
                                        p.subnet6, p.vtep_ip6)
                            for p in msg.peers), key=lambda p: p.host)),
        internal=msg.network.internal,
        allow=tuple(sorted(msg.network.allow)),
        dns_domain=msg.network.dns_domain.lower().rstrip("."),
        dns=tuple(msg.network.dns),
        names=tuple(name_from_pb(n) for n in msg.names),
        subnet6=msg.lease.subnet6,
        gateway6=msg.lease.gateway6,
        cidr6=msg.network.subnet6,
        masquerade6=msg.network.masquerade6,
    )


def name_from_pb(msg: pb.DnsName) -> DesiredName:
    return DesiredName(msg.container, tuple(msg.aliases), msg.address, tuple(msg.dns),
                       msg.address6)


def with_names(net: DesiredNetwork, delta: pb.NameDelta) -> DesiredNetwork:
    """``net`` with the entries of the containers ``delta`` lists replaced by its names."""
    changed = set(delta.containers)
    names = [n for n in net.names if n.container not in changed]
    names.extend(name_from_pb(n) for n in delta.names)
    return replace(net, names=tuple(sorted(names, key=lambda n: n.container)))


def container_from_pb(msg: pb.Container) -> DesiredContainer:
    """The shared conversion (:func:`sdnctl.api.convert.container_from_pb`), plus what the
    controller resolved (the address) and what the agent wants parsed (ports, sorted shares).
    The command is taken as sent (the controller filled in the default), and a user-namespace
    mode this agent does not know counts as ``auto``."""
    spec = convert.container_from_pb(msg)
    return DesiredContainer(
        name=spec.name,
        network=spec.network,
        command=tuple(msg.command),
        interface=spec.interface,
        ip=msg.ip,
        prefixlen=msg.prefixlen,
        gateway=msg.gateway,
        ip6=msg.ip6,
        prefixlen6=msg.prefixlen6,
        gateway6=msg.gateway6,
        ports=tuple(parse_port(p, f"ports[{i}]") for i, p in enumerate(spec.ports)),
        share=tuple(sorted(spec.share)),
        restart=spec.restart,
        image_id=spec.image_id,
        memory=spec.memory,
        cpus=spec.cpus,
        cpu_shares=spec.cpu_shares,
        pids_limit=spec.pids_limit,
        volumes=spec.volumes,
        cap_add=spec.cap_add,
        user_ns=spec.user_ns if spec.user_ns in USERNS_MODES else USERNS_AUTO,
        stopped=spec.stopped,
        env=spec.env,
        workdir=spec.workdir,
        generation=spec.generation,
        cni_id=spec.cni_id,
        cni_netns=spec.cni_netns,
        cni_docker=spec.cni_docker,
        aliases=spec.aliases,
        ingress_bps=spec.ingress_bps,
        egress_bps=spec.egress_bps,
        burst_bytes=spec.burst_bytes,
    )


def policy_from_pb(msg: pb.PolicySet, held: PolicyInput | None = None) -> PolicyInput:
    """The policy input ``msg`` carries; ``held``'s endpoints when it keeps them (its
    ``endpoints_kept``: see WatchRequest.keeps_endpoints)."""
    return PolicyInput(
        policies=tuple(convert.policy_from_pb(p) for p in msg.policies),
        endpoints=held.endpoints if msg.endpoints_kept and held is not None else
        _endpoints(pb.PolicySet(endpoints=msg.endpoints).SerializeToString()),
        network_cidrs=tuple(sorted(msg.network_cidrs.items())),
        network_cidrs6=tuple(sorted(msg.network_cidrs6.items())))


@functools.lru_cache(maxsize=2)
def _endpoints(data: bytes) -> tuple[Endpoint, ...]:
    """The selected addresses of a policy set (its ``endpoints`` alone, serialized): decoded
    once while they stay the same. A policy's creation or deletion sends them again, every one
    (~3.5 ms of decoding at 900 of them, on each of 100 agents); keyed by their bytes, the same
    ones cost a copy and a serialization (~0.15 ms)."""
    return tuple(convert.endpoint_from_pb(e) for e in pb.PolicySet.FromString(data).endpoints)


class Changed(enum.IntFlag):
    """What a Watch event changed (``DesiredState.apply``); false when nothing did."""

    #: The policy input: the policy table is rewritten, no pass (agent/main.py), since nothing
    #: else the host runs depends on it. A change of policies, or of the addresses they select
    #: on other hosts, reaches every host: at 100 hosts a whole pass each was 100 passes.
    POLICY = enum.auto()
    HOST = enum.auto()  # networks, containers, the first snapshot: a pass
    #: Only overlays' peers (issue 21): a host joined, left or moved. Every member hears of
    #: it, so a whole pass each was 100 passes at 100 hosts: the peer work alone
    #: (``Reconciler.sync_peers``) does.
    PEERS = enum.auto()
    #: Only networks' name tables (a container of another host came or went): the resolver's
    #: business (agent/dns.py), no pass.
    NAMES = enum.auto()


def networks_changed(before: dict[str, DesiredNetwork],
                     after: dict[str, DesiredNetwork]) -> Changed:
    """What a change of networks is: PEERS and/or NAMES when only those fields moved, else
    HOST (pure)."""
    changed = Changed(0)
    for name in before.keys() | after.keys():
        old, new = before.get(name), after.get(name)
        if old == new:
            continue
        if old is None or new is None or \
                replace(old, peers=(), names=()) != replace(new, peers=(), names=()):
            return Changed.HOST
        if old.peers != new.peers:
            changed |= Changed.PEERS
        if old.names != new.names:
            changed |= Changed.NAMES
    return changed


@dataclass
class DesiredState:
    revision: int = 0
    synced: bool = False  # a snapshot has arrived: until then, remove nothing
    networks: dict[str, DesiredNetwork] = field(default_factory=dict)
    containers: dict[str, DesiredContainer] = field(default_factory=dict)
    local: LocalHost = field(default_factory=LocalHost)
    #: Network policy (issue 22): every policy and selected address, on any host.
    policy: PolicyInput = field(default_factory=PolicyInput)
    #: CNI attachments the agent built before the stream delivered them (CNI ADD's fast path,
    #: agent/cni.py): name -> (the revision of their record, the container). Each stays in
    #: ``containers`` until the stream has reached that revision; from then on the stream's
    #: word is the whole truth (a later Detach included).
    provisional: dict[str, tuple[int, DesiredContainer]] = field(default_factory=dict)

    def apply(self, event: pb.WatchEvent) -> Changed:
        """Fold one Watch event in. Returns what changed: nothing (a progress notice, or what
        this host holds already), the policy input alone, or what the host runs."""
        before = (dict(self.networks), dict(self.containers), self.synced)
        policy_before = self.policy
        if event.HasField("policy_set"):
            self.policy = policy_from_pb(event.policy_set, self.policy)
        if event.snapshot:
            self.networks.clear()
            self.containers.clear()
            self.synced = True
        for name in event.deleted_networks:
            self.networks.pop(name, None)
        for name in event.deleted_containers:
            self.containers.pop(name, None)
        for net in event.networks:
            desired = network_from_pb(net, self.local)
            held = self.networks.get(desired.name)
            if net.names_kept and held is not None:  # re-sent for its peers: the table stands
                desired = replace(desired, names=held.names)
            self.networks[desired.name] = desired
        for delta in event.name_deltas:
            held = self.networks.get(delta.network)
            if held is not None:  # else not held here: it comes whole with its lease
                self.networks[held.name] = with_names(held, delta)
        for ctr in event.containers:
            desired_ctr = container_from_pb(ctr)
            self.containers[desired_ctr.name] = desired_ctr
        if event.revision:
            self.revision = max(self.revision, event.revision) if not event.snapshot \
                else event.revision
        self._keep_provisional()
        changed = Changed(0)
        if before[1:] != (self.containers, self.synced):
            changed |= Changed.HOST
        elif before[0] != self.networks:
            changed |= networks_changed(before[0], self.networks)
        if policy_before != self.policy:
            changed |= Changed.POLICY
        return changed

    def add_provisional(self, revision: int, ctr: DesiredContainer) -> bool:
        """``ctr``, recorded by the controller at ``revision``, before the stream brings it.
        When the stream has reached that revision already, what it says stands: False when
        it does not want ``ctr`` as given (changed or removed since)."""
        if revision <= self.revision:
            return self.containers.get(ctr.name) == ctr
        self.provisional[ctr.name] = (revision, ctr)
        self.containers[ctr.name] = ctr
        return True

    def drop_provisional(self, ctr: DesiredContainer) -> None:
        """Undo :meth:`add_provisional` (a fast ADD that failed), unless the stream has
        delivered the record meanwhile."""
        if self.provisional.pop(ctr.name, None) is not None and \
                self.containers.get(ctr.name) == ctr:
            del self.containers[ctr.name]

    def _keep_provisional(self) -> None:
        """Provisional containers the stream has not reached yet stay (a snapshot taken before
        their record must not remove them); the others are the stream's now."""
        for name, (revision, ctr) in list(self.provisional.items()):
            if self.revision >= revision:
                del self.provisional[name]
            else:
                self.containers[name] = ctr

    def copy(self) -> DesiredState:
        return DesiredState(self.revision, self.synced, dict(self.networks),
                            dict(self.containers), self.local, self.policy,
                            dict(self.provisional))

    def describe(self) -> dict[str, object]:
        return {"revision": self.revision,
                "networks": [asdict(n) for n in self.networks.values()],
                "containers": [asdict(c) for c in self.containers.values()]}
