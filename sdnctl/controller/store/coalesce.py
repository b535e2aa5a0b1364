"""Independent transactions of several threads merged into one (issue 21): the status reports.

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
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from sdnctl.controller.store.base import Compare, Delete, Put, Store


class _Pending:
    def __init__(self, compares: Sequence[Compare], ops: Sequence[Put | Delete]) -> None:
        self.compares, self.ops = compares, ops
        self.keys = {op.key for op in ops}
        self.done = threading.Event()  # written, or the lead handed to this writer
        self.written = False
        self.result: int | None = None
        self.error: BaseException | None = None


class Coalescer:
    """``txn`` as the store's, merged with the concurrent ``txn`` calls of other threads."""

    def __init__(self, store: Callable[[], Store]) -> None:
        self._store = store  # asked each time: a test may put a proxy in the State's place
        self._lock = threading.Lock()
        self._queue: list[_Pending] = []
        self._busy = False

    def txn(self, compares: Sequence[Compare], ops: Sequence[Put | Delete]) -> int | None:
        mine = _Pending(compares, ops)
        with self._lock:
            self._queue.append(mine)
            lead = not self._busy
            self._busy = True
        if not lead:
            mine.done.wait()
        while not mine.written:
            self._lead()
        if mine.error is not None:
            raise mine.error
        return mine.result

    def _lead(self) -> None:
        """Write one group from the head of the queue, then hand the lead on."""
        store = self._store()
        cap = getattr(store, "max_txn_ops", None) or 1 << 30
        with self._lock:
            group: list[_Pending] = []
            touched: set[str] = set()
            size = [0, 0]
            for pending in self._queue:
                if group and (pending.keys & touched
                              or size[0] + len(pending.compares) > cap
                              or size[1] + len(pending.ops) > cap):
                    break
                group.append(pending)
                touched |= pending.keys
                size = [size[0] + len(pending.compares), size[1] + len(pending.ops)]
            del self._queue[:len(group)]
        try:
            self._write(store, group)
        finally:
            with self._lock:
                if self._queue:
                    self._queue[0].done.set()  # not written: it leads the next group
                else:
                    self._busy = False
            for pending in group:
                pending.written = True
                pending.done.set()

    @staticmethod
    def _write(store: Store, group: list[_Pending]) -> None:
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
