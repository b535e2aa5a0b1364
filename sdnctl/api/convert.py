"""Conversion between the shared model and the generated protobuf messages (sdnctl.v1)."""

from __future__ import annotations

from collections.abc import Iterator

from sdnctl.api.model import (
    DEFAULT_HOST_PREFIX6,
    DEFAULT_INTERFACE,
    USERNS_AUTO,
    USERNS_HOST,
    USERNS_PRIVATE,
    Allocation,
    Container,
    ContainerStatus,
    Host,
    Lease,
    Network,
    Policy,
    PolicyPeer,
    PolicyRule,
    default_host_prefix,
    labels_dict,
    labels_tuple,
    network_driver,
)
from sdnctl.api.policyeval import Endpoint
from sdnctl.v1 import sdnctl_pb2 as pb

DEFAULT_COMMAND = ("sleep", "infinity")
DEFAULT_RESTART = "no"
#: Container.user_ns: the API's UserNsMode and the model's words.
USERNS_NUMBER = {USERNS_AUTO: pb.USERNS_AUTO, USERNS_PRIVATE: pb.USERNS_PRIVATE,
                 USERNS_HOST: pb.USERNS_HOST}
USERNS_BY_NUMBER = {number: word for word, number in USERNS_NUMBER.items()}


def host_from_pb(msg: pb.Host) -> Host:
    return Host(name=msg.name, underlay_ip=msg.underlay_ip, lab=msg.lab,
                agent_pid=msg.agent_pid, netns=msg.netns, vtep_mac=msg.vtep_mac,
                underlay_mtu=msg.underlay_mtu, metrics_url=msg.metrics_url,
                docker_host=msg.docker_host)


def host_to_pb(host: Host, leases: tuple[Lease, ...] = (), revision: int = 0,
               connected: bool = False) -> pb.Host:
    return pb.Host(name=host.name, underlay_ip=host.underlay_ip, lab=host.lab,
                   agent_pid=host.agent_pid, netns=host.netns,
                   leases=[lease_to_pb(lease) for lease in leases], revision=revision,
                   agent_connected=connected, vtep_mac=host.vtep_mac,
                   underlay_mtu=host.underlay_mtu, metrics_url=host.metrics_url,
                   docker_host=host.docker_host)


def network_from_pb(msg: pb.Network) -> Network:
    """A host_prefix of 0 means the default: the subnet's own prefix for a network with a
    gateway or an ip_range (one lease, as a Docker bridge network), else 24. An MTU of 0 means
    1500 for a bridge network and "underlay MTU - 50" (kept as 0) for an overlay one."""
    driver = msg.driver or "bridge"
    return Network(
        name=msg.name,
        subnet=msg.subnet,
        driver=driver,
        host_prefix=msg.host_prefix or default_host_prefix(msg.subnet, msg.gateway, msg.ip_range),
        mtu=msg.mtu or network_driver(driver).default_mtu(),
        masquerade=msg.masquerade if msg.HasField("masquerade") else True,
        gateway=msg.gateway,
        ip_range=msg.ip_range,
        internal=msg.internal,
        allow=tuple(msg.allow),
        builtin=msg.builtin,
        vni=msg.vni,
        vxlan_port=msg.vxlan_port,
        dns_domain=msg.dns_domain.lower().rstrip("."),
        dns=tuple(msg.dns),
        default_policy=msg.default_policy,
        subnet6=msg.subnet6,
        host_prefix6=msg.host_prefix6 or DEFAULT_HOST_PREFIX6,
        masquerade6=msg.masquerade6,
    )


def network_to_pb(network: Network, revision: int = 0) -> pb.Network:
    return pb.Network(name=network.name, driver=network.driver, subnet=network.subnet,
                      host_prefix=network.host_prefix, mtu=network.mtu,
                      masquerade=network.masquerade, revision=revision,
                      gateway=network.gateway, ip_range=network.ip_range,
                      internal=network.internal, allow=list(network.allow),
                      builtin=network.builtin, vni=network.vni, vxlan_port=network.vxlan_port,
                      dns_domain=network.dns_domain, dns=list(network.dns),
                      default_policy=network.default_policy, subnet6=network.subnet6,
                      host_prefix6=network.host_prefix6, masquerade6=network.masquerade6)


