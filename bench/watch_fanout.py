"""Watch fan-out at 100 hosts: how many Watch events one container create sends (issue 21).

Design note. A real controller (SQLite, in this process, on a unix socket) with 100 registered
hosts (underlay address and VTEP MAC, as agents register) and one Watch stream each, read by a
thread per stream that sorts every event it receives by what it carries. Containers are then
created one at a time and, after the streams went quiet, the events are counted per create:

- ``own host``: events carrying the created container (its host's agent must act);
- ``name holders``: events to other hosts carrying only a DNS name delta (they serve the name:
  hosts holding a lease of the container's network, issue 19);
- ``peers``: events to other hosts carrying a network (an overlay's peer list changed: only when
  a host's lease set changes, i.e. its first container on the network);
- ``unrelated``: anything else to other hosts (progress notices, empty events). Target: 0.

Three phases per round, each on a fresh controller's state within the same server:
``own network``: every host has a bridge network of its own, a create on host A concerns only
A (target: 1 event per create, to A); ``overlay, first``: the first container of each host on
one overlay network (a lease appears: every member's peer list changes); ``overlay, more``:
further containers on hosts that already hold a lease (their host, and the name holders).

    .venv/bin/python bench/watch_fanout.py --quick   # 100 hosts, 100 + 100 + 100 creates
    .venv/bin/python bench/watch_fanout.py --full    # 100 hosts, 100 + 100 + 800 creates, 2 rounds
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import grpc
import harness

from sdnctl.controller.fanout import Hub
from sdnctl.controller.server import create_server
from sdnctl.controller.store.sqlite import SqliteStore
from sdnctl.v1 import sdnctl_pb2 as pb
from sdnctl.v1 import sdnctl_pb2_grpc as pb_grpc

HOSTS = 100
KINDS = ("own host", "name holders", "peers", "unrelated")


def kind_of(event: pb.WatchEvent, host: str, created: set[str]) -> str:
    if any(c.name in created and c.host == host for c in event.containers):
        return "own host"
    if event.networks or event.deleted_networks:
        return "peers"
    if event.name_deltas and not (event.containers or event.deleted_containers):
        return "name holders"
    return "unrelated"


def quiet(hub: Hub, counts: Counter[str], lock: threading.Lock, limit: float = 300.0) -> None:
    """Until the hub has read every write and every stream has sent what concerns its host,
    and then no event arrived for half a second (the last ones were on the wire)."""
    deadline = time.monotonic() + limit
    while not hub.settled():
        if time.monotonic() > deadline:
            raise RuntimeError("the Watch streams did not settle")
        time.sleep(0.05)
    with lock:
        last = sum(counts.values())
    while time.monotonic() < deadline:
        time.sleep(0.5)
        with lock:
            now = sum(counts.values())
        if now == last:
            return
        last = now


def one_round(more: int) -> dict[str, dict[str, float]]:
    tmp = Path(tempfile.mkdtemp(prefix="sdnctl-bench-fanout-"))
    store = SqliteStore(tmp / "db")
    running = create_server(f"unix:{tmp / 'c.sock'}", store, sweep_interval=0,
                            max_workers=HOSTS + 32, progress_interval=3600)
    counts: Counter[str] = Counter()
    created: set[str] = set()
    lock = threading.Lock()
    ready = threading.Barrier(HOSTS + 1)
    streams: list[grpc.Future] = []
    results: dict[str, dict[str, float]] = {}
    assert running.hub is not None
    hub = running.hub
    try:
        channel = grpc.insecure_channel(running.address)
        sync = pb_grpc.HostSyncStub(channel)
        api = pb_grpc.ControllerStub(channel)
        for i in range(HOSTS):
            sync.Register(pb.RegisterRequest(host=f"h{i}", underlay_ip=f"192.0.2.{i + 10}",
                                             vtep_mac=f"02:00:00:00:01:{i:02x}"), timeout=10)
            api.CreateNetwork(pb.CreateNetworkRequest(network=pb.Network(
                name=f"own{i}", subnet=f"10.{100 + i}.0.0/16", host_prefix=24)), timeout=10)
        api.CreateNetwork(pb.CreateNetworkRequest(network=pb.Network(
            name="ov", subnet="10.0.0.0/10", host_prefix=18, driver="overlay")), timeout=10)

        def read(host: str, stream: grpc.Future) -> None:
            first = True
            try:
                for event in stream:  # type: ignore[attr-defined]
                    if first:
                        first = False
                        ready.wait()
                        continue
                    with lock:
                        counts[kind_of(event, host, created)] += 1
            except grpc.RpcError:
                pass

        for i in range(HOSTS):
            stream = sync.Watch(pb.WatchRequest(host=f"h{i}"))
            streams.append(stream)
            threading.Thread(target=read, args=(f"h{i}", stream), daemon=True).start()
        ready.wait()
        phases = (("own network", [(f"s{i}", f"h{i}", f"own{i}") for i in range(HOSTS)]),
                  ("overlay, first", [(f"o{i}", f"h{i}", "ov") for i in range(HOSTS)]),
                  ("overlay, more", [(f"m{i}", f"h{i % HOSTS}", "ov") for i in range(more)]))
        for phase, creates in phases:
            quiet(hub, counts, lock)
            with lock:
                counts.clear()
            started = time.perf_counter()
            for name, host, network in creates:
                with lock:
                    created.add(name)
                api.CreateContainer(pb.CreateContainerRequest(container=pb.Container(
                    name=name, host=host, network=network)), timeout=30)
            wall = time.perf_counter() - started
            quiet(hub, counts, lock)
            with lock:
                got = {k: counts[k] / len(creates) for k in KINDS}
            got["creates_per_s"] = len(creates) / wall
            results[phase] = got
    finally:
        for stream in streams:
            stream.cancel()  # type: ignore[attr-defined]
        running.stop(grace=0)
        store.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return results


def main(argv: list[str] | None = None) -> int:
    args = harness.bench_args(__doc__.split("\n\n")[0], argv)
    more, rounds = (800, 2) if args.full else (100, 1)
    samples: list[dict[str, dict[str, float]]] = [one_round(more) for _ in range(rounds)]
    measurements = []
    for phase in samples[0]:
        for kind in (*KINDS, "creates_per_s"):
            unit = "ops/s" if kind == "creates_per_s" else "events"
            name = f"{phase}: {kind} per create ({HOSTS} hosts)" if unit == "events" else \
                f"{phase}: creates/s ({HOSTS} streams)"
            measurements.append(harness.Measurement(name, unit,
                                                    [s[phase][kind] for s in samples]))
    worst = {phase: max(s[phase]["unrelated"] for s in samples) for phase in samples[0]}
    own = max(s["own network"]["own host"] + s["own network"]["name holders"] +
              s["own network"]["peers"] + s["own network"]["unrelated"] for s in samples)
    comparisons = [
        harness.comparison(f"events per create, network of its own host ({HOSTS} hosts)", own,
                           "1 (its host only)", own <= 1.0),
        harness.comparison(f"unrelated events per create, all phases ({HOSTS} hosts)",
                           max(worst.values()), "0", max(worst.values()) == 0),
        harness.comparison("peer events per create, overlay, more (no lease change)",
                           max(s["overlay, more"]["peers"] for s in samples), "0",
                           max(s["overlay, more"]["peers"] for s in samples) == 0),
    ]
    notes = [f"{HOSTS} Watch streams on one SQLite controller in this process; creates one at "
             f"a time through the API, then counted once the streams went quiet; phases: "
             f"own network ({HOSTS} creates, each host a bridge network of its own), overlay, "
             f"first ({HOSTS}: each host's first container on one overlay, a lease appears), "
             f"overlay, more ({more}: hosts already members); name holders serve the created "
             "container's DNS name (every member of its network), peers get the network again "
             "(peer list changed)"]
    harness.write_result("watch_fanout", {"params": {"hosts": HOSTS, "more": more,
                                                     "rounds": rounds},
                                          "measurements": measurements,
                                          "comparisons": comparisons, "notes": notes})
    harness.print_table(harness.load_results([os.path.join(harness.RESULTS_DIR,
                                                           "watch_fanout.json")]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
