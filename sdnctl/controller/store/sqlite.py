"""SQLite Store: the embedded default, one WAL-mode file.

Design note. Each Store object has one writer connection behind a lock, so a process's writes
take turns; several processes (or several Store objects) on the same file are kept honest by
SQLite itself: every write transaction starts with ``BEGIN IMMEDIATE``, which takes the
database's write lock before the compares are read, so compare-and-swap cannot interleave with
another writer. Reads never take that lock: each thread reads through a connection of its own
(WAL lets readers run beside the writer). A read is one statement, which SQLite answers from one
WAL snapshot: ``range`` and ``changes_since`` carry the revision (or how far the history was
trimmed) in a row of their own, and only a ``get_many`` of more keys than one statement names
reads inside a transaction. So an agent's ReportStatus reads, and a listing, do not queue behind
writes, and a create's reads cost a statement each, not three or four (issue 21).

``wait`` is woken at once by this object's own transactions and polls the revision every
``poll_interval`` seconds to notice writes from other processes.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

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

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    create_rev INTEGER NOT NULL,
    mod_rev INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS changes (
    rev INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    key TEXT NOT NULL,
    value BLOB,
    prev_value BLOB
);
CREATE INDEX IF NOT EXISTS changes_by_rev ON changes (rev, seq);
CREATE TABLE IF NOT EXISTS meta (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    revision INTEGER NOT NULL,
    compacted INTEGER NOT NULL
);
INSERT OR IGNORE INTO meta (id, revision, compacted) VALUES (0, 0, 0);
"""

#: How long a writer waits for another process's write lock before giving up.
BUSY_TIMEOUT = 30.0


def _prefix_end(prefix: str) -> str | None:
    """The smallest string greater than every string starting with ``prefix`` (None: no bound)."""
    while prefix:
        last = ord(prefix[-1])
        if last < 0x10FFFF:
            return prefix[:-1] + chr(last + 1)
        prefix = prefix[:-1]
    return None


#: The most keys one statement names (SQLite's limit of bound parameters is far above).
CHUNK = 500


def _select_keys(db: sqlite3.Connection, select: str,
                 keys: Sequence[str]) -> list[tuple[Any, ...]]:
    """``select`` (the key its first column) of the rows of ``keys``, a statement per
    :data:`CHUNK`."""
    rows: list[tuple[Any, ...]] = []
    for start in range(0, len(keys), CHUNK):
        chunk = list(keys[start:start + CHUNK])
        rows += db.execute(f"{select} WHERE key IN ({','.join('?' * len(chunk))})", chunk)
    return rows


