"""Benchmark item 4: the controller's gRPC API under concurrent clients, and its memory.

Design note. A real controller is started in this process on a unix socket in a temp dir, once
on SQLite (what users run) and once on the in-memory store (the reference floor: the same
servicers, State and IPAM with no disk). The two sides alternate round by round. In each round K
client processes (spawned, each with its own channel: clients are other programs, as agents and
the CLI are, not threads sharing the controller's interpreter) create containers on their own
host of one network (10.0.0.0/8, a /16 per host) and time every CreateContainer; then they
GetContainer each of their containers and call ListContainers (for their host) a few times.
The clients and this process pass a barrier between the phases, and the phases' wall times are
taken here.

Each side runs at three sizes: on an empty store, with 1,000 and with N containers already
there (quick: 2,000; full: 16,000; written through State once into a template SQLite file and
copied key by key into each round's store), N/K of them in each client's own lease (the worst
case for address allocation) and 10 on a host of their own (``lone``). Rows read ``@0``,
``@1000`` and ``@N``: a create must cost the same at all three (issue 21). During the create
phase one more process sends ReportStatus for ``lone`` (its 10 containers) in a loop: its
latency is what an agent's report costs while K clients write. After the phases,
ListContainers(host=lone) is timed: one host's listing among N containers.

Memory: a controller is started as a separate process (``sdnctl-controller``, SQLite) and its
VmRSS is read before and after 16,000 containers (issue 21's size) are created through the API
(CreateContainers, 100 a request), and again after a full listing and one per host. Then one
lab host is brought up with `sdnctl up` (private run dirs, unique prefix) running 200 `sleep
infinity` containers (1,000 with --full), its agent's VmRSS read, and the lab brought `down`.

    .venv/bin/python bench/controller.py --quick   # 4 clients x 250 containers, 2 rounds
    .venv/bin/python bench/controller.py --full    # 4 clients x 1000 containers, 3 rounds
"""

from __future__ import annotations

import contextlib
import itertools
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier, Event
from pathlib import Path

import grpc
import harness

from sdnctl.api import convert
from sdnctl.api.model import Container, Host
from sdnctl.controller.migrate import copy_store
from sdnctl.controller.server import create_server
from sdnctl.controller.state import State
from sdnctl.controller.store.base import Store
from sdnctl.controller.store.memory import MemoryStore
from sdnctl.controller.store.sqlite import SqliteStore
from sdnctl.v1 import sdnctl_pb2 as pb
from sdnctl.v1 import sdnctl_pb2_grpc as pb_grpc

