"""etcd Store: several controller replicas on one etcd cluster (etcd 3.4 and later).

Design note. We speak etcd's v3 gRPC-gateway (JSON over HTTP/1.1: ``/v3/kv/range``,
``/v3/kv/txn``, ``/v3/watch``, ``/v3/kv/compaction``, keys and values base64) with the standard
library only: the PyPI ``etcd3`` client is unmaintained and breaks with protobuf >= 4, and the
gateway is part of every etcd 3.4+ server, so there is nothing to generate or pin.

Keys. Store key ``/hosts/h1`` is etcd key ``<prefix>/hosts/h1``; every store key starts with
``/``, so a prefix's keys are exactly the etcd range ``[<prefix>/, <prefix>0)`` and two
deployments with prefixes ``/a`` and ``/ab`` never see each other's keys. Besides them, one
marker key ``<prefix>\\0rev`` (outside that range) is put by every transaction that changes
something. Its ``mod_revision`` is the prefix's own revision: the etcd revision of the last change
under the prefix. So ``revision()`` is 0 for a new prefix and other users of the same cluster do
not move it, and ``changes_since`` knows where the history it replays ends.

Revisions are etcd's: each transaction that changes something is one etcd revision, and
``mod_revision``/``create_revision`` are etcd's. A transaction that changes nothing (only
compares, or deletes of missing keys) does not write, so it moves no revision, as the contract
asks: deletes alone are first read, then guarded by compares on what was read.

History is etcd's MVCC history: ``changes_since`` replays it with a watch from ``revision + 1``
(with previous values) and raises :class:`Compacted` when etcd compacted past it. Nothing here
trims history: run etcd with ``--auto-compaction-retention`` or call :meth:`EtcdStore.compact`.

``wait`` is driven by a watch on the marker key kept open in a background thread, so a write
through any replica wakes the watchers of every replica at once. That watch covers the prefix
too, with previous values: what it delivers is kept as the change log ``changes_since`` reads
(the last LOG_MAX changes) and applied to a :class:`~sdnctl.controller.store.mirror.Mirror` of
the prefix, loaded when the watch starts. Reads (``get``, ``get_many``, ``range``) are answered
from the mirror once it holds the prefix's revision read from etcd at the time of the read (one
read of the marker, shared by the threads reading at once: ``coalesce.Shared``), so they are as
new as reads of etcd itself; while the watch is down or late, etcd answers them.

Client TLS and auth (issue 24). With :class:`EtcdAccess` carrying a CA (``--etcd-cacert``),
every connection is HTTPS checked against it, with a client certificate when one is given
(``--etcd-cert``/``--etcd-key``: etcd's ``--client-cert-auth``). With a user and password (etcd
with auth enabled), the store authenticates (``/v3/auth/authenticate``) and sends the token with
every request and watch; a token etcd no longer accepts (expired, or the member restarted) is
replaced once and the request sent again.

Endpoints are tried in order; a connection that fails or a member that has no quorum
("etcdserver: request timed out", "no leader") moves us to the next one. When none answers,
:class:`StoreUnavailable` says so. Every write is one etcd transaction, so a failure leaves
nothing half-written; a transaction whose answer was lost may have been applied, and is retried
only through its compares (a retried compare-and-swap fails, and the caller reads again).
"""

from __future__ import annotations

import base64
import bisect
import contextlib
import http.client
import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from sdnctl.controller.store.base import (
    Change,
    Compacted,
    Compare,
    Delete,
    KeyValue,
    Put,
    StoreUnavailable,
    check_ops,
)
from sdnctl.controller.store.coalesce import Shared
from sdnctl.controller.store.mirror import Mirror

log = logging.getLogger(__name__)

