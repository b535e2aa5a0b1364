"""The controller's TCP listeners: mutual TLS terminated here, the CRL checked in the handshake.

grpc-python's ``ssl_server_credentials`` checks a client certificate's CA and validity period but
takes no revocation list, so a revoked certificate used to get through the handshake and be
refused only by the server's interceptor. Here the TCP listener is ours: an asyncio loop in one
thread accepts, runs the handshake with a stdlib :class:`ssl.SSLContext` (TLS >= 1.2, a client
certificate required, of our CA, not expired, and with ``VERIFY_CRL_CHECK_LEAF`` not in the CRL;
ALPN ``h2``, which gRPC clients insist on) and only then opens a connection to the gRPC server's
internal unix socket and copies bytes both ways (HTTP/2 passes through untouched). A client
refused in the handshake never reaches gRPC: no interceptor, no handler, no audit record.

Who is on the other end reaches the interceptor through the unix socket's *client* address:
before connecting, each connection binds its socket to a fresh path ``<dir>/peers/<n>``, which
gRPC reports as the call's peer (``unix:<dir>/peers/<n>``); :meth:`TlsFront.certificate` maps
it back to the certificate this connection presented. The directory is 0700 and the socket
0600, so only root can reach the gRPC server without going through the handshake (as root can
on the controller's own unix socket anyway).

When the revocation list changes (a new file, or SIGHUP: :class:`~sdnctl.api.pki.RevocationList`
notices and tells us), new connections get a context with the new list, and every open connection
whose certificate it now revokes is cut (both sides aborted: its streams end UNAVAILABLE). A
connection is cut as well when its certificate expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import itertools
import logging
import os
import shutil
import socket
import ssl
import tempfile
import threading
from dataclasses import dataclass, field

from cryptography import x509

from sdnctl.api.pki import RevocationList
from sdnctl.api.tlsfiles import PkiError, TlsFiles

log = logging.getLogger(__name__)

#: Seconds a client has to finish the handshake.
HANDSHAKE_TIMEOUT = 10.0
#: Handshakes in progress at once; a connection beyond them is closed at once (a client that
#: opens connections and never speaks ties up at most this many).
MAX_HANDSHAKES = 256
#: Seconds between looks at the CRL file's mtime (SIGHUP reloads at once).
CRL_POLL = 1.0
#: Bytes a side may buffer for the other before we stop reading from it (flow control).
WRITE_HIGH_WATER = 1 << 20
#: The longest unix socket path the kernel takes (sun_path is 108 bytes, NUL included).
UNIX_PATH_MAX = 107


class ListenError(ValueError):
    """A listener the controller refuses or fails to open."""


def server_context(tls: TlsFiles, crl_file: str | None = None) -> ssl.SSLContext:
    """Mutual TLS as the controller's listeners do it: ``tls``'s certificate and key, a client
    certificate of ``tls.ca`` required, and (with ``crl_file``) not revoked by that CRL."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(tls.cert, tls.key)
        context.load_verify_locations(cafile=tls.ca)
        if crl_file is not None:
            context.load_verify_locations(cafile=crl_file)
            context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    except (OSError, ssl.SSLError) as e:
        raise PkiError(f"could not load the TLS files {tls.cert}, {tls.key}, {tls.ca}: {e}") \
            from e
    context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols(["h2"])
    # No session tickets: a resumed session skips the certificate checks, and every handshake
    # must see the CRL of its day (a new CRL also means a new context, with an empty cache).
    context.options |= ssl.OP_NO_TICKET
    context.num_tickets = 0
    return context


