"""Issue 21 at size: `sdnctl up` of N lab hosts x M containers on one overlay, from nothing,
through the real CLI, with a breakdown; then, in the same lab, issue 22's CreatePolicy to
enforced everywhere, a host joining and leaving, the agents' memory, and `down`.

Design note. The user's way: a topology file (``bench/overlay.py``'s ``topology_text``, N hosts,
M containers each, one overlay), ``sdnctl up FILE`` run as a process of its own (the installed
``sdnctl`` of this interpreter's environment) in a private environment (run and state dirs, a
lab prefix ``sx<pid>``), nothing running before it. ``up`` prints one line per step on stderr;
we timestamp each line as it arrives, and the breakdown is the time between steps:

- *file checked, controller*: with no controller answering (SQLite), the whole file checked
  against the controller's rules here, then a controller started; with ``--store etcd`` (two
  replicas we started, serving a three-member etcd) only the health check;
- *lab build*: the plan (three List calls), the file checked by the controller
  (``ValidateTopology``) when one answered, and the namespaces, underlay and veths of the N
  hosts (``lab: ...``);
- *agents connected*: the agents spawned and registered (``agents: N connected``);
- *controller writes*: the plan's reads, the network and the ``CreateContainers`` requests of
  N x M, 100 containers each (``desired state: ...``);
- *containers running*: until ``containers running: NM/NM``; *all synced*: until ``up``
  returns (every agent also reported the last revision realised).
- *agents' passes*: from each agent's log, its reconciliation passes during ``up`` (the sum of
  their ms per agent, and the longest single pass): CPU the agents spent, not wall time.

Then *reachable*: ``--pairs`` random pairs of containers on different hosts, each one
``ping -c 1`` from the source's namespace; every one must answer (else the run fails).
*CreatePolicy to enforced* is ``bench/policy.py``'s measure (``create_to_enforced``: until every
agent reported the policy's revision realised), on the overlay, the policy selecting the one
``app=db`` container per host. *Join/leave* is ``bench/overlay.py``'s (``join``, ``leave``:
host ``hn`` added by `up` of the extended file, until every other host holds its route,
neighbour and FDB entry; then removed, until none does). *RSS* is each agent's and each
controller's VmRSS after ``up``; *idle CPU* each agent's and controller's user and system time
over ``IDLE_WINDOW`` seconds after that and ``IDLE_QUIET`` seconds of quiet, asked nothing
(its full passes, flow readings, keepalives), in ms a second. Finally ``sdnctl down`` is
timed, and nothing of the prefix may be left (namespaces, mounts, processes): the run dies
non-zero if something is.

``--store etcd``: three etcd members and two controller replicas (``sdnctl-controller --store
etcd://...``) run in a network namespace of our own (``sx<pid>e``, loopback only; the
controllers listen on unix sockets in our run dir), ``SDNCTL_CONTROLLER`` lists both, and `up`
gives each agent the list rotated by its host's position so half of them watch each replica.
Everything we started is stopped by its PID, even on SIGTERM or Ctrl-C.

    .venv/bin/python bench/scale.py --quick                 # 10 hosts x 10, SQLite
    .venv/bin/python bench/scale.py --full                  # 100 hosts x 10 (make bench-scale)
    .venv/bin/python bench/scale.py --hosts 20 --per-host 5 --store etcd
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any, cast

import harness
import overlay
import policy
from _sdnlab import PASS_RE, BenchError

from agent import layout
from agent.kernel import cgroups
from agent.kernel.netns import create_netns, remove_netns
from sdnctl.api import wire
from sdnctl.api.client import Client
from sdnctl.lab import lab
from sdnctl.v1 import sdnctl_pb2 as pb
from sdnctl.v1 import sdnctl_pb2_grpc as pb_grpc

UP_GOAL = {"sqlite": 30.0, "etcd": 60.0}  # seconds, for 100 x 10 (issue 21)
IDLE_WINDOW = 15.0  # seconds of the idle agents' and controllers' CPU, measured after `up`
#: ... after this many seconds of quiet: right after `up` the controller still takes the last
#: reports and the agents make their first flow readings (the controller's CPU read 33 ms a
#: second there, 6-8 a few minutes later).
IDLE_QUIET = 30.0
ETCD = shutil.which("etcd") or "/usr/bin/etcd"
ETCD_MEMBERS = 3
REPLICAS = 2
CGROUPS = cgroups.ROOT
#: What every container runs: a shell that leaves on SIGTERM (``sleep infinity`` as PID 1
#: ignores it, so every delete would wait out the stop grace period: `down` would measure that).
COMMAND = """[sh, -c, "trap 'exit 0' TERM; sleep 3600 & wait"]"""
#: up's progress lines that end a phase, in order: (phase, start of the line).
PHASES = (("file checked, controller", ("controller started", "controller answering")),
          ("lab build", ("lab: ",)),
          ("hosts registered", ("hosts: ",)),
          ("agents connected", ("agents: ",)),
          ("controller writes", ("desired state",)))

#: down's: containers deleted and every agent caught up, agents stopped, what they left swept
#: and the lab's namespaces removed.
DOWN_PHASES = (("deletes, agents caught up", ("deleted ",)),
               ("agents stopped", ("agent for ",)),
               ("sweep, lab removed", ("lab namespaces removed",)))


def cli_path() -> str:
    path = os.path.join(os.path.dirname(sys.executable), "sdnctl")
    if not os.access(path, os.X_OK):
        raise BenchError(f"{path} missing (scripts/setup.sh installs the CLI)")
    return path


class Lines:
    """A process's output, each line with the monotonic time it arrived."""

    def __init__(self, stream: Any) -> None:
        self.lines: list[tuple[float, str]] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def join(self) -> None:
        self._thread.join(timeout=10)

    def first(self, *starts: str) -> float | None:
        for at, line in self.lines:
            text = line.lstrip("•✔ ").strip()
            if text.startswith(starts):
                return at
        return None

    def last(self, *starts: str) -> float | None:
        found = None
        for at, line in self.lines:
            if line.lstrip("•✔ ").strip().startswith(starts):
                found = at
        return found

    def tail(self, n: int = 30) -> str:
        return "\n".join(line for _, line in self.lines[-n:])