#: Seconds one request to one member may take before we try the next member.
DEFAULT_TIMEOUT = 5.0
#: The default key prefix of a controller's data in etcd.
DEFAULT_PREFIX = "/sdnctl"
#: etcd caps the operations of one transaction (--max-txn-ops, 128 by default).
TXN_OPS = 128
#: Caps tried when the store opens, largest first (``EtcdStore.max_txn_ops``): etcd does not
#: say its --max-txn-ops, so a read-only transaction of each size tells. A batch of creates is
#: then one transaction instead of seven: at 100x10 every transaction is a change each of the
#: 100 Watch streams turns into an event and each agent applies (issue 21).
TXN_CAPS = (1024, 512, 256)

#: The changes the watch keeps for ``changes_since`` (the older half is dropped beyond it).
LOG_MAX = 20000
#: Seconds ``changes_since`` (and a read from the mirror) waits for the watch to deliver the
#: revision it read, before it asks etcd instead.
LOG_WAIT = 2.0
#: Keys per read when the watch (re)starts and loads the mirror of the prefix.
PAGE = 5000

T = TypeVar("T")

# gRPC codes (in the gateway's error body) that mean "this member cannot serve now".
_UNAVAILABLE_CODES = {4, 14}  # DEADLINE_EXCEEDED, UNAVAILABLE


def _b64(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode()


def _unb64(text: str | None) -> bytes:
    return base64.b64decode(text) if text else b""


def prefix_end(key: bytes) -> bytes:
    """etcd's range end for "every key starting with ``key``"."""
    end = bytearray(key)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"  # every key


def parse_url(url: str) -> tuple[list[str], str]:
    """``etcd://h1:2379,h2:2379/prefix`` -> (["h1:2379", "h2:2379"], "/prefix")."""
    rest = url.removeprefix("etcd://")
    hosts, _, path = rest.partition("/")
    endpoints = [h.strip() for h in hosts.split(",") if h.strip()]
    if not endpoints:
        raise ValueError(f"{url!r} names no etcd endpoint (etcd://host:port,...[/prefix])")
    for endpoint in endpoints:
        host, sep, port = endpoint.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"etcd endpoint {endpoint!r} is not host:port")
    return endpoints, "/" + path.strip("/") if path.strip("/") else DEFAULT_PREFIX


class EtcdError(RuntimeError):
    """etcd refused a request for a reason other than availability."""


@dataclass(frozen=True)
class EtcdAccess:
    """How to talk to etcd beyond plain HTTP: TLS (a CA, and a client certificate and key when
    etcd asks for one) and credentials when etcd has auth enabled."""

    cacert: str = ""
    cert: str = ""
    key: str = ""
    user: str = ""
    password: str = ""

    def context(self) -> ssl.SSLContext | None:
        if not self.cacert:
            return None
        context = ssl.create_default_context(cafile=self.cacert)
        if self.cert:
            context.load_cert_chain(self.cert, self.key or None)
        return context


#: etcd's answers that mean "authenticate again" (gRPC Unauthenticated, or the message).
_AUTH_CODES = frozenset({16})


def _auth_refused(status: int, answer: dict[str, Any]) -> bool:
    message = str(answer.get("message") or answer.get("error") or "")
    return answer.get("code") in _AUTH_CODES or "auth token" in message or status == 401


