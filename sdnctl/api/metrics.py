"""Prometheus metrics: the counters, gauges and histograms the controller and every agent keep,
their text exposition, and the one HTTP endpoint each daemon serves them on.

Design note. Each daemon keeps its metrics in a :class:`Registry` of its own (tests run several
controllers in one process) and serves it with :func:`serve_metrics` on ``--metrics ADDR``:
``HOST:PORT``, loopback by default, port 0 picks a free port, and the URL actually bound is what
the daemon reports (the controller through ``GetEndpoints``, an agent in its registration), so
nobody guesses ports. ``""`` turns it off. The server is the standard library's threading HTTP
server: a scrape never waits for another.

The metric types are ours, in the Prometheus text format 0.0.4 (what ``promtool check metrics``
and every Prometheus scrape read): a counter's samples are ``NAME_total``, a histogram's
cumulative ``NAME_bucket{le=...}`` with ``+Inf``, ``NAME_sum`` and ``NAME_count``, label values
and help texts escaped as the format says. Collectors (``collect() -> families``) are read at
scrape time. prometheus_client did the same for 4.7 MB of each agent's memory (its import
alone, a tenth of an agent, issue 21). A metric's children and their values share one lock:
a scrape reads a consistent snapshot of each metric.
"""

from __future__ import annotations

import math
import socket
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Protocol

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

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


# --- the metric types ------------------------------------------------------------------------


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return "NaN" if math.isnan(value) else repr(float(value))


