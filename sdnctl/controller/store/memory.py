"""In-memory Store: the fake beside the real stores, for unit tests and throwaway controllers.

Design note. Besides the dict of keys, the keys are kept sorted, so that ``range(prefix)`` is a
bisection and a walk over what matches, not a scan of every key: `up`'s dry run of 1,000
containers (a throwaway copy of the store) ranged over every key ~2,000 times (issue 21).
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import deque
from collections.abc import Sequence

from sdnctl.controller.store.base import (
    DEFAULT_HISTORY,
    Change,
    Compacted,
    Compare,
    Delete,
    KeyValue,
    Put,
    check_ops,
)


class MemoryStore:
    """A dict of keys and a bounded change log, guarded by one condition variable."""

    def __init__(self, history: int = DEFAULT_HISTORY) -> None:
        if history < 1:
            raise ValueError("history must keep at least one change")
        self._history = history
        self._kv: dict[str, KeyValue] = {}
        self._keys: list[str] = []  # the keys of _kv, sorted
        self._changes: deque[Change] = deque()
        self._revision = 0
        self._compacted = 0  # highest revision of any change trimmed from the log
        self._cond = threading.Condition()

    def get(self, key: str) -> KeyValue | None:
        with self._cond:
            return self._kv.get(key)

    def get_many(self, keys: Sequence[str]) -> list[KeyValue | None]:
        with self._cond:
            return [self._kv.get(key) for key in keys]

    def range(self, prefix: str) -> tuple[list[KeyValue], int]:
        with self._cond:
            keys = self._keys
            found = []
            for i in range(bisect.bisect_left(keys, prefix), len(keys)):
                if not keys[i].startswith(prefix):
                    break
                found.append(self._kv[keys[i]])
            return found, self._revision

    def txn(self, compares: Sequence[Compare], ops: Sequence[Put | Delete]) -> int | None:
        check_ops(ops)
        with self._cond:
            for compare in compares:
                current = self._kv.get(compare.key)
                if (current.mod_revision if current else 0) != compare.mod_revision:
                    return None
            new = self._revision + 1
            changes: list[Change] = []
            added: list[str] = []  # keys this transaction creates
            for op in ops:
                old = self._kv.get(op.key)
                if isinstance(op, Put):
                    created = old.create_revision if old else new
                    self._kv[op.key] = KeyValue(op.key, op.value, created, new)
                    if old is None:
                        added.append(op.key)
                    changes.append(Change(new, op.key, op.value, old.value if old else None))
                elif old is not None:
                    del self._kv[op.key]
                    if op.key in added:  # put earlier in this transaction
                        added.remove(op.key)
                    else:
                        del self._keys[bisect.bisect_left(self._keys, op.key)]
                    changes.append(Change(new, op.key, None, old.value))
            if len(added) > 64:  # a bulk load: one sort, not a shift of the list per key
                self._keys.extend(added)
                self._keys.sort()
            else:
                for key in added:
                    bisect.insort(self._keys, key)
            if not changes:
                return self._revision
            self._revision = new
            self._record(changes)
            self._cond.notify_all()
            return new

    def _record(self, changes: list[Change]) -> None:
        self._changes.extend(changes)
        while len(self._changes) > self._history:
            self._compacted = self._changes.popleft().revision

    def revision(self) -> int:
        with self._cond:
            return self._revision

    def changes_since(self, revision: int) -> list[Change]:
        with self._cond:
            if revision < self._compacted:
                raise Compacted(revision, self._compacted)
            return [c for c in self._changes if c.revision > revision]

    def wait(self, revision: int, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._revision <= revision:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            return self._revision

    def close(self) -> None:
        pass
