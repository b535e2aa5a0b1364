"""Group commit (issue 21): concurrent creates coalesced into one store transaction, each with
its own result or its own error."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from apitest import Api, connect, details, rpc_error
from netaddr import IPAddress, IPNetwork

from sdnctl.api.model import Container, Host, Invalid, Network
from sdnctl.controller.errors import AlreadyExists
from sdnctl.controller.groupcommit import GroupCommit
from sdnctl.controller.server import RunningServer, create_server
from sdnctl.controller.state import ContainerView, State
from sdnctl.controller.store.base import Store
from sdnctl.controller.store.sqlite import SqliteStore
from sdnctl.v1 import sdnctl_pb2 as pb


def front_state(store: Store) -> State:
    state = State(store)
    state.create_host(Host("h1"))
    state.create_host(Host("h2"))
    state.create_network(Network("front", "10.88.0.0/16"))
    return state


def create(name: str, host: str = "h1", **fields: object) -> Container:
    return Container(name=name, host=host, network="front", **fields)  # type: ignore[arg-type]


def test_write_each_commits_the_good_writes_in_one_transaction(store: Store) -> None:
    state = front_state(store)
    before = store.revision()
    results = state.write_each([
        lambda s: s.create_container(create("a")),
        lambda s: s.create_container(create("bad", ports=("0:80",))),
        lambda s: s.create_container(create("b")),
        lambda s: s.create_container(create("a", host="h2")),  # the same name as the first
        lambda s: s.create_container(create("c", host="h2")),
    ])
    assert store.revision() == before + 1
    (a, ra), (bad, rbad), (b, rb), (again, ragain), (c, rc) = results
    assert ra == rb == rc == before + 1 and rbad == ragain == 0
    assert isinstance(bad, Invalid) and bad.field == "container.ports[0]"
    assert isinstance(again, AlreadyExists)
    assert isinstance(a, ContainerView) and isinstance(b, ContainerView)
    assert isinstance(c, ContainerView)
    assert a.allocation and b.allocation and c.allocation
    assert len({a.allocation.address, b.allocation.address, c.allocation.address}) == 3
    assert [v.container.name for v in state.list_containers()[0]] == ["a", "b", "c"]
    assert state.get_container("a").container.host == "h1"
    assert store.get("/containers/bad") is None
    # what each got is what the store holds
    for view in (a, b, c):
        stored = state.get_container(view.container.name)
        assert stored.allocation == view.allocation and stored.revision == before + 1


def test_write_each_on_a_store_with_a_cap_gets_whole_transactions(store: Store) -> None:
    state = front_state(store)
    store.max_txn_ops = 20  # type: ignore[attr-defined]
    before = store.revision()
    results = state.write_each([lambda s, i=i: s.create_container(create(f"c{i}"))
                                for i in range(7)])
    revisions = [r for _, r in results]
    assert all(isinstance(v, ContainerView) for v, _ in results)
    assert len(set(revisions)) > 1 and store.revision() == max(revisions)
    assert all(before < r for r in revisions) and revisions == sorted(revisions)
    addresses = {state.get_container(f"c{i}").allocation.address  # type: ignore[union-attr]
                 for i in range(7)}
    assert len(addresses) == 7


def test_a_group_is_planned_again_when_another_writer_came_first(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "db")
    state = front_state(store)
    other = State(store)  # another writer of the same store (a replica)
    calls = 0

    def racing(s: State) -> ContainerView:
        nonlocal calls
        calls += 1
        view = s.create_container(create("mine"))
        if calls == 1:  # planned; now the other writer takes the same address
            other.create_container(create("theirs"))
        return view

    [(view, revision)] = state.write_each([racing])
    assert calls == 2 and isinstance(view, ContainerView)
    theirs = state.get_container("theirs")
    assert view.allocation and theirs.allocation
    assert view.allocation.address != theirs.allocation.address
    assert state.get_container("mine").revision == revision
    store.close()


def test_writes_queued_behind_the_leader_share_one_transaction(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "db")
    state = front_state(store)
    group = GroupCommit(state)
    release = threading.Event()

    def held(s: State) -> ContainerView:
        release.wait(10)
        return s.create_container(create("first"))

    names = ["q0", "q1", "bad", "q2", "q3"]
    with futures.ThreadPoolExecutor(len(names) + 1) as pool:
        first = pool.submit(group.submit, held)
        while not group._leading:
            time.sleep(0.001)
        queued = {}
        for name in names:
            ports = ("0:80",) if name == "bad" else ()
            queued[name] = pool.submit(group.submit, lambda s, n=name, p=ports:
                                       s.create_container(create(n, ports=p)))
            while len(group._queue) < len(queued):  # queued in this order
                time.sleep(0.001)
        release.set()
        _, first_revision = first.result(10)
        with pytest.raises(Invalid) as refused:
            queued["bad"].result(10)
        got = {name: queued[name].result(10) for name in names if name != "bad"}
    assert refused.value.field == "container.ports[0]"
    revisions = {revision for _, revision in got.values()}
    assert revisions == {first_revision + 1} == {store.revision()}  # one transaction
    addresses = [view.allocation.address for view, _ in got.values()]  # type: ignore[union-attr]
    assert len(set(addresses)) == 4
    assert store.get("/containers/bad") is None
    assert not group._leading and not group._queue
    store.close()


@pytest.fixture
def sqlite_api(tmp_path: Path) -> Iterator[Api]:
    store = SqliteStore(tmp_path / "db")
    server: RunningServer = create_server(f"unix:{tmp_path / 'c.sock'}", store, sweep_interval=0)
    with connect(server, store) as api:
        api.host("h1")
        api.host("h2")
        api.network("front")
        yield api
    server.stop(grace=0)
    store.close()


def test_concurrent_creates_through_the_api_get_each_their_own_address(sqlite_api: Api) -> None:
    """8 clients at once, a bad request among them: every good one lands with an address of
    its host's lease, no address twice; the bad one is refused naming the field."""

    def client(k: int) -> list[str]:
        made = []
        for i in range(15):
            host = "h1" if k % 2 else "h2"
            sqlite_api.ctl.CreateContainer(pb.CreateContainerRequest(container=pb.Container(
                name=f"k{k}-{i}", host=host, network="front")), timeout=30)
            made.append(f"k{k}-{i}")
        return made

    def bad() -> grpc.RpcError:
        return rpc_error(lambda: sqlite_api.ctl.CreateContainer(pb.CreateContainerRequest(
            container=pb.Container(name="bad", host="h1", network="front", ports=["0:80"])),
            timeout=30), grpc.StatusCode.INVALID_ARGUMENT)

    with futures.ThreadPoolExecutor(9) as pool:
        jobs = [pool.submit(client, k) for k in range(8)]
        refused = pool.submit(bad)
        made = [name for job in jobs for name in job.result(60)]
    assert "container.ports[0]" in details(refused.result(60))
    listed = sqlite_api.ctl.ListContainers(pb.ListRequest(), timeout=10).containers
    assert sorted(c.name for c in listed) == sorted(made)
    ips = [c.ip for c in listed]
    assert len(set(ips)) == len(ips) == 120
    leases = {h: IPNetwork(sqlite_api.get_host(h).leases[0].subnet) for h in ("h1", "h2")}
    assert all(IPAddress(c.ip) in leases[c.host] for c in listed)
    with pytest.raises(grpc.RpcError):
        sqlite_api.get_container("bad")
