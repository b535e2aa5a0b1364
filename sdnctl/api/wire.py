"""gRPC without grpcio, for the CLI and the agents: unary and streaming calls over HTTP/2.

Design note. A CLI process pays for every import before it does anything, and grpcio's (its
core, with the asyncio and ssl the core imports) took 47 ms of a `sdnctl run` whose whole server
side takes about 30 (docs/architecture.md, "Where a CLI start goes"), and 9-10 MB of every
agent's memory. A client's calls are simple: a few at a time, streams now and then (an image up
or down, the audit events, an agent's Watch), to a controller on a unix socket or over mutual
TLS. So this module speaks the protocol itself on a blocking socket: HTTP/2 framing (RFC 9113),
HPACK headers (``hpackcodec``), gRPC's length-prefixed messages, its ``grpc-timeout`` and its
status trailers. It offers what its callers used of grpcio, with grpcio's names:
:class:`Channel` (``unary_unary`` with ``future``, ``unary_stream``, ``stream_unary``),
:class:`Stub`, built from a service's protobuf descriptor (the generated ``*_pb2_grpc`` modules
import grpcio), and :class:`RpcError` with ``code()`` and ``details()`` (:class:`StatusCode`
has grpcio's names and numbers). The controller keeps grpcio: a server of thousands of streams.

- Flow control: we announce the largest windows HTTP/2 allows and refill them as we read, so a
  server never waits for us; what we send waits for the server's windows.
- Streams are multiplexed: one thread at a time reads a frame and hands it to its stream (the
  others wait on a condition), so threads may share a channel.
- A reader waits in ``poll`` (an agent's descriptors pass select's 1023) beside a wake-up
  pipe: a cancel or a close from another thread ends a blocked stream at once.
- A connection that fails, or that the server ends (GOAWAY), fails its calls with UNAVAILABLE;
  the next call dials again. Connecting is lazy, at the first call.
"""

from __future__ import annotations

import enum
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import unquote

from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message_factory import GetMessageClass

from sdnctl.api import hpackcodec
from sdnctl.api.errors import CommandError
from sdnctl.api.tlsfiles import TlsFiles, client_tls

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, \
    CONTINUATION = range(10)
END_STREAM = ACK = 0x1
END_HEADERS, PADDED, PRIORITY_FLAG = 0x4, 0x8, 0x20
SETTINGS_HEADER_TABLE_SIZE, SETTINGS_ENABLE_PUSH, SETTINGS_INITIAL_WINDOW_SIZE, \
    SETTINGS_MAX_FRAME_SIZE = 1, 2, 4, 5
DEFAULT_WINDOW, MAX_WINDOW, DEFAULT_FRAME = 65535, 2**31 - 1, 16384
#: We refill a receive window once this much of it was used.
REFILL = 2**30
NO_ERROR, PROTOCOL_ERROR, REFUSED_STREAM, CANCEL, COMPRESSION_ERROR = 0, 1, 7, 8, 9
HEADER = struct.Struct(">IBI")  # a frame header, its length and type read as one word
USER_AGENT = "sdnctl-wire/1"