NETWORK = pb.Network(name="bench", driver="bridge", subnet="10.0.0.0/8", host_prefix=16)
LISTS_PER_CLIENT = 5
#: The controller's memory is measured at issue 21's size: 16,000 containers.
MEMORY_CONTAINERS = 16_000
MEMORY_HOSTS = 16
LONE = "lone"
LONE_CONTAINERS = 10
LONE_LISTS = 50
BATCH_TOTAL = 2000
BATCH_SIZE = 100


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def rss_kib(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def create_hosts(api: pb_grpc.ControllerStub, count: int) -> list[str]:
    names = [f"h{i}" for i in range(count)]
    for i, name in enumerate(names):
        api.CreateHost(pb.CreateHostRequest(host=pb.Host(
            name=name, underlay_ip=f"192.0.2.{10 + i}")), timeout=10)
    api.CreateNetwork(pb.CreateNetworkRequest(network=NETWORK), timeout=10)
    return names


def timed(call: Callable[[], object], into: list[float]) -> None:
    started = time.perf_counter()
    call()
    into.append(time.perf_counter() - started)


def client_work(address: str, host: str, count: int, phases: Barrier,
                results: Queue[dict[str, list[float]]]) -> None:
    """One client process: create ``count`` containers, then get each, then list its host a
    few times; its timings go to ``results``. ``phases`` is passed between the phases by every
    client and the parent, which times them."""
    times: dict[str, list[float]] = {"create": [], "get": [], "list": []}
    with grpc.insecure_channel(address) as channel:
        api = pb_grpc.ControllerStub(channel)
        api.ListHosts(pb.ListRequest(), timeout=10)  # connect before the clock starts
        names = [f"{host}-c{i}" for i in range(count)]
        phases.wait()
        for name in names:
            ctr = pb.Container(name=name, host=host, network=NETWORK.name)
            timed(lambda c=ctr: api.CreateContainer(  # type: ignore[misc]
                pb.CreateContainerRequest(container=c), timeout=30), times["create"])
        phases.wait()
        for name in names:
            timed(lambda n=name: api.GetContainer(  # type: ignore[misc]
                pb.GetRequest(name=n), timeout=30), times["get"])
        phases.wait()
        for _ in range(LISTS_PER_CLIENT):
            timed(lambda: api.ListContainers(pb.ListRequest(host=host), timeout=60),
                  times["list"])
        phases.wait()
    results.put(times)


def preload(store: Store, clients: int, existing: int) -> None:
    """``existing`` containers in the clients' leases, and ``lone`` with its 10. Written
    through State once per size into a template SQLite file, then copied key by key into each
    round's store (``migrate.copy_store``): the same records, without minutes of creates."""
    key = (clients, existing)
    if key not in _TEMPLATES:
        path = Path(tempfile.mkdtemp(prefix="sdnctl-bench-tpl-")) / "db"
        template = SqliteStore(path)
        state = State(template)
        for i in range(clients):
            state.create_host(Host(f"h{i}", underlay_ip=f"192.0.2.{10 + i}"))
        state.create_host(Host(LONE, underlay_ip="192.0.2.200"))
        state.create_network(convert.network_from_pb(NETWORK))
        for first in range(0, existing, 500):
            state.create_containers([
                Container(name=f"old{i}", host=f"h{i % clients}", network=NETWORK.name)
                for i in range(first, min(existing, first + 500))])
        for i in range(LONE_CONTAINERS):
            state.create_container(Container(name=f"lone{i}", host=LONE,
                                             network=NETWORK.name))
        _TEMPLATES[key] = template
    copy_store(_TEMPLATES[key], store)


_TEMPLATES: dict[tuple[int, int], SqliteStore] = {}


def report_loop(address: str, stop: Event, results: Queue[list[float]]) -> None:
    """An agent's process: ReportStatus for ``lone`` (all 10 running) until ``stop``; every
    call timed, the timings put on ``results``."""
    statuses = [pb.ContainerStatus(name=f"lone{i}", state="running", pid=100 + i)
                for i in range(LONE_CONTAINERS)]
    into: list[float] = []
    with grpc.insecure_channel(address) as channel:
        sync = pb_grpc.HostSyncStub(channel)
        revision = 0
        while not stop.is_set():
            revision += 1  # a new observed revision each time: every report writes
            timed(lambda r=revision: sync.ReportStatus(pb.ReportStatusRequest(  # type: ignore
                host=LONE, containers=statuses, observed_revision=r), timeout=30), into)
            stop.wait(0.01)
    results.put(into)


#: Client processes are spawned: a fork of this process, which runs a gRPC server with its
#: threads, is not safe.
MP = multiprocessing.get_context("spawn")


def one_round(make_store: Callable[[Path], Store], clients: int, per_client: int,
              existing: int) -> dict[str, float]:
    """A fresh controller on a store holding ``existing`` containers; K clients; per-operation
    rates and latencies."""
    tmp = Path(tempfile.mkdtemp(prefix="sdnctl-bench-ctl-"))
    store = make_store(tmp)
    reports: list[float] = []
    lone_lists: list[float] = []
    try:
        preload(store, clients, existing)
        running = create_server(f"unix:{tmp / 'c.sock'}", store, sweep_interval=0)
        try:
            phases = MP.Barrier(clients + 1)
            stop = MP.Event()
            queue = MP.Queue()
            reports_queue = MP.Queue()
            procs = [MP.Process(target=client_work, args=(running.address, f"h{i}", per_client,
                                                          phases, queue))
                     for i in range(clients)]
            procs.append(MP.Process(target=report_loop,
                                    args=(running.address, stop, reports_queue)))
            for proc in procs:
                proc.start()
            try:
                marks = []
                for _ in range(4):  # start, creates done, gets done, lists done
                    phases.wait(timeout=600)
                    marks.append(time.perf_counter())
                    if len(marks) == 2:  # the reporter measures while the clients create
                        stop.set()
                results = [queue.get(timeout=60) for _ in range(clients)]
                reports = reports_queue.get(timeout=60)
            finally:
                phases.abort()  # a client that failed leaves none waiting
                stop.set()
                for proc in procs:
                    proc.join(timeout=30)
                    if proc.exitcode is None:
                        proc.kill()
                        proc.join()
            walls = [b - a for a, b in itertools.pairwise(marks)]
            with grpc.insecure_channel(running.address) as channel:
                api = pb_grpc.ControllerStub(channel)
                for _ in range(LONE_LISTS):
                    timed(lambda: api.ListContainers(pb.ListRequest(host=LONE), timeout=60),
                          lone_lists)
        finally:
            running.stop(grace=0)
    finally:
        store.close()
        shutil.rmtree(tmp, ignore_errors=True)
    out: dict[str, float] = {}
    for op, wall in zip(("create", "get", "list"), walls, strict=True):
        latencies = [t for r in results for t in r[op]]
        out[f"{op}_per_s"] = len(latencies) / wall
        out[f"{op}_p50_ms"] = percentile(latencies, 0.50) * 1000
        out[f"{op}_p99_ms"] = percentile(latencies, 0.99) * 1000
    for op, latencies in (("report", reports), ("listlone", lone_lists)):
        out[f"{op}_p50_ms"] = percentile(latencies, 0.50) * 1000
        out[f"{op}_p99_ms"] = percentile(latencies, 0.99) * 1000
    return out


def batch_rate(make_store: Callable[[Path], Store], total: int, size: int) -> float:
    """Creates/s through CreateContainers, ``size`` containers a request, one client."""
    tmp = Path(tempfile.mkdtemp(prefix="sdnctl-bench-batch-"))
    store = make_store(tmp)
    try:
        preload(store, 1, 0)
        running = create_server(f"unix:{tmp / 'c.sock'}", store, sweep_interval=0)
        try:
            with grpc.insecure_channel(running.address) as channel:
                api = pb_grpc.ControllerStub(channel)
                api.ListHosts(pb.ListRequest(), timeout=10)
                started = time.perf_counter()
                for first in range(0, total, size):
                    api.CreateContainers(pb.CreateContainersRequest(containers=[
                        pb.Container(name=f"b{i}", host="h0", network=NETWORK.name)
                        for i in range(first, min(total, first + size))]), timeout=120)
                wall = time.perf_counter() - started
        finally:
            running.stop(grace=0)
    finally:
        store.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return total / wall


STORES: dict[str, Callable[[Path], Store]] = {
    "sqlite": lambda tmp: SqliteStore(tmp / "db"),
    "memory": lambda tmp: MemoryStore(),
}


@contextlib.contextmanager
def controller_process(tmp: Path) -> Iterator[tuple[int, str]]:
    """``sdnctl-controller`` on SQLite as its own process; yields (pid, address)."""
    address = f"unix:{tmp / 'mem.sock'}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "sdnctl.controller.server", "--listen", address,
         "--db", str(tmp / "mem.db"), "--default-bridge", "", "--sweep-interval", "0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with grpc.insecure_channel(address) as channel:
            grpc.channel_ready_future(channel).result(timeout=15)
        yield proc.pid, address
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def controller_memory(containers: int) -> dict[str, float]:
    """VmRSS of a controller process (SQLite) before and after ``containers`` containers are
    created through the API (CreateContainers, a hundred a request, on 16 hosts), and after a
    full listing and one listing per host (their replies are built in memory)."""
    tmp = Path(tempfile.mkdtemp(prefix="sdnctl-bench-mem-"))
    try:
        with controller_process(tmp) as (pid, address), \
                grpc.insecure_channel(address) as channel:
            api = pb_grpc.ControllerStub(channel)
            hosts = create_hosts(api, MEMORY_HOSTS)
            before = rss_kib(pid)
            for first in range(0, containers, BATCH_SIZE):
                api.CreateContainers(pb.CreateContainersRequest(containers=[
                    pb.Container(name=f"m{i}", host=hosts[i % len(hosts)],
                                 network=NETWORK.name)
                    for i in range(first, min(containers, first + BATCH_SIZE))]), timeout=120)
            created = rss_kib(pid)
            listed = api.ListContainers(pb.ListRequest(), timeout=120)
            if len(listed.containers) != containers:
                raise RuntimeError(f"the controller lists {len(listed.containers)} containers, "
                                   f"not {containers}")
            for host in hosts:
                api.ListContainers(pb.ListRequest(host=host), timeout=60)
            after = rss_kib(pid)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"containers": containers, "rss_before_mib": before / 1024,
            "rss_created_mib": created / 1024, "rss_after_mib": after / 1024,
            "rss_delta_mib": (after - before) / 1024}


