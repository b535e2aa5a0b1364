"""A staging store: many State operations gathered into ONE transaction of the real store.

Design note. :class:`Staging` is a :class:`Store` layered over a real one. Reads see the real
store with the staged writes on top; a ``txn`` on it checks its compares against that view and
stages its ops instead of writing them. A compare on a key nothing staged yet is remembered as
the compare of the final transaction (what the batch read must still hold when it commits).
:meth:`Staging.commit` then writes every staged key's last value in one compare-and-swap, so
``State`` code written for one object (create_container's reads, IPAM's picks, the index
updates) runs unchanged for a batch, each object seeing the ones staged before it (a second
container takes the next address of the lease, a joiner finds its donor).

Staged keys get the mod revision the real transaction will give them (current + 1), so compares
that code made on what it staged hold. Nothing here is visible to anybody until the commit; a
commit whose compares fail changes nothing and the caller stages the batch again.

:meth:`Staging.snapshot` and :meth:`Staging.restore` take one item of a batch back out (a batch
that would exceed a transaction's cap, a write of a group commit that was refused). They work on
an undo journal, so a snapshot per item costs nothing however much is staged; the staged keys
are also kept sorted, so that a ``range`` costs the staged keys under its prefix, not all of
them (a group of a hundred creates made both quadratic).

A key read from the real store is read once per batch (``get``, ``get_many``): the batch plans
against what it read, as a single operation plans against what it read before its commit, and
the commit's compares catch the real store moving meanwhile (this halved the reads of a create).
So is a prefix (``range``), and a key under a prefix read already is answered from it: a
lease's quarantine is listed once per batch, and the entry a create then takes or not is known.
A ``txn`` reads the keys of its compares it has not read in one ``get_many``, and none of the
keys it puts (a put's ``create_revision`` is the staged revision unless the old value was read:
nothing reads it before the commit). On etcd every read is a round trip through the cluster:
with the creates' prefetch (``state._prefetch_creates``) these took 100 creates in one batch
from 785 requests to 157 (issue 21).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from sdnctl.controller.store.base import (
    Change,
    Compare,
    Delete,
    KeyValue,
    Put,
    Store,
    check_ops,
    get_many,
)


class Restage(Exception):
    """The real store moved under the batch (a key it read changed): stage it again."""


#: In the undo journal: the key was not there before.
_ABSENT = object()


class Staging:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._base = store.revision()
        self._staged: dict[str, KeyValue | None] = {}  # None: staged delete
        self._compares: dict[str, int] = {}
        self._sorted: list[str] = []  # the keys of _staged, sorted
        # What the batch read of the real store, key by key: read once (a create reads its
        # lease, its network, its address index several times, and so do txn's compares).
        self._read: dict[str, KeyValue | None] = {}
        # What the batch listed of the real store, by prefix: (key -> value, revision).
        self._ranges: dict[str, tuple[dict[str, KeyValue], int]] = {}
        # (table, key, what it held before): undone backwards by restore
        self._undo: list[tuple[dict[str, KeyValue | None] | dict[str, int], str, object]] = []

    @property
    def staged_revision(self) -> int:
        return self._base + 1

    def get(self, key: str) -> KeyValue | None:
        if key in self._staged:
            return self._staged[key]
        if key not in self._read and not self._listed(key):
            self._read[key] = self.store.get(key)
        return self._read[key]

    def get_many(self, keys: Sequence[str]) -> list[KeyValue | None]:
        self._read_unknown(keys)
        return [self._staged[k] if k in self._staged else self._read[k] for k in keys]

    def _read_unknown(self, keys: Sequence[str]) -> None:
        """Read those of ``keys`` the batch knows nothing of, in one ``get_many``."""
        wanted = [k for k in dict.fromkeys(keys)
                  if k not in self._staged and k not in self._read and not self._listed(k)]
        if wanted:
            self._read.update(zip(wanted, get_many(self.store, wanted), strict=True))

    def _listed(self, key: str) -> bool:
        """Whether a prefix the batch listed holds ``key``'s place: then what it found (the
        value, or None) becomes what the batch read of it."""
        for prefix, (found, _) in self._ranges.items():
            if key.startswith(prefix):
                self._read[key] = found.get(key)
                return True
        return False

    def range(self, prefix: str) -> tuple[list[KeyValue], int]:
        if prefix not in self._ranges:
            listed, at = self.store.range(prefix)
            self._ranges[prefix] = ({kv.key: kv for kv in listed}, at)
        found, revision = self._ranges[prefix]
        kvs = list(found.values())
        first = bisect.bisect_left(self._sorted, prefix)
        mine = []
        for key in self._sorted[first:]:
            if not key.startswith(prefix):
                break
            mine.append(key)
        if not mine:
            return kvs, revision
        merged = {kv.key: kv for kv in kvs if kv.key not in self._staged}
        for key in mine:
            kv = self._staged[key]
            if kv is not None:
                merged[key] = kv
        return [merged[k] for k in sorted(merged)], revision

    def txn(self, compares: Sequence[Compare], ops: Sequence[Put | Delete]) -> int | None:
        """Stage ``ops`` if ``compares`` hold on the staged view; raises :class:`Restage`
        (never returns None) when they do not: nothing inside one batch races, so a failed
        compare means the real store moved and the whole batch must be planned again."""
        check_ops(ops)
        self._read_unknown([c.key for c in compares])
        fresh: dict[str, int] = {}
        for compare in compares:
            if compare.key in self._staged:
                kv = self._staged[compare.key]
                if (kv.mod_revision if kv else 0) != compare.mod_revision:
                    raise Restage(compare.key)
                continue
            kv = self.get(compare.key)
            if (kv.mod_revision if kv else 0) != compare.mod_revision:
                raise Restage(compare.key)
            fresh.setdefault(compare.key, compare.mod_revision)
        for key, revision in fresh.items():
            if self._compares.get(key, revision) != revision:
                raise Restage(key)  # the real store moved since the batch first read this key
            if key not in self._compares:
                self._undo.append((self._compares, key, _ABSENT))
                self._compares[key] = revision
        new = self.staged_revision
        for op in ops:
            value: KeyValue | None = None
            if isinstance(op, Put):
                old = self._staged[op.key] if op.key in self._staged else self._read.get(op.key)
                created = old.create_revision if old is not None else new
                value = KeyValue(op.key, op.value, created, new)
            self._stage(op.key, value)
        return new

    def _stage(self, key: str, value: KeyValue | None) -> None:
        if key in self._staged:
            self._undo.append((self._staged, key, self._staged[key]))
        else:
            self._undo.append((self._staged, key, _ABSENT))
            bisect.insort(self._sorted, key)
        self._staged[key] = value

    def snapshot(self) -> int:
        """A mark to :meth:`restore` the staged writes to."""
        return len(self._undo)

    def restore(self, mark: int) -> None:
        """Forget what was staged since :meth:`snapshot` gave ``mark``."""
        while len(self._undo) > mark:
            table, key, before = self._undo.pop()
            if before is not _ABSENT:
                table[key] = before  # type: ignore[assignment]
                continue
            del table[key]
            if table is self._staged:
                del self._sorted[bisect.bisect_left(self._sorted, key)]

    def ops(self) -> list[Put | Delete]:
        return [Put(key, kv.value) if kv is not None else Delete(key)
                for key, kv in self._staged.items()]

    def commit(self) -> int | None:
        """Write everything staged in one transaction of the real store; None when a compare
        fails (another writer came first: stage again)."""
        compares = [Compare(key, revision) for key, revision in self._compares.items()]
        return self.store.txn(compares, self.ops())

    def revision(self) -> int:
        return self.store.revision()

    def changes_since(self, revision: int) -> list[Change]:
        return self.store.changes_since(revision)

    def wait(self, revision: int, timeout: float) -> int:
        return self.store.wait(revision, timeout)

    def close(self) -> None:
        pass


__all__ = ["Restage", "Staging"]