def _escape(text: str) -> str:
    """A help text: backslash and newline escaped."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _label_value(text: str) -> str:
    """A label value: backslash, newline and double quote escaped."""
    return _escape(text).replace('"', '\\"')


def _labels(names: Sequence[str], values: Sequence[str]) -> str:
    """``{name="value",...}``, "" for none."""
    if not names:
        return ""
    return "{" + ",".join(f'{name}="{_label_value(value)}"'
                          for name, value in zip(names, values, strict=True)) + "}"


@dataclass
class Family:
    """One metric's exposition: its samples (suffix, label values, value); ``kind`` counter,
    gauge or histogram."""

    name: str
    help: str
    kind: str
    labels: Sequence[str] = ()
    samples: list[tuple[str, tuple[str, ...], float]] = field(default_factory=list)

    def add_metric(self, values: Sequence[str], value: float) -> None:
        """A counter's or a gauge's sample with these label values."""
        self.samples.append(("_total" if self.kind == "counter" else "", tuple(values), value))

    def text(self) -> str:
        name = self.name + ("_total" if self.kind == "counter" else "")
        lines = [f"# HELP {name} {_escape(self.help)}", f"# TYPE {name} {self.kind}"]
        for suffix, values, value in self.samples:
            names: Sequence[str] = self.labels
            if suffix == "_bucket":  # the bound is the last label value
                names = (*self.labels, "le")
            lines.append(f"{self.name}{suffix}{_labels(names, values)} {_number(value)}")
        return "\n".join(lines) + "\n"


def counter_family(name: str, help: str, labels: Sequence[str] = ()) -> Family:
    """A counter read at scrape time (a collector's)."""
    return Family(name, help, "counter", tuple(labels))


def gauge_family(name: str, help: str, labels: Sequence[str] = ()) -> Family:
    """A gauge read at scrape time (a collector's)."""
    return Family(name, help, "gauge", tuple(labels))


class Collector(Protocol):
    def collect(self) -> Iterable[Family]: ...


class Registry:
    """The metrics and collectors of one daemon, in the order registered."""

    def __init__(self) -> None:
        self._collectors: list[Collector] = []
        self._lock = threading.Lock()

    def register(self, collector: Collector) -> None:
        with self._lock:
            self._collectors.append(collector)

    def exposition(self) -> bytes:
        """Every metric in the text format."""
        with self._lock:
            collectors = list(self._collectors)
        return "".join(family.text() for c in collectors for family in c.collect()).encode()


class _Metric:
    """A metric with its children by label values (one, without labels)."""

    kind = ""

    def __init__(self, name: str, help: str, labels: Sequence[str] = (),
                 registry: Registry | None = None) -> None:
        self.name, self.help, self.label_names = name, help, tuple(labels)
        self._lock = threading.Lock()
        self._children: dict[tuple[str, ...], list[float]] = {}
        if not labels:
            self._children[()] = self._new()
        if registry is not None:
            registry.register(self)

    def _new(self) -> list[float]:
        return [0.0]

    def _values(self, values: Sequence[str]) -> list[float]:
        key = tuple(str(v) for v in values)
        if len(key) != len(self.label_names):
            raise ValueError(f"{self.name} takes labels {self.label_names}, not {key}")
        with self._lock:
            found = self._children.get(key)
            if found is None:
                found = self._children[key] = self._new()
            return found

    def collect(self) -> Iterable[Family]:
        family = Family(self.name, self.help, self.kind, self.label_names)
        with self._lock:
            for key, values in sorted(self._children.items()):
                family.samples += self._samples(key, values)
        return [family]

    def _samples(self, key: tuple[str, ...], values: list[float]
                 ) -> list[tuple[str, tuple[str, ...], float]]:
        return [("_total" if self.kind == "counter" else "", key, values[0])]


class _Value:
    """A counter's or a gauge's child."""

    def __init__(self, metric: _Metric, values: list[float]) -> None:
        self._lock, self._values = metric._lock, values

    def inc(self, amount: float = 1) -> None:
        with self._lock:
            self._values[0] += amount

    def dec(self, amount: float = 1) -> None:
        self.inc(-amount)

    def set(self, value: float) -> None:
        with self._lock:
            self._values[0] = float(value)


class Counter(_Metric):
    """A count that only grows (exposed as ``NAME_total``)."""

    kind = "counter"

    def labels(self, *values: str) -> _Value:
        return _Value(self, self._values(values))

    def inc(self, amount: float = 1) -> None:
        if amount < 0:
            raise ValueError("a counter only grows")
        self.labels().inc(amount)


class Gauge(_Metric):
    """A value that goes up and down."""

    kind = "gauge"

    def labels(self, *values: str) -> _Value:
        return _Value(self, self._values(values))

    def set(self, value: float) -> None:
        self.labels().set(value)

    def inc(self, amount: float = 1) -> None:
        self.labels().inc(amount)

    def dec(self, amount: float = 1) -> None:
        self.labels().inc(-amount)


class _Observer:
    """A histogram's child."""

    def __init__(self, metric: Histogram, values: list[float]) -> None:
        self._lock, self._values, self._buckets = metric._lock, values, metric.buckets

    def observe(self, value: float) -> None:
        """Counted in the first bucket whose bound holds it (``+Inf`` is the last)."""
        index = next((i for i, bound in enumerate(self._buckets) if value <= bound),
                     len(self._buckets))
        with self._lock:
            self._values[index] += 1
            self._values[-1] += value


class Histogram(_Metric):
    """Observations counted in buckets (``buckets``: upper bounds, ascending), with their sum
    and count."""

    kind = "histogram"

    def __init__(self, name: str, help: str, labels: Sequence[str] = (),
                 buckets: Sequence[float] = (), registry: Registry | None = None) -> None:
        self.buckets = tuple(float(b) for b in buckets if not math.isinf(b))
        if list(self.buckets) != sorted(set(self.buckets)):
            raise ValueError(f"{name}: buckets must ascend")
        super().__init__(name, help, labels, registry)

    def _new(self) -> list[float]:
        return [0.0] * (len(self.buckets) + 2)  # per bucket, +Inf, then the sum

    def labels(self, *values: str) -> _Observer:
        return _Observer(self, self._values(values))

    def observe(self, value: float) -> None:
        self.labels().observe(value)

    def _samples(self, key: tuple[str, ...], values: list[float]
                 ) -> list[tuple[str, tuple[str, ...], float]]:
        samples, total = [], 0.0
        for bound, count in zip((*self.buckets, math.inf), values, strict=False):
            total += count
            samples.append(("_bucket", (*key, _number(bound)), total))
        return [*samples, ("_count", key, total), ("_sum", key, values[-1])]


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], registry: Registry) -> None:
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
        body = self.server.registry.exposition()
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # a scrape every few seconds is not news


class MetricsServer:
    """A registry served over HTTP until :meth:`stop`."""

    def __init__(self, registry: Registry, address: str) -> None:
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


def serve_metrics(registry: Registry, address: str) -> MetricsServer | None:
    """Serve ``registry`` on ``address`` (None when ``address`` is ""); OSError when it cannot
    bind, ValueError when ``address`` is malformed."""
    return MetricsServer(registry, address) if address else None
