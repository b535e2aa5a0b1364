"""DNS names on the Watch stream at 100 hosts x 10 containers: table vs delta (issue 21).

Design note. A real controller (SQLite, in this process, on a unix socket; no kernel) whose
store is filled first with 100 hosts and 10 containers on each, all on one network (so every host
holds a lease of it and its name table has 1,000 entries). Then 100 Watch streams, one per host,
each read by a thread that counts events and their protobuf bytes and notes the revision reached.
One container is created (then deleted) at a time, round-robin over the hosts, and the next starts
when all 100 streams have reached its revision: per create and per delete, the events and bytes
all hosts received and the time until the last host had it. Two sides, run alternately on the
same controller: name deltas as shipped (``watch.NAME_DELTAS``) and the whole table (False: every
host gets the network again with its full name table, the behaviour before issue 21).

    .venv/bin/python bench/watch_names.py --quick   # 4 creates + deletes per side, 2 rounds
    .venv/bin/python bench/watch_names.py --full    # 10 per side, 3 rounds

The whole-table side is the slow one (each create re-reads and re-sends 1,000 entries for each of
100 hosts: seconds per create on this machine), hence the small counts.
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import harness

from sdnctl.api.model import Container, Host, Network
from sdnctl.controller import watch
from sdnctl.controller.server import create_server
from sdnctl.controller.state import State
from sdnctl.controller.store.sqlite import SqliteStore
from sdnctl.v1 import sdnctl_pb2 as pb
from sdnctl.v1 import sdnctl_pb2_grpc as pb_grpc

HOSTS = 100
PER_HOST = 10


@dataclass
class Tally:
    """What the streams received: events, bytes, and each stream's revision."""

    events: int = 0
    bytes: int = 0
    revisions: dict[int, int] = field(default_factory=dict)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def add(self, stream: int, event: pb.WatchEvent) -> None:
        with self.cond:
            self.events += 1
            self.bytes += event.ByteSize()
            self.revisions[stream] = max(self.revisions.get(stream, 0), event.revision)
            self.cond.notify_all()

    def wait_all(self, revision: int, timeout: float = 120.0) -> None:
        with self.cond:
            if not self.cond.wait_for(lambda: len(self.revisions) == HOSTS and
                                      min(self.revisions.values()) >= revision, timeout):
                raise RuntimeError(f"not every stream reached revision {revision}")


def fill(store: SqliteStore) -> None:
    state = State(store)
    for i in range(HOSTS):
        state.register_host(Host(f"h{i}", underlay_ip=f"192.0.2.{i + 10}"))
    state.create_network(Network("front", subnet="10.0.0.0/8", host_prefix=16))
    state.create_containers([Container(f"c{i}-{j}", f"h{i}", network="front")
                             for i in range(HOSTS) for j in range(PER_HOST)])


@contextmanager
def controller() -> Iterator[tuple[pb_grpc.ControllerStub, SqliteStore, Tally]]:
    """A filled controller with one Watch stream per host, all past their snapshots."""
    tmp = Path(tempfile.mkdtemp(prefix="sdnctl-bench-names-"))
    store = SqliteStore(tmp / "db")
    fill(store)
    running = create_server(f"unix:{tmp / 'c.sock'}", store, sweep_interval=0,
                            max_workers=HOSTS + 32, progress_interval=3600)
    tally = Tally()
    streams: list[grpc.Future] = []
    try:
        channel = grpc.insecure_channel(running.address)
        sync = pb_grpc.HostSyncStub(channel)

        def read(i: int, stream: grpc.Future) -> None:
            try:
                for event in stream:  # type: ignore[attr-defined]
                    tally.add(i, event)
            except grpc.RpcError:
                pass

        for i in range(HOSTS):
            streams.append(sync.Watch(pb.WatchRequest(host=f"h{i}")))
            threading.Thread(target=read, args=(i, streams[-1]), daemon=True).start()
        tally.wait_all(store.revision())
        yield pb_grpc.ControllerStub(channel), store, tally
    finally:
        for stream in streams:
            stream.cancel()  # type: ignore[attr-defined]
        running.stop(grace=0)
        store.close()
        shutil.rmtree(tmp, ignore_errors=True)


