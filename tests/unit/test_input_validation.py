"""Input validation at the API boundary: every hostile field is INVALID_ARGUMENT naming the field,
and the store is exactly as it was (no write, so no agent hears of it and no netlink call
follows)."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from apitest import TIMEOUT, Api, details, rpc_error, unchanged

from sdnctl.api.fields import check_ifname, check_image_ref, check_name, clean_path, parse_port
from sdnctl.api.model import Invalid
from sdnctl.v1 import sdnctl_pb2 as pb


def net(**fields: Any) -> pb.CreateNetworkRequest:
    return pb.CreateNetworkRequest(network=pb.Network(**{"name": "n2", "subnet": "10.50.0.0/16",
                                                         **fields}))


def ctr(**fields: Any) -> pb.CreateContainerRequest:
    return pb.CreateContainerRequest(container=pb.Container(
        **{"name": "c2", "host": "h1", "network": "front", **fields}))


BAD: list[tuple[str, str, Any, str]] = [
    # (id, method, request, the field the error must name)
    ("name-newline", "CreateNetwork", net(name="n2\n"), "network.name"),
    ("name-too-long", "CreateNetwork", net(name="n" * 64), "network.name"),
    ("name-unicode", "CreateNetwork", net(name="ñet"), "network.name"),
    ("name-slash", "CreateHost", pb.CreateHostRequest(host=pb.Host(name="../etc")), "host.name"),
    ("host-bits", "CreateNetwork", net(subnet="10.50.0.1/16"), "network.subnet"),
    ("prefix-too-short", "CreateNetwork", net(subnet="10.0.0.0/7"), "network.subnet"),
    ("prefix-too-long", "CreateNetwork", net(subnet="10.50.0.0/31"), "network.subnet"),
    ("prefix-bad", "CreateNetwork", net(subnet="10.50.0.0/33"), "network.subnet"),
    ("loopback", "CreateNetwork", net(subnet="127.0.0.0/16"), "network.subnet"),
    ("link-local", "CreateNetwork", net(subnet="169.254.0.0/16"), "network.subnet"),
    ("multicast", "CreateNetwork", net(subnet="224.1.0.0/16"), "network.subnet"),
    ("class-e", "CreateNetwork", net(subnet="250.0.0.0/8"), "network.subnet"),
    ("zero", "CreateNetwork", net(subnet="0.0.0.0/8"), "network.subnet"),
    ("covers-reserved", "CreateNetwork", net(subnet="0.0.0.0/0"), "network.subnet"),
    ("overlaps-front", "CreateNetwork", net(subnet="10.88.128.0/24"), "network.subnet"),
    ("covers-front", "CreateNetwork", net(subnet="10.0.0.0/8"), "network.subnet"),
    ("holds-underlay", "CreateNetwork", net(subnet="192.0.2.0/24"), "network.subnet"),
    ("cidr-newline", "CreateNetwork", net(subnet="10.50.0.0/16\n"), "network.subnet"),
    ("ipv6", "CreateNetwork", net(subnet="fd00::/64"), "network.subnet"),
    ("mtu", "CreateNetwork", net(mtu=-1), "network.mtu"),
    ("allow-many", "CreateNetwork", net(allow=[f"a{i}" for i in range(65)]), "network.allow"),
    ("underlay-loopback", "CreateHost",
     pb.CreateHostRequest(host=pb.Host(name="h9", underlay_ip="127.0.0.1")), "host.underlay_ip"),
    ("underlay-in-network", "CreateHost",
     pb.CreateHostRequest(host=pb.Host(name="h9", underlay_ip="10.88.0.7")), "host.underlay_ip"),
    ("port-zero", "CreateContainer", ctr(ports=["0:80"]), "container.ports[0]"),
    ("port-big", "CreateContainer", ctr(ports=["65536:80"]), "container.ports[0]"),
    ("port-unicode-digits", "CreateContainer", ctr(ports=["٨٠:80"]), "container.ports[0]"),
    ("port-bad-ip", "CreateContainer", ctr(ports=["300.1.1.1:80:80"]), "container.ports[0]"),
    ("port-proto", "CreateContainer", ctr(ports=["80:80/sctp"]), "container.ports[0]"),
    ("ports-many", "CreateContainer", ctr(ports=[f"{i}:80" for i in range(1, 100)]),
     "container.ports"),
    ("ifname-long", "CreateContainer", ctr(interface="eth0123456789012"), "container.interface"),
    ("ifname-slash", "CreateContainer", ctr(interface="a/b"), "container.interface"),
    ("ifname-lo", "CreateContainer", ctr(interface="lo"), "container.interface"),
    ("ifname-dotdot", "CreateContainer", ctr(interface=".."), "container.interface"),
    ("command-nul", "CreateContainer", ctr(command=["sh", "-c", "a\0b"]), "container.command[2]"),
    ("command-many", "CreateContainer", ctr(command=["x"] * 257), "container.command"),
    ("fixed-ip", "CreateContainer", ctr(fixed_ip="10.88.0.256"), "container.fixed_ip"),
    ("register-netns-relative", "Register",
     pb.RegisterRequest(host="h1", netns="run/netns/x"), "host.netns"),
    ("register-netns-dotdot", "Register",
     pb.RegisterRequest(host="h1", netns="/run/netns/../../etc/shadow"), "host.netns"),
    ("register-netns-nul", "Register", pb.RegisterRequest(host="h1", netns="/run/\0x"),
     "host.netns"),
    ("register-pid", "Register", pb.RegisterRequest(host="h1", agent_pid=-5), "host.agent_pid"),
    ("register-mac", "Register", pb.RegisterRequest(host="h1", vtep_mac="01:00:5e:00:00:01"),
     "host.vtep_mac"),
    ("register-capability", "Register",
     pb.RegisterRequest(host="h1", capabilities=["bridge", "x y"]), "capabilities[1]"),
    ("report-state", "ReportStatus", pb.ReportStatusRequest(host="h1", containers=[
        pb.ContainerStatus(name="web", state="pwned")]), "containers[0].state"),
    ("report-pid", "ReportStatus", pb.ReportStatusRequest(host="h1", containers=[
        pb.ContainerStatus(name="web", state="running", pid=-1)]), "containers[0].pid"),
    ("report-netns", "ReportStatus", pb.ReportStatusRequest(host="h1", containers=[
        pb.ContainerStatus(name="web", netns="/proc/1/../../x")]), "containers[0].netns"),
    ("report-revision", "ReportStatus",
     pb.ReportStatusRequest(host="h1", observed_revision=-1), "observed_revision"),
    ("list-host", "ListContainers", pb.ListRequest(host="H1"), "host"),
    ("ipam-network", "GetIpam", pb.GetIpamRequest(network="a b"), "network"),
    ("get-name", "GetContainer", pb.GetRequest(name=""), "name"),
    ("delete-name", "DeleteNetwork", pb.DeleteRequest(name="x" * 100), "name"),
]


@pytest.fixture
def world(front: Api) -> Api:
    front.ctl.CreateHost(pb.CreateHostRequest(host=pb.Host(name="h2", underlay_ip="192.0.2.20")),
                         timeout=TIMEOUT)
    front.container("web")
    return front


@pytest.mark.parametrize(("method", "request_", "field"), [b[1:] for b in BAD],
                         ids=[b[0] for b in BAD])
def test_invalid_input_names_the_field_and_changes_nothing(world: Api, method: str,
                                                           request_: Any, field: str) -> None:
    stub = world.sync if method in ("Register", "ReportStatus") else world.ctl
    with unchanged(world.store):
        error = rpc_error(lambda: getattr(stub, method)(request_, timeout=TIMEOUT),
                          grpc.StatusCode.INVALID_ARGUMENT)
    assert details(error).startswith(f"{field}:"), details(error)


def test_watch_rejects_a_negative_revision(world: Api) -> None:
    with unchanged(world.store):
        error = rpc_error(lambda: next(iter(world.sync.Watch(
            pb.WatchRequest(host="h1", since_revision=-1), timeout=TIMEOUT))),
            grpc.StatusCode.INVALID_ARGUMENT)
    assert details(error).startswith("since_revision:")


def test_an_undecodable_request_is_invalid_argument(world: Api) -> None:
    call = world.channel.unary_unary("/sdnctl.v1.Controller/CreateNetwork",
                                     request_serializer=lambda b: b,
                                     response_deserializer=lambda b: b)
    with unchanged(world.store):
        error = rpc_error(lambda: call(b"\x0a\xff\xff\xff\xff\x0f", timeout=TIMEOUT),
                          grpc.StatusCode.INVALID_ARGUMENT)
    assert details(error).startswith("request:")


def test_valid_neighbours_of_the_bad_values_pass(world: Api) -> None:
    world.network("n2", subnet="10.89.0.0/16")
    world.container("c3", ports=["65535:1", "127.0.0.1:80:80/udp"], interface="eth_1.x-y",
                    command=["sh", "-c", "echo ok"])
    world.sync.Register(pb.RegisterRequest(host="h1", netns="/run/netns/h1", agent_pid=4194304,
                                           capabilities=["bridge", "overlay"]), timeout=TIMEOUT)


@pytest.mark.parametrize("ref", ["alpine", "alpine:3.19", "library/alpine:latest",
                                 "registry.example:5000/team/app:v1.2_3",
                                 "ghcr.io/a/b@sha256:" + "a" * 64,
                                 "localhost/x__y.z-w:tag"])
def test_image_references_docker_accepts(ref: str) -> None:
    assert check_image_ref(ref, "image") == ref


@pytest.mark.parametrize("ref", ["", "Alpine", "alpine:", ":tag", "alpine:-x", "a//b",
                                 "alpine\n", "a b", "alpine@sha256:short", "../etc",
                                 "x:" + "t" * 129, "a" * 256, "-a"])
def test_image_references_docker_refuses(ref: str) -> None:
    with pytest.raises(Invalid) as info:
        check_image_ref(ref, "image")
    assert info.value.field == "image"


@pytest.mark.parametrize("path", ["", "relative", "/a/../b", "/..", "/a\0b", "/a\nb",
                                  "/" + "a" * 4096])
def test_paths_refused(path: str) -> None:
    with pytest.raises(Invalid):
        clean_path(path, "netns")


def test_names_ifnames_and_ports_are_ascii_and_whole() -> None:
    for bad in ("h1\n", "h\u0131", "h1 "):
        with pytest.raises(Invalid):
            check_name(bad, "name")
    for bad in ("eth0\n", "ethé", "a b", ""):
        with pytest.raises(Invalid):
            check_ifname(bad, "interface")
    assert check_ifname("x" * 15, "interface")
    with pytest.raises(Invalid):
        parse_port("\uff11:80", "ports[0]")
