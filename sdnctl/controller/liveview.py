"""The live view (issue 23): one page showing the network as it is, updated as it changes.

Design note. The controller serves, on ``--http ADDR`` (loopback by default, port 0 picks, ""
turns it off), three static files from ``ui/`` (a page, one script, one style sheet: no
framework, nothing fetched from elsewhere) and two JSON resources: ``/api/state``, a snapshot of
hosts, networks and containers with their statuses (the same messages the API lists, as JSON),
and ``/api/events``, a stream of server-sent events that sends a fresh snapshot whenever the
store's revision moves (what the Watch streams wake on, so agents' status reports show too)
or agents report new traffic (flows, drops: :mod:`sdnctl.controller.flows`),
coalesced over :data:`COALESCE` seconds, with a comment every :data:`KEEPALIVE` seconds to keep
proxies from closing an idle stream. A snapshot is whole rather than a delta: the page stays
simple and a reconnecting browser needs nothing else.

Access. A controller without TLS serves the page on loopback only, in plain HTTP (any local
user may look, as with ``--metrics``); any other address is refused at start. A controller with
TLS (``--tls-*``) serves it over HTTPS with the API's rules, on any address, loopback too: the
handshake requires a client certificate of the CA (so no certificate, another CA's or an expired
one never gets a byte), then each request is checked as the API checks a read (not revoked by
the CRL, one ``sdnctl://`` identity, a user whose role may read: admin, operator or viewer);
anything else gets 403. The handshake runs in the request's thread, not the accepting one.
"""

from __future__ import annotations

import ipaddress
import json
import os
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography import x509
from google.protobuf import json_format

from sdnctl.api import convert
from sdnctl.api.metrics import parse_address, url_host
from sdnctl.api.pki import RevocationList, identity_of
from sdnctl.api.tlsfiles import TlsFiles
from sdnctl.controller.auth import READ
from sdnctl.controller.flows import FlowTable
from sdnctl.controller.servicers import Connections, address_names, host_pb
from sdnctl.controller.state import State
from sdnctl.controller.watch import container_pb

#: ``--http`` when not given.
DEFAULT_ADDRESS = "127.0.0.1:0"
UI_DIR = os.path.join(os.path.dirname(__file__), "ui")
STATIC = {"/": ("index.html", "text/html; charset=utf-8"),
          "/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/app.css": ("app.css", "text/css; charset=utf-8")}
KEEPALIVE = 15.0
FLOW_POLL = 1.0
COALESCE = 0.05
#: Headers of every answer: the page runs no script but ours, loads nothing from elsewhere.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


class LiveViewError(Exception):
    pass


def _message(msg: Any) -> dict[str, Any]:
    return json_format.MessageToDict(msg, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)


