"""Serving Prometheus metrics: the one HTTP endpoint the controller and every agent open.

Design note. Each daemon keeps its metrics in a :class:`prometheus_client.CollectorRegistry` of
its own (not the library's global one: tests run several controllers in one process) and serves
it with :func:`serve_metrics` on ``--metrics ADDR``: ``HOST:PORT``, loopback by default, port 0
picks a free port, and the URL actually bound is what the daemon reports (the controller through
``GetEndpoints``, an agent in its registration), so nobody guesses ports. ``""`` turns it off.
The server is the standard library's threading HTTP server: a scrape never waits for another.
"""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

#: ``--metrics`` when not given: loopback, a free port.
DEFAULT_ADDRESS = "127.0.0.1:0"

#: Buckets of latency histograms, in seconds: from a netlink call to a slow transaction.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0)


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT`` or ``:PORT`` (loopback) as (host, port); ValueError names
    what is wrong."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not HOST:PORT (port 0 picks a free one)")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], registry: CollectorRegistry) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)
        self.registry = registry


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        if self.path.split("?")[0] not in ("/metrics", "/"):
            self.send_error(404, "the metrics are at /metrics")
            return
        body = generate_latest(self.server.registry)
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE_LATEST)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # a scrape every few seconds is not news


class MetricsServer:
    """A registry served over HTTP until :meth:`stop`."""

    def __init__(self, registry: CollectorRegistry, address: str) -> None:
        host, port = parse_address(address)
        self._http = _Server((host, port), registry)
        self.url = f"http://{url_host(host)}:{self._http.server_address[1]}/metrics"
        self._thread = threading.Thread(target=self._http.serve_forever, name="metrics",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._http.shutdown()
        self._http.server_close()
        self._thread.join()


def serve_metrics(registry: CollectorRegistry, address: str) -> MetricsServer | None:
    """Serve ``registry`` on ``address`` (None when ``address`` is ""); OSError when it cannot
    bind, ValueError when ``address`` is malformed."""
    return MetricsServer(registry, address) if address else None