def lease_from_pb(msg: pb.Lease) -> Lease:
    return Lease(network=msg.network, host=msg.host, subnet=msg.subnet, gateway=msg.gateway,
                 renewed_at=msg.renewed_at, expires_at=msg.expires_at, subnet6=msg.subnet6,
                 gateway6=msg.gateway6)


def lease_to_pb(lease: Lease) -> pb.Lease:
    return pb.Lease(network=lease.network, host=lease.host, subnet=lease.subnet,
                    gateway=lease.gateway, renewed_at=lease.renewed_at,
                    expires_at=lease.expires_at, subnet6=lease.subnet6,
                    gateway6=lease.gateway6)


def container_from_pb(msg: pb.Container) -> Container:
    return Container(
        name=msg.name,
        host=msg.host,
        network=msg.network,
        command=tuple(msg.command) or (() if msg.image else DEFAULT_COMMAND),
        interface=msg.interface or DEFAULT_INTERFACE,
        fixed_ip=msg.fixed_ip,
        fixed_ip6=msg.fixed_ip6,
        ports=tuple(msg.ports),
        share=tuple(msg.share),
        restart=msg.restart or DEFAULT_RESTART,
        image=msg.image,
        image_id=msg.image_id,
        memory=msg.resources.memory_bytes,
        cpus=msg.resources.cpus,
        cpu_shares=msg.resources.cpu_shares,
        pids_limit=msg.resources.pids_limit,
        volumes=tuple(msg.volumes),
        cap_add=tuple(msg.cap_add),
        user_ns=USERNS_BY_NUMBER.get(msg.user_ns, f"unknown ({msg.user_ns})"),
        stopped=msg.stopped,
        env=tuple(msg.env),
        workdir=msg.workdir,
        generation=msg.generation,
        cni_id=msg.cni.container_id,
        cni_netns=msg.cni.netns,
        cni_docker=msg.cni.docker,
        aliases=tuple(msg.aliases),
        dns=tuple(msg.dns),
        labels=labels_tuple(dict(msg.labels)),
        ingress_bps=msg.resources.ingress_bps,
        egress_bps=msg.resources.egress_bps,
        burst_bytes=msg.resources.burst_bytes,
    )


def container_to_pb(container: Container) -> pb.Container:
    """The spec only; the controller adds the address, status and revision (``container_pb``)."""
    return pb.Container(name=container.name, host=container.host, network=container.network,
                        command=list(container.command), interface=container.interface,
                        fixed_ip=container.fixed_ip, fixed_ip6=container.fixed_ip6,
                        ports=list(container.ports),
                        share=list(container.share), restart=container.restart,
                        image=container.image, image_id=container.image_id,
                        resources=pb.Resources(memory_bytes=container.memory, cpus=container.cpus,
                                               cpu_shares=container.cpu_shares,
                                               pids_limit=container.pids_limit,
                                               ingress_bps=container.ingress_bps,
                                               egress_bps=container.egress_bps,
                                               burst_bytes=container.burst_bytes),
                        volumes=list(container.volumes), cap_add=list(container.cap_add),
                        user_ns=USERNS_NUMBER[container.user_ns], stopped=container.stopped,
                        env=list(container.env), workdir=container.workdir,
                        generation=container.generation, aliases=list(container.aliases),
                        dns=list(container.dns), labels=labels_dict(container.labels),
                        cni=pb.CniOwner(container_id=container.cni_id,
                                        netns=container.cni_netns, docker=container.cni_docker)
                        if container.cni_netns else None)