def snapshot(state: State, connections: Connections, flows: FlowTable) -> dict[str, Any]:
    """Hosts, networks and containers as the API lists them, the store revision, and the
    traffic agents reported (flows between containers, the guards' drops)."""
    hosts, revision = state.list_hosts()
    traffic = _message(flows.report(address_names(state)))
    networks, _ = state.list_networks()
    containers, _ = state.list_containers("", "")
    up = connections.connected_among(v.host.name for v in hosts)
    return {
        "revision": revision,
        "hosts": [_message(host_pb(v, connections, connected=v.host.name in up)) for v in hosts],
        "networks": [_message(convert.network_to_pb(n, r)) for n, r in networks],
        "containers": [_message(container_pb(v)) for v in containers],
        "flows": traffic.get("flows", []),
        "drops": traffic.get("drops", []),
    }


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    view: LiveView


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = 60  # seconds a client may stall a read or a write (the handshake included)

    def _send(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in SECURITY_HEADERS.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _refusal(self) -> str | None:
        """Why the TLS client may not look (None: it may; so may anyone without TLS)."""
        if not isinstance(self.connection, ssl.SSLSocket):
            return None
        der = self.connection.getpeercert(binary_form=True)
        if not der:
            return "a client certificate is required"
        cert = x509.load_der_x509_certificate(der)
        revocations = self.server.view.revocations
        if revocations is not None and revocations.revoked(cert.serial_number):
            return f"the client certificate (serial {cert.serial_number:#x}) is revoked"
        identity = identity_of(cert)
        if identity is None:
            return "the client certificate names no sdnctl:// identity"
        if identity.kind != "user" or identity.role not in READ:
            return f"{identity} may not look at the live view"
        return None

    def handle(self) -> None:
        try:
            super().handle()
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError, TimeoutError):
            return  # a client refused in the handshake (no certificate, another CA's)

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        view = self.server.view
        why = self._refusal()
        if why is not None:
            self._send(403, why.encode() + b"\n", "text/plain")
            return
        if path in STATIC:
            name, content_type = STATIC[path]
            with open(os.path.join(UI_DIR, name), "rb") as f:
                self._send(200, f.read(), content_type)
        elif path == "/api/state":
            self._send(200, json.dumps(view.snapshot()).encode(), "application/json")
        elif path == "/api/events":
            self._stream(view)
        else:
            self._send(404, b"not found\n", "text/plain")

    def _stream(self, view: LiveView) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        for name, value in SECURITY_HEADERS.items():
            self.send_header(name, value)
        self.end_headers()
        try:
            seen = (-1, -1)
            idle = 0.0
            while not view.stopping.is_set():
                current = (view.state.store.revision(), view.flows.version())
                if current != seen:
                    seen, idle = current, 0.0
                    data = json.dumps(view.snapshot())
                    self.wfile.write(f"event: state\ndata: {data}\n\n".encode())
                    self.wfile.flush()
                elif idle >= KEEPALIVE:
                    idle = 0.0
                    self.wfile.write(b": keepalive\n\n")
                    self.wfile.flush()
                # Traffic reports do not move the revision: look at the flow table every
                # FLOW_POLL seconds.
                if view.state.store.wait(seen[0], FLOW_POLL) != seen[0]:
                    view.stopping.wait(COALESCE)  # a burst of writes: one snapshot
                idle += FLOW_POLL
        except (BrokenPipeError, ConnectionResetError):
            return  # the page went away

    def log_message(self, format: str, *args: object) -> None:
        pass


def _tls_context(tls: TlsFiles, revocations: RevocationList | None) -> ssl.SSLContext:
    """Server side of mutual TLS: our certificate; clients must present one of the CA."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(tls.cert, tls.key)
    context.load_verify_locations(cafile=tls.ca)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


class LiveView:
    """The live view's HTTP server, until :meth:`stop`."""

    def __init__(self, state: State, connections: Connections, address: str,
                 tls: TlsFiles | None = None,
                 revocations: RevocationList | None = None,
                 flows: FlowTable | None = None) -> None:
        host, port = parse_address(address)
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = host == "localhost"
        if not loopback and tls is None:
            raise LiveViewError(f"--http {address}: beyond loopback the live view needs the "
                                "API's mutual TLS (--tls-cert, --tls-key, --tls-ca)")
        self.state = state
        self.connections = connections
        self.revocations = revocations
        self.flows = flows or FlowTable()
        self.stopping = threading.Event()
        self._http = _Server((host, port), _Handler)
        self._http.view = self
        scheme = "http"
        if tls is not None:
            self._http.socket = _tls_context(tls, revocations).wrap_socket(
                self._http.socket, server_side=True, do_handshake_on_connect=False)
            scheme = "https"
        self.url = f"{scheme}://{url_host(host)}:{self._http.server_address[1]}/"
        self._thread = threading.Thread(target=self._http.serve_forever, name="liveview",
                                        daemon=True)
        self._thread.start()

    def snapshot(self) -> dict[str, Any]:
        return snapshot(self.state, self.connections, self.flows)

    def stop(self) -> None:
        self.stopping.set()
        self._http.shutdown()
        self._http.server_close()
        self._thread.join()