def one_side(api: pb_grpc.ControllerStub, store: SqliteStore, tally: Tally, deltas: bool,
             count: int, tag: str) -> dict[str, list[float]]:
    """``count`` creates then as many deletes, one at a time, each until every host had it."""
    watch.NAME_DELTAS = deltas
    got: dict[str, list[float]] = {k: [] for k in (
        "create_events", "create_kb", "create_fanout_ms", "delete_events", "delete_kb")}

    def timed(op: Callable[[], object], kind: str) -> None:
        with tally.cond:
            events, size = tally.events, tally.bytes
        started = time.perf_counter()
        op()
        tally.wait_all(store.revision())
        elapsed = time.perf_counter() - started
        with tally.cond:
            got[f"{kind}_events"].append(tally.events - events)
            got[f"{kind}_kb"].append((tally.bytes - size) / 1000)
        if kind == "create":
            got["create_fanout_ms"].append(elapsed * 1000)
        print(f"{tag} {kind}: {got[f'{kind}_events'][-1]} events, "
              f"{got[f'{kind}_kb'][-1]:.1f} kB, {elapsed:.2f} s", file=sys.stderr, flush=True)

    names = [f"{tag}-{i}" for i in range(count)]
    for i, name in enumerate(names):
        timed(functools.partial(api.CreateContainer, pb.CreateContainerRequest(
            container=pb.Container(name=name, host=f"h{i % HOSTS}", network="front")),
            timeout=60), "create")
    for name in names:
        timed(functools.partial(api.DeleteContainer, pb.DeleteRequest(name=name), timeout=60),
              "delete")
    return got


def main(argv: list[str] | None = None) -> int:
    args = harness.bench_args(__doc__.split("\n\n")[0], argv)
    count, rounds = (10, 3) if args.full else (4, 2)
    sides = {"delta": True, "table": False}
    samples: dict[str, dict[str, list[float]]] = {s: {} for s in sides}
    shipped = watch.NAME_DELTAS
    with controller() as (api, store, tally):
        runs = 0

        def side(name: str) -> Callable[[], list[float]]:
            def run() -> list[float]:
                nonlocal runs
                runs += 1
                got = one_side(api, store, tally, sides[name], count, f"{name}{runs}")
                for metric, values in got.items():
                    samples[name].setdefault(metric, []).extend(values)
                return got["create_kb"]
            return run

        try:
            harness.alternate(side("delta"), side("table"), rounds)
        finally:
            watch.NAME_DELTAS = shipped
    units = {"create_events": "events", "create_kb": "kB", "create_fanout_ms": "ms",
             "delete_events": "events", "delete_kb": "kB"}
    measurements = [harness.Measurement(f"{metric} ({name}, {HOSTS}x{PER_HOST})", unit,
                                        samples[name][metric])
                    for metric, unit in units.items() for name in sides]
    delta_kb = harness.summary(samples["delta"]["create_kb"])[0]
    table_kb = harness.summary(samples["table"]["create_kb"])[0]
    per_host_bytes = delta_kb * 1000 / HOSTS
    comparisons = [
        harness.comparison(f"Watch bytes per create, table/delta ({HOSTS} hosts)",
                           round(table_kb / delta_kb, 1), "-", None),
        harness.comparison(f"Watch bytes per create per host (delta, {HOSTS}x{PER_HOST})",
                           round(per_host_bytes), "O(1): < 200 (one name entry)",
                           per_host_bytes < 200),
    ]
    notes = [f"{HOSTS} Watch streams on one SQLite controller (in process, unix socket, no "
             f"kernel) with {HOSTS * PER_HOST} containers on one network; {count} creates and "
             f"{count} deletes per side per round, one at a time until all streams had it; "
             "bytes: the WatchEvents' protobuf size summed over all hosts (no gRPC framing); "
             "delta: NameDelta entries (issue 21), table: the network re-sent with its full "
             "name table to every host (before)"]
    harness.write_result("watch_names", {
        "params": {"hosts": HOSTS, "per_host": PER_HOST, "ops_per_side": count,
                   "rounds": rounds},
        "measurements": measurements, "comparisons": comparisons, "notes": notes})
    harness.print_table(harness.load_results([os.path.join(harness.RESULTS_DIR,
                                                           "watch_names.json")]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
