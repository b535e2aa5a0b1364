"""The controller's indexes: a create, a host's listing and a status report read what they
concern, not every container (issue 21), on every store.

A recording proxy stands between State and the real store: what a call reads is asserted by the
keys and prefixes it asked for, so a test fails when a code path goes back to reading the whole
keyspace, whatever the machine's speed."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from sdnctl.api.model import Container, ContainerStatus, Host, Network
from sdnctl.controller import keys
from sdnctl.controller.errors import AlreadyExists
from sdnctl.controller.ipam import UsedRanges
from sdnctl.controller.state import State
from sdnctl.controller.store.base import (
    Change,
    Compare,
    Delete,
    KeyValue,
    Put,
    Store,
    get_many,
)
from sdnctl.controller.store.sqlite import SqliteStore


class Recording:
    """A Store that records the prefixes ranged and the keys read."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.max_txn_ops = getattr(inner, "max_txn_ops", None)  # what State asks of a store
        self.ranges: list[str] = []
        self.reads = 0
        self.writes = 0
        self.before_write: list[object] = []  # callables run once, before the next txn

    def get(self, key: str) -> KeyValue | None:
        self.reads += 1
        return self.inner.get(key)

    def get_many(self, keys_: Sequence[str]) -> list[KeyValue | None]:
        self.reads += 1
        return get_many(self.inner, keys_)

    def range(self, prefix: str) -> tuple[list[KeyValue], int]:
        self.ranges.append(prefix)
        self.reads += 1
        return self.inner.range(prefix)

    def txn(self, compares: Sequence[Compare], ops: Sequence[Put | Delete]) -> int | None:
        while self.before_write:
            self.before_write.pop(0)()  # type: ignore[operator]
        self.writes += 1
        return self.inner.txn(compares, ops)

    def revision(self) -> int:
        return self.inner.revision()

    def changes_since(self, revision: int) -> list[Change]:
        return self.inner.changes_since(revision)

    def wait(self, revision: int, timeout: float) -> int:
        return self.inner.wait(revision, timeout)

    def close(self) -> None:
        pass

    def reset(self) -> None:
        self.ranges.clear()
        self.reads = 0
        self.writes = 0


@pytest.fixture
def rec(store: Store) -> Recording:
    return Recording(store)


@pytest.fixture
def state(rec: Recording) -> State:
    st = State(rec)
    for name in ("h1", "h2"):
        st.create_host(Host(name))
    st.create_network(Network("front", "10.88.0.0/16"))
    return st


def create(state: State, name: str, host: str = "h1", **fields: object) -> None:
    state.create_container(Container(name=name, host=host, network="front",
                                     **fields))  # type: ignore[arg-type]


def wide_reads(rec: Recording) -> list[str]:
    """Ranged prefixes that hold every container or every address of a lease."""
    return [p for p in rec.ranges
            if p in (keys.CONTAINERS, "/") or "/addr/" in p]


def test_create_reads_the_same_whatever_the_number_of_containers(
        state: State, rec: Recording) -> None:
    reads = []
    for existing in (3, 30):
        for i in range(existing - len([c for c in state.list_containers()[0]])):
            create(state, f"c{existing}-{i}", host="h1" if i % 2 else "h2")
        rec.reset()
        create(state, f"probe{existing}", ports=(f"{8000 + existing}:80",))
        assert wide_reads(rec) == []
        reads.append(rec.reads)
    assert reads[0] == reads[1]
    view = state.get_container("probe30")
    assert view.allocation is not None and view.lease is not None
    assert view.allocation.address.startswith(view.lease.subnet.rsplit(".", 1)[0] + ".")


def test_port_clash_is_still_found_through_the_host_index(state: State) -> None:
    create(state, "a", ports=("8080:80",))
    create(state, "b", host="h2", ports=("8080:80",))  # another host: no clash
    with pytest.raises(AlreadyExists, match="8080"):
        create(state, "c", ports=("8080:80",))


def test_used_index_follows_creates_and_deletes(state: State, rec: Recording) -> None:
    for i in range(5):
        create(state, f"c{i}")
    lease = state.get_container("c0").lease
    assert lease is not None
    kv = rec.get(keys.used_key("front", lease.subnet))
    assert kv is not None
    # .1 is the gateway: the addresses are .2 to .6
    assert UsedRanges.decode(kv.value).ranges == [[0x0A580002, 0x0A580006]]
    state.delete_container("c2")
    kv = rec.get(keys.used_key("front", lease.subnet))
    assert kv is not None
    assert UsedRanges.decode(kv.value).ranges == [[0x0A580002, 0x0A580003],
                                                  [0x0A580005, 0x0A580006]]


