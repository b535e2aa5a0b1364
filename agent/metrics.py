"""The agent's Prometheus metrics (issue 23).

Design note. One :class:`AgentMetrics` per agent, with a registry of its own, served on
``--metrics`` (see :mod:`sdnctl.api.metrics`) and reported in the agent's registration. The main
loop records each pass (:meth:`AgentMetrics.record_pass`: duration, actions by kind, repairs by
kind, failures, containers by state); the kernel façades are wrapped in :class:`Timed`, which
times every call by method (netlink through ``Links``, nftables through ``Firewall``), so the
reconciler does not know it is measured. The nftables drop counters are read at scrape time
from what the agent's last ruleset listing saw (a full pass lists it every resync interval):
a scrape never touches the kernel, and so never runs in a thread the kernel façade does not own.
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from agent import plan as p
from sdnctl.api.metrics import (
    LATENCY_BUCKETS,
    Counter,
    Family,
    Gauge,
    Histogram,
    Registry,
    counter_family,
)
from sdnctl.api.model import (
    STATE_CREATED,
    STATE_ERROR,
    STATE_EXITED,
    STATE_PENDING,
    STATE_RESTARTING,
    STATE_RUNNING,
    ContainerStatus,
)

#: Every state a container is reported in, so each appears (at 0) from the first scrape on.
STATES = (STATE_PENDING, STATE_CREATED, STATE_RUNNING, STATE_RESTARTING, STATE_EXITED,
          STATE_ERROR)


class AgentMetrics:
    def __init__(self) -> None:
        self.registry = Registry()
        r = self.registry
        self.passes = Counter("sdnctl_agent_reconcile_passes", "Reconciliation passes, by kind "
                              "(full: the nftables ruleset listed too).", ["kind"], registry=r)
        self.pass_seconds = Histogram("sdnctl_agent_reconcile_pass_seconds",
                                      "Duration of reconciliation passes.",
                                      buckets=LATENCY_BUCKETS, registry=r)
        self.actions = Counter("sdnctl_agent_reconcile_actions", "Actions applied, by kind.",
                               ["kind"], registry=r)
        self.failures = Counter("sdnctl_agent_reconcile_failures",
                                "Actions that failed (retried by a later pass).", registry=r)
        self.repairs = Counter("sdnctl_agent_repairs", "Drift repaired (actions taken while the "
                               "desired state stood still), by kind.", ["kind"], registry=r)
        self.containers = Gauge("sdnctl_agent_containers", "Containers of this host, by state.",
                                ["state"], registry=r)
        for state in STATES:
            self.containers.labels(state)
        self.netlink_seconds = Histogram("sdnctl_agent_netlink_call_seconds",
                                         "Latency of netlink calls, by call.", ["call"],
                                         buckets=LATENCY_BUCKETS, registry=r)
        self.nft_seconds = Histogram("sdnctl_agent_nft_call_seconds",
                                     "Latency of nftables calls, by call.", ["call"],
                                     buckets=LATENCY_BUCKETS, registry=r)

    def record_pass(self, full: bool, seconds: float, actions: Iterable[p.Action],
                    failures: int, repairs: Iterable[p.Action]) -> None:
        self.passes.labels("full" if full else "partial").inc()
        self.pass_seconds.observe(seconds)
        for action in actions:
            self.actions.labels(type(action).__name__).inc()
        for action in repairs:
            self.repairs.labels(type(action).__name__).inc()
        if failures:
            self.failures.inc(failures)

    def record_containers(self, statuses: Iterable[ContainerStatus]) -> None:
        counts = Tally(s.state for s in statuses)
        for state in sorted({*STATES, *counts}):
            self.containers.labels(state).set(counts[state])

    def add_drops(self, read: Callable[[], Mapping[str, int]]) -> None:
        """Expose ``read()`` (guard -> packets dropped) at every scrape."""
        self.registry.register(DropCollector(read))


    def add_policy_counters(self, read: Callable[[], Mapping[tuple[str, str, str], int]]
                            ) -> None:
        """Expose ``read()`` ((policy, direction, rule) -> packets) at every scrape."""
        self.registry.register(PolicyCollector(read))


class PolicyCollector:
    def __init__(self, read: Callable[[], Mapping[tuple[str, str, str], int]]) -> None:
        self.read = read

    def collect(self) -> Iterable[Family]:
        family = counter_family(
            "sdnctl_agent_policy_packets",
            "Packets that network policy rules counted (issue 22): a rule index allowed the "
            "first packet of a connection, rule \"drop\" dropped it; as of the last listing.",
            ["policy", "direction", "rule"])
        for (policy, direction, rule), packets in sorted(self.read().items()):
            family.add_metric([policy, direction, rule], packets)
        return [family]


class DropCollector:
    def __init__(self, read: Callable[[], Mapping[str, int]]) -> None:
        self.read = read

    def collect(self) -> Iterable[Family]:
        family = counter_family(
            "sdnctl_agent_nft_dropped_packets",
            "Packets dropped by the agent's nftables guards, by guard (spoof-mac, spoof-ip, "
            "spoof-arp-mac, spoof-arp-ip, spoof-ethertype, spoof-ip6, spoof-na, router-advert, "
            "redirect, vxlan-not-member, "
            "vxlan-wrong-vni, isolation, internal-in, internal-out), as of the last ruleset "
            "listing.", ["guard"])
        for guard, packets in sorted(self.read().items()):
            family.add_metric([guard], packets)
        return [family]


class Timed:
    """``target`` with every public method call timed into ``histogram`` by method name."""

    def __init__(self, target: object, histogram: Histogram) -> None:
        self._target = target
        self._histogram = histogram

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if name.startswith("_") or not callable(value):
            return value
        child = self._histogram.labels(name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return value(*args, **kwargs)
            finally:
                child.observe(time.perf_counter() - started)

        return timed
