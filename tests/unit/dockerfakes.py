"""Small fakes of the Docker plugin's side (``DockerSide``), shared by the plugin's unit tests
(test_docker_ipv6.py) and its fuzzing (test_fuzz_docker_plugin.py): a controller that grants
addresses from this host's leases as the real one does (an IPv6 address with the IPv4 one on a
dual-stack network, a re-Attach by the same owner moving it to a fixed IPv6 address) and keeps
the attachments it holds, and a kernel and firewall that record calls.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Iterator
from typing import Any

from agent.cni import Realised
from agent.desired import DesiredContainer, DesiredNetwork, DesiredState
from agent.dockerplugin import DockerSide, Plugin
from sdnctl.api import wire
from sdnctl.api.model import ContainerStatus
from sdnctl.v1 import sdnctl_pb2 as pb

NID = "n" * 64
EID = "e" * 64
POOL = "sdnctl/10.88.0.0/16"

#: The controller's networks, and this host's leases: (IPv4 lease, gateway, IPv6 lease, gateway).
NETWORKS = [pb.Network(name="front", driver="overlay", subnet="10.88.0.0/16"),
            pb.Network(name="dual", driver="overlay", subnet="10.89.0.0/16",
                       subnet6="fd00:89::/48"),
            pb.Network(name="only6", driver="bridge", subnet6="fd00:93::/48")]
LEASES = {"front": ("10.88.3.0/24", "10.88.3.1", "", ""),
          "dual": ("10.89.3.0/24", "10.89.3.1", "fd00:89:0:3::/64", "fd00:89:0:3::1")}


def FakeRpcError(code: wire.StatusCode, details: str) -> wire.RpcError:
    """What the agent's channel raises for a refused call (raised like a class)."""
    return wire.RpcError(code, details)


class FakeController:
    """HostSync and Controller stubs: the networks above; ``held`` is every attachment."""

    def __init__(self) -> None:
        self.writes: list[tuple[str, Any]] = []
        self.next = 5
        self.held: dict[str, pb.Container] = {}

    def Attach(self, request: pb.AttachRequest, timeout: float = 0) -> pb.Container:
        self.writes.append(("Attach", request))
        spec = request.container
        subnet, gateway, subnet6, gateway6 = LEASES.get(spec.network, LEASES["front"])
        if spec.fixed_ip6 and (not subnet6 or ipaddress.ip_address(spec.fixed_ip6)
                               not in ipaddress.ip_network(subnet6)):
            self.writes.pop()  # refused: nothing written
            raise FakeRpcError(wire.StatusCode.INVALID_ARGUMENT,
                               f"container.fixed_ip6: {spec.fixed_ip6} is not in this host's "
                               f"lease {subnet6 or '(none)'}")
        have = self.held.get(spec.name)
        if have is None:
            n = self.next
            self.next += 1
            prefix = subnet.rsplit(".", 1)[0]
            have = pb.Container(name=spec.name, network=spec.network, host=spec.host,
                                ip=spec.fixed_ip or f"{prefix}.{n}", prefixlen=24,
                                gateway=gateway, revision=7, cni=spec.cni)
            if subnet6:
                have.ip6 = spec.fixed_ip6 or str(ipaddress.ip_network(subnet6)[n])
                have.prefixlen6, have.gateway6 = 64, gateway6
        elif spec.fixed_ip6:  # the same owner again: its IPv6 address moves
            have.ip6 = spec.fixed_ip6
            have.revision += 1
        have.ports[:] = spec.ports
        self.held[spec.name] = have
        answer = pb.Container()
        answer.CopyFrom(have)
        return answer

    def Detach(self, request: pb.DetachRequest, timeout: float = 0) -> pb.DeleteResponse:
        self.writes.append(("Detach", request))
        self.held.pop(request.name, None)
        return pb.DeleteResponse(revision=8)

    def ListNetworks(self, request: pb.ListRequest, timeout: float = 0) -> Any:
        return pb.ListNetworksResponse(networks=NETWORKS)

    def CreateNetwork(self, request: pb.CreateNetworkRequest, timeout: float = 0) -> Any:
        self.writes.append(("CreateNetwork", request))
        return request.network


class FakeKernel:
    def __init__(self, log: list[tuple[str, Any]]) -> None:
        self.log = log

    def ensure_handover_veth(self, host_ifname: str, alias: str, bridge: str, mtu: int,
                             peer_ifname: str, mac: str) -> int:
        self.log.append(("veth", host_ifname))
        return 1

    def remove_link(self, name: str) -> bool:
        self.log.append(("remove", name))
        return True


def desired_network(name: str) -> DesiredNetwork:
    network = next(n for n in NETWORKS if n.name == name)
    subnet, gateway, subnet6, gateway6 = LEASES[name]
    return DesiredNetwork(name=name, driver="overlay", subnet=subnet, gateway=gateway,
                          prefixlen=24, mtu=1450, masquerade=True, cidr=network.subnet,
                          subnet6=subnet6, gateway6=gateway6, cidr6=network.subnet6)


def make_plugin(state_file: str = "") -> tuple[Plugin, FakeController]:
    """A plugin whose host runs endpoint ``dk-1`` (10.88.3.2, Docker endpoint EID) on Docker
    network NID (sdnctl network ``front``); the desired state holds every attachment."""
    controller = FakeController()
    realised = Realised()
    realised.publish(100, [ContainerStatus(name="dk-1", state="running")])
    dk1 = DesiredContainer(name="dk-1", network="front", command=(), ip="10.88.3.2",
                           prefixlen=24, gateway="10.88.3.1", cni_id="dk-1",
                           cni_netns="/run/x", cni_docker=True)

    def desired() -> DesiredState:
        state = DesiredState(revision=9, networks={n: desired_network(n) for n in LEASES})
        state.containers["dk-1"] = dk1
        for name, c in controller.held.items():
            state.containers[name] = DesiredContainer(
                name=name, network=c.network, command=(), ip=c.ip, prefixlen=c.prefixlen,
                gateway=c.gateway, ip6=c.ip6, prefixlen6=c.prefixlen6, gateway6=c.gateway6,
                cni_id=name, cni_netns=c.cni.netns, cni_docker=True)
        return state

    @contextlib.contextmanager
    def kernel() -> Iterator[FakeKernel]:
        yield FakeKernel(controller.writes)

    side = DockerSide(host="h1", sync=lambda: controller, control=lambda: controller,  # type: ignore[arg-type,return-value]
                      desired=desired, realised=realised, kernel=kernel,  # type: ignore[arg-type]
                      accept_bridge=lambda bridge: controller.writes.append(("accept", bridge)))
    plugin = Plugin(side, state_file)
    plugin.networks[NID] = "front"
    plugin.endpoints[EID] = "10.88.3.2"
    return plugin, controller
