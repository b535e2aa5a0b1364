"""`sdnctl up` shows the controller's refusal as the controller gave it (issue 15).

The controller answers ALREADY_EXISTS both for an object that exists and for a value that is
taken (a host port, a fixed address). The desired state goes to a real controller (in this
process, on a unix socket, SQLite store) as `up` sends it (``apply_objects``), after the host is
recorded as `up` records it: no lab is built.
"""

from __future__ import annotations

import io
from pathlib import Path

import grpc
import pytest
from apitest import StartServer

from sdnctl.api.client import Client
from sdnctl.controller.store.sqlite import SqliteStore
from sdnctl.topology import deploy
from sdnctl.topology.topology import parse
from sdnctl.v1 import sdnctl_pb2 as pb
from sdnctl.v1 import sdnctl_pb2_grpc as pb_grpc

TOPOLOGY = """
name: refusals
hosts:
  - {name: h1, lab: true}
networks:
  - {name: front, subnet: 10.88.0.0/16}
containers:
  - {name: c1, host: h1, network: front, FIRST}
  - {name: c2, host: h1, network: front, SECOND}
"""

CASES = {
    "port": ('ports: ["8080:80"]', 'ports: ["8080:81"]',
             "host port 8080/tcp of host 'h1' is already published by container 'c1'"),
    "fixed ip": ("ip: 10.88.0.5", "ip: 10.88.0.5", "10.88.0.5 is taken by container 'c1'"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_up_shows_the_controllers_refusal(case: str, tmp_path: Path,
                                          start_server: StartServer) -> None:
    first, second, message = CASES[case]
    store = SqliteStore(tmp_path / "controller.db")
    server = start_server(store)
    topology = parse(TOPOLOGY.replace("FIRST", first).replace("SECOND", second), "t.yaml")
    client = Client(server.address)
    try:
        progress = deploy.Progress(io.StringIO())
        deploy.register_hosts(client, topology, {}, progress)
        with pytest.raises(deploy.DeployError) as refused:
            deploy.apply_objects(client, topology, progress)
        assert str(refused.value).startswith("could not create container 'c2': ")
        assert message in str(refused.value) and "not found" not in str(refused.value)
        channel = grpc.insecure_channel(server.address)
        try:  # what was refused was not made; what came before it was
            api = pb_grpc.ControllerStub(channel)
            names = [c.name for c in api.ListContainers(pb.ListRequest(), timeout=5).containers]
            assert names == ["c1"]
        finally:
            channel.close()
    finally:
        client.close()
        server.stop(grace=0)
        store.close()


def test_up_records_containers_in_batches_then_one_by_one_after_a_race(
        tmp_path: Path, start_server: StartServer) -> None:
    """`up` sends new containers CREATE_BATCH at a time (one request of 1,000 outlived its
    deadline on etcd); a batch that finds one of them written meanwhile writes nothing, and
    from there on they go one by one, so every container is there once."""
    store = SqliteStore(tmp_path / "controller.db")
    server = start_server(store)
    many = "\n".join(f"  - {{name: c{i:03}, host: h1, network: front}}" for i in range(250))
    topology = parse(TOPOLOGY.split("containers:")[0] + "containers:\n" + many + "\n", "t.yaml")
    client = Client(server.address)
    sizes: list[int] = []
    create_many = client.api.CreateContainers

    def racing(request: pb.CreateContainersRequest, timeout: float) -> object:
        sizes.append(len(request.containers))
        if len(sizes) == 2:  # another writer creates one of this batch first
            client.api.CreateContainer(pb.CreateContainerRequest(
                container=request.containers[50]), timeout=5)
        return create_many(request, timeout=timeout)

    try:
        client.api.CreateContainers = racing
        out = io.StringIO()
        progress = deploy.Progress(out)
        deploy.register_hosts(client, topology, {}, progress)
        deploy.apply_objects(client, topology, progress)
        assert sizes == [deploy.CREATE_BATCH, deploy.CREATE_BATCH]
        assert f"containers recorded: {deploy.CREATE_BATCH}/250" in out.getvalue()
        names = [c.name for c in client.api.ListContainers(pb.ListRequest(), timeout=5)
                 .containers]
        assert sorted(names) == [f"c{i:03}" for i in range(250)]
    finally:
        client.close()
        server.stop(grace=0)
        store.close()


def test_up_writes_after_listing_networks_and_containers_not_hosts(
        tmp_path: Path, start_server: StartServer) -> None:
    """What `up` writes is decided from the networks and containers listed (the hosts it has
    just registered and waited for are not listed again: a host joining a 100-host lab waits
    for that listing before its lease exists); objects already there are left alone."""
    store = SqliteStore(tmp_path / "controller.db")
    server = start_server(store)
    topology = parse(TOPOLOGY.replace(", FIRST", "").replace(", SECOND", ""), "t.yaml")
    client = Client(server.address)
    listed: list[str] = []
    for name in ("ListHosts", "ListNetworks", "ListContainers"):
        real = getattr(client.api, name)
        setattr(client.api, name, lambda request, timeout, n=name, r=real: (
            listed.append(n), r(request, timeout=timeout))[1])
    try:
        progress = deploy.Progress(io.StringIO())
        deploy.register_hosts(client, topology, {}, progress)
        first = deploy.apply_objects(client, topology, progress)
        listed.clear()
        assert deploy.apply_objects(client, topology, progress) == 0  # nothing to write
        assert listed == ["ListNetworks", "ListContainers"]
        assert first > 0
    finally:
        client.close()
        server.stop(grace=0)
        store.close()
