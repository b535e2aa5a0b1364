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
"""

from __future__ import annotations

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


class Staging:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._base = store.revision()
        self._staged: dict[str, KeyValue | None] = {}  # None: staged delete
        self._compares: dict[str, int] = {}

    @property
    def staged_revision(self) -> int:
        return self._base + 1

    def get(self, key: str) -> KeyValue | None:
        if key in self._staged:
            return self._staged[key]
        return self.store.get(key)

    def get_many(self, keys: Sequence[str]) -> list[KeyValue | None]:
        real = get_many(self.store, [k for k in keys if k not in self._staged])
        it = iter(real)
        return [self._staged[k] if k in self._staged else next(it) for k in keys]

    def range(self, prefix: str) -> tuple[list[KeyValue], int]:
        kvs, revision = self.store.range(prefix)
        merged = {kv.key: kv for kv in kvs if kv.key not in self._staged}
        for key, kv in self._staged.items():
            if kv is not None and key.startswith(prefix):
                merged[key] = kv
        return [merged[k] for k in sorted(merged)], revision

    def txn(self, compares: Sequence[Compare], ops: Sequence[Put | Delete]) -> int | None:
        """Stage ``ops`` if ``compares`` hold on the staged view; raises :class:`Restage`
        (never returns None) when they do not: nothing inside one batch races, so a failed
        compare means the real store moved and the whole batch must be planned again."""
        check_ops(ops)
        fresh: dict[str, int] = {}
        for compare in compares:
            if compare.key in self._staged:
                kv = self._staged[compare.key]
                if (kv.mod_revision if kv else 0) != compare.mod_revision:
                    raise Restage(compare.key)
                continue
            kv = self.store.get(compare.key)
            if (kv.mod_revision if kv else 0) != compare.mod_revision:
                raise Restage(compare.key)
            fresh.setdefault(compare.key, compare.mod_revision)
        for key, revision in fresh.items():
            if self._compares.get(key, revision) != revision:
                raise Restage(key)  # the real store moved since the batch first read this key
            self._compares[key] = revision
        new = self.staged_revision
        for op in ops:
            if isinstance(op, Put):
                old = self.get(op.key)
                created = old.create_revision if old is not None else new
                self._staged[op.key] = KeyValue(op.key, op.value, created, new)
            else:
                self._staged[op.key] = None
        return new

    def snapshot(self) -> tuple[dict[str, KeyValue | None], dict[str, int]]:
        return dict(self._staged), dict(self._compares)

    def restore(self, saved: tuple[dict[str, KeyValue | None], dict[str, int]]) -> None:
        self._staged, self._compares = dict(saved[0]), dict(saved[1])

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
