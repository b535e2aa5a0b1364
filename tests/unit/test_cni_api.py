"""CNI attachments in the controller's API (issue 17): HostSync.Attach and Detach record and
forget them on the agent's own host; users cannot create or reshape one."""

from __future__ import annotations

from typing import Any

import grpc
from apitest import TIMEOUT, Api, details, rpc_error, unchanged

from sdnctl.v1 import sdnctl_pb2 as pb

OWNER = pb.CniOwner(container_id="abc123", netns="/run/netns/cni-1")


def attach(api: Api, name: str = "cni-1", **fields: Any) -> pb.Container:
    msg = pb.Container(**{"name": name, "network": "front", "interface": "eth0", "cni": OWNER,
                          **fields})
    return api.sync.Attach(pb.AttachRequest(host="h1", container=msg), timeout=TIMEOUT)


def test_attach_is_recorded_idempotent_and_detached(api: Api, front: Api) -> None:
    first = attach(api)
    assert first.ip and first.gateway and first.cni.container_id == "abc123"
    assert first.host == "h1" and tuple(first.command) == ("sleep", "infinity")
    again = attach(api)  # an ADD retried after a lost answer: the same record
    assert (again.ip, again.revision) == (first.ip, first.revision)
    with unchanged(api.store):
        rpc_error(lambda: attach(api, cni=pb.CniOwner(container_id="other", netns="/x")),
                  grpc.StatusCode.ALREADY_EXISTS)
    api.sync.Detach(pb.DetachRequest(host="h1", name="cni-1"), timeout=TIMEOUT)
    rpc_error(lambda: api.sync.Detach(pb.DetachRequest(host="h1", name="cni-1"),
                                      timeout=TIMEOUT), grpc.StatusCode.NOT_FOUND)


def test_attach_checks_its_fields(api: Api, front: Api) -> None:
    with unchanged(api.store):
        e = rpc_error(lambda: attach(api, cni=pb.CniOwner(container_id="bad id!",
                                                          netns="/x")),
                      grpc.StatusCode.INVALID_ARGUMENT)
        assert details(e).startswith("container.cni.container_id")
        e = rpc_error(lambda: attach(api, cni=pb.CniOwner(container_id="ok",
                                                          netns="relative")),
                      grpc.StatusCode.INVALID_ARGUMENT)
        assert details(e).startswith("container.cni.netns")
        rpc_error(lambda: attach(api, network="nosuch"), grpc.StatusCode.NOT_FOUND)


def test_users_cannot_make_or_reshape_attachments(api: Api, front: Api) -> None:
    with unchanged(api.store):
        e = rpc_error(lambda: api.ctl.CreateContainer(pb.CreateContainerRequest(
            container=pb.Container(name="c1", host="h1", network="front", cni=OWNER)),
            timeout=TIMEOUT), grpc.StatusCode.INVALID_ARGUMENT)
        assert details(e).startswith("container.cni")
    attach(api)
    with unchanged(api.store):
        rpc_error(lambda: api.update_container(pb.Container(name="cni-1", host="h1",
                                                            network="none")),
                  grpc.StatusCode.FAILED_PRECONDITION)
    # Detach refuses a container that is not an attachment.
    api.container("plain")
    with unchanged(api.store):
        rpc_error(lambda: api.sync.Detach(pb.DetachRequest(host="h1", name="plain"),
                                          timeout=TIMEOUT), grpc.StatusCode.PERMISSION_DENIED)


def test_a_docker_endpoint_attached_again_with_a_fixed_ip6_moves_only_that(api: Api,
                                                                           front: Api) -> None:
    """Docker asks for an endpoint's IPv6 address (``--ip6``) after its IPv4 one was answered
    (issue 18): Attach again by the same owner moves the IPv6 address in one transaction and
    keeps the IPv4 one; an address outside the host's lease is refused and changes nothing."""
    api.network("dual", subnet="10.89.0.0/16", subnet6="fd00:89::/48")
    owner = pb.CniOwner(container_id="dk-1", netns="/run/docker/sdnctl-endpoint", docker=True)
    first = attach(api, "dk-1", network="dual", cni=owner)
    assert first.ip and first.ip6
    moved = attach(api, "dk-1", network="dual", cni=owner, fixed_ip6="fd00:89::77")
    assert (moved.ip, moved.ip6) == (first.ip, "fd00:89::77")
    assert moved.revision > first.revision
    allocations = api.ctl.GetIpam(pb.GetIpamRequest(network="dual"),
                                  timeout=TIMEOUT).allocations
    assert [(a.address, a.address6) for a in allocations] == [(first.ip, "fd00:89::77")]
    with unchanged(api.store):
        e = rpc_error(lambda: attach(api, "dk-1", network="dual", cni=owner,
                                     fixed_ip6="fd00:89:ff::7"),
                      grpc.StatusCode.INVALID_ARGUMENT)
        assert "fixed_ip6" in details(e) or "fd00:89:ff::7" in details(e)
    # a CNI attachment's (not Docker's) addresses do not move
    plain = attach(api, "cni-2", network="dual", cni=pb.CniOwner(container_id="c2",
                                                                 netns="/run/netns/c2"))
    again = attach(api, "cni-2", network="dual", cni=pb.CniOwner(container_id="c2",
                                                                 netns="/run/netns/c2"),
                    fixed_ip6="fd00:89::78")
    assert again.ip6 == plain.ip6
