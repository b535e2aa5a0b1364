"""Conversion between the shared model and the generated protobuf messages (sdnctl.v1)."""

from __future__ import annotations

from sdnctl.model import (
    DEFAULT_INTERFACE,
    DEFAULT_MTU,
    Container,
    ContainerStatus,
    Host,
    Lease,
    Network,
)
from sdnctl.v1 import sdnctl_pb2 as pb
from sdnctl.validate import default_host_prefix

DEFAULT_COMMAND = ("sleep", "infinity")
DEFAULT_RESTART = "no"


def host_from_pb(msg: pb.Host) -> Host:
    return Host(name=msg.name, underlay_ip=msg.underlay_ip, lab=msg.lab,
                agent_pid=msg.agent_pid, netns=msg.netns)


def host_to_pb(host: Host, leases: tuple[Lease, ...] = (), revision: int = 0,
               connected: bool = False) -> pb.Host:
    return pb.Host(name=host.name, underlay_ip=host.underlay_ip, lab=host.lab,
                   agent_pid=host.agent_pid, netns=host.netns,
                   leases=[lease_to_pb(lease) for lease in leases], revision=revision,
                   agent_connected=connected)


def network_from_pb(msg: pb.Network) -> Network:
    """A host_prefix of 0 means the default: the subnet's own prefix for a network with a
    gateway or an ip_range (one lease, as a Docker bridge network), else 24."""
    return Network(
        name=msg.name,
        subnet=msg.subnet,
        driver=msg.driver or "bridge",
        host_prefix=msg.host_prefix or default_host_prefix(msg.subnet, msg.gateway, msg.ip_range),
        mtu=msg.mtu or DEFAULT_MTU,
        masquerade=msg.masquerade if msg.HasField("masquerade") else True,
        gateway=msg.gateway,
        ip_range=msg.ip_range,
        internal=msg.internal,
        allow=tuple(msg.allow),
        builtin=msg.builtin,
    )


def network_to_pb(network: Network, revision: int = 0) -> pb.Network:
    return pb.Network(name=network.name, driver=network.driver, subnet=network.subnet,
                      host_prefix=network.host_prefix, mtu=network.mtu,
                      masquerade=network.masquerade, revision=revision,
                      gateway=network.gateway, ip_range=network.ip_range,
                      internal=network.internal, allow=list(network.allow),
                      builtin=network.builtin)


def lease_from_pb(msg: pb.Lease) -> Lease:
    return Lease(network=msg.network, host=msg.host, subnet=msg.subnet, gateway=msg.gateway)


def lease_to_pb(lease: Lease) -> pb.Lease:
    return pb.Lease(network=lease.network, host=lease.host, subnet=lease.subnet,
                    gateway=lease.gateway)


def container_from_pb(msg: pb.Container) -> Container:
    return Container(
        name=msg.name,
        host=msg.host,
        network=msg.network,
        command=tuple(msg.command) or DEFAULT_COMMAND,
        interface=msg.interface or DEFAULT_INTERFACE,
        fixed_ip=msg.fixed_ip,
        ports=tuple(msg.ports),
        share=tuple(msg.share),
        restart=msg.restart or DEFAULT_RESTART,
    )


def container_to_pb(container: Container) -> pb.Container:
    """The spec only; the controller adds the address, status and revision (``container_pb``)."""
    return pb.Container(name=container.name, host=container.host, network=container.network,
                        command=list(container.command), interface=container.interface,
                        fixed_ip=container.fixed_ip, ports=list(container.ports),
                        share=list(container.share), restart=container.restart)


def status_to_pb(status: ContainerStatus) -> pb.ContainerStatus:
    return pb.ContainerStatus(name=status.name, state=status.state, pid=status.pid,
                              netns=status.netns, message=status.message)


def status_from_pb(msg: pb.ContainerStatus) -> ContainerStatus:
    return ContainerStatus(name=msg.name, state=msg.state, pid=msg.pid, netns=msg.netns,
                           message=msg.message)
