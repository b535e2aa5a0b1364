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
"""

from __future__ import annotations

import collections
import json
import os
import threading
import time
from dataclasses import asdict, dataclass

#: The longest request JSON kept in a record.
REQUEST_MAX = 4096
DEFAULT_CAPACITY = 10000


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
    def __init__(self, path: str | None = None, capacity: int = DEFAULT_CAPACITY) -> None:
        self.path = path
        self._records: collections.deque[AuditRecord] = collections.deque(maxlen=capacity)
        self._cond = threading.Condition()
        self._seq = 0
        self._file = None
        if path:
            self._load_tail(path, capacity)
            os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            self._file = os.fdopen(fd, "a", buffering=1)

    def _load_tail(self, path: str, capacity: int) -> None:
        try:
            with open(path) as f:
                lines = collections.deque(f, maxlen=capacity)
        except FileNotFoundError:
            return
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
                self._file.write(json.dumps(asdict(entry)) + "\n")
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
