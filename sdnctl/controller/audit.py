"""The audit log: who changed what, and who was refused.

Every call of a mutating method is recorded, whatever came of it (OK, INVALID_ARGUMENT,
PERMISSION_DENIED...), with the caller's identity (from its certificate; ``local`` for the unix
socket), the request as JSON and the store revision it made. Refused calls of read-only methods
(UNAUTHENTICATED, PERMISSION_DENIED) are recorded too: probing is worth knowing about. Agents'
``ReportStatus`` is recorded only when refused: it is telemetry, several times a minute per host,
and writes only what agents report, never desired state.

Records live apart from the store, on purpose: writing them there would bump the revision that
agents watch, and a refused call must leave the store exactly as it was. They are kept in memory
(the last ``capacity``, for ``sdnctl events``) and appended to a JSON-lines file (0600) when one
is given; a restarted controller reads the file's tail back, so ``events`` keeps its history and
sequence numbers. With several controller replicas each logs the calls it served.

Rotation (issue 24): when the file would pass ``max_bytes``, it is renamed ``<path>.1`` (the
older ones shifting to ``.2`` … ``.keep``, the oldest dropped) and a new file is opened, under
the same lock as the writes, so no record is split or lost between two files. A restarted
controller reads its tail back from the current file (and, when that is short, the last
rotated one).
"""

from __future__ import annotations

import collections
import json
import os
import threading
import time
from dataclasses import asdict, dataclass
from typing import IO

#: The longest request JSON kept in a record.
REQUEST_MAX = 4096
DEFAULT_CAPACITY = 10000
AUDIT_MAX_BYTES = 64 << 20
AUDIT_KEEP = 5


@dataclass(frozen=True)
class AuditRecord:
    seq: int
    at: float
    identity: str
    method: str
    request: str
    code: str
    message: str = ""
    revision: int = 0
    peer: str = ""


class AuditLog:
    def __init__(self, path: str | None = None, capacity: int = DEFAULT_CAPACITY,
                 max_bytes: int = AUDIT_MAX_BYTES, keep: int = AUDIT_KEEP) -> None:
        if max_bytes < 0 or keep < 1:
            raise ValueError("audit log: max_bytes must be >= 0 and keep >= 1")
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep
        self._records: collections.deque[AuditRecord] = collections.deque(maxlen=capacity)
        self._cond = threading.Condition()
        self._seq = 0
        self._file: IO[str] | None = None
        self._size = 0
        if path:
            self._load_tail(path, capacity)
            os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
            self._open()

    def _open(self) -> None:
        assert self.path
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._file = os.fdopen(fd, "a", buffering=1)
        self._size = os.fstat(fd).st_size

    def _rotate(self) -> None:
        """``path`` → ``path.1`` → … → ``path.keep`` (dropped beyond); a new ``path``."""
        assert self.path and self._file is not None
        self._file.close()
        for n in range(self.keep - 1, 0, -1):
            if os.path.exists(f"{self.path}.{n}"):
                os.replace(f"{self.path}.{n}", f"{self.path}.{n + 1}")
        os.replace(self.path, f"{self.path}.1")
        self._open()

    def _load_tail(self, path: str, capacity: int) -> None:
        lines: collections.deque[str] = collections.deque(maxlen=capacity)
        for name in (f"{path}.1", path):  # the last rotated file first, when there is one
            try:
                with open(name) as f:
                    lines.extend(f)
            except FileNotFoundError:
                continue
        for line in lines:
            try:
                record = AuditRecord(**json.loads(line))
            except (ValueError, TypeError):
                continue  # a line torn by a crash
            self._records.append(record)
            self._seq = max(self._seq, record.seq)

    def record(self, identity: str, method: str, request: str, code: str, message: str = "",
               revision: int = 0, peer: str = "") -> AuditRecord:
        if len(request) > REQUEST_MAX:
            request = request[:REQUEST_MAX] + "...(truncated)"
        with self._cond:
            self._seq += 1
            entry = AuditRecord(self._seq, time.time(), identity, method, request, code,
                                message[:REQUEST_MAX], revision, peer)
            self._records.append(entry)
            if self._file is not None:
                line = json.dumps(asdict(entry)) + "\n"
                if self.max_bytes and self._size and self._size + len(line) > self.max_bytes:
                    self._rotate()
                self._file.write(line)
                self._size += len(line.encode())
            self._cond.notify_all()
        return entry

    def since(self, seq: int) -> list[AuditRecord]:
        with self._cond:
            return [r for r in self._records if r.seq > seq]

    def wait(self, seq: int, timeout: float) -> list[AuditRecord]:
        """Records after ``seq``, waiting up to ``timeout`` seconds for one to come."""
        with self._cond:
            self._cond.wait_for(lambda: self._seq > seq, timeout)
            return [r for r in self._records if r.seq > seq]

    def close(self) -> None:
        with self._cond:
            if self._file is not None:
                self._file.close()
                self._file = None
