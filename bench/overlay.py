"""Benchmark item 3: overlay convergence when a host joins and when it leaves.

Design note. N lab hosts, one container each on one overlay network, are brought up once with
the real CLI in a private environment (its own run and state dirs, a unique lab prefix). Each
round then:

- join: `sdnctl up` of the file extended by one host ``hn`` (with container ``cn``) runs in the
  background; we watch the controller's API for hn's fresh agent to register (t0), then for
  cn's address, and every other host's container pings cn (one `ping -i 0.02` each, in
  parallel). Join time = the last first reply - t0. It includes what `up` does after the agent
  registered (creating cn, the agent starting it), as a user would see it.
- leave: cn is deleted and hn's agent stopped (as a host that goes away), then at t0 the host
  is deleted through the API; we poll every other host's VXLAN device (routes, neighbours, FDB;
  raw netlink dumps) until none names hn's subnet, VTEP MAC or underlay address. Leave time =
  the last of those - t0.

The controller is the one `up` starts (or, with --controller-workers N, one of ours with N gRPC
threads: each agent's Watch holds one of the stock 32 for good). Everything is brought `down`
at the end and we check no namespace of our prefix and no mount of our run dir is left.

    .venv/bin/python bench/overlay.py --quick   # N = 10, 3 rounds
    .venv/bin/python bench/overlay.py --full    # N = 50 and 100, 3 rounds each
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import harness
from pyroute2 import IPRoute

from agent.kernel.names import vxlan_name
from agent.kernel.netns import iproute_in
from sdnctl import lab
from sdnctl.v1 import sdnctl_pb2 as pb
from sdnctl.v1 import sdnctl_pb2_grpc as pb_grpc

NET = "ov"
NEW_HOST, NEW_CTR = "hn", "cn"
PING_TIMEOUT = "0.2"
DEADLINE = 60.0  # give up on one round after this many seconds
STEP = 10  # lab hosts added per `up` while building the base topology


def topology_text(hosts: int, with_new: bool) -> str:
    names = [f"h{i}" for i in range(hosts)] + ([NEW_HOST] if with_new else [])
    lines = ["name: bench-overlay", "hosts:"]
    lines += [f"  - {{name: {h}, lab: true}}" for h in names]
    lines += ["networks:", f"  - {{name: {NET}, driver: overlay, subnet: 10.70.0.0/16}}",
              "containers:"]
    lines += [f"  - {{name: c{h[1:]}, host: {h}, network: {NET}}}" for h in names]
    return "\n".join(lines) + "\n"


@dataclass
class Lab:
    env: dict[str, str]
    run_dir: Path
    prefix: str
    api: pb_grpc.ControllerStub

    def cli(self, *args: str, timeout: float = 900) -> None:
        done = subprocess.run([sys.executable, "-m", "sdnctl.cli", *args], env=self.env,
                              capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"sdnctl {' '.join(args)} failed ({done.returncode}):\n"
                               f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}")

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "sdnctl.cli", *args], env=self.env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


SERVE = """
import signal, sys, threading
from sdnctl.controller.server import DEFAULT_BRIDGE_SUBNET, create_server
from sdnctl.controller.store.sqlite import SqliteStore
store = SqliteStore(sys.argv[2])
running = create_server(sys.argv[1], store, max_workers=int(sys.argv[3]),
                        default_bridge=DEFAULT_BRIDGE_SUBNET)
done = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: done.set())
done.wait()
running.stop()
store.close()
"""


@contextlib.contextmanager
def own_controller(run_dir: Path, workers: int) -> Iterator[None]:
    """A controller with ``workers`` gRPC threads where `up` will look for one (0: let `up`
    start the stock one)."""
    if not workers:
        yield
        return
    address = f"unix:{run_dir / 'controller.sock'}"
    (run_dir / "state").mkdir(exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", SERVE, address,
                             str(run_dir / "state" / "controller.db"), str(workers)])
    try:
        with grpc.insecure_channel(address) as channel:
            grpc.channel_ready_future(channel).result(timeout=15)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def private_lab(files: list[Path], workers: int) -> Iterator[Lab]:
    """A CLI environment of our own; on exit `down` of the largest file, then a leak check."""
    prefix = harness.unique_prefix("ov")
    run_dir = Path(tempfile.mkdtemp(prefix=f"sdnctl-{prefix}-"))
    env = dict(os.environ, SDNCTL_RUN_DIR=str(run_dir), SDNCTL_STATE_DIR=str(run_dir / "state"),
               SDNCTL_LAB_PREFIX=prefix)
    env.pop("SDNCTL_CONTROLLER", None)
    channel = grpc.insecure_channel(f"unix:{run_dir / 'controller.sock'}")
    the_lab = Lab(env, run_dir, prefix, pb_grpc.ControllerStub(channel))
    try:
        with own_controller(run_dir, workers):
            try:
                yield the_lab
            finally:
                with contextlib.suppress(Exception):
                    the_lab.cli("down", str(files[-1]))
    finally:
        channel.close()
        with contextlib.suppress(Exception):
            the_lab.cli("down", str(files[-1]))  # the stock controller, if `up` started one
        stop_started_controller(run_dir)  # `down` keeps it when something was left in it
        leaks = leftovers(prefix, run_dir)
        shutil.rmtree(run_dir, ignore_errors=True)
        if leaks:
            print(f"LEFT BEHIND: {leaks}", file=sys.stderr)


def stop_started_controller(run_dir: Path) -> None:
    """End the controller `up` started in ``run_dir`` (by the PID in its pidfile), if it runs."""
    try:
        pid = int((run_dir / "controller.pid").read_text().split()[0])
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if str(run_dir).encode() not in f.read():
                return  # not ours: the PID was reused
    except (OSError, ValueError, IndexError):
        return
    os.kill(pid, signal.SIGTERM)
    for _ in range(100):
        if not os.path.exists(f"/proc/{pid}"):
            return
        time.sleep(0.05)


def leftovers(prefix: str, run_dir: Path) -> list[str]:
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    left = [line.split()[0] for line in names.splitlines() if line.startswith(prefix)]
    with open("/proc/self/mounts") as f:
        left += [line.split()[1] for line in f if str(run_dir) in line]
    return left


def wait_for(predicate: object, what: str, timeout: float = DEADLINE) -> float:
    """Poll ``predicate()`` until true; the monotonic time it first was."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return time.monotonic()
        time.sleep(0.005)
    raise TimeoutError(f"timed out waiting for {what}")


