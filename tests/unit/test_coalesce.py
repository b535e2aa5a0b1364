"""Transactions of several threads merged into one (sdnctl/controller/store/coalesce.py, issue
21): writers that come while one is in flight are written together, each keeps the outcome it
would have had alone, and writes touching one key, or passing the store's cap, stay apart;
and one read shared by the callers that ask at once."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from sdnctl.controller.store.base import Compare, Delete, Put
from sdnctl.controller.store.coalesce import Coalescer, Shared
from sdnctl.controller.store.memory import MemoryStore

TIMEOUT = 10.0


class Gated:
    """A memory store whose first transaction waits for ``release`` (so that others queue
    behind it), and which records every transaction's operations."""

    def __init__(self, cap: int | None = None) -> None:
        self.inner = MemoryStore()
        self.max_txn_ops = cap
        self.entered = threading.Event()
        self.release = threading.Event()
        self.txns: list[list[str]] = []

    def txn(self, compares: Sequence[Compare], ops: Sequence[Put | Delete]) -> int | None:
        if not self.txns:
            self.entered.set()
            assert self.release.wait(TIMEOUT)
        self.txns.append([op.key for op in ops])
        return self.inner.txn(compares, ops)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _run(store: Gated, writes: list[tuple[list[Compare], list[Put | Delete]]]
         ) -> list[int | None]:
    """The first write alone (held in the store), the others queued behind it, then all."""
    coalescer = Coalescer(lambda: store)  # type: ignore[arg-type, return-value]
    results: list[int | None] = [None] * len(writes)

    def write(i: int) -> None:
        results[i] = coalescer.txn(*writes[i])

    first = threading.Thread(target=write, args=(0,))
    first.start()
    assert store.entered.wait(TIMEOUT)
    others = [threading.Thread(target=write, args=(i,)) for i in range(1, len(writes))]
    for i, t in enumerate(others, start=1):  # each queued before the next starts: in order
        t.start()
        while len(coalescer._queue) < i:
            assert t.is_alive()
            threading.Event().wait(0.001)
    store.release.set()
    for t in [first, *others]:
        t.join(TIMEOUT)
    return results


def test_writers_queued_behind_one_are_written_as_one() -> None:
    store = Gated()
    results = _run(store, [([], [Put(f"/s/{i}", b"x")]) for i in range(6)])
    assert store.txns == [["/s/0"], [f"/s/{i}" for i in range(1, 6)]]
    assert results[0] == 1 and results[1:] == [2] * 5
    assert [kv.key for kv in store.inner.range("/s/")[0]] == [f"/s/{i}" for i in range(6)]


def test_a_failed_compare_fails_its_writer_alone() -> None:
    store = Gated()
    store.inner.txn([], [Put("/held", b"1")])  # revision 1: the guard below expects 0
    results = _run(store, [([], [Put("/a", b"")]),
                           ([], [Put("/b", b"")]),
                           ([Compare("/held", 0)], [Put("/c", b"")]),
                           ([], [Put("/d", b"")])])
    # The merged write failed on /held's compare; each was then written alone.
    assert store.txns[1] == ["/b", "/c", "/d"]
    assert results[2] is None
    assert all(r is not None for i, r in enumerate(results) if i != 2)
    assert store.inner.get("/c") is None and store.inner.get("/d") is not None


def test_writes_of_one_key_or_past_the_cap_go_apart() -> None:
    store = Gated(cap=3)
    _run(store, [([], [Put("/x", b"0")]),
                 ([], [Put("/k", b"1")]),
                 ([], [Put("/k", b"2")]),  # the same key: the next group
                 ([], [Put("/m", b"1"), Put("/n", b"1")]),
                 ([], [Put("/o", b"1"), Put("/p", b"1")])])  # past the cap of 3: apart
    assert store.txns == [["/x"], ["/k"], ["/k", "/m", "/n"], ["/o", "/p"]]
    kv = store.inner.get("/k")
    assert kv is not None and kv.value == b"2"


def test_a_shared_read_answers_each_caller_from_a_read_begun_after_it_asked() -> None:
    """coalesce.Shared: callers that ask while a read is in flight share the next read, not
    that one (it began before they asked, so it may be older than they need); its error goes
    to every caller of it."""
    entered, release = threading.Event(), threading.Event()
    begun: list[int] = []

    def read() -> int:
        begun.append(len(begun) + 1)
        if len(begun) == 1:
            entered.set()
            assert release.wait(TIMEOUT)
        if len(begun) == 3:
            raise RuntimeError("the third read fails")
        return len(begun)

    shared: Shared[int] = Shared(read)
    got: dict[int, int | str] = {}

    def ask(i: int) -> None:
        try:
            got[i] = shared()
        except RuntimeError as e:
            got[i] = str(e)

    first = threading.Thread(target=ask, args=(0,))
    first.start()
    assert entered.wait(TIMEOUT)
    others = [threading.Thread(target=ask, args=(i,)) for i in range(1, 11)]
    for i, t in enumerate(others, start=1):
        t.start()
        while len(shared._queue) < i:  # queued behind the read in flight
            assert t.is_alive()
            threading.Event().wait(0.001)
    release.set()
    for t in [first, *others]:
        t.join(TIMEOUT)
    assert got == {0: 1, **{i: 2 for i in range(1, 11)}}  # ten callers, one read
    assert shared.reads == 2
    late = threading.Thread(target=ask, args=(11,))
    late.start()
    late.join(TIMEOUT)
    assert got[11] == "the third read fails" and shared.reads == 3
    assert shared() == 4  # the next read stands on its own