def status_to_pb(status: ContainerStatus) -> pb.ContainerStatus:
    return pb.ContainerStatus(
        name=status.name, state=status.state, pid=status.pid, netns=status.netns,
        message=status.message, exit_code=status.exit_code, restarts=status.restarts,
        runtime=status.runtime, runtime_root=status.runtime_root, cgroup=status.cgroup,
        user_ns=status.user_ns)


def status_from_pb(msg: pb.ContainerStatus) -> ContainerStatus:
    return ContainerStatus(
        name=msg.name, state=msg.state, pid=msg.pid, netns=msg.netns, message=msg.message,
        exit_code=msg.exit_code, restarts=msg.restarts, runtime=msg.runtime,
        runtime_root=msg.runtime_root, cgroup=msg.cgroup, user_ns=msg.user_ns)


def allocation_to_pb(allocation: Allocation, host: str = "") -> pb.Allocation:
    return pb.Allocation(network=allocation.network, container=allocation.container,
                         interface=allocation.interface, address=allocation.address, host=host,
                         address6=allocation.address6)


#: Bytes per message when an image archive or blob is streamed (gRPC's default limit is 4 MiB).
CHUNK = 1 << 20


def file_chunks(path: str) -> Iterator[pb.ImageChunk]:
    """A file as the stream of ImageChunk messages that LoadImage, SaveImage and FetchBlob carry."""
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            yield pb.ImageChunk(data=chunk)


# -- network policy (issue 22) ------------------------------------------------------------------


def _peer_to_pb(peer: PolicyPeer) -> pb.PolicyPeer:
    return pb.PolicyPeer(labels=labels_dict(peer.labels or ()), any_labels=peer.labels is not None,
                         network=peer.network, cidr=peer.cidr, **{"except": list(peer.excepts)})


def _peer_from_pb(msg: pb.PolicyPeer) -> PolicyPeer:
    labels = labels_tuple(dict(msg.labels)) if msg.any_labels or msg.labels else None
    return PolicyPeer(labels=labels, network=msg.network, cidr=msg.cidr,
                      excepts=tuple(getattr(msg, "except")))


def _rules_to_pb(rules: tuple[PolicyRule, ...] | None) -> list[pb.PolicyRule]:
    return [pb.PolicyRule(peers=[_peer_to_pb(p) for p in r.peers], ports=list(r.ports))
            for r in rules or ()]


def _rules_from_pb(isolated: bool, msgs: Iterator[pb.PolicyRule] | list[pb.PolicyRule]
                   ) -> tuple[PolicyRule, ...] | None:
    rules = tuple(PolicyRule(peers=tuple(_peer_from_pb(p) for p in m.peers), ports=tuple(m.ports))
                  for m in msgs)
    return rules if isolated or rules else None


def policy_to_pb(policy: Policy, revision: int = 0) -> pb.Policy:
    return pb.Policy(name=policy.name, network=policy.network, select=labels_dict(policy.select),
                     ingress_isolated=policy.ingress is not None,
                     ingress=_rules_to_pb(policy.ingress),
                     egress_isolated=policy.egress is not None,
                     egress=_rules_to_pb(policy.egress), revision=revision)


def policy_from_pb(msg: pb.Policy) -> Policy:
    return Policy(name=msg.name, network=msg.network, select=labels_tuple(dict(msg.select)),
                  ingress=_rules_from_pb(msg.ingress_isolated, list(msg.ingress)),
                  egress=_rules_from_pb(msg.egress_isolated, list(msg.egress)))


def endpoint_to_pb(e: Endpoint) -> pb.PolicyEndpoint:
    return pb.PolicyEndpoint(container=e.container, network=e.network, address=e.address,
                             labels=labels_dict(e.labels), address6=e.address6)


def endpoint_from_pb(msg: pb.PolicyEndpoint) -> Endpoint:
    return Endpoint(container=msg.container, network=msg.network, address=msg.address,
                    labels=labels_tuple(dict(msg.labels)), address6=msg.address6)