def test_an_index_behind_its_guards_costs_a_retry_not_a_duplicate(
        state: State, rec: Recording) -> None:
    create(state, "c0")
    lease = state.get_container("c0").lease
    assert lease is not None
    # A guard written behind the index's back (by hand, or by an older controller).
    rec.txn([], [Put(keys.addr_key("front", "10.88.0.3"), b"{}")])
    create(state, "c1")
    view = state.get_container("c1")
    assert view.allocation is not None and view.allocation.address == "10.88.0.4"


def test_an_index_ahead_of_its_guards_is_rebuilt_when_the_lease_looks_full(
        state: State, rec: Recording) -> None:
    create(state, "c0")
    lease = state.get_container("c0").lease
    assert lease is not None
    whole = UsedRanges([[0x0A580000, 0x0A5800FF]])  # says every address is taken
    key = keys.used_key("front", lease.subnet)
    rec.txn([], [Put(key, whole.encode())])
    create(state, "c1")
    view = state.get_container("c1")
    assert view.allocation is not None and view.allocation.address == "10.88.0.3"


def test_a_lease_without_index_is_indexed_by_its_first_create(
        state: State, rec: Recording) -> None:
    for i in range(3):
        create(state, f"c{i}")
    lease = state.get_container("c0").lease
    assert lease is not None
    key = keys.used_key("front", lease.subnet)
    rec.txn([], [Delete(key)])  # a store written before the index
    create(state, "c3")
    view = state.get_container("c3")
    assert view.allocation is not None and view.allocation.address == "10.88.0.5"
    kv = rec.get(key)
    assert kv is not None and UsedRanges.decode(kv.value).ranges == [[0x0A580002, 0x0A580005]]


def test_list_of_one_host_reads_only_its_containers(state: State, rec: Recording) -> None:
    for i in range(6):
        create(state, f"c{i}", host="h1" if i < 2 else "h2")
    rec.reset()
    views, _ = state.list_containers(host="h1")
    assert [v.container.name for v in views] == ["c0", "c1"]
    assert wide_reads(rec) == []
    assert all(v.allocation is not None and v.lease is not None for v in views)
    assert views == [v for v in state.list_containers()[0] if v.container.host == "h1"]


def test_a_whole_listing_reads_ranges_and_gives_the_views_of_one_read_each(
        state: State, rec: Recording) -> None:
    """A listing of every container reads their networks' owners, the leases and the statuses
    as ranges, not their 2,000 keys (on etcd 90 ms against 30 at 1,000 containers): the views
    are those each container's own reads give, statuses, other networks and modes included."""
    state.create_network(Network("back", "10.89.0.0/16"))
    for i in range(6):
        create(state, f"c{i}", host="h1" if i < 3 else "h2")
    state.create_container(Container(name="b0", host="h2", network="back"))
    state.create_container(Container(name="lonely", host="h1", network="none"))
    state.report_status("h1", [ContainerStatus("c1", "running", pid=42)], 0)
    rec.reset()
    views, _ = state.list_containers()
    assert sorted(rec.ranges) == sorted([keys.CONTAINERS, keys.owners_prefix("back"),
                                         keys.owners_prefix("front"), keys.LEASES,
                                         keys.CONTAINER_STATUS])
    assert rec.reads == 5
    one_by_one = [state.get_container(v.container.name) for v in views]
    assert views == one_by_one
    assert [v.status.state for v in views if v.container.name == "c1"] == ["running"]
    assert all(v.allocation is not None for v in views if v.container.name != "lonely")


def test_report_status_and_delete_read_only_the_host(state: State, rec: Recording) -> None:
    for i in range(4):
        create(state, f"c{i}", host="h1" if i < 2 else "h2")
    rec.reset()
    state.report_status("h1", [ContainerStatus("c0", state="running"),
                               ContainerStatus("c2", state="running")])  # c2: not h1's
    assert wide_reads(rec) == []
    assert state.get_container("c0").status.state == "running"
    assert state.get_container("c2").status.state != "running"
    rec.reset()
    state.delete_container("c1")
    assert wide_reads(rec) == []
    assert state.foreign_containers("h1", ["c0", "c2", "gone"]) == ["c2"]


