"""Traffic as agents report it (issue 23): flows between containers and the guards' drops.

Design note. Agents send, with each status report, the flows between addresses of our
networks (packets and bytes so far, both ways: conntrack's, and the bridge table's set of
frames bridged between two containers) and their drop counters: per container and reason
(anti-spoofing guards), per network and reason (isolation, internal) and per reason for the
host's VXLAN filter. They are telemetry: kept in this replica's memory, never in the store (a
write there would wake every Watch stream), replaced host by host with each report. The rate
of a flow is the growth of its byte counter since the same host's previous reading (identical
counters again within :data:`RATE_WINDOW` seconds are the same reading, resent with a report
made for another reason). A host's entries older than :data:`STALE` seconds are dropped (its
agent went away). :meth:`version` moves with each change, for the live view's event stream to
notice.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

from sdnctl.v1 import sdnctl_pb2 as pb

STALE = 120.0
#: Identical counters reported within this many seconds are one reading, not a rate of 0.
RATE_WINDOW = 5.0


class FlowTable:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._hosts: dict[str, tuple[float, list[pb.Flow], list[pb.Drop]]] = {}
        self._version = 0

    def update(self, host: str, flows: Iterable[pb.Flow], drops: Iterable[pb.Drop]) -> None:
        now = self.clock()
        flows = list(flows)
        with self._lock:
            before = self._hosts.get(host)
            if before is not None and _counters(before[1]) == _counters(flows) \
                    and now - before[0] < RATE_WINDOW:
                # the same counters again soon after (a report for another reason, not a new
                # reading): keep the rates measured over the last window
                kept_drops = _drops(host, drops)
                if kept_drops != before[2]:
                    self._version += 1
                self._hosts[host] = (before[0], before[1], kept_drops)
                return
            previous = {(f.src, f.dst, f.proto): f.bytes for f in before[1]} if before else {}
            elapsed = now - before[0] if before else 0.0
            fresh = []
            for flow in flows:
                msg = pb.Flow(host=host, src=flow.src, dst=flow.dst, proto=flow.proto,
                              packets=flow.packets, bytes=flow.bytes)
                old = previous.get((flow.src, flow.dst, flow.proto))
                if old is not None and elapsed > 0 and flow.bytes >= old:
                    msg.rate_bps = (flow.bytes - old) / elapsed
                fresh.append(msg)
            kept = _drops(host, drops)
            if before is None or before[1] != fresh or before[2] != kept:
                self._version += 1
            self._hosts[host] = (now, fresh, kept)

    def version(self) -> int:
        return self._version

    def report(self, names: dict[str, str]) -> pb.FlowsReport:
        """Every fresh flow and drop; ``names``: address -> container, to name the ends."""
        now = self.clock()
        with self._lock:
            for host in [h for h, (at, _, _) in self._hosts.items() if now - at > STALE]:
                del self._hosts[host]
                self._version += 1
            entries = list(self._hosts.values())
        report = pb.FlowsReport(at=now)
        for _, flows, drops in entries:
            for flow in flows:
                named = report.flows.add()
                named.CopyFrom(flow)
                named.src_container = names.get(flow.src, "")
                named.dst_container = names.get(flow.dst, "")
            report.drops.extend(drops)
        return report


def _drops(host: str, drops: Iterable[pb.Drop]) -> list[pb.Drop]:
    return [pb.Drop(host=host, kind=d.kind, container=d.container, network=d.network,
                    reason=d.reason, packets=d.packets) for d in drops]


def _counters(flows: Iterable[pb.Flow]) -> list[tuple[str, str, str, int, int]]:
    return [(f.src, f.dst, f.proto, f.packets, f.bytes) for f in flows]
