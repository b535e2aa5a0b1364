"""CreateContainers: many containers in one store transaction, all or none (issue 21), on
every store."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from apitest import Api, CountingReads, details, rpc_error, unchanged

from sdnctl.api.model import Container, Host, Network
from sdnctl.controller.state import State, creating
from sdnctl.controller.store.base import Store
from sdnctl.controller.store.sqlite import SqliteStore
from sdnctl.v1 import sdnctl_pb2 as pb


def ctr(name: str, host: str = "h1", **fields: Any) -> pb.Container:
    fields.setdefault("network", "front")
    return pb.Container(name=name, host=host, **fields)


def batch(api: Api, *containers: pb.Container) -> pb.CreateContainersResponse:
    return api.ctl.CreateContainers(pb.CreateContainersRequest(containers=list(containers)),
                                    timeout=10)


def test_a_batch_is_one_transaction(front: Api) -> None:
    front.host("h2")
    before = front.store.revision()
    got = batch(front, ctr("a"), ctr("b"), ctr("c", host="h2"),
                ctr("j", network="container:a"))
    assert [c.name for c in got.containers] == ["a", "b", "c", "j"]
    assert front.store.revision() == got.revision
    assert got.revision > before
    # one transaction: every record carries its revision
    for name in "abcj":
        assert front.get_container(name).revision == got.revision
    ips = [front.get_container(n).ip for n in "abc"]
    assert ips[0] != ips[1] and len(set(ips)) == 3
    assert ips[0].rsplit(".", 1)[0] == ips[1].rsplit(".", 1)[0]  # one lease of h1
    assert front.get_container("j").ip == ""  # joined: no address of its own
    listed = front.ctl.ListContainers(pb.ListRequest(host="h1"), timeout=5).containers
    assert sorted(c.name for c in listed) == ["a", "b", "j"]


def test_one_bad_container_writes_nothing_and_is_named(front: Api) -> None:
    front.container("there")
    with unchanged(front.store):
        e = rpc_error(lambda: batch(front, ctr("a"), ctr("b"), ctr("c", host="nowhere")),
                      grpc.StatusCode.NOT_FOUND)
        assert "containers[2]" in details(e) and "nowhere" in details(e)
        e = rpc_error(lambda: batch(front, ctr("a"), ctr("there")),
                      grpc.StatusCode.ALREADY_EXISTS)
        assert "containers[1]" in details(e)
        e = rpc_error(lambda: batch(front, ctr("a"), ctr("a")), grpc.StatusCode.INVALID_ARGUMENT)
        assert "containers[1].name" in details(e)
        e = rpc_error(lambda: batch(front, ctr("a"), ctr("b", ports=["0:80"])),
                      grpc.StatusCode.INVALID_ARGUMENT)
        assert "containers[1].ports[0]" in details(e)
        e = rpc_error(lambda: batch(front, ctr("a", ports=["80:80"]), ctr("b", ports=["80:80"])),
                      grpc.StatusCode.ALREADY_EXISTS)
        assert "containers[1]" in details(e)


def test_an_empty_batch_writes_nothing(front: Api) -> None:
    with unchanged(front.store):
        assert list(batch(front).containers) == []


def test_a_store_with_a_cap_gets_several_whole_transactions(store: Store) -> None:
    state = State(store)
    state.create_host(Host("h1"))
    state.create_network(Network("front", "10.88.0.0/16"))
    store.max_txn_ops = 20  # type: ignore[attr-defined]
    before = store.revision()
    views, revision = state.create_containers(
        [Container(name=f"c{i}", host="h1", network="front") for i in range(7)])
    assert [v.container.name for v in views] == [f"c{i}" for i in range(7)]
    revisions = {state.get_container(f"c{i}").revision for i in range(7)}
    assert 1 < len(revisions) < 7 and max(revisions) == revision > before
    addresses = [v.allocation.address for v in views if v.allocation is not None]
    assert addresses == [f"10.88.0.{i}" for i in range(2, 9)]


def test_a_batch_replans_when_another_writer_comes_first(store: Store) -> None:
    state = State(store)
    state.create_host(Host("h1"))
    state.create_network(Network("front", "10.88.0.0/16"))
    state.create_container(Container(name="first", host="h1", network="front"))
    real_txn = store.txn
    raced: list[int] = []

    def txn(compares: Any, ops: Any) -> Any:
        if not raced and any(op.key == "/containers/b1" for op in ops):
            raced.append(1)  # another writer takes the next address first
            state.create_container(Container(name="other", host="h1", network="front"))
        return real_txn(compares, ops)

    store.txn = txn  # type: ignore[method-assign]
    views, _ = state.create_containers(
        [Container(name=f"b{i}", host="h1", network="front") for i in range(2)])
    assert raced
    ips = {state.get_container(n).allocation.address  # type: ignore[union-attr]
           for n in ("first", "other", "b0", "b1")}
    assert len(ips) == 4
    assert {v.container.name for v in views} == {"b0", "b1"}


@contextlib.contextmanager
def counted_state(tmp_path: Path) -> Iterator[tuple[State, CountingReads]]:
    """A State on SQLite with host h1, network front and its container ``first``, whose
    store reads are counted from then on."""
    sqlite = SqliteStore(tmp_path / "db")
    try:
        state = State(sqlite)
        state.create_host(Host("h1"))
        state.create_network(Network("front", "10.88.0.0/16"))
        state.create_container(Container(name="first", host="h1", network="front"))
        counting = CountingReads(sqlite)
        state.store = counting  # type: ignore[assignment]
        yield state, counting
    finally:
        sqlite.close()


def test_a_batch_reads_about_one_key_per_container(tmp_path: Path) -> None:
    """What creates in a batch read first comes in one read for many, a lease's quarantine is
    listed once and the entry each create takes or not found in it, a transaction reads no key
    it puts: left per container is its address's guard (about 7 round trips each before, with
    a dozen on etcd at 100x10)."""
    with counted_state(tmp_path) as (state, counting):
        state.delete_container("first")  # its address is quarantined: the others skip it
        counting.reads = 0
        views, _ = state.create_containers(
            [Container(name=f"c{i}", host="h1", network="front") for i in range(40)])
        assert len({v.allocation.address for v in views if v.allocation}) == 40
        assert "10.88.0.2" not in {v.allocation.address for v in views if v.allocation}
        assert 40 <= counting.reads <= 40 + 15, counting.reads


def test_a_single_create_reads_its_first_keys_in_one_request(tmp_path: Path) -> None:
    """What CreateContainer hands the group commit (``creating``): the container's, its
    host's, the network's, the lease's and the owner entry's keys in one ``get_many`` (eight
    requests one by one before, on etcd a round trip each); then the lease's quarantine, its
    used addresses and the chosen address."""
    with counted_state(tmp_path) as (state, counting):
        [(view, revision)] = state.write_each(
            [creating(Container(name="second", host="h1", network="front"))])
        assert not isinstance(view, Exception) and view.allocation is not None
        assert revision > 0 and view.allocation.address == "10.88.0.3"
        assert counting.reads == 4, counting.reads
        counting.reads = 0  # the same create without the prefetch: one by one
        state.write_each([lambda s: s.create_container(
            Container(name="third", host="h1", network="front"))])
        assert counting.reads == 8, counting.reads


@pytest.mark.parametrize("n", [1, 3])
def test_sizes(front: Api, n: int) -> None:
    got = batch(front, *(ctr(f"s{i}") for i in range(n)))
    assert len(got.containers) == n


# -- DeleteContainers: the same for deletions (issue 21: `sdnctl down` of 1,000) ---------------


def delete(api: Api, *names: str) -> pb.DeleteContainersResponse:
    return api.ctl.DeleteContainers(pb.DeleteContainersRequest(names=list(names)), timeout=10)


def test_a_delete_batch_is_one_transaction_and_frees_every_address(front: Api) -> None:
    front.host("h2")
    made = batch(front, ctr("a"), ctr("b"), ctr("c", host="h2"), ctr("d"),
                 ctr("j", network="container:a"))
    freed = {front.get_container(n).ip for n in "abc"}
    before = front.store.revision()
    got = delete(front, "j", "a", "missing", "b", "c")
    assert list(got.deleted) == ["j", "a", "b", "c"]  # the missing one skipped
    assert got.revision == front.store.revision() == before + 1  # one transaction
    listed = front.ctl.ListContainers(pb.ListRequest(), timeout=5).containers
    assert [c.name for c in listed] == ["d"]
    # the addresses are free again: one lease's two, released in one transaction, both
    ipam = front.ctl.GetIpam(pb.GetIpamRequest(network="front"), timeout=5)
    held = {a.address for a in ipam.allocations}
    assert held == {front.get_container("d").ip.split("/")[0]}
    assert not freed & held and made.revision < got.revision
    check = front.ctl.CheckIpam(pb.GetIpamRequest(), timeout=5)
    assert list(check.problems) == []


def test_a_bad_delete_batch_deletes_nothing_and_is_named(front: Api) -> None:
    batch(front, ctr("a"), ctr("j", network="container:a"), ctr("b"))
    with unchanged(front.store):
        e = rpc_error(lambda: delete(front, "b", "a"), grpc.StatusCode.FAILED_PRECONDITION)
        assert "names[1]" in details(e) and "j" in details(e)  # a donor before its joiner
        e = rpc_error(lambda: delete(front, "b", "b"), grpc.StatusCode.INVALID_ARGUMENT)
        assert "names[1]" in details(e)
        e = rpc_error(lambda: delete(front, "b", "Not A Name"), grpc.StatusCode.INVALID_ARGUMENT)
        assert "names[1]" in details(e)
        assert list(delete(front, "nobody").deleted) == []
    assert list(delete(front, "j", "a").deleted) == ["j", "a"]  # joiner first: both go


def test_a_delete_batch_on_a_store_with_a_cap_gets_several_whole_transactions(
        store: Store) -> None:
    state = State(store)
    state.create_host(Host("h1"))
    state.create_network(Network("front", "10.88.0.0/16"))
    state.create_containers([Container(name=f"c{i}", host="h1", network="front")
                             for i in range(7)])
    store.max_txn_ops = 20  # type: ignore[attr-defined]
    before = store.revision()
    deleted, revision = state.delete_containers([f"c{i}" for i in range(7)])
    assert deleted == [f"c{i}" for i in range(7)]
    assert before + 1 < revision == store.revision() < before + 7
    assert state.list_containers()[0] == []