def test_a_report_is_one_write_however_many_statuses_changed(state: State,
                                                             rec: Recording) -> None:
    for i in range(5):
        create(state, f"c{i}")
    state.report_status("h1", [], observed_revision=1)  # the host's status, written alone
    rec.reset()
    before = rec.revision()
    state.report_status("h1", [ContainerStatus(f"c{i}", state="running") for i in range(5)],
                        observed_revision=2)
    assert (rec.writes, rec.revision()) == (1, before + 1)
    assert all(state.get_container(f"c{i}").status.state == "running" for i in range(5))
    rec.reset()
    state.report_status("h1", [ContainerStatus(f"c{i}", state="running") for i in range(5)],
                        observed_revision=2)
    assert rec.writes == 0  # nothing changed: nothing written


def test_a_report_larger_than_a_transaction_is_recorded_whole(state: State,
                                                               rec: Recording) -> None:
    many = 150  # > etcd's default of 128 operations per transaction
    if rec.max_txn_ops is not None:
        rec.max_txn_ops = 128  # (the test etcd takes more: as one that keeps its default)
    state.create_containers([Container(name=f"m{i}", host="h1", network="front")
                             for i in range(many)])
    rec.reset()
    state.report_status("h1", [ContainerStatus(f"m{i}", state="running") for i in range(many)],
                        observed_revision=3)
    assert rec.writes == (1 if rec.max_txn_ops is None else 2)  # etcd: 128, then 22 + the host
    assert {v.status.state for v in state.list_containers(host="h1")[0]} == {"running"}


def test_a_container_deleted_during_a_report_is_skipped_and_the_rest_recorded(
        state: State, rec: Recording) -> None:
    for i in range(3):
        create(state, f"c{i}")
    rec.before_write.append(lambda: state.delete_container("c1"))
    state.report_status("h1", [ContainerStatus(f"c{i}", state="running") for i in range(3)])
    assert [state.get_container(f"c{i}").status.state for i in (0, 2)] == ["running"] * 2
    assert rec.get(keys.status_key("c1")) is None  # no status outlives its container


def test_ensure_indexes_indexes_a_store_written_before_them(state: State, rec: Recording) -> None:
    for i in range(3):
        create(state, f"c{i}", host="h1" if i < 2 else "h2")
    entries, _ = rec.range(keys.INDEX)
    rec.txn([], [Delete(kv.key) for kv in entries])
    assert state.list_containers(host="h1")[0] == []
    assert state.ensure_indexes() == 3
    assert state.ensure_indexes() == 0
    assert [v.container.name for v in state.list_containers(host="h1")[0]] == ["c0", "c1"]


def test_get_many(store: Store) -> None:
    store.txn([], [Put("/a", b"1"), Put("/b", b"2")])
    got = get_many(store, ["/b", "/missing", "/a"])
    assert [kv.value if kv else None for kv in got] == [b"2", None, b"1"]
    assert get_many(store, []) == []


def test_sqlite_reads_do_not_wait_for_a_writer(tmp_path: Path) -> None:
    """A write stuck on the database's write lock (held here by another connection) holds the
    store's writer; reads on other threads go on through their own connections."""
    store = SqliteStore(tmp_path / "db")
    store.txn([], [Put("/a", b"1")])
    other = sqlite3.connect(tmp_path / "db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    writer = threading.Thread(target=store.txn, args=([], [Put("/b", b"2")]))
    try:
        writer.start()
        deadline = time.monotonic() + 5
        while not store._lock.locked():  # the writer is inside txn, waiting for the lock
            assert time.monotonic() < deadline, "the writer never started"
            time.sleep(0.01)
        got: list[object] = []
        reader = threading.Thread(target=lambda: got.append(
            (store.get("/a"), store.range("/")[0], store.revision())))
        reader.start()
        reader.join(timeout=5)
        assert not reader.is_alive(), "a read waited for the writer"
        kv, kvs, revision = got[0]  # type: ignore[misc]
        assert kv.value == b"1" and [k.key for k in kvs] == ["/a"] and revision == 1
    finally:
        other.execute("ROLLBACK")
        other.close()
        writer.join(timeout=35)
    assert store.get("/b") is not None
    store.close()
