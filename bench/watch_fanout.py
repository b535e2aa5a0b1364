"""Watch fan-out at 100 hosts: how many Watch events one container create sends (issue 21).

Design note. A real controller (SQLite, in this process, on a unix socket) with 100 registered
hosts and one Watch stream each, read by a thread per stream that counts content events and
progress notices. Then containers are created round-robin over the hosts, one at a time, and
after a quiet wait the events every stream received are counted: per create, how many went to
the host it concerns (content) and how many to the 99 others (progress notices). Two sides, run
alternately: progress coalescing as shipped (``watch.QUIET_PROGRESS``, 1 s) and off (0: a notice
per write to every host, the old behaviour, which makes every agent report each time).

    .venv/bin/python bench/watch_fanout.py --quick   # 100 hosts, 200 creates, 2 rounds
    .venv/bin/python bench/watch_fanout.py --full    # 100 hosts, 1000 creates, 3 rounds
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import harness

from sdnctl.controller import watch
from sdnctl.controller.server import create_server
from sdnctl.controller.store.sqlite import SqliteStore
from sdnctl.v1 import sdnctl_pb2 as pb
from sdnctl.v1 import sdnctl_pb2_grpc as pb_grpc

HOSTS = 100


def one_round(creates: int, quiet: float) -> dict[str, float]:
    watch.QUIET_PROGRESS = quiet
    tmp = Path(tempfile.mkdtemp(prefix="sdnctl-bench-fanout-"))
    store = SqliteStore(tmp / "db")
    running = create_server(f"unix:{tmp / 'c.sock'}", store, sweep_interval=0,
                            max_workers=HOSTS + 32, progress_interval=3600)
    counts = {"content": 0, "progress": 0}
    lock = threading.Lock()
    ready = threading.Barrier(HOSTS + 1)
    streams: list[grpc.Future] = []
    threads = []
    try:
        channel = grpc.insecure_channel(running.address)
        sync = pb_grpc.HostSyncStub(channel)
        api = pb_grpc.ControllerStub(channel)
        for i in range(HOSTS):
            sync.Register(pb.RegisterRequest(host=f"h{i}", underlay_ip=f"192.0.2.{i + 10}"),
                          timeout=10)
        api.CreateNetwork(pb.CreateNetworkRequest(network=pb.Network(
            name="front", subnet="10.0.0.0/8", host_prefix=16)), timeout=10)

        def read(stream: grpc.Future) -> None:
            first = True
            try:
                for event in stream:  # type: ignore[attr-defined]
                    if first:
                        first = False
                        ready.wait()
                        continue
                    content = bool(event.containers or event.networks or
                                   event.deleted_containers or event.deleted_networks or
                                   event.name_deltas)
                    with lock:
                        counts["content" if content else "progress"] += 1
            except grpc.RpcError:
                pass

        for i in range(HOSTS):
            stream = sync.Watch(pb.WatchRequest(host=f"h{i}"))
            streams.append(stream)
            threads.append(threading.Thread(target=read, args=(stream,), daemon=True))
            threads[-1].start()
        ready.wait()
        started = time.perf_counter()
        for i in range(creates):
            api.CreateContainer(pb.CreateContainerRequest(container=pb.Container(
                name=f"c{i}", host=f"h{i % HOSTS}", network="front")), timeout=30)
        wall = time.perf_counter() - started
        time.sleep(max(quiet, 0.5) + 1.0)  # the last coalesced notices
        with lock:
            got = dict(counts)
    finally:
        for stream in streams:
            stream.cancel()  # type: ignore[attr-defined]
        running.stop(grace=0)
        store.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return {"content_per_create": got["content"] / creates,
            "notices_per_create": got["progress"] / creates,
            "creates_per_s": creates / wall}


def main(argv: list[str] | None = None) -> int:
    args = harness.bench_args(__doc__.split("\n\n")[0], argv)
    creates, rounds = (1000, 3) if args.full else (200, 2)
    samples: dict[str, list[dict[str, float]]] = {"coalesced": [], "per-write": []}
    shipped = watch.QUIET_PROGRESS

    def side(name: str, quiet: float) -> Callable[[], float]:
        def run() -> float:
            got = one_round(creates, quiet)
            samples[name].append(got)
            return got["notices_per_create"]
        return run

    harness.alternate(side("coalesced", shipped), side("per-write", 0.0), rounds)
    watch.QUIET_PROGRESS = shipped
    measurements = []
    for metric, unit in (("content_per_create", "events"), ("notices_per_create", "events"),
                         ("creates_per_s", "ops/s")):
        for name, got in samples.items():
            measurements.append(harness.Measurement(f"{metric} ({name}, {HOSTS} hosts)", unit,
                                                    [s[metric] for s in got]))
    coalesced = sorted(s["content_per_create"] + s["notices_per_create"]
                       for s in samples["coalesced"])[0]
    comparisons = [harness.comparison(f"Watch events per create at {HOSTS} hosts", coalesced,
                                      "~1 (the host concerned)", coalesced < 2)]
    notes = [f"{HOSTS} Watch streams, {creates} CreateContainer round-robin over the hosts; "
             "content: events with containers/networks (only the host concerned); notices: "
             "empty progress events to the others (coalesced: one per QUIET_PROGRESS s after "
             "the first write they cover; per-write: QUIET_PROGRESS=0)"]
    harness.write_result("watch_fanout", {"measurements": measurements,
                                          "comparisons": comparisons, "notes": notes})
    harness.print_table(harness.load_results([os.path.join(harness.RESULTS_DIR,
                                                           "watch_fanout.json")]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
