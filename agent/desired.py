"""What the agent's host must run, as received from the controller's Watch stream.

The stream's messages are folded into one :class:`DesiredState`: a snapshot replaces it, a delta
changes it. The reconciler only ever reads a consistent copy (:meth:`DesiredState.copy`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

from sdnctl.model import PortMapping, network_mode, parse_port
from sdnctl.v1 import sdnctl_pb2 as pb


@dataclass(frozen=True)
class DesiredNetwork:
    name: str
    driver: str
    subnet: str  # this host's lease, e.g. 10.88.0.0/24
    gateway: str  # held by the bridge
    prefixlen: int
    mtu: int
    masquerade: bool
    internal: bool = False
    allow: tuple[str, ...] = ()

    @property
    def gateway_cidr(self) -> str:
        return f"{self.gateway}/{self.prefixlen}"


@dataclass(frozen=True)
class DesiredContainer:
    name: str
    network: str  # the mode: none | host | container:<name> | <bridge network>
    command: tuple[str, ...]
    interface: str = "eth0"
    ip: str = ""  # allocated (bridge mode)
    prefixlen: int = 0
    gateway: str = ""
    ports: tuple[PortMapping, ...] = ()
    share: tuple[str, ...] = ()
    restart: str = "no"

    @property
    def mode(self) -> str:
        return network_mode(self.network)[0]

    @property
    def target(self) -> str:
        """The bridge network (bridged) or the donor container (joined); else empty."""
        return network_mode(self.network)[1]

    @property
    def address_cidr(self) -> str:
        return f"{self.ip}/{self.prefixlen}"

    def spec_hash(self) -> str:
        """Changes whenever the container must be restarted to match its spec."""
        raw = json.dumps({"command": self.command, "network": self.network,
                          "share": sorted(self.share)}, sort_keys=True).encode()
        return hashlib.sha256(raw).hexdigest()[:16]


def network_from_pb(msg: pb.HostNetwork) -> DesiredNetwork:
    return DesiredNetwork(
        name=msg.network.name,
        driver=msg.network.driver or "bridge",
        subnet=msg.lease.subnet,
        gateway=msg.lease.gateway,
        prefixlen=int(msg.lease.subnet.split("/")[1]),
        mtu=msg.network.mtu or 1500,
        masquerade=msg.network.masquerade if msg.network.HasField("masquerade") else True,
        internal=msg.network.internal,
        allow=tuple(sorted(msg.network.allow)),
    )


def container_from_pb(msg: pb.Container) -> DesiredContainer:
    return DesiredContainer(
        name=msg.name,
        network=msg.network,
        command=tuple(msg.command),
        interface=msg.interface or "eth0",
        ip=msg.ip,
        prefixlen=msg.prefixlen,
        gateway=msg.gateway,
        ports=tuple(parse_port(p, f"ports[{i}]") for i, p in enumerate(msg.ports)),
        share=tuple(sorted(msg.share)),
        restart=msg.restart or "no",
    )


@dataclass
class DesiredState:
    revision: int = 0
    synced: bool = False  # a snapshot has arrived: until then, remove nothing
    networks: dict[str, DesiredNetwork] = field(default_factory=dict)
    containers: dict[str, DesiredContainer] = field(default_factory=dict)

    def apply(self, event: pb.WatchEvent) -> bool:
        """Fold one Watch event in. Returns True when anything the host must run changed."""
        before = (dict(self.networks), dict(self.containers), self.synced)
        if event.snapshot:
            self.networks.clear()
            self.containers.clear()
            self.synced = True
        for name in event.deleted_networks:
            self.networks.pop(name, None)
        for name in event.deleted_containers:
            self.containers.pop(name, None)
        for net in event.networks:
            desired = network_from_pb(net)
            self.networks[desired.name] = desired
        for ctr in event.containers:
            desired_ctr = container_from_pb(ctr)
            self.containers[desired_ctr.name] = desired_ctr
        if event.revision:
            self.revision = max(self.revision, event.revision) if not event.snapshot \
                else event.revision
        return before != (self.networks, self.containers, self.synced)

    def copy(self) -> DesiredState:
        return DesiredState(self.revision, self.synced, dict(self.networks),
                            dict(self.containers))

    def describe(self) -> dict[str, object]:
        return {"revision": self.revision,
                "networks": [asdict(n) for n in self.networks.values()],
                "containers": [asdict(c) for c in self.containers.values()]}
