"""ValidateTopology, the API's dry run of a whole topology: each refusal the real calls would
make (IPAM capacity, host ports, a fixed address on the gateway, a subnet holding a host's
underlay address, with what the controller already holds) comes back at once as
INVALID_ARGUMENT naming the object's place in the request and the field, and nothing is written,
whether it refuses or accepts. Positive controls: the same objects, or a fixed version, pass,
and really creating them fails (or succeeds) the same way."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from apitest import TIMEOUT, Api, details, rpc_error, unchanged

from sdnctl.v1 import sdnctl_pb2 as pb

LAB_H1 = pb.Host(name="h1", underlay_ip="192.0.2.10", lab=True)
FRONT = pb.Network(name="front", subnet="10.88.0.0/16")


def validate(api: Api, **objects: Any) -> pb.ValidateTopologyResponse:
    return api.ctl.ValidateTopology(pb.ValidateTopologyRequest(**objects), timeout=TIMEOUT)


def refused(api: Api, **objects: Any) -> str:
    """The refusal's details; the store is exactly as it was."""
    with unchanged(api.store):
        error = rpc_error(lambda: validate(api, **objects), grpc.StatusCode.INVALID_ARGUMENT)
    return details(error)


def accepted(api: Api, **objects: Any) -> None:
    with unchanged(api.store):
        validate(api, **objects)


def ctr(name: str, **fields: Any) -> pb.Container:
    return pb.Container(**{"name": name, "host": "h1", "network": "front", **fields})


def test_a_valid_topology_passes_and_nothing_is_written(api: Api) -> None:
    objects = dict(hosts=[LAB_H1], networks=[FRONT, pb.Network(name="back", subnet="10.89.0.0/16",
                                                                allow=["front"])],
                   containers=[ctr("web", ports=["8080:80"]), ctr("side", network="container:web"),
                               ctr("db", network="back", fixed_ip="10.89.0.5")])
    accepted(api, **objects)
    assert not api.ctl.ListHosts(pb.ListRequest(), timeout=TIMEOUT).hosts
    # and the real calls, in the same order, succeed
    api.ctl.CreateHost(pb.CreateHostRequest(host=LAB_H1), timeout=TIMEOUT)
    for network in objects["networks"]:
        api.ctl.CreateNetwork(pb.CreateNetworkRequest(network=network), timeout=TIMEOUT)
    for container in objects["containers"]:
        api.ctl.CreateContainer(pb.CreateContainerRequest(container=container), timeout=TIMEOUT)
    accepted(api, **objects)  # what exists as asked is left as it is


def test_a_subnet_holding_a_hosts_underlay_address(api: Api) -> None:
    text = refused(api, hosts=[LAB_H1], networks=[FRONT, pb.Network(name="ul",
                                                                    subnet="192.0.2.0/25")])
    assert text.startswith("networks[1].subnet: "), text
    assert "192.0.2.10" in text and "'h1'" in text
    accepted(api, hosts=[LAB_H1], networks=[FRONT, pb.Network(name="ul", subnet="10.9.0.0/25")])


def test_a_host_whose_underlay_address_is_inside_a_network_the_controller_holds(
        api: Api) -> None:
    api.network("front")
    text = refused(api, hosts=[pb.Host(name="h9", underlay_ip="10.88.7.7", lab=True)])
    assert text.startswith("hosts[0].underlay_ip: "), text
    accepted(api, hosts=[pb.Host(name="h9", underlay_ip="10.87.7.7", lab=True)])


def test_two_containers_on_one_host_port(api: Api) -> None:
    objects: dict[str, Any] = dict(hosts=[LAB_H1], networks=[FRONT])
    text = refused(api, **objects, containers=[ctr("c1", ports=["8080:80"]),
                                               ctr("c2", ports=["9000:90", "8080:81"])])
    assert text.startswith("containers[1].ports[1]: "), text
    assert "8080/tcp" in text and "'c1'" in text
    accepted(api, **objects, containers=[ctr("c1", ports=["8080:80"]),
                                         ctr("c2", ports=["9000:90", "8081:81"])])


def test_a_host_port_the_controller_already_gave_to_another_container(api: Api) -> None:
    api.host("h1", underlay_ip="192.0.2.10", lab=True)
    api.network("front")
    objects: dict[str, Any] = dict(hosts=[LAB_H1], networks=[FRONT])
    accepted(api, **objects, containers=[ctr("c2", ports=["8080:80"])])  # control: alone, fine
    api.container("c1", ports=["8080:80"])  # what the controller holds, not in the request
    text = refused(api, **objects, containers=[ctr("c2", ports=["8080:80"])])
    assert text.startswith("containers[0].ports[0]: ") and "'c1'" in text, text


def test_a_fixed_address_on_the_gateway(api: Api) -> None:
    objects: dict[str, Any] = dict(hosts=[LAB_H1], networks=[FRONT])
    text = refused(api, **objects, containers=[ctr("c1", fixed_ip="10.88.0.1")])
    assert text.startswith("containers[0].fixed_ip: ") and "gateway" in text, text
    accepted(api, **objects, containers=[ctr("c1", fixed_ip="10.88.0.2")])


