"""Independent transactions of several threads merged into one (issue 21): the status reports;
and one read shared by the threads that ask for it at once.

Design note. After a change that concerns every host of a 100-host overlay, the 100 agents
report at once, each report one transaction. On etcd every transaction is a raft entry and a
WAL write on each member: at 100 x 10 the reports after one host joined cost the three members
~1.5 s of CPU on a two-core machine, while the agents applied the change (measured: etcd took
more CPU than the 100 agents). Here a writer that finds no transaction in flight writes at
once, alone, in its own thread; writers that come while one is in flight queue, and when it
ends the first of them writes everything queued as ONE transaction (the compares of all, the
operations of all), as the group commit of the API's writes does (``groupcommit``), so a
report waits at most for one transaction before its own.

Each writer keeps the outcome it would have had alone: when the merged transaction fails (a
compare of one of them no longer holds) each is written again alone, and gets its own
revision or None. Writes that touch a key another queued write touches, or that together
would pass the store's cap of operations (etcd's ``max_txn_ops``), go in separate groups.

:class:`Shared` takes turns the same way for a read whose answer every caller can use (the etcd
store's read of its prefix's revision before it answers from its mirror): a caller gets the
answer of a read that began after it asked, so it is as new as a read of its own, and the
callers queued while one read was in flight share the next.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from sdnctl.controller.store.base import Compare, Delete, Put, Store


class Waiting:
    """One caller's item in a :class:`Turns` queue."""

    def __init__(self) -> None:
        self.woken = threading.Event()  # done, or the lead handed to this caller
        self.done = False


W = TypeVar("W", bound=Waiting)


class Turns(Generic[W]):
    """Callers queue their items; one that finds nobody leading leads: it takes a group from
    the head of the queue (``_group``), writes it (``_write``), and hands the lead to the first
    caller queued meanwhile, so nobody leads for more than one group and nothing needs a
    thread of its own (LevelDB's writer queue works this way). The group commit of the API's
    writes (``groupcommit``) and :class:`Coalescer` take their turns so."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: list[W] = []
        self._leading = False  # a caller leads: it or the one it hands the lead to drains

    def _enter(self, mine: W) -> None:
        """Queue ``mine``; return when it is done (having led the groups handed to it)."""
        with self._lock:
            self._queue.append(mine)
            lead = not self._leading
            self._leading = True
        if not lead:
            mine.woken.wait()
        while not mine.done:
            self._lead()

    def _group(self, queue: list[W]) -> int:
        """How many items from the head of ``queue`` (at least one) the next group takes."""
        raise NotImplementedError

    def _write(self, group: list[W]) -> None:
        """Write ``group``, leaving each item's outcome in it."""
        raise NotImplementedError

    def _lead(self) -> None:
        with self._lock:
            count = self._group(self._queue)
            group = self._queue[:count]
            del self._queue[:count]
        try:
            self._write(group)
        finally:
            with self._lock:
                if self._queue:
                    self._queue[0].woken.set()  # not done: it leads the next group
                else:
                    self._leading = False
            for item in group:
                item.done = True
                item.woken.set()


class _Pending(Waiting):
    def __init__(self, compares: Sequence[Compare], ops: Sequence[Put | Delete]) -> None:
        super().__init__()
        self.compares, self.ops = compares, ops
        self.keys = {op.key for op in ops}
        self.result: int | None = None
        self.error: BaseException | None = None


class Coalescer(Turns[_Pending]):
    """``txn`` as the store's, merged with the concurrent ``txn`` calls of other threads."""

    def __init__(self, store: Callable[[], Store]) -> None:
        super().__init__()
        self._store = store  # asked each time: a test may put a proxy in the State's place

    def txn(self, compares: Sequence[Compare], ops: Sequence[Put | Delete]) -> int | None:
        mine = _Pending(compares, ops)
        self._enter(mine)
        if mine.error is not None:
            raise mine.error
        return mine.result

    def _group(self, queue: list[_Pending]) -> int:
        cap = getattr(self._store(), "max_txn_ops", None) or 1 << 30
        touched: set[str] = set()
        compares = ops = count = 0
        for pending in queue:
            if count and (pending.keys & touched or compares + len(pending.compares) > cap
                          or ops + len(pending.ops) > cap):
                break
            touched |= pending.keys
            compares, ops, count = compares + len(pending.compares), ops + len(pending.ops), \
                count + 1
        return count

    def _write(self, group: list[_Pending]) -> None:
        store = self._store()
        if len(group) > 1:
            try:
                revision = store.txn([c for p in group for c in p.compares],
                                     [op for p in group for op in p.ops])
            except Exception:  # each is written alone below: its own error, or not
                revision = None
            if revision is not None:
                for pending in group:
                    pending.result = revision
                return
        for pending in group:  # alone, or the merged one failed: each as it would alone
            try:
                pending.result = store.txn(pending.compares, pending.ops)
            except BaseException as e:  # handed to its writer, raised there
                pending.error = e


T = TypeVar("T")


class _Asking(Waiting, Generic[T]):
    def __init__(self) -> None:
        super().__init__()
        self.result: T | None = None
        self.error: BaseException | None = None


class Shared(Turns[_Asking[T]]):
    """``read()`` for every thread that asks at once: each gets the answer of a read begun
    after it asked, shared with the others queued meanwhile (100 readers at once cost two
    reads, not 100); an error goes to every caller of that read."""

    def __init__(self, read: Callable[[], T]) -> None:
        super().__init__()
        self._read = read
        self.reads = 0  # how many reads were made (for tests and figures)

    def __call__(self) -> T:
        mine: _Asking[T] = _Asking()
        self._enter(mine)
        if mine.error is not None:
            raise mine.error
        return mine.result  # type: ignore[return-value]

    def _group(self, queue: list[_Asking[T]]) -> int:
        return len(queue)  # every caller queued now asked before the read below begins

    def _write(self, group: list[_Asking[T]]) -> None:
        self.reads += 1
        try:
            result = self._read()
        except BaseException as e:  # handed to every caller of this read, raised there
            for asking in group:
                asking.error = e
            return
        for asking in group:
            asking.result = result
