"""The Store contract, run against every implementation."""

from __future__ import annotations

import os
import random
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from etcdtest import EtcdCluster, etcd_cluster

from sdnctl.api.model import Container, Host, Network
from sdnctl.controller.state import State
from sdnctl.controller.store import etcd as etcd_store
from sdnctl.controller.store import sqlite as sqlite_store
from sdnctl.controller.store.base import (
    Change,
    Compacted,
    Compare,
    Delete,
    Put,
    Store,
    get_many,
)
from sdnctl.controller.store.etcd import EtcdError, EtcdStore
from sdnctl.controller.store.memory import MemoryStore
from sdnctl.controller.store.sqlite import SqliteStore

MakeStore = Callable[..., Store]
Rev = Callable[[int], int]
KINDS = ["memory", "sqlite", "etcd"]


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_store(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeStore]:
    opened: list[Store] = []
    cluster = request.getfixturevalue("etcd") if kind == "etcd" else None

    def make(history: int = 10_000) -> Store:
        store: Store
        if kind == "memory":
            store = MemoryStore(history=history)
        elif kind == "sqlite":
            store = SqliteStore(tmp_path / "db" / "store.sqlite", history=history)
        else:
            assert cluster is not None
            store = EtcdStore(cluster.endpoints, prefix=f"/t/{uuid.uuid4().hex}")
        opened.append(store)
        return store

    yield make
    for store in reversed(opened):
        store.close()


@pytest.fixture
def store(make_store: MakeStore) -> Store:
    return make_store()


@pytest.fixture
def rev(store: Store) -> Rev:
    """The store revision of a new store's n-th changing transaction: n for memory and SQLite;
    etcd's revisions are the cluster's, so they count on from its current one."""
    base = store.cluster_revision() if isinstance(store, EtcdStore) else 0
    return lambda n: base + n


def test_new_store_is_empty(store: Store) -> None:
    assert store.revision() == 0
    assert store.get("/a") is None
    assert store.range("/") == ([], 0)
    assert store.changes_since(0) == []


def test_put_get_and_revisions(store: Store, rev: Rev) -> None:
    assert store.txn([], [Put("/a", b"1")]) == rev(1)
    assert store.txn([], [Put("/b", b"2"), Put("/c", b"3")]) == rev(2)
    kv = store.get("/b")
    assert kv is not None
    assert (kv.value, kv.create_revision, kv.mod_revision) == (b"2", rev(2), rev(2))
    assert store.txn([], [Put("/b", b"two")]) == rev(3)
    kv = store.get("/b")
    assert kv is not None
    assert (kv.value, kv.create_revision, kv.mod_revision) == (b"two", rev(2), rev(3))
    assert store.revision() == rev(3)


def test_range_is_prefix_sorted_with_revision(store: Store, rev: Rev) -> None:
    store.txn([], [Put("/n/b", b""), Put("/n/a", b""), Put("/m/x", b""), Put("/n", b"")])
    store.txn([], [Put("/n/c/d", b"deep"), Put("/o", b"")])
    kvs, revision = store.range("/n/")
    assert [kv.key for kv in kvs] == ["/n/a", "/n/b", "/n/c/d"]
    assert revision == rev(2)
    assert [kv.key for kv in store.range("")[0]] == ["/m/x", "/n", "/n/a", "/n/b", "/n/c/d", "/o"]


def test_txn_compare_and_swap(store: Store, rev: Rev) -> None:
    # mod_revision 0: create only if missing.
    assert store.txn([Compare("/k", 0)], [Put("/k", b"v1")]) == rev(1)
    assert store.txn([Compare("/k", 0)], [Put("/k", b"other")]) is None
    kv = store.get("/k")
    assert kv is not None and kv.value == b"v1"
    # Update only if unchanged since read.
    assert store.txn([Compare("/k", rev(7))], [Put("/k", b"v2")]) is None
    assert store.txn([Compare("/k", kv.mod_revision)], [Put("/k", b"v2")]) == rev(2)
    # A failing compare among several changes nothing at all.
    assert store.txn([Compare("/k", rev(2)), Compare("/z", 5)],
                     [Put("/x", b""), Delete("/k")]) is None
    assert store.get("/x") is None
    assert store.revision() == rev(2)