# -- etcd and two controller replicas, in a namespace of ours ---------------------------------


class Skip(Exception):
    """The rest of the measures cannot run (``up`` failed): what was measured is written."""


class EtcdReplicas:
    """Three etcd members and ``REPLICAS`` controllers in network namespace ``netns`` (lo only),
    the controllers on unix sockets in ``base``. Every process is ours and stopped by PID."""

    def __init__(self, netns_name: str, base: Path) -> None:
        self.netns = f"/run/netns/{netns_name}"
        self.base = base
        self.pids: list[tuple[int, int | None]] = []  # (pid, start time)

    @property
    def addresses(self) -> list[str]:
        return [f"unix:{self.base / f'c{i}.sock'}" for i in range(REPLICAS)]

    def controller_pids(self) -> list[int]:
        return [pid for pid, _ in self.pids[ETCD_MEMBERS:]]

    def _spawn(self, argv: list[str], log: str) -> None:
        pid = lab.spawn_in_netns(self.netns, argv, str(self.base / log))
        self.pids.append((pid, lab.process_start_time(pid)))

    def start(self) -> None:
        if not os.access(ETCD, os.X_OK):
            raise BenchError("the etcd binary is missing (apt-get install etcd-server)")
        self.base.mkdir(parents=True, exist_ok=True)
        create_netns(self.netns)
        cluster = ",".join(f"m{i}=http://127.0.0.1:{2380 + 10 * i}" for i in range(ETCD_MEMBERS))
        for i in range(ETCD_MEMBERS):
            url, peer = f"http://127.0.0.1:{2379 + 10 * i}", f"http://127.0.0.1:{2380 + 10 * i}"
            self._spawn([ETCD, "--name", f"m{i}", "--data-dir", str(self.base / f"m{i}"),
                         "--listen-client-urls", url, "--advertise-client-urls", url,
                         "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                         "--initial-cluster", cluster, "--initial-cluster-token", "sdnctl-bench",
                         "--initial-cluster-state", "new", "--heartbeat-interval", "50",
                         "--election-timeout", "500", "--max-txn-ops", "4096",
                         "--log-level", "warn"], f"m{i}.log")
        store = "etcd://" + ",".join(f"127.0.0.1:{2379 + 10 * i}"
                                     for i in range(ETCD_MEMBERS)) + "/sdnctl"
        for i, address in enumerate(self.addresses):
            self._spawn([sys.executable, "-m", "sdnctl.controller.server", "--listen", address,
                         "--store", store, "--default-bridge", "", "--blob-dir",
                         str(self.base / f"blobs{i}")], f"c{i}.log")
        for address in self.addresses:
            client = Client(address)
            try:
                deadline = time.monotonic() + 60
                while not client.healthy(timeout=1.0):
                    if time.monotonic() > deadline:
                        logs = {p.name: p.read_text()[-1500:] for p in self.base.glob("*.log")}
                        raise BenchError(f"controller {address} did not serve in 60 s: {logs}")
                    time.sleep(0.1)
            finally:
                client.close()

    def stop(self) -> None:
        for pid, start_time in reversed(self.pids):
            with contextlib.suppress(lab.LabError, ValueError):
                lab.stop_process(pid, grace=10, start_time=start_time)
        self.pids.clear()
        remove_netns(self.netns)