def _bind(address: str) -> list[socket.socket]:
    """Listening sockets for ``HOST:PORT`` (``[v6]:PORT``; a wildcard host is dual-stack, as
    gRPC binds it). Port 0 picks one port for all of them."""
    host, _, port_text = address.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    try:
        port = int(port_text)
    except ValueError as e:
        raise ListenError(f"{address}: no port") from e
    if host in ("", "0.0.0.0", "::") and socket.has_ipv6:
        candidates = [(socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")]
    else:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
        except socket.gaierror as e:
            raise ListenError(f"{address}: could not resolve {host!r}") from e
        candidates = list(dict.fromkeys((family, str(sa[0])) for family, _, _, _, sa in infos))
    sockets: list[socket.socket] = []
    try:
        for family, ip in candidates:
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, ip != "::")
            sock.bind((ip, port))
            sock.listen(128)
            sock.setblocking(False)
            port = sock.getsockname()[1]
            if ip == "::":
                break  # dual-stack: it takes IPv4 too
    except OSError as e:
        for sock in sockets:
            sock.close()
        raise ListenError(f"{address}: could not listen ({e.strerror or e})") from e
    return sockets


@dataclass(eq=False)
class _Connection:
    """One client: its TLS transport, its transport to the gRPC server, its certificate."""

    front: TlsFront
    raw: asyncio.Transport
    peer: str = ""  # where the client dialled from, for the log
    tls: asyncio.Transport | None = None
    backend: asyncio.Transport | None = None
    path: str = ""  # our unix socket's address: the peer gRPC reports for this connection
    certificate: x509.Certificate | None = None
    pending: list[bytes] = field(default_factory=list)  # client bytes before the backend is up
    closed: bool = False
    expiry: asyncio.TimerHandle | None = None  # cuts it when its certificate expires

    def cut(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.expiry is not None:
            self.expiry.cancel()
        for transport in (self.tls, self.backend, self.raw):
            if transport is not None:
                transport.abort()
        self.front._forget(self)


def _seconds_left(certificate: x509.Certificate) -> float:
    return (certificate.not_valid_after_utc - datetime.datetime.now(datetime.UTC)).total_seconds()


class _ClientSide(asyncio.Protocol):
    """The TCP side: a handshake, then the client's bytes go to the backend."""

    def __init__(self, front: TlsFront) -> None:
        self.front = front
        self.conn: _Connection | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.pause_reading()  # until start_tls takes over
        peer = transport.get_extra_info("peername")
        self.conn = _Connection(self.front, transport, str(peer))
        self.front._track(self.conn, asyncio.get_running_loop().create_task(
            self.front._open(self.conn, self)))

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        if conn is None or conn.closed:
            return
        if conn.backend is None:
            conn.pending.append(data)
        else:
            conn.backend.write(data)

    def eof_received(self) -> bool | None:
        return None  # HTTP/2 has no half-close: close both

    def pause_writing(self) -> None:
        if self.conn is not None and self.conn.backend is not None:
            self.conn.backend.pause_reading()

    def resume_writing(self) -> None:
        if self.conn is not None and self.conn.backend is not None:
            self.conn.backend.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.conn is not None:
            self.conn.cut()


class _BackendSide(asyncio.Protocol):
    """The unix side: the gRPC server's bytes go to the client."""

    def __init__(self, conn: _Connection) -> None:
        self.conn = conn

    def data_received(self, data: bytes) -> None:
        if self.conn.tls is not None and not self.conn.closed:
            self.conn.tls.write(data)

    def eof_received(self) -> bool | None:
        return None

    def pause_writing(self) -> None:
        if self.conn.tls is not None:
            self.conn.tls.pause_reading()

    def resume_writing(self) -> None:
        if self.conn.tls is not None:
            self.conn.tls.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.cut()


class TlsFront:
    """Mutual-TLS listeners in front of a gRPC server's unix socket (see the module note).

    ``listen`` binds (call it before ``start``); :attr:`backend` is the unix socket the gRPC
    server must serve on, in a new 0700 directory under ``parent`` (default: the system's
    temporary directory), removed by :meth:`stop`."""

    def __init__(self, tls: TlsFiles, revocations: RevocationList | None,
                 parent: str | None = None, crl_poll: float = CRL_POLL) -> None:
        self.tls = tls
        self.revocations = revocations
        self.directory = tempfile.mkdtemp(prefix="sdnctl-tls-", dir=parent)  # 0700
        self.backend = os.path.join(self.directory, "grpc.sock")
        self.peers_dir = os.path.join(self.directory, "peers")
        self.crl_poll = crl_poll
        self.handshakes = 0  # completed
        self.refused = 0  # handshakes that failed: no certificate, another CA, expired, revoked
        self.cut_off = 0  # connections cut because their certificate was revoked
        self.expired = 0  # connections cut because their certificate expired
        self.handshaking = 0  # handshakes in progress (the loop thread's)
        self.max_handshakes = MAX_HANDSHAKES
        self._sockets: list[socket.socket] = []
        self._servers: list[asyncio.Server] = []
        self._connections: dict[_Connection, asyncio.Task[None] | None] = {}
        self._by_path: dict[str, x509.Certificate] = {}
        self._lock = threading.Lock()
        self._numbers = itertools.count(1)
        try:
            os.mkdir(self.peers_dir, mode=0o700)
            if len(self.peers_dir) + 12 > UNIX_PATH_MAX:
                raise ListenError(f"{self.directory}: too long a path for unix sockets")
            self._context = self._new_context()
        except BaseException:
            shutil.rmtree(self.directory, ignore_errors=True)
            raise
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tls-front",
                                        daemon=True)

    # -- the gRPC side's questions (any thread) --------------------------------------------------

    def owns(self, peer: str) -> bool:
        """Whether ``peer`` (as gRPC names it) is one of our connections, open or closed."""
        return peer.startswith(f"unix:{self.peers_dir}/")

    def certificate(self, peer: str) -> x509.Certificate | None:
        """The certificate the TLS client behind ``peer`` presented; None once it has gone."""
        with self._lock:
            return self._by_path.get(peer.removeprefix("unix:"))

    # -- life -------------------------------------------------------------------------------------

    def listen(self, address: str) -> str:
        """Bind ``HOST:PORT``; return the address clients dial (the port picked for 0)."""
        sockets = _bind(address)
        self._sockets.extend(sockets)
        host = address.rpartition(":")[0]
        return f"{host}:{sockets[0].getsockname()[1]}"

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result()
        if self.revocations is not None:
            self.revocations.on_change(self._revocations_changed)

    def _revocations_changed(self) -> None:
        """(The reloading thread: SIGHUP's, a gRPC worker's or ours.)"""
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._apply_revocations)

    def close_listeners(self) -> None:
        """Accept no more connections (the open ones go on)."""
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._close_listeners(), self._loop).result()
        for sock in self._sockets:
            sock.close()

    def stop(self) -> None:
        """Close the listeners and every connection; end the thread; remove the directory."""
        self.close_listeners()
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._close_all(), self._loop).result()
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
        self._loop.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    # -- the loop thread --------------------------------------------------------------------------

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        for sock in self._sockets:
            self._servers.append(await loop.create_server(lambda: _ClientSide(self),
                                                          sock=sock))
        if self.revocations is not None:
            loop.call_later(self.crl_poll, self._poll_crl)

    async def _close_listeners(self) -> None:
        for server in self._servers:
            server.close()
        self._servers.clear()

    async def _close_all(self) -> None:
        tasks = [t for t in self._connections.values() if t is not None]
        for conn in list(self._connections):
            conn.cut()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _poll_crl(self) -> None:
        assert self.revocations is not None
        try:
            self.revocations.refresh()  # a change calls _apply_revocations
        finally:
            if self._servers:
                self._loop.call_later(self.crl_poll, self._poll_crl)

    def _new_context(self) -> ssl.SSLContext:
        if self.revocations is None:
            return server_context(self.tls)
        # The last good CRL (one the CA signed), not whatever the file holds now.
        fd, crl_file = tempfile.mkstemp(dir=self.directory, prefix="crl-", suffix=".pem")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(self.revocations.pem)
            return server_context(self.tls, crl_file)
        finally:
            os.unlink(crl_file)

    def _apply_revocations(self) -> None:
        """New connections get the new list; open ones it revokes are cut."""
        assert self.revocations is not None
        try:
            self._context = self._new_context()
        except PkiError:
            log.exception("could not build a TLS context with the new revocation list")
        for conn in list(self._connections):
            cert = conn.certificate
            if cert is not None and self.revocations.revoked(cert.serial_number):
                log.warning("cutting %s: its certificate (serial %#x) is now revoked",
                            conn.peer, cert.serial_number)
                self.cut_off += 1
                conn.cut()

    def _expire(self, conn: _Connection) -> None:
        if conn.closed:
            return
        assert conn.certificate is not None
        left = _seconds_left(conn.certificate)
        if left > 0:  # the loop's clock ran ahead of the wall clock: not yet
            conn.expiry = asyncio.get_running_loop().call_later(left, self._expire, conn)
            return
        log.warning("cutting %s: its certificate expired", conn.peer)
        self.expired += 1
        conn.cut()

    def _track(self, conn: _Connection, task: asyncio.Task[None]) -> None:
        self._connections[conn] = task

    def _forget(self, conn: _Connection) -> None:
        self._connections.pop(conn, None)
        if conn.path:
            with self._lock:
                self._by_path.pop(conn.path, None)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(conn.path)

    async def _open(self, conn: _Connection, protocol: _ClientSide) -> None:
        loop = asyncio.get_running_loop()
        if self.handshaking >= self.max_handshakes:
            self.refused += 1
            log.warning("%s: %d TLS handshakes in progress already; closed", conn.peer,
                        self.handshaking)
            conn.cut()
            return
        self.handshaking += 1
        try:
            tls = await loop.start_tls(conn.raw, protocol, self._context, server_side=True,
                                       ssl_handshake_timeout=HANDSHAKE_TIMEOUT)
        except (OSError, ssl.SSLError, ConnectionError, TimeoutError) as e:
            self.refused += 1
            log.info("TLS handshake with %s refused: %s", conn.peer, e)
            conn.cut()
            return
        finally:
            self.handshaking -= 1
        if tls is None or conn.closed:  # the client went away at once
            conn.cut()
            return
        conn.tls = tls
        der = tls.get_extra_info("ssl_object").getpeercert(binary_form=True)
        certificate = x509.load_der_x509_certificate(der)
        left = _seconds_left(certificate)
        if left <= 0:
            # It was valid when OpenSSL checked it, during the handshake; not any more. A client
            # cut by _expire and back at once can land here.
            self.refused += 1
            log.info("TLS handshake with %s refused: its certificate expired", conn.peer)
            conn.cut()
            return
        self.handshakes += 1
        conn.certificate = certificate
        tls.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        conn.expiry = loop.call_later(left, self._expire, conn)
        conn.path = os.path.join(self.peers_dir, str(next(self._numbers)))
        with self._lock:
            self._by_path[conn.path] = conn.certificate
        try:
            await self._connect(conn)
        except OSError as e:
            log.error("could not reach the gRPC server at %s for %s: %s", self.backend,
                      conn.peer, e)
            conn.cut()
        if not conn.closed:
            self._connections[conn] = None  # the task is done; the connection lives on

    async def _connect(self, conn: _Connection) -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(conn.path)
            sock.setblocking(False)
            await loop.sock_connect(sock, self.backend)
        except BaseException:
            sock.close()
            raise
        backend, _ = await loop.create_unix_connection(lambda: _BackendSide(conn), sock=sock)
        if conn.closed:  # the client left (or was revoked) meanwhile
            backend.abort()
            return
        conn.backend = backend
        backend.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        for data in conn.pending:
            backend.write(data)
        conn.pending.clear()