def test_txn_without_effect_keeps_revision(store: Store, rev: Rev) -> None:
    store.txn([], [Put("/k", b"v")])
    assert store.txn([], []) == rev(1)
    assert store.txn([Compare("/k", rev(1))], []) == rev(1)
    assert store.txn([], [Delete("/missing")]) == rev(1)
    assert store.txn([Compare("/k", rev(99))], []) is None
    assert store.txn([Compare("/k", rev(99))], [Delete("/k")]) is None
    assert store.revision() == rev(1)
    assert store.changes_since(0) == [Change(rev(1), "/k", b"v", None)]


def test_txn_rejects_duplicate_keys(store: Store) -> None:
    with pytest.raises(ValueError, match="duplicate key"):
        store.txn([], [Put("/k", b"1"), Delete("/k")])
    assert store.revision() == 0


def test_changes_since(store: Store, rev: Rev) -> None:
    store.txn([], [Put("/a", b"1")])
    store.txn([], [Put("/a", b"2"), Put("/b", b"x")])
    store.txn([], [Delete("/a"), Delete("/nope")])
    assert store.changes_since(0) == [
        Change(rev(1), "/a", b"1", None),
        Change(rev(2), "/a", b"2", b"1"),
        Change(rev(2), "/b", b"x", None),
        Change(rev(3), "/a", None, b"2"),
    ]
    assert store.changes_since(rev(2)) == [Change(rev(3), "/a", None, b"2")]
    assert store.changes_since(rev(3)) == []
    assert store.changes_since(rev(50)) == []


def _trim(kind: str, make_store: MakeStore, keep: int) -> tuple[Store, Callable[[], None]]:
    """A store that keeps ``keep`` changes of history, and what makes it forget the older ones:
    memory and SQLite trim as they write; etcd forgets when compacted."""
    store = make_store(history=keep)
    if not isinstance(store, EtcdStore):
        return store, lambda: None
    etcd = store

    def compact() -> None:
        # etcd compacts whole revisions: keep the newest ``keep`` changes and drop the rest of a
        # revision that would be split (its kept part goes too), as the others do. A
        # compaction at revision C keeps C's writes but not its deletions, so the store counts
        # C as gone: compacting at C keeps what is after C.
        changes = etcd.changes_since(0)
        oldest = changes[-keep].revision
        split = len(changes) > keep and changes[-keep - 1].revision == oldest
        etcd.compact(oldest if split else oldest - 1)

    return etcd, compact


def test_changes_since_raises_compacted(kind: str, make_store: MakeStore) -> None:
    store, trim = _trim(kind, make_store, keep=3)
    revisions = [store.txn([], [Put(f"/k{i}", b"")]) for i in range(5)]
    trim()
    r = [0, *[x or 0 for x in revisions]]  # r[n]: the n-th transaction's revision
    # Revisions 3, 4 and 5 are kept; 1 and 2 are gone.
    assert [c.revision for c in store.changes_since(r[2])] == r[3:6]
    with pytest.raises(Compacted) as caught:
        store.changes_since(r[1])
    assert caught.value.compact_revision == r[2]
    with pytest.raises(Compacted):
        store.changes_since(0)


def test_a_change_comes_with_its_previous_value_or_is_a_gap(kind: str,
                                                           make_store: MakeStore) -> None:
    """Who a deletion concerns is read from the value it deleted (the watch hub finds the
    container's host in it): a store whose history no longer holds that value (etcd, compacted
    past the key's last write) must say so (Compacted: the reader takes a snapshot) rather
    than hand out the deletion without it. Without it, an agent never heard of a deletion."""
    store, trim = _trim(kind, make_store, keep=1)
    store.txn([], [Put("/a", b"1")])
    before = store.txn([], [Put("/b", b"2")]) or 0
    store.txn([], [Delete("/a")])
    trim()  # only the deletion is kept, not the write of what it deleted
    try:
        changes = store.changes_since(before)
    except Compacted:
        assert isinstance(store, EtcdStore)  # the others keep the value with the change
        return
    assert changes == [Change(changes[0].revision, "/a", None, b"1")]