def first_reply(netns: str, address: str, stop: float) -> float:
    """One long-lived ping from ``netns`` (every 20 ms, no respawning: at N = 100 a process per
    probe would load the machine we measure); the monotonic time of its first reply."""
    ping = subprocess.Popen(["nsenter", f"--net={netns}", "ping", "-n", "-i", "0.02", "-W",
                             PING_TIMEOUT, "-w", str(int(stop - time.monotonic()) + 1), address],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert ping.stdout is not None
        for line in ping.stdout:
            if " bytes from " in line:
                return time.monotonic()
    finally:
        ping.kill()
        ping.wait()
    raise TimeoutError(f"{address} never answered from {netns}")


def agent_of(the_lab: Lab, host: str) -> dict[str, int]:
    state_file = the_lab.run_dir / "lab" / "bench-overlay.json"
    agents: dict[str, dict[str, int]] = json.loads(state_file.read_text())["agents"]
    return agents[host]


def join(the_lab: Lab, extended: Path, sources: list[str]) -> tuple[float, float]:
    """Seconds from hn's agent registering until every source reaches cn, and `up`'s total."""
    started = time.monotonic()
    up = the_lab.popen("up", str(extended), "--timeout", "120")
    try:
        def registered() -> bool:
            try:
                host = the_lab.api.GetHost(pb.GetRequest(name=NEW_HOST), timeout=5)
            except grpc.RpcError:
                return False
            return host.agent_connected and host.agent_pid > 0

        t0 = wait_for(registered, f"{NEW_HOST}'s agent to register")
        address = ""

        def has_address() -> bool:
            nonlocal address
            try:
                address = the_lab.api.GetContainer(pb.GetRequest(name=NEW_CTR), timeout=5).ip
            except grpc.RpcError:
                return False
            return bool(address)

        wait_for(has_address, f"{NEW_CTR}'s address")
        stop = t0 + DEADLINE
        with futures.ThreadPoolExecutor(len(sources)) as pool:
            reached = list(pool.map(lambda ns: first_reply(ns, address, stop), sources))
        out, _ = up.communicate(timeout=DEADLINE)
        if up.returncode != 0:
            raise RuntimeError(f"up of {extended} failed:\n{out}")
        return max(reached) - t0, time.monotonic() - started
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()


def holds(ipr: IPRoute, ifindex: int, marks: set[str]) -> bool:
    """Whether the VXLAN device ``ifindex`` has a route, neighbour or FDB entry naming a mark
    (raw netlink dumps: no process per poll)."""
    messages = [*ipr.route("dump"), *ipr.neigh("dump"),
                *ipr.neigh("dump", family=socket.AF_BRIDGE)]
    for m in messages:
        if m.get("RTA_OIF", m.get("ifindex")) != ifindex and m.get("NDA_IFINDEX") != ifindex:
            continue
        values = {m.get("RTA_DST"), m.get("NDA_DST"), m.get("NDA_LLADDR")}
        if values & marks:
            return True
    return False


def leave(the_lab: Lab, others: list[str]) -> float:
    """Seconds from hn's deletion until no other host holds an entry for it."""
    host = the_lab.api.GetHost(pb.GetRequest(name=NEW_HOST), timeout=10)
    marks = {host.underlay_ip, host.vtep_mac}
    marks |= {lease.subnet.split("/")[0] for lease in host.leases if lease.network == NET}
    reply = the_lab.api.DeleteContainer(pb.DeleteRequest(name=NEW_CTR), timeout=10)
    wait_for(lambda: the_lab.api.GetHost(pb.GetRequest(name=NEW_HOST), timeout=5)
             .observed_revision >= reply.revision, f"{NEW_HOST} to remove {NEW_CTR}")
    agent = agent_of(the_lab, NEW_HOST)
    lab.stop_process(agent["pid"], start_time=agent.get("start_time"))
    ready = threading.Barrier(len(others) + 1)
    started: list[float] = []

    def watch(ns: str) -> float:
        with iproute_in(f"/run/netns/{ns}") as ipr:
            ifindex = ipr.link_lookup(ifname=vxlan_name(NET))[0]
            programmed = holds(ipr, ifindex, marks)
            ready.wait()
            if not programmed:
                raise RuntimeError(f"{ns} held no entry for {NEW_HOST} before it left")
            return wait_for(lambda: not holds(ipr, ifindex, marks), f"{ns} to forget it")

    with futures.ThreadPoolExecutor(len(others)) as pool:
        jobs = [pool.submit(watch, ns) for ns in others]
        ready.wait()
        started.append(time.monotonic())
        the_lab.api.DeleteHost(pb.DeleteRequest(name=NEW_HOST), timeout=10)
        gone = [job.result() for job in jobs]
    return max(gone) - started[0]


def run_size(hosts: int, rounds: int, tmp: Path, workers: int) -> dict[str, list[float]]:
    base, extended = tmp / f"overlay-{hosts}.yaml", tmp / f"overlay-{hosts}-plus1.yaml"
    base.write_text(topology_text(hosts, with_new=False))
    extended.write_text(topology_text(hosts, with_new=True))
    got: dict[str, list[float]] = {"join": [], "leave": [], "up": []}
    with private_lab([base, extended], workers) as the_lab:
        started = time.monotonic()
        # In steps of STEP hosts: one `up` of 50 new lab hosts at once timed out on this
        # 2-CPU machine (50 agents registering at once; GetHost hit its 10 s deadline).
        for size in range(STEP, hosts, STEP):
            step = tmp / f"overlay-{size}.yaml"
            step.write_text(topology_text(size, with_new=False))
            the_lab.cli("up", str(step), "--timeout", "600")
        the_lab.cli("up", str(base), "--timeout", "600")
        print(f"  N={hosts}: base topology up in {time.monotonic() - started:.1f}s",
              file=sys.stderr)
        sources = [the_lab.api.GetContainer(pb.GetRequest(name=f"c{i}"), timeout=10).status.netns
                   for i in range(hosts)]
        others = [f"{the_lab.prefix}h{i}" for i in range(hosts)]
        for i in range(rounds):
            joined, up_total = join(the_lab, extended, sources)
            left = leave(the_lab, others)
            got["join"].append(joined)
            got["up"].append(up_total)
            got["leave"].append(left)
            print(f"  N={hosts} round {i + 1}: join {joined * 1000:.0f} ms, leave "
                  f"{left * 1000:.0f} ms (`up` of the extra host {up_total:.1f}s)",
                  file=sys.stderr)
    return got


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--controller-workers", type=int, default=0, metavar="N",
                        help="run our own controller with N gRPC worker threads (default: the "
                        "stock controller `up` starts, 32 workers)")
    ours, rest = parser.parse_known_args(argv)
    args = harness.bench_args(__doc__.split("\n\n")[0], rest)
    sizes = [30, 50, 100] if args.full else [10]
    rounds = 3
    tmp = Path(tempfile.mkdtemp(prefix="sdnctl-bench-ov-"))
    measurements, comparisons, notes = [], [], []
    try:
        for hosts in sizes:
            try:
                got = run_size(hosts, rounds, tmp, ours.controller_workers)
            except (RuntimeError, TimeoutError) as e:
                last = str(e).strip().splitlines()[-1]
                notes.append(f"N={hosts}: failed ({last})")
                print(f"  N={hosts}: failed: {last}", file=sys.stderr)
                continue
            measurements += [
                harness.Measurement(f"join: registered -> reachable from all (N={hosts})", "ms",
                                    [t * 1000 for t in got["join"]]),
                harness.Measurement(f"leave: deleted -> entries gone everywhere (N={hosts})",
                                    "ms", [t * 1000 for t in got["leave"]]),
                harness.Measurement(f"`up` of one extra host, end to end (N={hosts})", "s",
                                    got["up"])]
            for kind in ("join", "leave"):
                median = harness.summary(got[kind])[0]
                comparisons.append(harness.comparison(
                    f"overlay {kind} at N={hosts} (s)", median, "< 1 s at N=100",
                    median < 1.0 if hosts >= 100 else None))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    notes.append("join includes what `up` does after the new agent registers (creating the "
                 "container, the agent starting it); probes: one `ping -i 0.02` from each "
                 "other host's container, in parallel")
    harness.write_result("overlay", {"measurements": measurements, "comparisons": comparisons,
                                     "notes": notes})
    harness.print_table(harness.load_results([os.path.join(harness.RESULTS_DIR,
                                                           "overlay.json")]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
