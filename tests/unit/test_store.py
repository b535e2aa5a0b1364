"""The Store contract, run against every implementation."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sdnctl.controller.store.base import Change, Compacted, Compare, Delete, Put, Store
from sdnctl.controller.store.memory import MemoryStore
from sdnctl.controller.store.sqlite import SqliteStore

MakeStore = Callable[..., Store]


@pytest.fixture(params=["memory", "sqlite"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeStore]:
    opened: list[Store] = []

    def make(history: int = 10_000) -> Store:
        store: Store
        if request.param == "memory":
            store = MemoryStore(history=history)
        else:
            store = SqliteStore(tmp_path / "db" / "store.sqlite", history=history)
        opened.append(store)
        return store

    yield make
    for store in reversed(opened):
        store.close()


@pytest.fixture
def store(make_store: MakeStore) -> Store:
    return make_store()


def test_new_store_is_empty(store: Store) -> None:
    assert store.revision() == 0
    assert store.get("/a") is None
    assert store.range("/") == ([], 0)
    assert store.changes_since(0) == []


def test_put_get_and_revisions(store: Store) -> None:
    assert store.txn([], [Put("/a", b"1")]) == 1
    assert store.txn([], [Put("/b", b"2"), Put("/c", b"3")]) == 2
    kv = store.get("/b")
    assert kv is not None
    assert (kv.value, kv.create_revision, kv.mod_revision) == (b"2", 2, 2)
    assert store.txn([], [Put("/b", b"two")]) == 3
    kv = store.get("/b")
    assert kv is not None
    assert (kv.value, kv.create_revision, kv.mod_revision) == (b"two", 2, 3)
    assert store.revision() == 3


def test_range_is_prefix_sorted_with_revision(store: Store) -> None:
    store.txn([], [Put("/n/b", b""), Put("/n/a", b""), Put("/m/x", b""), Put("/n", b"")])
    store.txn([], [Put("/n/c/d", b"deep"), Put("/o", b"")])
    kvs, revision = store.range("/n/")
    assert [kv.key for kv in kvs] == ["/n/a", "/n/b", "/n/c/d"]
    assert revision == 2
    assert [kv.key for kv in store.range("")[0]] == ["/m/x", "/n", "/n/a", "/n/b", "/n/c/d", "/o"]


def test_txn_compare_and_swap(store: Store) -> None:
    # mod_revision 0: create only if missing.
    assert store.txn([Compare("/k", 0)], [Put("/k", b"v1")]) == 1
    assert store.txn([Compare("/k", 0)], [Put("/k", b"other")]) is None
    kv = store.get("/k")
    assert kv is not None and kv.value == b"v1"
    # Update only if unchanged since read.
    assert store.txn([Compare("/k", 7)], [Put("/k", b"v2")]) is None
    assert store.txn([Compare("/k", kv.mod_revision)], [Put("/k", b"v2")]) == 2
    # A failing compare among several changes nothing at all.
    assert store.txn([Compare("/k", 2), Compare("/z", 5)], [Put("/x", b""), Delete("/k")]) is None
    assert store.get("/x") is None
    assert store.revision() == 2


def test_txn_without_effect_keeps_revision(store: Store) -> None:
    store.txn([], [Put("/k", b"v")])
    assert store.txn([], []) == 1
    assert store.txn([Compare("/k", 1)], []) == 1
    assert store.txn([], [Delete("/missing")]) == 1
    assert store.txn([Compare("/k", 99)], []) is None
    assert store.revision() == 1
    assert store.changes_since(0) == [Change(1, "/k", b"v", None)]


def test_txn_rejects_duplicate_keys(store: Store) -> None:
    with pytest.raises(ValueError, match="duplicate key"):
        store.txn([], [Put("/k", b"1"), Delete("/k")])
    assert store.revision() == 0


def test_changes_since(store: Store) -> None:
    store.txn([], [Put("/a", b"1")])
    store.txn([], [Put("/a", b"2"), Put("/b", b"x")])
    store.txn([], [Delete("/a"), Delete("/nope")])
    assert store.changes_since(0) == [
        Change(1, "/a", b"1", None),
        Change(2, "/a", b"2", b"1"),
        Change(2, "/b", b"x", None),
        Change(3, "/a", None, b"2"),
    ]
    assert store.changes_since(2) == [Change(3, "/a", None, b"2")]
    assert store.changes_since(3) == []
    assert store.changes_since(50) == []


def test_changes_since_raises_compacted(make_store: MakeStore) -> None:
    store = make_store(history=3)
    for i in range(5):
        store.txn([], [Put(f"/k{i}", b"")])
    # Revisions 3, 4 and 5 are kept; 1 and 2 are gone.
    assert [c.revision for c in store.changes_since(2)] == [3, 4, 5]
    with pytest.raises(Compacted) as caught:
        store.changes_since(1)
    assert caught.value.compact_revision == 2
    with pytest.raises(Compacted):
        store.changes_since(0)


def test_compaction_splitting_a_revision(make_store: MakeStore) -> None:
    store = make_store(history=3)
    store.txn([], [Put("/a", b""), Put("/b", b"")])  # rev 1: two changes
    store.txn([], [Put("/c", b""), Put("/d", b"")])  # rev 2: two changes, trims one of rev 1
    with pytest.raises(Compacted):
        store.changes_since(0)
    assert [c.key for c in store.changes_since(1)] == ["/c", "/d"]


def test_wait_times_out_and_wakes_on_write(store: Store) -> None:
    started = time.monotonic()
    assert store.wait(0, timeout=0.05) == 0
    assert time.monotonic() - started >= 0.04

    def writer() -> None:
        time.sleep(0.05)
        store.txn([], [Put("/k", b"")])

    thread = threading.Thread(target=writer)
    started = time.monotonic()
    thread.start()
    assert store.wait(0, timeout=5) == 1
    assert time.monotonic() - started < 1
    thread.join()
    assert store.wait(0, timeout=5) == 1  # already past: returns at once


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
