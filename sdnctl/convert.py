"""Conversion between the shared model and the generated protobuf messages (sdnctl.v1)."""

from __future__ import annotations

from sdnctl.model import (
    DEFAULT_HOST_PREFIX,
    DEFAULT_INTERFACE,
    DEFAULT_MTU,
    Container,
    ContainerStatus,
    Host,
    Lease,
    Network,
)
from sdnctl.v1 import sdnctl_pb2 as pb

DEFAULT_COMMAND = ("sleep", "infinity")


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
    return Network(
        name=msg.name,
        subnet=msg.subnet,
        driver=msg.driver or "bridge",
        host_prefix=msg.host_prefix or DEFAULT_HOST_PREFIX,
        mtu=msg.mtu or DEFAULT_MTU,
        masquerade=msg.masquerade if msg.HasField("masquerade") else True,
    )


def network_to_pb(network: Network, revision: int = 0) -> pb.Network:
    return pb.Network(name=network.name, driver=network.driver, subnet=network.subnet,
                      host_prefix=network.host_prefix, mtu=network.mtu,
                      masquerade=network.masquerade, revision=revision)


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
    )


def status_to_pb(status: ContainerStatus) -> pb.ContainerStatus:
    return pb.ContainerStatus(name=status.name, state=status.state, pid=status.pid,
                              netns=status.netns, message=status.message)


def status_from_pb(msg: pb.ContainerStatus) -> ContainerStatus:
    return ContainerStatus(name=msg.name, state=msg.state, pid=msg.pid, netns=msg.netns,
                           message=msg.message)