def agent_memory(containers: int) -> dict[str, float]:
    """RSS of one lab host's agent running ``containers`` `sleep infinity` containers: `sdnctl
    up` in a private environment (own run/state dirs, unique lab prefix), then `down`."""
    prefix = harness.unique_prefix("am")
    run_dir = Path(tempfile.mkdtemp(prefix=f"sdnctl-{prefix}-"))
    topo = run_dir / "agent-mem.yaml"
    topo.write_text("\n".join(
        ["name: bench-agent-mem", "hosts:", "  - {name: h1, lab: true}", "networks:",
         "  - {name: front, driver: bridge, subnet: 10.80.0.0/16, host_prefix: 16}",
         "containers:"] +
        [f"  - {{name: s{i}, host: h1, network: front, command: [sleep, infinity]}}"
         for i in range(containers)]) + "\n")
    env = dict(os.environ, SDNCTL_RUN_DIR=str(run_dir), SDNCTL_STATE_DIR=str(run_dir / "state"),
               SDNCTL_LAB_PREFIX=prefix)
    env.pop("SDNCTL_CONTROLLER", None)

    def cli(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "sdnctl.main", *args], env=env,
                              capture_output=True, text=True, timeout=1800, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"sdnctl {args[0]} failed: {done.stderr.strip()[-300:]}")
        return done.stdout

    try:
        started = time.monotonic()
        cli("up", str(topo), "--timeout", "1200")
        up_seconds = time.monotonic() - started
        host = json.loads(cli("inspect", "host", "h1", "--json"))
        rss = rss_kib(host["agent_pid"]) / 1024
    finally:
        with contextlib.suppress(Exception):
            cli("down", str(topo))
        shutil.rmtree(run_dir, ignore_errors=True)
    return {"containers": containers, "agent_rss_mib": rss, "up_seconds": up_seconds}