def test_compaction_splitting_a_revision(kind: str, make_store: MakeStore) -> None:
    store, trim = _trim(kind, make_store, keep=3)
    first = store.txn([], [Put("/a", b""), Put("/b", b"")])  # rev 1: two changes
    store.txn([], [Put("/c", b""), Put("/d", b"")])  # rev 2: two changes, trims one of rev 1
    trim()
    with pytest.raises(Compacted):
        store.changes_since(0)
    assert [c.key for c in store.changes_since(first or 0)] == ["/c", "/d"]


def test_wait_times_out_and_wakes_on_write(store: Store, rev: Rev) -> None:
    started = time.monotonic()
    assert store.wait(0, timeout=0.05) == 0
    assert time.monotonic() - started >= 0.04

    def writer() -> None:
        time.sleep(0.05)
        store.txn([], [Put("/k", b"")])

    thread = threading.Thread(target=writer)
    started = time.monotonic()
    thread.start()
    # Woken by the write, not by the timeout: the margin is generous (a loaded machine).
    assert store.wait(0, timeout=60) == rev(1)
    assert time.monotonic() - started < 30
    thread.join()
    assert store.wait(0, timeout=5) == rev(1)  # already past: returns at once


def test_etcd_changes_come_from_its_watch_not_a_replay(etcd: EtcdCluster,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """etcd: ``changes_since`` a revision the store's watch saw is read from what the watch
    delivered (a replay is a new watch, which etcd serves from its history every 100 ms: a
    replica's hub and views waited up to that at every write), with previous values, and
    without the keys of a prefix that sorts between the marker and ours. Before it, a replay."""
    store = EtcdStore(etcd.endpoints, prefix=f"/t/{uuid.uuid4().hex}")
    neighbour = EtcdStore(store.endpoints, prefix=store.prefix + "-b")  # "-" < "/"
    try:
        _watching(store)
        replays: list[object] = []
        real = store._stream

        def counted(*args: Any, **kwargs: Any) -> Any:
            replays.append(args)
            return real(*args, **kwargs)

        monkeypatch.setattr(store, "_stream", counted)
        first = store.txn([], [Put("/a", b"1")]) or 0
        neighbour.txn([], [Put("/a", b"other")])
        second = store.txn([], [Put("/a", b"2"), Put("/b", b"x")]) or 0
        third = store.txn([], [Delete("/a")]) or 0
        assert store.changes_since(first) == [
            Change(second, "/a", b"2", b"1"), Change(second, "/b", b"x", None),
            Change(third, "/a", None, b"2")]
        assert store.changes_since(second) == [Change(third, "/a", None, b"2")]
        assert store.changes_since(third) == []
        assert replays == []
        # From before the watch started: a replay, which etcd still holds.
        assert [c.revision for c in store.changes_since(0)] == [first, second, second, third]
        assert len(replays) == 1
        # Without a log (the watch down, or starting again) etcd replays at once: nothing
        # waits for a log that is not there (LOG_WAIT made long: it would be waited out).
        monkeypatch.setattr(etcd_store, "LOG_WAIT", 600.0)
        with store._cond:
            store._log_from = -1
        got: list[list[Change]] = []
        asked = threading.Thread(target=lambda: got.append(store.changes_since(first)))
        asked.start()
        asked.join(timeout=60)
        assert got == [[Change(second, "/a", b"2", b"1"), Change(second, "/b", b"x", None),
                        Change(third, "/a", None, b"2")]]
        assert len(replays) == 2
    finally:
        neighbour.close()
        store.close()


def _watching(store: EtcdStore) -> None:
    deadline = time.monotonic() + 30
    while store._mirror is None or store._log_from < 0:  # the watch is up, its mirror loaded
        assert time.monotonic() < deadline, "the store's watch never started"
        time.sleep(0.01)


def test_etcd_reads_come_from_the_mirror_as_new_as_etcd(etcd: EtcdCluster,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """etcd: a read is answered from the mirror the store's watch keeps, after one read of the
    marker (not of the keys asked), and is as new as a read of etcd: what another replica
    wrote just before is there. The mirror agrees with etcd whole, a neighbour prefix's keys
    apart; it is loaded in pages; and a mirror behind the prefix's revision is not read."""
    monkeypatch.setattr(etcd_store, "PAGE", 3)  # the first load takes several pages
    prefix = f"/t/{uuid.uuid4().hex}"
    writer = EtcdStore(etcd.endpoints, prefix=prefix)
    writer.txn([], [Put(f"/old/{i}", b"%d" % i) for i in range(10)])
    store = EtcdStore(etcd.endpoints, prefix=prefix)
    neighbour = EtcdStore(etcd.endpoints, prefix=prefix + "-b")  # sorts between marker and keys
    try:
        _watching(store)
        paths: list[str] = []
        real = store._post

        def counted(endpoint: str, path: str, payload: bytes) -> Any:
            paths.append(path)
            return real(endpoint, path, payload)

        monkeypatch.setattr(store, "_post", counted)
        for i in range(30):  # another replica's write, read at once through the mirror
            revision = writer.txn([], [Put("/k", b"%d" % i), Put(f"/n/{i}", b"x")])
            neighbour.txn([], [Put("/k", b"neighbour")])
            kv = store.get("/k")
            assert kv is not None and (kv.value, kv.mod_revision) == (b"%d" % i, revision)
            kvs, at = store.range("/n/")
            assert len(kvs) == i + 1 and at == revision
        assert set(paths) == {"/v3/kv/range"}  # the marker's revision: a read of one key
        paths.clear()
        many = store.get_many([f"/old/{i}" for i in range(10)] + ["/none"])
        assert [kv.value if kv else None for kv in many] == [b"%d" % i for i in range(10)] + [None]
        assert paths == ["/v3/kv/range"]
        writer.txn([], [Delete("/old/3"), Put("/old/4", b"again")])
        mirrored = store.range("/")
        monkeypatch.setattr(store, "_mirrored", lambda read: None)  # etcd itself
        assert mirrored == store.range("/")
        monkeypatch.undo()
        monkeypatch.setattr(etcd_store, "LOG_WAIT", 0.3)
        with store._cond:  # the mirror seems behind: etcd answers, after LOG_WAIT
            store._log_to = 0
        monkeypatch.setattr(store, "_post", counted)
        paths.clear()
        kv = store.get("/old/4")
        assert kv is not None and kv.value == b"again"
        assert paths == ["/v3/kv/range", "/v3/kv/range"]  # the marker, then the key
    finally:
        neighbour.close()
        store.close()
        writer.close()


def test_etcd_close_during_the_watchs_load_ends_it_quietly(
        etcd: EtcdCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """close() shuts the store's connections under whatever its watch is reading; when that
    is the load of the mirror, http.client fails in its own ways (seen in CI: AttributeError
    from a response whose socket went), and the watch thread must end without an exception."""
    entered = threading.Event()
    raised: list[BaseException | None] = []

    def loading(store: EtcdStore) -> Any:
        entered.set()
        store._closed.wait(30)
        raise AttributeError("'NoneType' object has no attribute 'read'")

    monkeypatch.setattr(EtcdStore, "_load", loading)
    monkeypatch.setattr(threading, "excepthook", lambda args: raised.append(args.exc_value))
    store = EtcdStore(etcd.endpoints, prefix=f"/t/{uuid.uuid4().hex}")
    assert entered.wait(30)
    store.close()
    assert not store._watcher.is_alive()
    assert raised == []


def test_wait_wakes_on_a_write_through_another_store_object(kind: str,
                                                            make_store: MakeStore) -> None:
    """Two replicas: a write through one wakes a waiter on the other (etcd: through its watch,
    not by polling)."""
    if kind == "memory":
        pytest.skip("a memory store is one process's")
    a = make_store()
    b = a if kind == "sqlite" else EtcdStore(a.endpoints, prefix=a.prefix)  # type: ignore[attr-defined]
    try:
        if kind == "sqlite":
            b = make_store()
        timer = threading.Timer(0.1, lambda: b.txn([], [Put("/k", b"")]))
        started = time.monotonic()
        timer.start()
        assert a.wait(0, timeout=60) > 0
        assert time.monotonic() - started < 30  # woken by the write, not by the timeout
        timer.join()
    finally:
        if b is not a:
            b.close()


def test_sqlite_wait_sees_another_store_object(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    a, b = SqliteStore(path, poll_interval=0.05), SqliteStore(path)
    try:
        timer = threading.Timer(0.05, lambda: b.txn([], [Put("/k", b"")]))
        timer.start()
        assert a.wait(0, timeout=5) == 1
        timer.join()
    finally:
        a.close()
        b.close()


def test_sqlite_reads_and_writes_more_keys_than_one_statement_names(tmp_path: Path) -> None:
    """A read of one chunk is one statement; more keys than a statement names (``CHUNK``) are
    read in several, inside one transaction, and a write's compares and old values likewise:
    the answers are the same either way."""
    store = SqliteStore(tmp_path / "db")
    keys = [f"/big/{i:04d}" for i in range(2 * sqlite_store.CHUNK + 200)]
    first = store.txn([Compare(k, 0) for k in keys], [Put(k, k.encode()) for k in keys])
    assert first is not None
    got = store.get_many([*keys, "/big/none", keys[0]])
    assert [kv.value if kv else None for kv in got] == [*(k.encode() for k in keys), None,
                                                         keys[0].encode()]
    # The one compare that fails is in the last chunk: nothing is written.
    stale = [Compare(k, first) for k in keys[:-1]] + [Compare(keys[-1], 0)]
    assert store.txn(stale, [Put(k, b"x") for k in keys]) is None
    assert store.get(keys[-1]).value == keys[-1].encode()  # type: ignore[union-attr]
    # Deleted past a chunk: every change carries the value it deleted.
    gone = store.txn([Compare(k, first) for k in keys], [Delete(k) for k in keys])
    changes = store.changes_since(first)
    assert [(c.revision, c.key, c.value, c.prev_value) for c in changes] == [
        (gone, k, None, k.encode()) for k in keys]
    assert store.range("/big/") == ([], gone)
    store.close()


def test_sqlite_file_is_private_and_persistent(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "dir" / "store.sqlite"
    store = SqliteStore(path)
    store.txn([], [Put("/k", b"v")])
    store.close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    store = SqliteStore(path)
    kv = store.get("/k")
    assert kv is not None and kv.value == b"v"
    assert store.revision() == 1
    store.close()


def test_two_sqlite_stores_do_not_lose_a_cas_race(tmp_path: Path) -> None:
    """Two Store objects (as two processes would) increment one counter with CAS."""
    path = tmp_path / "store.sqlite"
    stores = [SqliteStore(path), SqliteStore(path)]
    stores[0].txn([], [Put("/counter", b"0")])
    rounds = 100

    def increment(store: Store) -> None:
        done = 0
        while done < rounds:
            kv = store.get("/counter")
            assert kv is not None
            new = str(int(kv.value) + 1).encode()
            if store.txn([Compare("/counter", kv.mod_revision)], [Put("/counter", new)]):
                done += 1

    threads = [threading.Thread(target=increment, args=(s,)) for s in stores for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    kv = stores[1].get("/counter")
    assert kv is not None and int(kv.value) == 4 * rounds
    assert stores[0].revision() == 4 * rounds + 1
    for store in stores:
        store.close()


_INCREMENT = """
import sys
from sdnctl.controller.store.base import Compare, Put
from sdnctl.controller.store.sqlite import SqliteStore

store = SqliteStore(sys.argv[1])
done = 0
while done < int(sys.argv[2]):
    kv = store.get("/counter")
    new = b"%d" % (int(kv.value) + 1)
    if store.txn([Compare("/counter", kv.mod_revision)], [Put("/counter", new)]):
        done += 1
store.close()
"""


def test_two_processes_do_not_lose_a_cas_race(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    store = SqliteStore(path)
    store.txn([], [Put("/counter", b"0")])
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    argv = [sys.executable, "-c", _INCREMENT, str(path), "100"]
    children = [subprocess.Popen(argv, env=env) for _ in range(2)]
    assert [child.wait(timeout=30) for child in children] == [0, 0]
    kv = store.get("/counter")
    assert kv is not None and kv.value == b"200"
    assert store.revision() == 201
    store.close()


def test_store_specs(tmp_path: Path) -> None:
    from sdnctl.controller.store.etcd import parse_url
    from sdnctl.controller.store.spec import describe_store, open_store

    assert parse_url("etcd://a:1,b:2/x/y") == (["a:1", "b:2"], "/x/y")
    assert parse_url("etcd://a:1") == (["a:1"], "/sdnctl")
    for bad in ("etcd://", "etcd://a", "etcd://a:b"):
        with pytest.raises(ValueError):
            parse_url(bad)
    with pytest.raises(ValueError, match="unknown store"):
        open_store("mysql://x")
    store = open_store(f"sqlite:{tmp_path / 's.db'}")
    assert describe_store(store) == f"sqlite:{tmp_path / 's.db'}"
    store.close()
    assert describe_store(open_store("memory")) == "memory"


def test_etcd_store_unreachable_is_unavailable() -> None:
    from etcdtest import free_ports

    from sdnctl.controller.store.base import StoreUnavailable

    port = free_ports(1)[0]  # nobody listens there
    with pytest.raises(StoreUnavailable, match="etcd is unavailable"):
        EtcdStore([f"127.0.0.1:{port}"], timeout=1)


def test_etcd_prefixes_are_apart(etcd: object) -> None:
    """Two deployments whose prefixes share a beginning see nothing of each other."""
    endpoints = etcd.endpoints  # type: ignore[attr-defined]
    base = f"/p{uuid.uuid4().hex[:8]}"
    a, b = EtcdStore(endpoints, prefix=base), EtcdStore(endpoints, prefix=base + "-b")
    try:
        a.txn([], [Put("/k", b"a")])
        assert b.range("") == ([], 0)
        assert a.range("k")[0] == [] and a.range("-b")[0] == []
        assert b.get("/k") is None and b.changes_since(0) == []
        b.txn([], [Put("/k", b"b")])
        kv = a.get("/k")
        assert kv is not None and kv.value == b"a" and [x.key for x in a.range("")[0]] == ["/k"]
    finally:
        a.close()
        b.close()


def test_etcd_store_finds_the_transaction_size_etcd_takes(etcd: object, tmp_path: Path) -> None:
    """etcd does not say its --max-txn-ops: the store tries read-only transactions when it
    opens and uses the largest that passes (batches then take fewer transactions), and the
    default 128 when etcd keeps its default; a batch larger than that still commits."""
    roomy = EtcdStore(etcd.endpoints,  # type: ignore[attr-defined]
                      prefix=f"/p{uuid.uuid4().hex[:8]}")
    try:
        assert roomy.max_txn_ops == 1024  # the test etcd runs with --max-txn-ops 4096
        assert roomy.txn([], [Put(f"/k{i}", b"v") for i in range(600)]) is not None
    finally:
        roomy.close()
    with etcd_cluster(tmp_path / "default", extra_args=["--max-txn-ops", "128"]) as cluster:
        store = EtcdStore(cluster.endpoints)
        try:
            assert store.max_txn_ops == 128
            with pytest.raises(EtcdError, match="too many operations"):  # (what it found)
                store.txn([], [Put(f"/k{i}", b"v") for i in range(129)])
            state = State(store)
            state.create_host(Host("h1"))
            state.create_network(Network("front", "10.88.0.0/16"))
            views, _ = state.create_containers(
                [Container(name=f"c{i}", host="h1", network="front") for i in range(40)])
            assert len(views) == 40
            assert None not in get_many(store, [f"/containers/c{i}" for i in range(40)])
        finally:
            store.close()


def test_memory_range_agrees_with_a_scan_through_puts_and_deletes() -> None:
    """MemoryStore keeps its keys sorted for ``range`` (issue 21: the dry run ranged by scanning
    every key); after random puts, deletes and bulk loads, each prefix's range is what a scan
    of every key finds, in key order."""
    rng = random.Random(21)
    store = MemoryStore()
    model: dict[str, str] = {}
    keys = [f"/{a}/{b}{c}" for a in ("c", "ca", "h") for b in ("x", "y") for c in range(40)]
    store.txn([], [Put(k, "bulk") for k in keys[::3]])  # a bulk load (one sort)
    model.update({k: "bulk" for k in keys[::3]})
    for _ in range(600):
        key = rng.choice(keys)
        if rng.random() < 0.6:
            store.txn([], [Put(key, str(rng.random()))])
            model[key] = store.get(key).value  # type: ignore[union-attr]
        else:
            store.txn([], [Delete(key)])
            model.pop(key, None)
        prefix = rng.choice(["/", "/c", "/c/", "/ca/", "/h/x", "/h/y1", "/z"])
        got, _ = store.range(prefix)
        assert [(kv.key, kv.value) for kv in got] == \
            sorted((k, v) for k, v in model.items() if k.startswith(prefix))
