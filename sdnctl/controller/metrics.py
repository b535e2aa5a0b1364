"""The controller's Prometheus metrics (issue 23).

Design note. One :class:`ControllerMetrics` per server, with a registry of its own, fed from
three places that see everything without the servicers knowing: :class:`MetricsInterceptor`
(outermost of the server's interceptors, so refusals of the security interceptor count too:
calls started and handled by method and status code, and their latency), :class:`MeteredStore`
(every store transaction's latency, and the compare-and-swap conflicts: a transaction whose
compares failed) and the Watch servicer (streams open, events sent). IPAM usage is computed
at scrape time by :class:`IpamCollector` from three range reads, so it costs nothing between
scrapes and is never stale.

Names follow Prometheus conventions: ``sdnctl_`` prefix, base units (``_seconds``),
``_total`` on counters; the gRPC ones mirror go-grpc-prometheus (``grpc_server_handled_total``
with ``grpc_method`` and ``grpc_code``), which dashboards already know.
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import grpc
import netaddr

from sdnctl.api.metrics import (
    LATENCY_BUCKETS,
    Counter,
    Family,
    Gauge,
    Histogram,
    Registry,
    gauge_family,
)
from sdnctl.api.model import Lease, from_json
from sdnctl.controller.keys import IPAM, LEASES, NETWORKS
from sdnctl.controller.store.base import Compare, Delete, Put, Store


@dataclass
class Endpoints:
    """Where this replica serves its metrics and its live view, as ``GetEndpoints`` tells
    (filled in once they listen; "" when not served)."""

    metrics_url: str = ""
    ui_url: str = ""


class ControllerMetrics:
    """Every metric of one controller replica, in :attr:`registry`."""

    def __init__(self) -> None:
        self.registry = Registry()
        r = self.registry
        self.rpc_started = Counter(
            "sdnctl_grpc_server_started", "RPCs started, by method.",
            ["grpc_service", "grpc_method"], registry=r)
        self.rpc_handled = Counter(
            "sdnctl_grpc_server_handled", "RPCs completed, by method and status code.",
            ["grpc_service", "grpc_method", "grpc_code"], registry=r)
        self.rpc_seconds = Histogram(
            "sdnctl_grpc_server_handling_seconds",
            "Time from an RPC's start to its end (a stream: until it closed).",
            ["grpc_service", "grpc_method"], buckets=LATENCY_BUCKETS, registry=r)
        self.txn_seconds = Histogram(
            "sdnctl_store_txn_seconds", "Latency of store transactions.",
            buckets=LATENCY_BUCKETS, registry=r)
        self.txn_conflicts = Counter(
            "sdnctl_store_txn_conflicts",
            "Store transactions refused because a compare failed (another writer came first).",
            registry=r)
        self.watch_streams = Gauge(
            "sdnctl_watch_streams", "Agents' Watch streams open on this replica.", registry=r)
        self.watch_events = Counter(
            "sdnctl_watch_events_sent", "Events sent on Watch streams.", registry=r)
        self.agent_events = Counter(
            "sdnctl_agent_events_received", "Agents' events (repairs, container state "
            "changes) received with their reports, by kind.", ["kind"], registry=r)

    def add_ipam(self, store: Store) -> None:
        """Report IPAM usage of ``store``'s networks at every scrape."""
        self.registry.register(IpamCollector(store))


def _split(method: str) -> tuple[str, str]:
    """``/pkg.Service/Method`` as (``pkg.Service``, ``Method``)."""
    _, service, name = ([*method.split("/", 2), "", ""])[:3]
    return service or "unknown", name or method


def _code(context: grpc.ServicerContext, error: BaseException | None) -> str:
    code = context.code() if hasattr(context, "code") else None  # type: ignore[attr-defined]
    if isinstance(code, grpc.StatusCode):
        return code.name
    return "UNKNOWN" if error is not None else "OK"