UNITS = {"per_s": "ops/s", "p50_ms": "ms", "p99_ms": "ms"}
UNITS.update({f"{k}_ms": "ms" for k in ("p50", "p99")})


def main(argv: list[str] | None = None) -> int:
    args = harness.bench_args(__doc__.split("\n\n")[0], argv)
    # Issue 21's goals: >= 1,000 creates/s with 4 clients; a create at 16,000 existing
    # containers as fast as at 0; ListContainers(host) under 10 ms at 16,000.
    clients, per_client, rounds = (4, 1000, 3) if args.full else (4, 250, 2)
    existing = 16_000 if args.full else 2_000
    sizes = (0, 1_000, existing)
    sides = [(kind, n) for kind in ("sqlite", "memory") for n in sizes]
    samples: dict[str, list[dict[str, float]]] = {f"{k}@{n}": [] for k, n in sides}

    def side(kind: str, n: int) -> Callable[[], float]:
        def run() -> float:
            got = one_round(STORES[kind], clients, per_client, n)
            samples[f"{kind}@{n}"].append(got)
            return got["create_per_s"]
        return run

    try:
        harness.alternate_many({f"{k}@{n}": side(k, n) for k, n in sides}, rounds)
        batched = [batch_rate(STORES["sqlite"], BATCH_TOTAL, BATCH_SIZE) for _ in range(rounds)]
    finally:  # (the batch rounds make a template of their own: after them)
        for template in _TEMPLATES.values():
            template.close()
            shutil.rmtree(template.path.parent, ignore_errors=True)
    memory = controller_memory(MEMORY_CONTAINERS)
    agent_containers = 1000 if args.full else 200
    agent: dict[str, float | str]
    try:
        agent = dict(agent_memory(agent_containers))
    except (RuntimeError, subprocess.TimeoutExpired, KeyError, ValueError) as e:
        agent = {"containers": agent_containers, "error": str(e)}

    measurements, comparisons = [], []
    for metric in samples[f"sqlite@{existing}"][0]:
        unit = UNITS[metric.split("_", 1)[1]]
        for name, got in samples.items():
            measurements.append(harness.Measurement(
                f"{metric} ({name}, {clients} clients)", unit, [s[metric] for s in got]))
        comparisons.append(harness.comparison(
            f"{metric} sqlite/memory @{existing}", harness.ratio(*(
                [s[metric] for s in samples[f"{k}@{existing}"]] for k in ("sqlite", "memory"))),
            "", None))
        comparisons.append(harness.comparison(
            f"{metric} sqlite @{existing}/@0", harness.ratio(*(
                [s[metric] for s in samples[f"sqlite@{n}"]] for n in (existing, 0))), "", None))
    sqlite_n = samples[f"sqlite@{existing}"]

    def median(metric: str) -> float:
        return sorted(s[metric] for s in sqlite_n)[len(sqlite_n) // 2]

    measurements.append(harness.Measurement(
        f"CreateContainers creates/s (sqlite, 1 client, {BATCH_SIZE} a request)", "ops/s",
        batched))
    comparisons.append(harness.comparison(
        f"creates/s sqlite, CreateContainers x{BATCH_SIZE}, 1 client", sorted(batched)[0],
        ">= 1000", sorted(batched)[0] >= 1000))
    comparisons.append(harness.comparison(
        f"creates/s sqlite, {clients} clients, {existing} existing", median("create_per_s"),
        ">= 1000", median("create_per_s") >= 1000))
    comparisons.append(harness.comparison(
        f"ListContainers(host) p50 ms, {existing} existing", median("listlone_p50_ms"),
        "< 10 ms (at 16000)", median("listlone_p50_ms") < 10))

    def at(n: int, metric: str) -> float:
        got = samples[f"sqlite@{n}"]
        return sorted(s[metric] for s in got)[len(got) // 2]

    for n in sizes[1:]:
        value = at(n, "create_p50_ms") / at(0, "create_p50_ms")
        comparisons.append(harness.comparison(
            f"CreateContainer p50 sqlite @{n}/@0", value, "<= 1.25 (as fast as at 0)",
            value <= 1.25))
    value = at(existing, "report_p50_ms")
    comparisons.append(harness.comparison(
        f"ReportStatus p50 ms under {clients} creating clients, {existing} existing", value,
        "<= create p50 (not behind writes)", value <= at(existing, "create_p50_ms")))
    measurements.append(harness.Measurement(
        f"controller RSS with {MEMORY_CONTAINERS} containers, created", "MiB",
        [memory["rss_created_mib"]]))
    measurements.append(harness.Measurement(
        f"controller RSS with {MEMORY_CONTAINERS} containers, after listings", "MiB",
        [memory["rss_after_mib"]]))
    measurements.append(harness.Measurement(
        f"controller RSS growth for {MEMORY_CONTAINERS} containers", "MiB",
        [memory["rss_delta_mib"]]))
    comparisons.append(harness.comparison(
        f"controller RSS, {MEMORY_CONTAINERS} containers, after a full listing (MiB)",
        memory["rss_after_mib"], "< 150 MiB", memory["rss_after_mib"] < 150))
    if isinstance(agent_rss := agent.get("agent_rss_mib"), float):
        measurements.append(harness.Measurement(
            f"agent RSS with {agent_containers} containers", "MiB", [agent_rss]))
        comparisons.append(harness.comparison(
            f"agent RSS, {agent_containers} containers (MiB)", agent_rss,
            "< 150 MiB (at 1000)", agent_rss < 150))
    notes = [f"{clients} client processes x {per_client} CreateContainer each (@N: N containers "
             f"already there, N/{clients} in each client's lease), then GetContainer "
             f"of each and {LISTS_PER_CLIENT} ListContainers(host) each; report: ReportStatus "
             f"of {LONE} while they create; listlone: ListContainers(host={LONE}, "
             f"{LONE_CONTAINERS} containers) after",
             f"agent: {agent}"]
    harness.write_result("controller", {"measurements": measurements,
                                        "comparisons": comparisons, "notes": notes,
                                        "controller_memory": memory, "agent_memory": agent})
    harness.print_table(harness.load_results([os.path.join(harness.RESULTS_DIR,
                                                           "controller.json")]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