class EtcdStore:
    #: State splits a batch into transactions of at most this many operations (what etcd
    #: takes: found when the store opens, see TXN_CAPS).
    max_txn_ops = TXN_OPS

    def __init__(self, endpoints: Sequence[str], prefix: str = DEFAULT_PREFIX,
                 timeout: float = DEFAULT_TIMEOUT, access: EtcdAccess | None = None) -> None:
        if not endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        self.access = access or EtcdAccess()
        self._tls = self.access.context()
        self._token = ""
        self._token_lock = threading.Lock()
        prefix = "/" + prefix.strip("/") if prefix.strip("/") else ""
        self.endpoints = list(endpoints)
        self.prefix = prefix
        self._timeout = timeout
        self._base = prefix.encode()
        self._range_start = self._base + b"/"
        self._range_end = self._base + b"0"  # "/" + 1: exactly the keys under prefix + "/"
        self._marker = self._base + b"\0rev"
        self._preferred = 0
        self._local = threading.local()
        self._closed = threading.Event()
        self._cond = threading.Condition()
        self._seen = 0  # the newest prefix revision the marker watch (or a txn of ours) saw
        self._watching = False
        # The change log as the watch delivers it (see changes_since): every change after
        # revision _log_from up to _log_to, in order; _log_from -1 while there is none.
        self._log: list[Change] = []
        self._log_from = -1
        self._log_to = 0
        # The prefix as the watch delivered it, for reads (see _mirrored); None while the
        # watch is down or starting.
        self._mirror: Mirror | None = None
        # The marker's (mod_revision, create_revision), one read of etcd shared by the
        # threads that ask at once.
        self._marker_reads: Shared[tuple[int, int]] = Shared(self._read_marker)
        self._streams: set[http.client.HTTPConnection] = set()  # open watches, ended by close()
        self._all_conns: list[http.client.HTTPConnection] = []
        self._seen = self.revision()
        self.max_txn_ops = self._txn_cap()
        self._watcher = threading.Thread(target=self._watch_marker, name="etcd-marker-watch",
                                         daemon=True)
        self._watcher.start()

    # -- transport --------------------------------------------------------------------------

    def _connection(self, endpoint: str) -> http.client.HTTPConnection:
        conns: dict[str, http.client.HTTPConnection] = self._local.__dict__.setdefault(
            "conns", {})
        conn = conns.get(endpoint)
        if conn is None:
            conn = self._new_connection(endpoint)
            conns[endpoint] = conn
            with self._cond:
                self._all_conns.append(conn)
        return conn

    def _new_connection(self, endpoint: str) -> http.client.HTTPConnection:
        host, _, port = endpoint.rpartition(":")
        if self._tls is not None:
            return http.client.HTTPSConnection(host, int(port), timeout=self._timeout,
                                               context=self._tls)
        return http.client.HTTPConnection(host, int(port), timeout=self._timeout)

    def _headers(self, endpoint: str) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.access.user:
            headers["Authorization"] = self._auth_token(endpoint)
        return headers

    def _auth_token(self, endpoint: str, renew: str = "") -> str:
        """The auth token, fetched once (and again when ``renew`` is the one refused)."""
        with self._token_lock:
            if self._token and self._token != renew:
                return self._token
            conn = self._new_connection(endpoint)
            try:
                conn.request("POST", "/v3/auth/authenticate", json.dumps(
                    {"name": self.access.user, "password": self.access.password}).encode(),
                    {"Content-Type": "application/json"})
                response = conn.getresponse()
                data = response.read()
            finally:
                conn.close()
            try:
                answer = json.loads(data) if data else {}
            except ValueError:
                answer = {}
            token = answer.get("token") if response.status == 200 else None
            if not token:
                message = answer.get("message") or answer.get("error") or \
                    f"HTTP {response.status} {data[:200].decode(errors='replace')}"
                raise EtcdError(f"etcd at {endpoint} refused user {self.access.user!r}: "
                                f"{message}")
            self._token = str(token)
            return self._token

    def _drop(self, endpoint: str) -> None:
        conn = self._local.__dict__.get("conns", {}).pop(endpoint, None)
        if conn is not None:
            conn.close()
            with self._cond:
                self._all_conns.remove(conn)

    def _order(self) -> list[str]:
        first = self._preferred
        return self.endpoints[first:] + self.endpoints[:first]

    def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` to the first member that can serve it."""
        if self._closed.is_set():
            raise StoreUnavailable("the etcd store is closed")
        payload = json.dumps(body).encode()
        problems: list[str] = []
        for endpoint in self._order():
            try:
                status, answer = self._post(endpoint, path, payload)
            except (OSError, http.client.HTTPException) as e:
                self._drop(endpoint)
                problems.append(f"{endpoint}: {e or type(e).__name__}")
                continue
            if status == 200:
                self._preferred = self.endpoints.index(endpoint)
                return answer
            message = str(answer.get("message") or answer.get("error") or f"HTTP {status}")
            if answer.get("code") in _UNAVAILABLE_CODES or status in (503, 504):
                problems.append(f"{endpoint}: {message}")
                continue
            raise EtcdError(f"etcd refused {path} at {endpoint}: {message}")
        raise StoreUnavailable("etcd is unavailable (no member with quorum answered): "
                               + "; ".join(problems))

    def _post(self, endpoint: str, path: str, payload: bytes) -> tuple[int, dict[str, Any]]:
        for attempt in range(2):
            conn = self._connection(endpoint)
            headers = self._headers(endpoint)
            conn.request("POST", path, payload, headers)
            response = conn.getresponse()
            data = response.read()
            try:
                answer = json.loads(data) if data else {}
            except ValueError:
                answer = {"message": data[:200].decode(errors="replace")}
            if attempt == 0 and self.access.user and _auth_refused(response.status, answer):
                self._auth_token(endpoint, renew=headers.get("Authorization", ""))
                continue
            break
        return response.status, answer

    @contextmanager
    def _stream(self, body: dict[str, Any], timeout: float | None) -> Iterator[Iterator[dict[str,
                                                                                   Any]]]:
        """A watch stream on the first member that accepts it: yields its messages."""
        payload = json.dumps(body).encode()
        problems: list[str] = []
        for endpoint in self._order():
            conn = self._new_connection(endpoint)
            try:
                conn.request("POST", "/v3/watch", payload, self._headers(endpoint))
                response = conn.getresponse()
                if response.status != 200:
                    problems.append(f"{endpoint}: HTTP {response.status}")
                    conn.close()
                    continue
                if conn.sock is not None:
                    conn.sock.settimeout(timeout)
            except (OSError, http.client.HTTPException) as e:
                problems.append(f"{endpoint}: {e or type(e).__name__}")
                conn.close()
                continue
            try:
                yield self._messages(response, conn)
            finally:
                with self._cond:
                    self._streams.discard(conn)
                conn.close()
            return
        raise StoreUnavailable("etcd is unavailable (no member accepted a watch): "
                               + "; ".join(problems))

    def _messages(self, response: http.client.HTTPResponse,
                  conn: http.client.HTTPConnection) -> Iterator[dict[str, Any]]:
        if self._closed.is_set():
            return
        with self._cond:
            self._streams.add(conn)
        while True:
            line = response.readline()
            if not line:
                raise StoreUnavailable("etcd closed the watch stream")
            message = json.loads(line)
            if "error" in message:
                error = message["error"]
                if self.access.user and _auth_refused(
                        0, error if isinstance(error, dict) else {"message": str(error)}):
                    with self._token_lock:
                        self._token = ""  # the next stream authenticates again
                raise StoreUnavailable(f"etcd watch failed: {message['error']}")
            yield message.get("result", {})

    # -- keys -------------------------------------------------------------------------------

    def _key(self, key: str) -> bytes:
        if not key.startswith("/"):
            raise ValueError(f"store keys start with '/': {key!r}")
        return self._base + key.encode()

    def _unkey(self, raw: bytes) -> str:
        return raw[len(self._base):].decode()

    def _kv(self, item: dict[str, Any]) -> KeyValue:
        return KeyValue(self._unkey(_unb64(item["key"])), _unb64(item.get("value")),
                        int(item.get("create_revision", 0)), int(item.get("mod_revision", 0)))

    def _range_request(self, prefix: str) -> dict[str, Any]:
        if prefix and not prefix.startswith("/"):
            # No store key starts with it: read one key that is never written.
            return {"key": _b64(self._marker + b"\0")}
        start = self._base + (prefix.encode() if prefix else b"/")
        return {"key": _b64(start), "range_end": _b64(prefix_end(start))}

    # -- the Store protocol -----------------------------------------------------------------

    def get(self, key: str) -> KeyValue | None:
        raw = self._key(key)
        mirrored = self._mirrored(lambda mirror: mirror.get(key))
        if mirrored is not None:
            return mirrored[0]
        answer = self._call("/v3/kv/range", {"key": _b64(raw)})
        kvs = answer.get("kvs") or []
        return self._kv(kvs[0]) if kvs else None

    def get_many(self, keys: Sequence[str]) -> list[KeyValue | None]:
        """From the mirror, or one read transaction per chunk (etcd caps a transaction's
        operations)."""
        for key in keys:
            self._key(key)
        mirrored = self._mirrored(lambda mirror: mirror.get_many(keys))
        if mirrored is not None:
            return mirrored[0]
        found: list[KeyValue | None] = []
        for start in range(0, len(keys), self.max_txn_ops):
            chunk = keys[start:start + self.max_txn_ops]
            answer = self._call("/v3/kv/txn", {"success": [
                {"request_range": {"key": _b64(self._key(key))}} for key in chunk]})
            for response in answer.get("responses") or []:
                kvs = response.get("response_range", {}).get("kvs") or []
                found.append(self._kv(kvs[0]) if kvs else None)
        return found

    def _txn_cap(self) -> int:
        """The most operations etcd takes in one transaction, of TXN_CAPS (else TXN_OPS): one
        read-only transaction of the marker per size tried."""
        for size in TXN_CAPS:
            try:
                self._call("/v3/kv/txn", {"success": [
                    {"request_range": {"key": _b64(self._marker), "keys_only": True}}] * size})
            except EtcdError as e:
                if "too many operations" in str(e):
                    continue
                raise
            return size
        return TXN_OPS

    def range(self, prefix: str) -> tuple[list[KeyValue], int]:
        mirrored = self._mirrored(lambda mirror: (mirror.range(prefix), mirror.revision))
        if mirrored is not None:
            return mirrored[0]
        answer = self._call("/v3/kv/txn", {"success": [
            {"request_range": self._range_request(prefix)},
            {"request_range": {"key": _b64(self._marker)}},
        ]})
        found, marker = (r["response_range"] for r in answer["responses"])
        kvs = [self._kv(item) for item in found.get("kvs") or []]
        return kvs, self._marker_revision(marker)

    @staticmethod
    def _marker_revision(response_range: dict[str, Any]) -> int:
        kvs = response_range.get("kvs") or []
        return int(kvs[0].get("mod_revision", 0)) if kvs else 0

    def revision(self) -> int:
        return self._marker_reads()[0]

    def _read_marker(self) -> tuple[int, int]:
        answer = self._call("/v3/kv/range", {"key": _b64(self._marker)})
        marker = (answer.get("kvs") or [{}])[0]
        return int(marker.get("mod_revision", 0)), int(marker.get("create_revision", 0))

    def _mirrored(self, read: Callable[[Mirror], T]) -> tuple[T] | None:
        """``read`` of the mirror once it holds every change up to the prefix's revision now
        (read from etcd, one read shared by the threads asking at once: as new as a read of
        etcd itself); None when there is no mirror (the watch is down or starting) or it did
        not get there within LOG_WAIT: the caller reads etcd."""
        if self._mirror is None:
            return None
        last = self._marker_reads()[0]
        with self._cond:
            if not self._caught_up(last, lambda: self._mirror is not None):
                return None
            assert self._mirror is not None
            return (read(self._mirror),)

    def _caught_up(self, last: int, usable: Callable[[], bool]) -> bool:
        """Whether the watch delivered every change up to ``last`` (the prefix's revision just
        read: it comes within milliseconds) within LOG_WAIT, while ``usable()`` holds (what
        the caller reads from it is there) and the store is open. The caller holds _cond."""
        deadline = time.monotonic() + LOG_WAIT
        while usable() and not self._closed.is_set():
            if self._log_to >= last:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._cond.wait(remaining)
        return False

    def txn(self, compares: Sequence[Compare], ops: Sequence[Put | Delete]) -> int | None:
        check_ops(ops)
        for op in ops:
            self._key(op.key)
        guards = [self._compare(c.key, c.mod_revision) for c in compares]
        if any(isinstance(op, Put) for op in ops):
            success = [self._op(op) for op in ops]
            success.append({"request_put": {"key": _b64(self._marker), "value": ""}})
            answer = self._call("/v3/kv/txn", {"compare": guards, "success": success})
            if not answer.get("succeeded"):
                return None
            revision = int(answer["header"]["revision"])
            self._saw(revision)
            return revision
        return self._delete_only(guards, [op.key for op in ops])

    def _delete_only(self, guards: list[dict[str, Any]], keys: list[str]) -> int | None:
        """Deletes (or nothing): read which keys exist, and write only if one does, so that a
        transaction without effect moves no revision. The keys read are guarded too; when one
        of them changed meanwhile (and the caller's compares still hold) we read again."""
        while True:
            pinned: list[dict[str, Any]] = []
            present: list[str] = []
            for key in keys:
                kv = self.get(key)
                pinned.append(self._compare(key, kv.mod_revision if kv else 0))
                if kv is not None:
                    present.append(key)
            if present:
                success = [self._op(Delete(key)) for key in present]
                success.append({"request_put": {"key": _b64(self._marker), "value": ""}})
            else:
                success = [{"request_range": {"key": _b64(self._marker)}}]
            answer = self._call("/v3/kv/txn", {"compare": guards + pinned, "success": success})
            if answer.get("succeeded"):
                if not present:
                    return self._marker_revision(answer["responses"][0]["response_range"])
                revision = int(answer["header"]["revision"])
                self._saw(revision)
                return revision
            check = self._call("/v3/kv/txn", {"compare": guards, "success": []})
            if not check.get("succeeded"):
                return None

    def _compare(self, key: str, mod_revision: int) -> dict[str, Any]:
        return {"key": _b64(self._key(key)), "target": "MOD", "result": "EQUAL",
                "mod_revision": str(mod_revision)}

    def _op(self, op: Put | Delete) -> dict[str, Any]:
        if isinstance(op, Put):
            return {"request_put": {"key": _b64(self._key(op.key)), "value": _b64(op.value)}}
        return {"request_delete_range": {"key": _b64(self._key(op.key))}}

    def changes_since(self, revision: int) -> list[Change]:
        last, created = self._marker_reads()
        if last <= revision:
            return []
        logged = self._logged(revision, last)
        if logged is not None:
            return logged
        # Nothing under the prefix is older than the marker: a compaction of the cluster's
        # history from before the prefix existed takes nothing of ours.
        start = max(revision + 1, created)
        # A compaction AT ``start`` is not reported by a watch from there (only one past it
        # is), yet it dropped that revision's deletions: the watch then silently lacks them
        # (and waits for them until it times out when they were the last). Checked before
        # the watch (no wait for that) and after it (a compaction meanwhile). Past these
        # checks every deletion and update comes with its previous value (read as of its
        # revision - 1, which the checks proved is kept): the hub finds a container's host there.
        if not self._history_from(start):
            raise Compacted(revision, start)
        request = {"create_request": {
            "key": _b64(self._range_start), "range_end": _b64(self._range_end),
            "start_revision": str(start), "prev_kv": True}}
        changes: list[Change] = []
        try:
            with self._stream(request, timeout=self._timeout) as messages:
                for message in messages:
                    compacted = int(message.get("compact_revision", 0))
                    if compacted:
                        raise Compacted(revision, compacted - 1)
                    newest = 0
                    for event in message.get("events") or []:
                        change = self._change(event)
                        newest = max(newest, change.revision)
                        if change.revision <= last:
                            changes.append(change)
                    if newest >= last:
                        break
        except (OSError, http.client.HTTPException, ValueError) as e:
            if not self._history_from(start):
                raise Compacted(revision, start) from e
            raise StoreUnavailable(f"could not replay etcd history after revision "
                                   f"{revision}: {e}") from e
        if not self._history_from(start):
            raise Compacted(revision, start)
        return changes

    def _logged(self, revision: int, last: int) -> list[Change] | None:
        """The changes after ``revision`` from the watch's log, once it holds ``last`` (the
        prefix's revision just read: it comes within milliseconds); None at once when there is
        no log (the watch is down or starting) or it does not reach back to ``revision``, and
        None when the watch is late (then etcd replays them)."""
        with self._cond:
            if not self._caught_up(last, lambda: 0 <= self._log_from <= revision):
                return None
            # The log is in revision order: skip what the caller has by bisection.
            return self._log[bisect.bisect_right(self._log, revision,
                                                 key=lambda c: c.revision):]

    def _history_from(self, start: int) -> bool:
        """Whether etcd still holds every change from revision ``start`` on: a read as of
        ``start - 1`` is refused once a compaction reached ``start``."""
        try:
            self._call("/v3/kv/range", {"key": _b64(self._marker), "count_only": True,
                                        "revision": str(start - 1)})
        except EtcdError as e:
            if "compacted" in str(e):
                return False
            raise
        return True

    def _change(self, event: dict[str, Any]) -> Change:
        kv = event["kv"]
        prev = event.get("prev_kv")
        deleted = event.get("type") == "DELETE"
        return Change(int(kv["mod_revision"]), self._unkey(_unb64(kv["key"])),
                      None if deleted else _unb64(kv.get("value")),
                      _unb64(prev.get("value")) if prev else None)

    def wait(self, revision: int, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._seen <= revision:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                if not self._watching:  # no watch to wake us: poll
                    self._cond.wait(min(remaining, 0.2))
                    if self._watching or self._seen > revision:
                        continue  # the watch is back (it wakes us) or woke us meanwhile
                    self._cond.release()
                    try:
                        current = self.revision()
                    except StoreUnavailable:
                        current = 0
                    finally:
                        self._cond.acquire()
                    self._seen = max(self._seen, current)
                    continue
                self._cond.wait(remaining)
            return self._seen

    def _saw(self, revision: int) -> None:
        with self._cond:
            if revision > self._seen:
                self._seen = revision
                self._cond.notify_all()

    def _watch_marker(self) -> None:
        """Follow the marker key for ever (reconnecting), so ``wait`` wakes on every write."""
        backoff = 0.1
        while not self._closed.is_set():
            try:
                self._follow_marker()
                backoff = 0.1
            except Exception as e:
                if self._closed.is_set():
                    # close() shut our connections under a read: http.client then fails in
                    # its own ways (AttributeError from a response whose socket is gone).
                    return
                if not isinstance(e, (StoreUnavailable, EtcdError, OSError,
                                      http.client.HTTPException, ValueError)):
                    raise
                log.debug("marker watch broke (%s); reconnecting", e)
            with self._cond:
                self._watching = False
            self._closed.wait(backoff)
            backoff = min(backoff * 2, 2.0)

    def _load(self) -> tuple[Mirror, int]:
        """The prefix read whole at one etcd revision (PAGE keys a read), as a mirror at the
        prefix's revision then; and that etcd revision."""
        request = {"key": _b64(self._range_start), "range_end": _b64(self._range_end),
                   "limit": str(PAGE)}
        answer = self._call("/v3/kv/range", request)
        read_at = int(answer["header"]["revision"])
        kvs = [self._kv(item) for item in answer.get("kvs") or []]
        while answer.get("more"):
            after = _unb64(answer["kvs"][-1]["key"]) + b"\0"
            answer = self._call("/v3/kv/range", {**request, "key": _b64(after),
                                                 "revision": str(read_at)})
            kvs += [self._kv(item) for item in answer.get("kvs") or []]
        marker = self._call("/v3/kv/range", {"key": _b64(self._marker),
                                             "revision": str(read_at)})
        return Mirror(kvs, self._marker_revision(marker)), read_at

    def _follow_marker(self) -> None:
        mirror, read_at = self._load()
        self._saw(mirror.revision)
        # Watch from the revision of that read, not from the marker's: the marker did not change
        # in between, and the cluster's history may be compacted past the marker's revision.
        # The marker and the prefix's keys in one range (the marker sorts just before them:
        # "\0" < "/"), with previous values: the log ``changes_since`` reads. Keys of other
        # prefixes that sort between the two (``/sdnctl-b/...`` beside ``/sdnctl``) are skipped.
        request = {"create_request": {"key": _b64(self._marker),
                                      "range_end": _b64(self._range_end),
                                      "start_revision": str(read_at + 1), "prev_kv": True}}
        try:
            with self._stream(request, timeout=None) as messages:
                for message in messages:
                    if self._closed.is_set():
                        return
                    if message.get("created"):
                        with self._cond:
                            self._watching = True
                            self._log, self._log_from, self._log_to = [], read_at, read_at
                            self._mirror = mirror
                            self._cond.notify_all()
                    if int(message.get("compact_revision", 0)) or message.get("canceled"):
                        log.debug("marker watch ended by etcd (%s); starting again", message)
                        return  # start again from the current revision
                    self._take(message.get("events") or [])
        finally:
            with self._cond:
                self._log, self._log_from, self._mirror = [], -1, None

    def _take(self, events: list[dict[str, Any]]) -> None:
        """One watch message's events (all of one revision or more, whole) into the log and
        the mirror. The stream reached the newest revision among them; the prefix, the newest
        marker's."""
        changes: list[Change] = []
        puts: list[KeyValue | str] = []  # the mirror's puts, and deletes (keys)
        ours = 0
        for event in events:
            raw = _unb64(event["kv"]["key"])
            if raw == self._marker:
                ours = max(ours, int(event["kv"]["mod_revision"]))
            elif raw.startswith(self._range_start):
                change = self._change(event)
                changes.append(change)
                puts.append(change.key if change.value is None else KeyValue(
                    change.key, change.value, int(event["kv"].get("create_revision", 0)),
                    change.revision))
        reached = max((int(event["kv"]["mod_revision"]) for event in events), default=0)
        with self._cond:
            if self._mirror is not None:
                for put in puts:
                    if isinstance(put, str):
                        self._mirror.delete(put)
                    else:
                        self._mirror.put(put)
                self._mirror.revision = max(self._mirror.revision, ours)
            self._log += changes
            if len(self._log) > LOG_MAX:  # the older half goes, whole revisions at a time
                dropped = self._log[len(self._log) // 2].revision
                self._log = [c for c in self._log if c.revision > dropped]
                self._log_from = dropped
            self._log_to = max(self._log_to, reached)
            self._seen = max(self._seen, ours)
            self._cond.notify_all()

    def close(self) -> None:
        self._closed.set()
        with self._cond:
            self._cond.notify_all()
            streams = list(self._streams)
            conns = list(self._all_conns)
        for conn in streams:  # wakes the thread blocked reading the watch
            if conn.sock is not None:
                with contextlib.suppress(OSError):
                    conn.sock.shutdown(socket.SHUT_RDWR)
        for conn in conns:
            conn.close()
        self._watcher.join(timeout=5)

    # -- administration ---------------------------------------------------------------------

    def compact(self, revision: int) -> None:
        """Drop etcd's history before ``revision`` (for the whole cluster, not just our prefix),
        and the log's: ``changes_since`` from before it says Compacted, as etcd would. (A
        compaction by another client leaves the log as it is: what it holds is still true.)"""
        self._call("/v3/kv/compaction", {"revision": str(revision), "physical": True})
        with self._cond:
            if self._log_from >= 0 and revision > self._log_from:
                self._log = [c for c in self._log if c.revision > revision]
                self._log_from = revision

    def cluster_revision(self) -> int:
        """etcd's own revision (moved by every user of the cluster)."""
        answer = self._call("/v3/kv/range", {"key": _b64(self._marker)})
        return int(answer["header"]["revision"])