class MetricsInterceptor(grpc.ServerInterceptor):
    """Counts and times every call. Put it first: it sees what the later ones refuse."""

    def __init__(self, metrics: ControllerMetrics) -> None:
        self.m = metrics

    def _done(self, labels: tuple[str, str], started: float, context: grpc.ServicerContext,
              error: BaseException | None) -> None:
        self.m.rpc_seconds.labels(*labels).observe(time.perf_counter() - started)
        self.m.rpc_handled.labels(*labels, _code(context, error)).inc()

    def intercept_service(self, continuation: Callable[[Any], Any],
                          handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        labels = _split(handler_call_details.method)
        if handler.unary_unary or handler.stream_unary:
            inner = handler.unary_unary or handler.stream_unary

            def unary(request: Any, context: grpc.ServicerContext) -> Any:
                self.m.rpc_started.labels(*labels).inc()
                started = time.perf_counter()
                try:
                    response = inner(request, context)
                except BaseException as e:
                    self._done(labels, started, context, e)
                    raise
                self._done(labels, started, context, None)
                return response

            make = grpc.unary_unary_rpc_method_handler if handler.unary_unary \
                else grpc.stream_unary_rpc_method_handler
            return make(unary, handler.request_deserializer, handler.response_serializer)
        if handler.unary_stream or handler.stream_stream:
            inner_stream = handler.unary_stream or handler.stream_stream

            def stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                self.m.rpc_started.labels(*labels).inc()
                started = time.perf_counter()
                try:
                    yield from inner_stream(request, context)
                except BaseException as e:
                    self._done(labels, started, context, e)
                    raise
                self._done(labels, started, context, None)

            make_stream = grpc.unary_stream_rpc_method_handler if handler.unary_stream \
                else grpc.stream_stream_rpc_method_handler
            return make_stream(stream, handler.request_deserializer,
                               handler.response_serializer)
        return handler


class MeteredStore:
    """A :class:`Store` whose transactions are timed and whose failed compares are counted;
    everything else goes straight through."""

    def __init__(self, store: Store, metrics: ControllerMetrics) -> None:
        self._store = store
        self._m = metrics

    def txn(self, compares: Sequence[Compare], ops: Sequence[Put | Delete]) -> int | None:
        started = time.perf_counter()
        try:
            revision = self._store.txn(compares, ops)
        finally:
            self._m.txn_seconds.observe(time.perf_counter() - started)
        if revision is None:
            self._m.txn_conflicts.inc()
        return revision

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def metered(store: Store, metrics: ControllerMetrics) -> Store:
    return cast(Store, MeteredStore(store, metrics))


class IpamCollector:
    """Per network, at scrape time: subnets leased, addresses allocated, addresses still free
    in the leased subnets, and what waits in quarantine (subnets and addresses)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterable[Family]:
        leases = gauge_family("sdnctl_ipam_leases", "Host subnets leased, per network.",
                              ["network"])
        used = gauge_family("sdnctl_ipam_addresses_used",
                            "Container addresses allocated, per network.", ["network"])
        free = gauge_family("sdnctl_ipam_addresses_free",
                            "Addresses left in the network's leased subnets (less network, "
                            "gateway and broadcast), per network.", ["network"])
        quarantined = gauge_family("sdnctl_ipam_quarantined",
                                   "Freed subnets and addresses waiting before reuse.",
                                   ["network", "kind"])
        networks = [kv.key[len(NETWORKS):] for kv in self.store.range(NETWORKS)[0]]
        capacity: Tally[str] = Tally()
        leased: Tally[str] = Tally()
        for kv in self.store.range(LEASES)[0]:
            lease = from_json(Lease, kv.value)
            leased[lease.network] += 1
            capacity[lease.network] += max(netaddr.IPNetwork(lease.subnet).size - 3, 0)
        counts: Tally[tuple[str, str]] = Tally()
        for kv in self.store.range(IPAM)[0]:
            parts = kv.key.split("/")  # "", "ipam", network, kind, subject
            if len(parts) >= 5:
                kind = parts[3]
                if kind == "quarantine":
                    kind = "quarantine-subnet" if "_" in parts[4] else "quarantine-address"
                counts[(parts[2], kind)] += 1
        for name in networks:
            leases.add_metric([name], leased[name])
            used.add_metric([name], counts[(name, "addr")])
            free.add_metric([name], max(capacity[name] - counts[(name, "addr")], 0))
            quarantined.add_metric([name, "subnet"], counts[(name, "quarantine-subnet")])
            quarantined.add_metric([name, "address"], counts[(name, "quarantine-address")])
        return [leases, used, free, quarantined]