@pytest.mark.parametrize("network", [
    pb.Network(name="front", subnet="10.88.0.0/24", host_prefix=30),  # a /30 per host
    pb.Network(name="front", subnet="10.88.0.0/30", gateway="10.88.0.1"),  # one /30 in all
])
def test_more_containers_than_a_slash_30_holds(api: Api, network: pb.Network) -> None:
    objects: dict[str, Any] = dict(hosts=[LAB_H1], networks=[network])
    accepted(api, **objects, containers=[ctr("c1")])
    # the third in the file, second by name: the one the real calls would refuse
    text = refused(api, **objects, containers=[ctr("c1"), ctr("c0", network="none"), ctr("c2")])
    assert text.startswith("containers[2]: ") and "no free address" in text, text


def test_the_real_controller_state_counts_towards_capacity(api: Api) -> None:
    api.host("h1", underlay_ip="192.0.2.10", lab=True)
    api.network("front", subnet="10.88.0.0/24", host_prefix=30)
    objects: dict[str, Any] = dict(hosts=[LAB_H1], networks=[pb.Network(
        name="front", subnet="10.88.0.0/24", host_prefix=30)], containers=[ctr("c2")])
    accepted(api, **objects)
    api.container("c1")
    assert refused(api, **objects).startswith("containers[0]: ")


def test_a_change_that_cannot_be_made_in_place(api: Api) -> None:
    api.network("front")
    text = refused(api, networks=[pb.Network(name="front", subnet="10.77.0.0/16")])
    assert text.startswith("networks[0].subnet: "), text


def test_an_unknown_network_allow_or_image(api: Api) -> None:
    objects: dict[str, Any] = dict(hosts=[LAB_H1], networks=[FRONT])
    assert refused(api, **objects, containers=[ctr("c1", network="nope")]).startswith(
        "containers[0].network: ")
    assert refused(api, networks=[pb.Network(name="a", subnet="10.1.0.0/16", allow=["zz"])]) \
        .startswith("networks[0].allow[0]: ")
    assert refused(api, **objects, containers=[ctr("c1", image="busybox:1")]).startswith(
        "containers[0].image: ")
    # an image the caller loads first is taken as present
    accepted(api, **objects, containers=[ctr("c1", image="busybox:1")], images=["busybox:1"])


def test_bad_input_names_its_place_in_the_request(api: Api) -> None:
    assert refused(api, networks=[FRONT, pb.Network(name="x", subnet="10.1.0.1/16")]) \
        .startswith("networks[1].subnet: ")
    assert refused(api, hosts=[pb.Host(name="bad/name")]).startswith("hosts[0].name: ")
    assert refused(api, images=["NOT A REF"]).startswith("images[0]")


# -- network policies (issue 22): CreatePolicy's rules, at the policy's place in the request -----

def policy(**fields: Any) -> pb.Policy:
    return pb.Policy(**{"name": "p", "network": "front", "ingress_isolated": True, **fields})


def rule(*peers: pb.PolicyPeer, ports: tuple[str, ...] = ()) -> pb.PolicyRule:
    return pb.PolicyRule(peers=list(peers), ports=list(ports))


POLICY_REFUSALS = {
    "unknown network": (policy(network="nowhere"), "policies[1].network: ", "'nowhere'"),
    "unknown peer network": (
        policy(ingress=[rule(pb.PolicyPeer(network="gone"))]),
        "policies[1].ingress[0].from[0].network: ", "'gone'"),
    "bad selector": (policy(select={"": "x"}), "policies[1].select", ""),
    "bad port": (policy(egress_isolated=True, egress=[rule(ports=("70000/tcp",))]),
                 "policies[1].egress[0].ports[0]: ", "1..65535"),
    "bad protocol": (policy(ingress=[rule(ports=("80/icmp",))]),
                     "policies[1].ingress[0].ports[0]: ", "protocol"),
    "except outside cidr": (
        policy(ingress=[rule(pb.PolicyPeer(cidr="10.0.0.0/8", **{"except": ["11.0.0.0/16"]}))]),
        "policies[1].ingress[0].from[0].except[0]: ", "not inside"),
    "bad cidr": (policy(ingress=[rule(pb.PolicyPeer(cidr="10.0.0.0/33"))]),
                 "policies[1].ingress[0].from[0].cidr: ", ""),
    "neither direction": (pb.Policy(name="p", network="front"), "policies[1]: ", "ingress"),
    "name given twice": (policy(name="ok"), "policies[1].name: ", "given twice"),
}


def test_policies_get_the_controllers_rules(api: Api) -> None:
    """One server for every case (a server per case costs ~0.5 s to stop)."""
    good = policy(name="ok", ingress=[rule(pb.PolicyPeer(any_labels=True, labels={"a": "b"}),
                                           ports=("80/tcp",))])
    accepted(api, networks=[FRONT], policies=[good])  # control
    for case, (bad, where, words) in sorted(POLICY_REFUSALS.items()):
        text = refused(api, networks=[FRONT], policies=[good, bad])
        assert text.startswith(where) and words in text, (case, text)
    assert not api.ctl.ListPolicies(pb.ListRequest(), timeout=TIMEOUT).policies
