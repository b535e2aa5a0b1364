"""The Store seam: an etcd-shaped key-value store with revisions.

Everything the controller keeps lives behind this small Protocol, so that the embedded SQLite
store, the etcd store and the in-memory fake are interchangeable. The semantics are etcd's:

- The store has one revision counter. Each transaction that changes something bumps it by exactly
  one, and every key it writes gets that revision as its ``mod_revision``.
- ``txn`` is compare-and-swap: if every :class:`Compare` holds, its ops are applied atomically at
  one new revision; otherwise nothing changes. Comparing ``mod_revision == 0`` means "the key does
  not exist" (a missing key's mod_revision is 0).
- Like etcd, one transaction may not touch the same key twice (``ValueError``): the result of
  "put then delete" inside one revision would be ambiguous in the change history.
- Every change is recorded in a bounded history; ``changes_since`` replays it for watchers and
  raises :class:`Compacted` when the requested part was trimmed, so the watcher takes a new
  snapshot with ``range`` (flannel's "list, then watch").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

#: How many changes a store keeps for ``changes_since`` unless told otherwise.
DEFAULT_HISTORY = 10_000


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int


@dataclass(frozen=True)
class Compare:
    """Holds when ``key``'s mod_revision equals ``mod_revision`` (0: the key must not exist)."""

    key: str
    mod_revision: int


@dataclass(frozen=True)
class Put:
    key: str
    value: bytes


@dataclass(frozen=True)
class Delete:
    """Delete ``key``. Deleting a missing key is a no-op and records no change."""

    key: str


@dataclass(frozen=True)
class Change:
    """One key's change at ``revision``. ``value`` is None when the key was deleted."""

    revision: int
    key: str
    value: bytes | None
    prev_value: bytes | None


class Compacted(Exception):
    """``changes_since`` asked for history that was trimmed; take a new snapshot instead."""

    def __init__(self, requested: int, compact_revision: int) -> None:
        super().__init__(
            f"changes after revision {requested} are gone: history was trimmed up to "
            f"revision {compact_revision}"
        )
        self.requested = requested
        self.compact_revision = compact_revision


class StoreUnavailable(Exception):
    """The store cannot serve now (etcd unreachable or without quorum); nothing was written
    unless the caller's compares say otherwise. The controller answers UNAVAILABLE."""


@runtime_checkable
class Store(Protocol):
    def get(self, key: str) -> KeyValue | None:
        """The key's current value, or None."""
        ...

    def range(self, prefix: str) -> tuple[list[KeyValue], int]:
        """All keys starting with ``prefix``, sorted by key, and the revision they were read at."""
        ...

    def txn(self, compares: Sequence[Compare], ops: Sequence[Put | Delete]) -> int | None:
        """If every compare holds, apply ``ops`` at one new revision and return it.

        Returns None (and changes nothing) when a compare fails. When no op changes anything
        (no ops, or only deletes of missing keys) the revision is not bumped and the current
        revision is returned.
        """
        ...

    def revision(self) -> int:
        """The store's current revision (0 for a new store)."""
        ...

    def changes_since(self, revision: int) -> list[Change]:
        """Every change with a revision greater than ``revision``, oldest first.

        Raises :class:`Compacted` when some of those changes were trimmed from the history.
        """
        ...

    def wait(self, revision: int, timeout: float) -> int:
        """Block until the store revision exceeds ``revision`` or ``timeout`` seconds pass.

        Returns the current revision either way.
        """
        ...

    def close(self) -> None: ...


def get_many(store: Store, keys: Sequence[str]) -> list[KeyValue | None]:
    """Several keys' current values in one read where the store can (SQLite: one snapshot, etcd:
    one transaction), else one ``get`` each. Not part of the Protocol: a store need not have it."""
    many = getattr(store, "get_many", None)
    if many is not None:
        return list(many(keys))
    return [store.get(key) for key in keys]


def check_ops(ops: Sequence[Put | Delete]) -> None:
    """Reject a transaction that touches one key twice, as etcd does."""
    seen: set[str] = set()
    for op in ops:
        if op.key in seen:
            raise ValueError(f"duplicate key {op.key!r} in one transaction")
        seen.add(op.key)


__all__ = [
    "DEFAULT_HISTORY",
    "Change",
    "Compacted",
    "Compare",
    "Delete",
    "KeyValue",
    "Put",
    "Store",
    "StoreUnavailable",
    "check_ops",
    "get_many",
]