class SqliteStore:
    def __init__(
        self,
        path: str | os.PathLike[str],
        history: int = DEFAULT_HISTORY,
        poll_interval: float = 0.2,
    ) -> None:
        if history < 1:
            raise ValueError("history must keep at least one change")
        self.path = Path(path)
        self._history = history
        self._poll = poll_interval
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Create the file ourselves so that it (and the -wal/-shm files SQLite derives from
        # it) is private from the start.
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        os.chmod(self.path, 0o600)
        self._lock = threading.Lock()
        self._cond = threading.Condition()
        self._db = self._connect()
        self._local = threading.local()
        self._readers: list[tuple[sqlite3.Connection, threading.Lock]] = []
        self._readers_lock = threading.Lock()
        self._closed = False
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            with self._write():
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        self._db.execute(statement)

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
        )

    def _own_reader(self) -> tuple[sqlite3.Connection, threading.Lock]:
        """This thread's read connection (made on first use, closed by :meth:`close`) and its
        lock: uncontended, except by ``close``, which must not close a connection another
        thread is reading through (sqlite3 would crash the process)."""
        reader: tuple[sqlite3.Connection, threading.Lock] | None = getattr(self._local, "db",
                                                                           None)
        if reader is None:
            reader = (self._connect(), threading.Lock())
            with self._readers_lock:
                if self._closed:
                    reader[0].close()
                    raise sqlite3.ProgrammingError("the store is closed")
                self._readers.append(reader)
            self._local.db = reader
        return reader

    @contextmanager
    def _reader(self) -> Iterator[sqlite3.Connection]:
        """This thread's read connection, held under its lock."""
        db, lock = self._own_reader()
        with lock:
            yield db

    @contextmanager
    def _write(self) -> Iterator[None]:
        """One write transaction; the caller holds ``self._lock``."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """One consistent read (a single WAL snapshot) on this thread's connection."""
        with self._reader() as db:
            db.execute("BEGIN")
            try:
                yield db
            finally:
                db.execute("COMMIT")

    def get(self, key: str) -> KeyValue | None:
        # One statement is its own snapshot: no BEGIN/COMMIT around it. The lock is taken
        # without _reader's context manager: a create makes a dozen of these.
        db, lock = self._own_reader()
        with lock:
            row = db.execute(
                "SELECT key, value, create_rev, mod_rev FROM kv WHERE key = ?", (key,)
            ).fetchone()
        return KeyValue(*row) if row else None

    def get_many(self, keys: Sequence[str]) -> list[KeyValue | None]:
        """One snapshot, one statement per chunk of keys (a single chunk is its own snapshot:
        no BEGIN and COMMIT around it)."""
        select = "SELECT key, value, create_rev, mod_rev FROM kv"
        if len(keys) <= CHUNK:
            db, lock = self._own_reader()
            with lock:
                rows = _select_keys(db, select, keys)
        else:
            with self._read() as db:
                rows = _select_keys(db, select, keys)
        found = {row[0]: KeyValue(*row) for row in rows}
        return [found.get(key) for key in keys]

    def range(self, prefix: str) -> tuple[list[KeyValue], int]:
        """One statement, so one snapshot: the revision comes first, in a row of its own (its
        key NULL sorts before every key)."""
        end = _prefix_end(prefix)
        query = ("SELECT NULL, NULL, NULL, revision FROM meta UNION ALL "
                 "SELECT key, value, create_rev, mod_rev FROM kv WHERE key >= ?")
        args: tuple[str, ...] = (prefix,)
        if end is not None:
            query += " AND key < ?"
            args += (end,)
        db, lock = self._own_reader()
        with lock:
            rows = db.execute(query + " ORDER BY 1", args).fetchall()
        return [KeyValue(*row) for row in rows[1:]], int(rows[0][3])

    @staticmethod
    def _revision(db: sqlite3.Connection) -> int:
        return int(db.execute("SELECT revision FROM meta").fetchone()[0])

    def txn(self, compares: Sequence[Compare], ops: Sequence[Put | Delete]) -> int | None:
        check_ops(ops)
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                result = self._apply(db, compares, ops)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT" if result is not None else "ROLLBACK")
        if result is not None:
            with self._cond:
                self._cond.notify_all()
        return result

    def _apply(
        self, db: sqlite3.Connection, compares: Sequence[Compare], ops: Sequence[Put | Delete]
    ) -> int | None:
        """The revision, the compares and the old values read in one statement, the ops written
        in two or three (``executemany``): a transaction of a group commit holds tens of keys,
        and a statement each made its interpreter time grow with them."""
        current, found = self._read_for_write(db, compares, ops)
        if any(found.get(c.key, (0, b""))[0] != c.mod_revision for c in compares):
            return None
        new = current + 1
        changed = [op for op in ops if isinstance(op, Put) or op.key in found]
        if not changed:
            return current  # nothing changed: the caller rolls back, nothing is bumped
        puts = [(op.key, op.value, new, new) for op in changed if isinstance(op, Put)]
        if puts:
            db.executemany(
                "INSERT INTO kv (key, value, create_rev, mod_rev) VALUES (?, ?, ?, ?) ON "
                "CONFLICT (key) DO UPDATE SET value = excluded.value, mod_rev = excluded.mod_rev",
                puts)
        if len(puts) < len(changed):
            db.executemany("DELETE FROM kv WHERE key = ?",
                           [(op.key,) for op in changed if isinstance(op, Delete)])
        db.executemany(
            "INSERT INTO changes (rev, seq, key, value, prev_value) VALUES (?, ?, ?, ?, ?)",
            [(new, seq, op.key, op.value if isinstance(op, Put) else None,
              found[op.key][1] if op.key in found else None)
             for seq, op in enumerate(changed)])
        db.execute("UPDATE meta SET revision = ?", (new,))
        self._trim(db)
        return new

    @staticmethod
    def _read_for_write(db: sqlite3.Connection, compares: Sequence[Compare],
                        ops: Sequence[Put | Delete]) -> tuple[int, dict[str, tuple[int, bytes]]]:
        """The revision, and the mod revision and value of every key a transaction compares or
        writes: one statement when they fit in one (the revision in a row of its own, its key
        NULL), else a statement per chunk."""
        wanted = list(dict.fromkeys([*(c.key for c in compares), *(op.key for op in ops)]))
        if len(wanted) > CHUNK:
            rows = _select_keys(db, "SELECT key, mod_rev, value FROM kv", wanted)
            return SqliteStore._revision(db), {key: (rev, value) for key, rev, value in rows}
        found: dict[str, tuple[int, bytes]] = {}
        current = 0
        for key, rev, value in db.execute(
                "SELECT NULL, revision, NULL FROM meta UNION ALL SELECT key, mod_rev, value "
                f"FROM kv WHERE key IN ({','.join('?' * len(wanted))})", wanted):
            if key is None:
                current = int(rev)
            else:
                found[key] = (rev, value)
        return current, found

    def _trim(self, db: sqlite3.Connection) -> None:
        """Keep the newest ``history`` changes (rowids only grow: we delete from the bottom)."""
        first, last = db.execute("SELECT (SELECT min(rowid) FROM changes), "
                                 "(SELECT max(rowid) FROM changes)").fetchone()
        cutoff = last - self._history
        if first > cutoff:
            return
        # The newest change dropped, found by rowid (revisions grow with rowids). Asked as
        # max(rev) ... WHERE rowid <= ?, SQLite walked the (rev, seq) index down from the newest
        # change: the whole history, 0.3 ms at 10,000 changes, in every write.
        db.execute("UPDATE meta SET compacted = max(compacted, (SELECT rev FROM changes "
                   "WHERE rowid <= ? ORDER BY rowid DESC LIMIT 1))", (cutoff,))
        db.execute("DELETE FROM changes WHERE rowid <= ?", (cutoff,))

    def revision(self) -> int:
        with self._reader() as db:
            return self._revision(db)

    def changes_since(self, revision: int) -> list[Change]:
        """One statement: how far the history was trimmed comes first, in a row of its own
        (its revision -1 sorts before every change)."""
        db, lock = self._own_reader()
        with lock:
            rows = db.execute(
                "SELECT -1, 0, NULL, compacted, NULL FROM meta UNION ALL SELECT rev, seq, key, "
                "value, prev_value FROM changes WHERE rev > ? ORDER BY 1, 2", (revision,),
            ).fetchall()
        compacted = int(rows[0][3])
        if revision < compacted:
            raise Compacted(revision, compacted)
        return [Change(rev, key, value, prev) for rev, _, key, value, prev in rows[1:]]

    def wait(self, revision: int, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while True:
            # Reading the revision while holding the condition means a txn of ours that commits
            # after the read cannot notify before we wait: no wake-up is lost.
            with self._cond:
                current = self.revision()
                remaining = deadline - time.monotonic()
                if current > revision or remaining <= 0:
                    return current
                self._cond.wait(min(self._poll, remaining))

    def close(self) -> None:
        with self._lock, self._readers_lock:
            self._closed = True
            self._db.close()
            for db, lock in self._readers:
                with lock:
                    db.close()
            self._readers.clear()