# -- the run ------------------------------------------------------------------------------------


class ScaleRun:
    def __init__(self, hosts: int, per_host: int, store: str, work: Path) -> None:
        self.hosts, self.per_host, self.store = hosts, per_host, store
        self.tag = f"sx{os.getpid() % 100000:05d}"
        self.prefix = self.tag + "l"  # the lab's namespaces: sx<pid>l<host>
        self.work = work
        self.run_dir = work / "run"
        self.base = work / "topology.yaml"
        self.extended = work / "topology-plus1.yaml"
        self.base.write_text(overlay.topology_text(hosts, False, per_host, COMMAND))
        self.extended.write_text(overlay.topology_text(hosts, True, per_host, COMMAND))
        self.env = dict(os.environ, SDNCTL_RUN_DIR=str(self.run_dir),
                        SDNCTL_STATE_DIR=str(self.run_dir / "state"),
                        SDNCTL_LAB_PREFIX=self.prefix)
        self.env.pop("SDNCTL_CONTROLLER", None)
        self.etcd: EtcdReplicas | None = None
        if store == "etcd":
            self.etcd = EtcdReplicas(self.tag + "e", work / "etcd")
            self.env["SDNCTL_CONTROLLER"] = ",".join(self.etcd.addresses)
        self.address = self.env.get("SDNCTL_CONTROLLER") or \
            f"unix:{self.run_dir / 'controller.sock'}"
        self.client: Client | None = None
        self.names = [f"h{i}" for i in range(hosts)]
        self.downed = False

    @property
    def api(self) -> pb_grpc.ControllerStub:
        if self.client is None:
            self.client = Client(self.address)
        return self.client.api

    def agent_log(self, host: str) -> str:
        return str(self.run_dir / "lab" / f"{self.prefix}{host}" / "agent.log")

    def cli(self, *args: str, timeout: float = 900,
            failed: list[Lines] | None = None) -> tuple[Lines, float]:
        """Run `sdnctl ARGS`; its stderr lines with their times, and its wall time (s). When
        it fails, its lines go to ``failed`` (if given) before BenchError."""
        t0 = time.monotonic()
        proc = subprocess.Popen([cli_path(), *args], env=self.env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        err, out = Lines(proc.stderr), Lines(proc.stdout)
        try:
            proc.wait(timeout=timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        wall = time.monotonic() - t0
        err.join()
        out.join()
        err.lines.insert(0, (t0, "(started)"))
        if proc.returncode != 0:
            if failed is not None:
                failed.append(err)
            raise BenchError(f"sdnctl {' '.join(args)} failed ({proc.returncode}):\n"
                             f"{out.tail(5)}\n{err.tail(30)}")
        return err, wall

    # -- up and its breakdown ------------------------------------------------------------------

    def up(self, got: dict[str, float]) -> None:
        """`up`'s phases into ``got`` (those it reached, when it fails)."""
        if self.etcd is not None:  # there before `up`, as a deployment's store would be
            t0 = time.monotonic()
            self.etcd.start()
            got["(before up) etcd and replicas started"] = time.monotonic() - t0
        failed: list[Lines] = []
        try:
            lines, wall = self.cli("up", str(self.base), "--timeout", "900", failed=failed)
        except BenchError:
            if failed:
                self._phases(failed[0], got)
                got["until up failed"] = failed[0].lines[-1][0] - failed[0].lines[0][0]
            raise
        last = self._phases(lines, got)
        t0 = lines.lines[0][0]
        total = self.hosts * self.per_host
        running = lines.first(f"containers running: {total}/{total}")
        got["containers running"] = (running or t0 + wall) - last
        got["all synced"] = t0 + wall - (running or t0 + wall)
        got["up total"] = wall

    @staticmethod
    def _phases(lines: Lines, got: dict[str, float]) -> float:
        """The phases of PHASES that ``lines`` reached into ``got``; when the last ended."""
        last = lines.lines[0][0]
        for phase, starts in PHASES:
            at = lines.first(*starts)
            if at is None:
                break
            got[phase] = at - last
            last = at
        return last

    def pass_costs(self) -> tuple[list[float], list[float]]:
        """Per agent: the ms of all its passes so far, and its longest pass."""
        sums, longest = [], []
        for host in self.names:
            with open(self.agent_log(host)) as f:
                passes = [float(m[2]) for line in f if (m := PASS_RE.search(line))]
            sums.append(sum(passes))
            longest.append(max(passes, default=0.0))
        return sums, longest

    def containers(self) -> list[pb.Container]:
        return list(self.api.ListContainers(pb.ListRequest(), timeout=30).containers)

    def reachable(self, pairs: int, seed: int) -> tuple[float, int]:
        """Ping ``pairs`` random cross-host pairs at once; (seconds, pairs); any failure raises."""
        ctrs = [c for c in self.containers() if c.status.netns and c.ip]
        rng = random.Random(seed)
        chosen: list[tuple[pb.Container, pb.Container]] = []
        while len(chosen) < pairs:
            a, b = rng.sample(ctrs, 2)
            if a.host != b.host:
                chosen.append((a, b))

        def ping(pair: tuple[pb.Container, pb.Container]) -> str:
            a, b = pair
            done = subprocess.run(["nsenter", f"--net={a.status.netns}", "ping", "-n", "-c",
                                   "1", "-W", "2", b.ip], capture_output=True, text=True)
            return "" if done.returncode == 0 else f"{a.name}@{a.host} -> {b.name}@{b.host} " \
                f"({b.ip}): {done.stdout.strip().splitlines()[-1:]}"

        t0 = time.monotonic()
        with futures.ThreadPoolExecutor(pairs) as pool:
            failed = [f for f in pool.map(ping, chosen) if f]
        took = time.monotonic() - t0
        if failed:
            raise BenchError(f"{len(failed)} of {pairs} pairs unreachable: {failed[:5]}")
        return took, pairs

    def policy_to_enforced(self, rounds: int) -> list[float]:
        return [policy.create_to_enforced(self.api, self.names, overlay.NET, i, self.agent_log)
                for i in range(rounds)]

    def join_leave(self, rounds: int) -> dict[str, list[float]]:
        the_lab = overlay.Lab(self.env, self.run_dir, self.prefix,
                              cast(pb_grpc.ControllerStub, self.api))
        sources = [self.api.GetContainer(pb.GetRequest(name=f"c{i}"), timeout=10).status.netns
                   for i in range(self.hosts)]
        got: dict[str, list[float]] = {}
        with overlay.Prober([f"{self.prefix}h{i}" for i in range(self.hosts)]) as prober:
            for _ in range(rounds):
                joined = overlay.join(the_lab, self.extended, sources, prober)
                left = overlay.leave(the_lab, prober)
                overlay.record(got, joined, left)
                print(f"  join {joined.entries * 1000:.0f} ms (from the lease "
                      f"{joined.fanout * 1000:.0f} ms, reachable {joined.reached * 1000:.0f} "
                      f"ms), leave {left * 1000:.0f} ms; hosts asked, not heard: "
                      f"{prober.missed}", file=sys.stderr)
        return got

    def lab_agents(self) -> dict[str, dict[str, Any]]:
        state = self.run_dir / "lab" / "bench-overlay.json"
        agents: dict[str, dict[str, Any]] = json.loads(state.read_text())["agents"]
        return agents

    def spread(self) -> dict[str, int]:
        """How many agents watch each controller (the first address each was given)."""
        first = [a["connection"]["controller"].split(",")[0]
                 for a in self.lab_agents().values()]
        return {address: first.count(address) for address in sorted(set(first))}

    def rss(self) -> tuple[list[float], list[float], list[float]]:
        """VmRSS (MB) of every agent, their PSS (shared pages divided among the sharers: what
        the agents take together is the sum), and the controllers' VmRSS."""
        agents = [a["pid"] for a in self.lab_agents().values()]
        controllers = self.etcd.controller_pids() if self.etcd is not None else \
            [int((self.run_dir / "controller.pid").read_text().split()[0])]
        return [memory(p, "/proc/{}/status", "VmRSS:") for p in agents], \
            [memory(p, "/proc/{}/smaps_rollup", "Pss:") for p in agents], \
            [memory(p, "/proc/{}/status", "VmRSS:") for p in controllers]

    def idle_cpu(self, seconds: float) -> tuple[list[float], list[float]]:
        """CPU (ms a second) of every agent and of the controllers over ``seconds`` in which
        nothing is asked of them (the full passes, flow readings and keepalives they do on
        their own; each process's user and system time), after IDLE_QUIET seconds of quiet."""
        agents = [a["pid"] for a in self.lab_agents().values()]
        controllers = self.etcd.controller_pids() if self.etcd is not None else \
            [int((self.run_dir / "controller.pid").read_text().split()[0])]
        time.sleep(IDLE_QUIET)
        before = [cpu_seconds(p) for p in (*agents, *controllers)]
        time.sleep(seconds)
        used = [(cpu_seconds(p) - b) * 1000 / seconds
                for p, b in zip((*agents, *controllers), before, strict=True)]
        return used[:len(agents)], used[len(agents):]

    def down(self) -> dict[str, float]:
        """`sdnctl down`'s wall time and its phases, from its progress lines."""
        if self.client is not None:
            self.client.close()
            self.client = None
        lines, wall = self.cli("down", str(self.extended))
        self.downed = True
        t0 = lines.lines[0][0]
        got, last = {}, t0
        for phase, starts in DOWN_PHASES:
            at = lines.last(*starts)
            if at is not None:
                got[phase] = at - last
                last = at
        got["down total"] = wall
        return got

    def close(self) -> list[str]:
        """Undo everything, whatever happened; what is left behind."""
        if self.client is not None:
            self.client.close()
            self.client = None
        if not self.downed:  # (at 100 x 10 under load, `down` takes minutes)
            with contextlib.suppress(BenchError, subprocess.SubprocessError, OSError):
                self.cli("down", str(self.extended), timeout=1800)
        # What a `down` that failed or was cut short left: agents (by PID), then what they
        # made, swept as `down` sweeps (containers by pidfile, pinned namespaces, cgroups).
        with contextlib.suppress(OSError, ValueError, KeyError):
            for agent in self.lab_agents().values():
                with contextlib.suppress(lab.LabError, ValueError):
                    lab.stop_process(agent["pid"], start_time=agent.get("start_time"))
        for pid in strays(self.work):  # an agent `up` spawned but was killed before recording
            with contextlib.suppress(lab.LabError, ValueError):
                lab.stop_process(pid)
        for run_dir in glob.glob(str(self.run_dir / "lab" / f"{self.prefix}*")):
            with contextlib.suppress(Exception):
                layout.sweep(run_dir)
        for pid in in_cgroups(self.prefix):  # a container whose pidfile was never written
            with contextlib.suppress(lab.LabError, ValueError):
                lab.stop_process(pid, grace=0.5)
        for name in {os.path.basename(p) for p in glob.glob(f"{CGROUPS}/*/sdnctl/"
                                                            f"{self.prefix}*")}:
            with contextlib.suppress(Exception):
                cgroups.remove_tree(f"sdnctl/{name}")
        overlay.stop_started_controller(self.run_dir)
        if self.etcd is not None:
            self.etcd.stop()
        with contextlib.suppress(Exception):
            lab.Lab(self.prefix).teardown()
        left = overlay.leftovers(self.tag, self.run_dir)
        left += [f"pid {pid}" for pid in strays(self.work) + in_cgroups(self.prefix)]
        left += glob.glob(f"{CGROUPS}/*/sdnctl/{self.prefix}*")
        shutil.rmtree(self.work, ignore_errors=True)
        return left


def in_cgroups(prefix: str) -> list[int]:
    """Processes in the cgroups of our agents' containers (``sdnctl/<prefix><host>-...``)."""
    marker = f"/sdnctl/{prefix}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{entry}/cgroup", "rb") as f:
                if marker in f.read():
                    found.append(int(entry))
    return found


def strays(work: Path) -> list[int]:
    """Processes (not us) whose command line names our work directory: our agents, our
    controllers, the containers' helpers."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        with contextlib.suppress(OSError), open(f"/proc/{entry}/cmdline", "rb") as f:
            if str(work).encode() in f.read():
                found.append(int(entry))
    return found


def mount_copy_cost(rounds: int = 10) -> tuple[int, list[float]]:
    """(mounts in our mount namespace, CPU ms of each ``unshare --mount`` copying it): every
    container adds its namespaces' pins to the host's table, and a copy of it is taken under
    the kernel's one namespace lock. (Container starts no longer copy it: the runtime runs in
    the agent's own copy taken without the pins, ``agent/kernel/mountns.py``.)"""
    with open("/proc/self/mounts") as f:
        mounts = sum(1 for _ in f)
    samples = []
    for _ in range(rounds):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run(["unshare", "--mount", "--propagation", "private", "true"], check=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        samples.append((after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
                       * 1000)
    return mounts, samples


def memory(pid: int, path: str, field: str) -> float:
    """MB of ``field`` (a kB line) in ``path`` of ``pid``."""
    with open(path.format(pid)) as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds of ``pid`` so far (its ended threads included)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """SIGTERM and SIGHUP end the run through its ``finally`` (as Ctrl-C does)."""
    def leave(*_: object) -> None:
        raise KeyboardInterrupt

    old = {s: signal.signal(s, leave) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--hosts", type=int, default=0, metavar="N",
                        help="lab hosts (default 10 with --quick, 100 with --full)")
    parser.add_argument("--per-host", type=int, default=10, metavar="M")
    parser.add_argument("--store", choices=("sqlite", "etcd"), default="sqlite")
    parser.add_argument("--pairs", type=int, default=20, help="cross-host pings")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of CreatePolicy to enforced and of join/leave")
    ours, rest = parser.parse_known_args(argv)
    args = harness.bench_args(__doc__.split("\n\n")[0], rest)
    hosts = ours.hosts or (100 if args.full else 10)
    per_host, store = ours.per_host, ours.store
    harness.settle()
    size = f"{hosts}x{per_host}, {store}"
    work = Path(tempfile.mkdtemp(prefix="sdnctl-bench-sx-"))
    run = ScaleRun(hosts, per_host, store, work)
    m: list[harness.Measurement] = []
    comps: list[dict[str, Any]] = []
    notes: list[str] = []
    left: list[str] = []
    failure, return_code = "", 0
    print(f"bench/scale.py: {size}, prefix {run.tag}, in {work}", file=sys.stderr)
    with interruptible():
        try:
            mounts_before, copy_before = mount_copy_cost()
            phases: dict[str, float] = {}
            try:
                run.up(phases)
            except BenchError as e:  # what it reached is recorded, then the run fails
                failure = str(e)
                print(f"bench/scale.py: {failure[-3000:]}", file=sys.stderr)
            mounts_after, copy_after = mount_copy_cost()
            m += [harness.Measurement(f"unshare --mount, CPU, {mounts_before} mounts (before "
                                      "up)", "ms", copy_before),
                  harness.Measurement(f"unshare --mount, CPU, {mounts_after} mounts (after "
                                      f"up {size})", "ms", copy_after)]
            for phase, seconds in phases.items():
                m.append(harness.Measurement(f"up {size}: {phase}", "s", [seconds]))
                print(f"  up {size}: {phase} {seconds:.2f} s", file=sys.stderr)
            goal = UP_GOAL[store]
            total = phases.get("up total", phases.get("until up failed", 0.0))
            comps.append(harness.comparison(
                f"up {size}, from nothing (s)", total, f"< {goal:.0f} s at 100x10",
                False if failure else total < goal
                if hosts >= 100 and per_host >= 10 else None))
            if store == "etcd" and "agents connected" in phases:
                notes.append(f"agents per controller replica: {run.spread()}")
            if "agents connected" in phases:
                sums, longest = run.pass_costs()
                m += [harness.Measurement(f"up {size}: agent passes, ms per agent", "ms",
                                          sums),
                      harness.Measurement(f"up {size}: agent's longest pass", "ms", longest)]
            if failure:
                notes.append("`up` FAILED: " + failure.strip().splitlines()[-1][:400])
                return_code = 1
                raise Skip
            took, pairs = run.reachable(ours.pairs, seed=hosts)
            m.append(harness.Measurement(f"{size}: {pairs} cross-host pings, all answered",
                                         "s", [took]))
            agents_mb, agents_pss, controllers_mb = run.rss()
            m += [harness.Measurement(f"{size}: agent RSS ({per_host} containers)", "MB",
                                      agents_mb),
                  harness.Measurement(f"{size}: agent PSS ({per_host} containers)", "MB",
                                      agents_pss),
                  harness.Measurement(f"{size}: controller RSS", "MB", controllers_mb)]
            median_rss = harness.summary(agents_mb)[0]
            comps.append(harness.comparison(f"agent RSS, {per_host} containers (MB)",
                                            median_rss, "< 40", median_rss < 40))
            median_pss = harness.summary(agents_pss)[0]
            comps.append(harness.comparison(f"agent PSS, {per_host} containers (MB)",
                                            median_pss, "< 40", median_pss < 40))
            agents_idle, controllers_idle = run.idle_cpu(IDLE_WINDOW)
            m += [harness.Measurement(f"{size}: idle agent CPU", "ms/s", agents_idle),
                  harness.Measurement(f"{size}: idle controller CPU", "ms/s",
                                      controllers_idle)]
            enforced = run.policy_to_enforced(ours.rounds * 2)
            m.append(harness.Measurement(f"{size}: CreatePolicy to enforced on all hosts",
                                         "ms", enforced))
            med = harness.summary(enforced)[0]
            comps.append(harness.comparison(f"CreatePolicy to enforced, {size} (ms)", med,
                                            "<= 1000 at 100 hosts",
                                            med <= 1000 if hosts >= 100 else None))
            moved = run.join_leave(ours.rounds)
            m += overlay.join_measurements(moved, size)
            for kind in ("join", "leave"):
                med = harness.summary(moved[kind])[0]
                comps.append(harness.comparison(f"host {kind} converged, {size} (s)", med,
                                                "< 1 at 100 hosts",
                                                med < 1 if hosts >= 100 else None))
            for phase, seconds in run.down().items():
                m.append(harness.Measurement(f"down {size}: {phase}", "s", [seconds]))
                print(f"  down {size}: {phase} {seconds:.2f} s", file=sys.stderr)
        except Skip:
            pass
        except (BenchError, TimeoutError, RuntimeError, wire.RpcError, OSError,
                subprocess.SubprocessError) as e:  # what was measured before is written
            notes.append(f"FAILED after up: {str(e).strip()[-600:]}")
            print(f"bench/scale.py: {e}", file=sys.stderr)
            return_code = 1
        finally:
            left = run.close()
    if left:
        notes.append(f"LEFT BEHIND: {left}")
        return_code = 1
    controller = "two controller replicas on a three-member etcd, agents spread over both" \
        if store == "etcd" else "the SQLite controller `up` starts"
    notes.append(f"{hosts} lab hosts x {per_host} containers on one overlay, `sdnctl up` "
                 "through the CLI from nothing; phases from the times of up's progress lines; "
                 f"{controller}; agent passes: the ms of each agent's passes logged during "
                 "`up`; CreatePolicy and join/leave as bench/policy.py and bench/overlay.py "
                 "measure them")
    name = f"scale-{store}-{hosts}x{per_host}"
    harness.write_result(name, {
        "mode": "full" if hosts >= 100 else "quick",
        "params": {"hosts": hosts, "per_host": per_host, "store": store, "pairs": ours.pairs,
                   "rounds": ours.rounds},
        "measurements": m, "comparisons": comps, "notes": notes})
    harness.print_table(harness.load_results([os.path.join(harness.RESULTS_DIR,
                                                           f"{name}.json")]))
    return return_code


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (BenchError, OSError, subprocess.SubprocessError, TimeoutError, RuntimeError) as e:
        print(f"bench/scale.py: error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("bench/scale.py: interrupted (everything it made was removed)", file=sys.stderr)
        sys.exit(130)