class StatusCode(enum.Enum):
    """gRPC's status codes, with grpcio's names."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


#: gRPC's mapping of an HTTP status without a grpc-status (gRPC's doc http-grpc-status-mapping).
HTTP_STATUS = {400: StatusCode.INTERNAL, 401: StatusCode.UNAUTHENTICATED,
               403: StatusCode.PERMISSION_DENIED, 404: StatusCode.UNIMPLEMENTED,
               429: StatusCode.UNAVAILABLE, 502: StatusCode.UNAVAILABLE,
               503: StatusCode.UNAVAILABLE, 504: StatusCode.UNAVAILABLE}


class RpcError(Exception):
    """A call that did not end OK: its status code and the server's (or our) details."""

    def __init__(self, code: StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self._code = code
        self._details = details

    def code(self) -> StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def grpc_timeout(seconds: float) -> str:
    """A deadline as gRPC's ``grpc-timeout`` header: at most 8 digits and a unit."""
    millis = max(1, int(seconds * 1000 + 0.999))
    return f"{millis}m" if millis < 10**8 else f"{int(seconds + 0.999)}S"


def frame(kind: int, flags: int, stream: int, payload: bytes | memoryview = b"") -> bytes:
    return HEADER.pack((len(payload) << 8) | kind, flags, stream) + bytes(payload)


class _Stream:
    """One call's side of the connection: what came in, and the window it may send in."""

    def __init__(self, stream_id: int, send_window: int) -> None:
        self.id = stream_id
        self.send_window = send_window
        self.headers: list[tuple[str, str]] | None = None
        self.trailers: list[tuple[str, str]] | None = None
        self.data = bytearray()
        self.ended = False  # the server's END_STREAM (or an error) came
        self.error: RpcError | None = None
        self.unrefilled = 0  # bytes taken from our window since the last WINDOW_UPDATE


class _Connection:
    """One HTTP/2 connection, its settings, windows and streams."""

    def __init__(self, sock: socket.socket, authority: str, scheme: str) -> None:
        self.sock = sock
        self.authority = authority
        self.scheme = scheme
        self.decoder = hpackcodec.Decoder()
        self.cond = threading.Condition()
        self.write_lock = threading.Lock()
        self.reading = False
        self.inbuf = bytearray()
        self.inpos = 0  # where the next frame starts in inbuf (compacted once per read)
        # A reader blocked on the socket is woken through this pipe when a stream is
        # cancelled or the connection closed (nothing else would come to wake it).
        self.wake_read, self.wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        # poll, not select: an agent holds a netlink socket per container namespace, and
        # select cannot watch a descriptor past 1023.
        self.poller = select.poll()
        self.poller.register(sock.fileno(), select.POLLIN)
        self.poller.register(self.wake_read, select.POLLIN)
        sock.settimeout(None)  # (blocking from now on, for the reader and the writers alike)
        self.streams: dict[int, _Stream] = {}
        self.next_id = 1
        self.send_window = DEFAULT_WINDOW
        self.peer_window = DEFAULT_WINDOW  # the server's SETTINGS_INITIAL_WINDOW_SIZE
        self.peer_frame = DEFAULT_FRAME
        self.unrefilled = 0
        self.failure: RpcError | None = None  # set: no new streams (GOAWAY, lost, broken)
        self.dead = False  # the socket is shut: nothing more comes (released once unread)
        self.released = False
        self.continuing: tuple[int, int, bytearray] | None = None  # HEADERS awaiting the rest
        settings = struct.pack(">HIHI", SETTINGS_ENABLE_PUSH, 0,
                               SETTINGS_INITIAL_WINDOW_SIZE, MAX_WINDOW)
        self.write(PREFACE + frame(SETTINGS, 0, 0, settings)
                   + frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", MAX_WINDOW - DEFAULT_WINDOW)))

    # --- writing ------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        with self.write_lock:
            try:
                self.sock.sendall(data)
            except OSError as e:
                self._fail(RpcError(StatusCode.UNAVAILABLE, f"connection lost: {e}"))
                raise self.failure or RpcError(StatusCode.UNAVAILABLE, str(e)) from None

    def open(self, path: str, timeout: float | None) -> _Stream:
        """A new stream with the call's request headers sent."""
        headers = [(":method", "POST"), (":scheme", self.scheme), (":path", path),
                   (":authority", self.authority), ("te", "trailers"),
                   ("content-type", "application/grpc"), ("user-agent", USER_AGENT)]
        if timeout is not None:
            headers.append(("grpc-timeout", grpc_timeout(timeout)))
        block = hpackcodec.encode(headers)
        with self.cond:
            if self.failure is not None:
                raise self.failure
            stream = _Stream(self.next_id, self.peer_window)
            self.next_id += 2
            self.streams[stream.id] = stream
            # Sent under the condition: stream ids must reach the server in order.
            out = bytearray()
            first, rest = block[:self.peer_frame], block[self.peer_frame:]
            out += frame(HEADERS, 0 if rest else END_HEADERS, stream.id, first)
            while rest:
                chunk, rest = rest[:self.peer_frame], rest[self.peer_frame:]
                out += frame(CONTINUATION, 0 if rest else END_HEADERS, stream.id, chunk)
            self.write(bytes(out))
        return stream

    def send(self, stream: _Stream, payload: bytes, end: bool, deadline: float | None) -> None:
        """DATA on ``stream`` as the windows allow; returns early if the stream has ended."""
        view = memoryview(payload)

        def ready() -> bool:
            return not view or min(self.send_window, stream.send_window) > 0

        while True:
            with self.cond:
                self._wait(stream, deadline, ready)
                if stream.ended:
                    return
                n = min(len(view), self.send_window, stream.send_window, self.peer_frame)
                self.send_window -= n
                stream.send_window -= n
            last = n == len(view)
            self.write(frame(DATA, END_STREAM if end and last else 0, stream.id, view[:n]))
            view = view[n:]
            if last:
                return

    def cancel(self, stream: _Stream) -> None:
        with self.cond:
            if stream.ended:
                return
            stream.ended = True
            stream.error = RpcError(StatusCode.CANCELLED, "cancelled by the caller")
            self.streams.pop(stream.id, None)
        self.wake()
        if self.failure is None:
            try:
                self.write(frame(RST_STREAM, 0, stream.id, struct.pack(">I", CANCEL)))
            except RpcError:
                pass

    def forget(self, stream: _Stream) -> None:
        with self.cond:
            self.streams.pop(stream.id, None)

    # --- reading ------------------------------------------------------------------------------

    def wait(self, stream: _Stream, deadline: float | None, ready: Callable[[], bool]) -> None:
        with self.cond:
            self._wait(stream, deadline, ready)

    def _wait(self, stream: _Stream, deadline: float | None, ready: Callable[[], bool]) -> None:
        """Until ``ready()`` (or the stream ends): read frames, or let another thread read them.
        Called with the condition held. DEADLINE_EXCEEDED (and the stream cancelled) at
        ``deadline``."""
        while not (ready() or stream.ended):
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                self.cond.release()
                try:
                    self.cancel(stream)
                finally:
                    self.cond.acquire()
                stream.error = RpcError(StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
                return
            if self.reading:
                self.cond.wait(remaining)
                continue
            self.reading = True
            self.cond.release()
            got, error = None, None
            try:
                got = self._read_frame(remaining)
            except RpcError as e:
                error = e
            finally:
                self.cond.acquire()
                self.reading = False
            if error is not None:
                self._fail(error)
            elif got is not None:
                try:
                    self._dispatch(*got)
                except hpackcodec.HpackError as e:
                    self._fail(RpcError(StatusCode.INTERNAL, f"bad header block: {e}"))
            if self.dead:  # (every stream has ended with the failure)
                self._release()
            self.cond.notify_all()

    def _read_frame(self, timeout: float | None) -> tuple[int, int, int, bytes] | None:
        """One whole frame (kind, flags, stream, payload), or None when ``timeout`` passed or
        :meth:`wake` was called first (what arrived stays buffered). RpcError UNAVAILABLE when
        the connection is lost."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            pos, end = self.inpos, len(self.inbuf)
            if end - pos >= 9:
                word, flags, stream = HEADER.unpack_from(self.inbuf, pos)
                length = word >> 8
                if end - pos >= 9 + length:
                    payload = bytes(self.inbuf[pos + 9:pos + 9 + length])
                    self.inpos = pos + 9 + length
                    return word & 0xFF, flags, stream & 0x7FFFFFFF, payload
            del self.inbuf[:pos]  # the frames read: one move per read, not one per frame
            self.inpos = 0
            wait = None if deadline is None else deadline - time.monotonic()
            if wait is not None and wait <= 0:
                return None
            try:
                # (TLS may hold decrypted bytes the socket no longer shows: then recv at once)
                if not (hasattr(self.sock, "pending") and self.sock.pending()):
                    ready = self.poller.poll(None if wait is None else wait * 1000)
                    if any(fd == self.wake_read for fd, _ in ready):
                        self._drain_wake()
                        return None
                    if not ready:
                        return None
                chunk = self.sock.recv(262144)
            except OSError as e:
                raise RpcError(StatusCode.UNAVAILABLE, f"connection lost: {e}") from None
            if not chunk:
                raise RpcError(StatusCode.UNAVAILABLE, "the controller closed the connection")
            self.inbuf += chunk

    def _drain_wake(self) -> None:
        try:
            while os.read(self.wake_read, 512):
                pass
        except BlockingIOError:
            pass  # (empty)

    def wake(self) -> None:
        """Make a reader blocked in :meth:`_read_frame` look at the streams again."""
        try:
            os.write(self.wake_write, b"w")
        except OSError:
            pass  # (the pipe is full: a wake-up is pending anyway)

    def _dispatch(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        """Apply one frame; called with the condition held."""
        if self.continuing is not None and kind != CONTINUATION:
            raise hpackcodec.HpackError("a header block interrupted")
        size = len(payload)  # what a DATA frame takes off the windows, padding included
        if kind in (DATA, HEADERS) and flags & PADDED:
            pad = payload[0]
            payload = payload[1:len(payload) - pad]
        stream = self.streams.get(stream_id)
        if kind == DATA:
            self._received(stream, size)
            if stream is not None:
                stream.data += payload
                stream.ended = stream.ended or bool(flags & END_STREAM)
        elif kind == HEADERS:
            if flags & PRIORITY_FLAG:
                payload = payload[5:]
            self.continuing = (stream_id, flags, bytearray(payload))
            if flags & END_HEADERS:
                self._headers_done()
        elif kind == CONTINUATION:
            if self.continuing is None or self.continuing[0] != stream_id:
                raise hpackcodec.HpackError("CONTINUATION without HEADERS")
            self.continuing[2].extend(payload)
            if flags & END_HEADERS:
                self._headers_done()
        elif kind == RST_STREAM and stream is not None:
            (code,) = struct.unpack(">I", payload[:4])
            status = {REFUSED_STREAM: StatusCode.UNAVAILABLE, CANCEL: StatusCode.CANCELLED
                      }.get(code, StatusCode.INTERNAL)
            stream.error = RpcError(status, f"stream reset by the controller (HTTP/2 error "
                                            f"{code})")
            stream.ended = True
        elif kind == SETTINGS and not flags & ACK:
            for offset in range(0, len(payload) - 5, 6):
                key, value = struct.unpack_from(">HI", payload, offset)
                if key == SETTINGS_INITIAL_WINDOW_SIZE:
                    for open_stream in self.streams.values():
                        open_stream.send_window += value - self.peer_window
                    self.peer_window = value
                elif key == SETTINGS_MAX_FRAME_SIZE:
                    self.peer_frame = value
            self._write_quietly(frame(SETTINGS, ACK, 0))
        elif kind == PING and not flags & ACK:
            self._write_quietly(frame(PING, ACK, 0, payload))
        elif kind == GOAWAY:
            last, code = struct.unpack_from(">II", payload)
            last &= 0x7FFFFFFF
            self.failure = self.failure or RpcError(
                StatusCode.UNAVAILABLE, f"the controller ended the connection (HTTP/2 error "
                                        f"{code})")
            for sid, open_stream in self.streams.items():
                if sid > last or code != NO_ERROR:
                    open_stream.error = open_stream.error or self.failure
                    open_stream.ended = True
        elif kind == WINDOW_UPDATE:
            (increment,) = struct.unpack(">I", payload[:4])
            if stream_id == 0:
                self.send_window += increment & 0x7FFFFFFF
            elif stream is not None:
                stream.send_window += increment & 0x7FFFFFFF

    def _headers_done(self) -> None:
        assert self.continuing is not None
        stream_id, flags, block = self.continuing
        self.continuing = None
        headers = self.decoder.decode(bytes(block))  # always: the table must follow the server
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        if stream.headers is None:
            stream.headers = headers
            if flags & END_STREAM:  # trailers-only: the status is in these headers
                stream.trailers = headers
        else:
            stream.trailers = headers
        if flags & END_STREAM:
            stream.ended = True

    def _received(self, stream: _Stream | None, size: int) -> None:
        """Count ``size`` bytes off our windows; give them back once half is used."""
        self.unrefilled += size
        refill = b""
        if self.unrefilled >= REFILL:
            refill += frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", self.unrefilled))
            self.unrefilled = 0
        if stream is not None and not stream.ended:
            stream.unrefilled += size
            if stream.unrefilled >= REFILL:
                refill += frame(WINDOW_UPDATE, 0, stream.id, struct.pack(">I", stream.unrefilled))
                stream.unrefilled = 0
        if refill:
            self._write_quietly(refill)

    def _write_quietly(self, data: bytes) -> None:
        try:
            self.write(data)
        except RpcError:
            pass  # the failure is recorded; the reader sees it next

    def _fail(self, error: RpcError) -> None:
        self.failure = self.failure or error
        for stream in self.streams.values():
            if not stream.ended:
                stream.error = stream.error or error
                stream.ended = True
        self.dead = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # (wakes a reader blocked in recv)
        except OSError:
            pass
        self.wake()

    def close(self) -> None:
        with self.cond:
            self._fail(RpcError(StatusCode.CANCELLED, "channel closed"))
            if not self.reading:
                self._release()

    def _release(self) -> None:
        """Close the socket and the pipe (no reader may be waiting on them)."""
        if self.released:
            return
        self.released = True
        for close in (self.sock.close, lambda: os.close(self.wake_read),
                      lambda: os.close(self.wake_write)):
            try:
                close()
            except OSError:
                pass


def _status(stream: _Stream) -> RpcError | None:
    """How a stream that ended ended: None for OK, else the error."""
    if stream.error is not None:
        return stream.error
    headers = dict(stream.headers or [])
    http = headers.get(":status", "")
    trailers = dict(stream.trailers or [])
    if "grpc-status" not in trailers:
        if http != "200":
            code = HTTP_STATUS.get(int(http) if http.isdigit() else 0, StatusCode.UNKNOWN)
            return RpcError(code, f"HTTP status {http or 'missing'}")
        return RpcError(StatusCode.INTERNAL, "the stream ended without a grpc-status")
    try:
        code = StatusCode(int(trailers["grpc-status"]))
    except ValueError:
        code = StatusCode.UNKNOWN
    if code is StatusCode.OK:
        return None
    return RpcError(code, unquote(trailers.get("grpc-message", "")))


class _Call:
    """One call on a stream: send requests, read responses, then the status."""

    def __init__(self, conn: _Connection, path: str, timeout: float | None) -> None:
        self.conn = conn
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.stream = conn.open(path, timeout)

    def send(self, request: bytes, end: bool) -> None:
        message = struct.pack(">BI", 0, len(request)) + request
        self.conn.send(self.stream, message, end, self.deadline)

    def end(self) -> None:
        self.conn.send(self.stream, b"", True, self.deadline)

    def messages(self) -> Iterator[bytes]:
        """The response messages as they come, then RpcError unless the status is OK."""
        stream = self.stream
        try:
            while True:
                self.conn.wait(stream, self.deadline, lambda: _whole(stream.data))
                message = _take(stream)
                if message is not None:
                    yield message
                    continue
                if stream.ended:
                    break
            error = _status(stream)
            if error is not None:
                raise error
            if stream.data:
                raise RpcError(StatusCode.INTERNAL, "the stream ended inside a message")
        finally:
            self.conn.forget(stream)

    def cancel(self) -> None:
        self.conn.cancel(self.stream)


def _whole(data: bytearray) -> bool:
    return len(data) >= 5 and len(data) >= 5 + struct.unpack_from(">I", data, 1)[0]


def _take(stream: _Stream) -> bytes | None:
    if not _whole(stream.data):
        return None
    compressed, length = struct.unpack_from(">BI", stream.data)
    if compressed:
        stream.error = RpcError(StatusCode.INTERNAL, "a compressed message (none asked for)")
        stream.ended = True
        return None
    message = bytes(stream.data[5:5 + length])
    del stream.data[:5 + length]
    return message


def _one(messages: Iterator[bytes]) -> bytes:
    got = list(messages)
    if len(got) != 1:
        raise RpcError(StatusCode.INTERNAL, f"{len(got)} response messages to a unary call")
    return got[0]


class UnaryCall:
    """A unary method: called, it answers; ``future(...)`` sends the request and returns at
    once, ``result()`` then waits for the answer (as grpcio's ``.future``: the caller works
    while the server does)."""

    def __init__(self, channel: Channel, path: str, serialize: Callable[[Any], bytes],
                 decode: Callable[[bytes], Any]) -> None:
        self._channel, self._path = channel, path
        self._serialize, self._decode = serialize, decode

    def __call__(self, request: Any, timeout: float | None = None) -> Any:
        return self.future(request, timeout).result()

    def future(self, request: Any, timeout: float | None = None) -> PendingAnswer:
        rpc = self._channel._call(self._path, timeout)
        rpc.send(self._serialize(request), end=True)
        return PendingAnswer(rpc, self._decode)


class PendingAnswer:
    """A unary call's answer to come: :meth:`result` (RpcError when it failed)."""

    def __init__(self, call: _Call, decode: Callable[[bytes], Any]) -> None:
        self._call, self._decode = call, decode

    def result(self) -> Any:
        return self._decode(_one(self._call.messages()))


class ResponseStream:
    """A server stream's responses (iterate), as grpcio's call object; ``cancel()`` ends it."""

    def __init__(self, call: _Call, decode: Callable[[bytes], Any]) -> None:
        self._call = call
        self._messages = call.messages()
        self._decode = decode

    def __iter__(self) -> ResponseStream:
        return self

    def __next__(self) -> Any:
        return self._decode(next(self._messages))

    def cancel(self) -> None:
        self._call.cancel()


def parse_address(address: str) -> tuple[str, str | tuple[str, int]]:
    """``unix:/path``, ``unix-abstract:name``, ``[tcp:]host:port`` or ``[v6]:port`` ->
    (family, the socket address)."""
    if address.startswith("unix:"):
        return "unix", "/" + address.removeprefix("unix:").lstrip("/")
    if address.startswith("unix-abstract:"):
        return "unix", "\0" + address.removeprefix("unix-abstract:")
    target = address.removeprefix("tcp:").removeprefix("//")
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"{address!r}: not unix:/path nor host:port")
    return "tcp", (host.removeprefix("[").removesuffix("]"), int(port))


class Channel:
    """A connection to one server, dialled at the first call and again after a failure.

    TCP needs ``tls`` (mutual TLS, the server's name checked against the CA); a unix socket is
    plain."""

    def __init__(self, address: str, tls: TlsFiles | None = None,
                 connect_timeout: float = 20.0) -> None:
        self.address = address
        self.family, self.sockaddr = parse_address(address)
        self.tls = tls
        self.connect_timeout = connect_timeout
        self._conn: _Connection | None = None
        self._lock = threading.Lock()

    def _connection(self, deadline: float | None) -> _Connection:
        with self._lock:
            if self._conn is None or self._conn.failure is not None:
                if self._conn is not None and not self._conn.streams:
                    self._conn.close()  # (one with calls still on it closes as they end)
                self._conn = self._dial(deadline)
            return self._conn

    def _dial(self, deadline: float | None) -> _Connection:
        timeout = self.connect_timeout
        if deadline is not None:
            timeout = max(0.001, min(timeout, deadline - time.monotonic()))
        try:
            if self.family == "unix":
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(timeout)
                try:
                    sock.connect(self.sockaddr)
                except OSError:
                    sock.close()
                    raise
                return _Connection(sock, "localhost", "http")
            assert isinstance(self.sockaddr, tuple)
            host, port = self.sockaddr
            sock = socket.create_connection((host, port), timeout=timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.tls is None:
                sock.close()
                raise RpcError(StatusCode.UNAVAILABLE, f"{self.address}: TCP needs TLS files")
            return _Connection(_wrap_tls(sock, host, self.tls), f"{host}:{port}", "https")
        except TimeoutError:
            raise RpcError(StatusCode.UNAVAILABLE,
                           f"failed to connect to {self.address}: timed out") from None
        except OSError as e:
            raise RpcError(StatusCode.UNAVAILABLE, f"failed to connect to {self.address}: "
                                                   f"{e.strerror or e}") from None

    def _call(self, path: str, timeout: float | None) -> _Call:
        deadline = None if timeout is None else time.monotonic() + timeout
        return _Call(self._connection(deadline), path, timeout)

    def unary_unary(self, path: str, request_serializer: Callable[[Any], bytes],
                    response_deserializer: Callable[[bytes], Any]) -> UnaryCall:
        return UnaryCall(self, path, request_serializer, response_deserializer)

    def unary_stream(self, path: str, request_serializer: Callable[[Any], bytes],
                     response_deserializer: Callable[[bytes], Any]) -> Callable[..., Any]:
        def call(request: Any, timeout: float | None = None) -> ResponseStream:
            rpc = self._call(path, timeout)
            rpc.send(request_serializer(request), end=True)
            return ResponseStream(rpc, response_deserializer)
        return call

    def stream_unary(self, path: str, request_serializer: Callable[[Any], bytes],
                     response_deserializer: Callable[[bytes], Any]) -> Callable[..., Any]:
        def call(requests: Iterable[Any], timeout: float | None = None) -> Any:
            rpc = self._call(path, timeout)
            for request in requests:
                rpc.send(request_serializer(request), end=False)
                if rpc.stream.ended:  # the server answered (an error) before the end
                    break
            else:
                rpc.end()
            return response_deserializer(_one(rpc.messages()))
        return call

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def open_channel(address: str, tls: TlsFiles | None = None) -> Channel:
    """A channel to the controller at ``address`` (``unix:/path`` or ``[tcp:]host:port``), as
    ``sdnctl.api.grpcchannel.open_channel`` makes grpcio's: TCP is mutual TLS with ``tls``,
    else the environment's files, else CommandError, never plaintext."""
    tls = client_tls(address, tls)
    if tls is None:
        return Channel(address)
    tls.read()  # unreadable files: PkiError now, not at the first call
    try:
        return Channel(address, tls)
    except ValueError as e:
        raise CommandError(str(e)) from None


def _wrap_tls(sock: socket.socket, host: str, tls: TlsFiles) -> socket.socket:
    # ssl (5 ms of imports) only for a TCP controller: a unix-socket CLI never loads it.
    import ssl

    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls.ca)
    context.load_cert_chain(tls.cert, tls.key)
    context.set_alpn_protocols(["h2"])
    try:
        wrapped = context.wrap_socket(sock, server_hostname=host)
    except (ssl.SSLError, ssl.CertificateError) as e:
        sock.close()
        raise RpcError(StatusCode.UNAVAILABLE, f"TLS handshake with {host} failed: {e}") from None
    if wrapped.selected_alpn_protocol() != "h2":
        wrapped.close()
        raise RpcError(StatusCode.UNAVAILABLE, f"{host} does not speak HTTP/2 (ALPN)")
    return wrapped


class Stub:
    """A service's methods as callables on a channel, like a generated grpcio stub."""

    def __init__(self, channel: Channel, service: ServiceDescriptor) -> None:
        for method in service.methods:
            path = f"/{service.full_name}/{method.name}"
            response = GetMessageClass(method.output_type)
            if method.client_streaming and method.server_streaming:
                continue  # no bidirectional method in our services
            make = (channel.stream_unary if method.client_streaming else
                    channel.unary_stream if method.server_streaming else channel.unary_unary)
            setattr(self, method.name, make(path, _serialize, response.FromString))


def _serialize(message: Any) -> bytes:
    data: bytes = message.SerializeToString()
    return data
