"""Issue 10.3: an agent restarted again and again (SIGTERM and SIGKILL, alternately) while a TCP
connection streams between two of its containers: no connection reset, not one byte lost, the
kernel state (raw netlink dumps of the host and both containers, the nftables ruleset)
identical before and after, and every new agent's first pass empty (it adopts, never rebuilds).
Prints how soon each agent was ready.

``SDNCTL_RESTARTS`` sets the number of restarts (default 4; `make soak` runs 20).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from helpers.cli import Cli, kernel_state, lab_cli
from helpers.hoststate import (
    agent_log,
    api,
    netlink_state,
    nft_stateless,
    stop_agent,
    wait_for,
)

from sdnctl.v1 import sdnctl_pb2 as pb

pytestmark = pytest.mark.netns

RESTARTS = int(os.environ.get("SDNCTL_RESTARTS") or 4)
PORT = 5001

TOPOLOGY = """\
name: restart
hosts:
  - {name: h1, lab: true}
networks:
  - {name: front, subnet: 10.75.0.0/24}
containers:
  - {name: srv, host: h1, network: front, command: [sleep, "3600"]}
  - {name: cli, host: h1, network: front, command: [sleep, "3600"]}
"""

#: An echo server (one connection at a time) and a client that streams through it until
#: the stop file appears, checking every byte; any error ends it with "ERROR ...".
SERVER = f"""
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", {PORT})); s.listen(1); print("listening", flush=True)
conn, _ = s.accept()
while data := conn.recv(65536):
    conn.sendall(data)
"""
CLIENT = """
import os, socket, sys, time
address, port, stop = sys.argv[1], int(sys.argv[2]), sys.argv[3]
try:
    c = socket.create_connection((address, port), timeout=10)
    total = 0
    while not os.path.exists(stop):
        block = os.urandom(4096)
        c.sendall(block)
        got = b""
        while len(got) < len(block):
            chunk = c.recv(len(block) - len(got))
            if not chunk:
                raise ConnectionError("closed by the peer")
            got += chunk
        if got != block:
            raise ValueError("corrupted")
        total += len(block)
        time.sleep(0.0005)  # steady traffic, without taking a whole core of a shared machine
    print("OK", total, flush=True)
except Exception as e:
    print("ERROR", type(e).__name__, e, flush=True)
    sys.exit(1)
"""


@pytest.fixture
def cli(tmp_path: Path, run_prefix: str) -> Iterator[Cli]:
    path = tmp_path / "restart.yaml"
    path.write_text(TOPOLOGY)
    with lab_cli(run_prefix) as c:
        c.run("up", str(path))
        yield c


def snapshot(netns: list[str]) -> dict[str, Any]:
    state: dict[str, Any] = {ns: kernel_state(ns) for ns in netns}
    state["host"] = netlink_state(netns[0])
    state["nft"] = nft_stateless(netns[0])
    return state


def test_restarting_the_agent_disturbs_nothing(cli: Cli, run_prefix: str,
                                               tmp_path: Path) -> None:
    host = cli.host("h1")["netns"]
    srv, client = cli.container("srv"), cli.container("cli")
    stop = tmp_path / "stop"
    server = subprocess.Popen(["nsenter", f"--net={srv['netns']}", sys.executable, "-c",
                               SERVER], stdout=subprocess.PIPE, text=True)
    streamer = None
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "listening"
        streamer = subprocess.Popen(["nsenter", f"--net={client['netns']}", sys.executable,
                                     "-c", CLIENT, srv["ip"], str(PORT), str(stop)],
                                    stdout=subprocess.PIPE, text=True)
        # IPv6 duplicate address detection adds link-local routes a second or two after links
        # come up: the kernel's doing, not the agent's. Take the baseline once it has settled.
        before = settled(lambda: snapshot([host, srv["netns"], client["netns"]]))
        ready_ms, actions = [], []
        for i in range(RESTARTS):
            sig = signal.SIGTERM if i % 2 == 0 else signal.SIGKILL
            seen = len(_ready_lines(cli, run_prefix))
            stop_agent(cli, sig=sig)
            cli.run("up", cli.files["restart"])
            line = wait_for(lambda s=seen: _ready_line(cli, run_prefix, s), 20,
                            "the new agent's first pass; its log:\n"
                            + agent_log(cli, run_prefix)[-3000:])
            ready_ms.append(float(line[0]))
            actions.append(int(line[1]))
            assert streamer.poll() is None, streamer.communicate()[0]
        stop.touch()
        out, _ = streamer.communicate(timeout=20)
        assert streamer.returncode == 0 and out.startswith("OK"), out
        streamed = int(out.split()[1])
        assert streamed > 0
        after = snapshot([host, srv["netns"], client["netns"]])
        assert after == before, diff(before, after)
        assert actions == [0] * RESTARTS, actions  # every new agent adopted, changed nothing
    finally:
        for proc in (streamer, server):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    print(f"\nagent restarts: {RESTARTS} (SIGTERM and SIGKILL alternately), 0 resets, "
          f"{streamed / 1e6:.1f} MB echoed; ready after start: median "
          f"{statistics.median(ready_ms):.0f} ms, max {max(ready_ms):.0f} ms "
          f"(2 containers); first-pass actions: {sum(actions)}")


def settled(read: Callable[[], dict[str, Any]], quiet: float = 2.0,
            timeout: float = 15.0) -> dict[str, Any]:
    """``read()`` once it has returned the same for ``quiet`` seconds."""
    deadline = time.monotonic() + timeout
    last, since = read(), time.monotonic()
    while time.monotonic() - since < quiet:
        assert time.monotonic() < deadline, "the kernel state did not settle"
        time.sleep(0.25)
        now = read()
        if now != last:
            last, since = now, time.monotonic()
    return last


def diff(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """What differs between two snapshots, line by line."""
    lines = []
    for key in before:
        if before[key] == after[key]:
            continue
        if isinstance(before[key], dict):
            for part in before[key]:
                gone = sorted(set(before[key][part]) - set(after[key][part]))
                new = sorted(set(after[key][part]) - set(before[key][part]))
                lines += [f"{key} {part}: -{x}" for x in gone]
                lines += [f"{key} {part}: +{x}" for x in new]
        else:
            lines.append(f"{key}: {before[key]!r} -> {after[key]!r}")
    return lines


def _ready_lines(cli: Cli, prefix: str) -> list[tuple[str, str]]:
    """(milliseconds, actions) of every agent's "ready" line so far."""
    return re.findall(r" ready (\d+) ms after start: the first pass made (\d+) action",
                      agent_log(cli, prefix))


def _ready_line(cli: Cli, prefix: str, seen: int) -> tuple[str, str] | None:
    found = _ready_lines(cli, prefix)
    return found[seen] if len(found) > seen else None


#: Containers adopted by a restarted agent: the default run's short version, and the soak's.
MANY_DEFAULT = int(os.environ.get("SDNCTL_READY_CONTAINERS_SHORT") or 100)
MANY = int(os.environ.get("SDNCTL_READY_CONTAINERS") or 1000)
#: Safety bounds only (a loaded 2-core machine); how soon an agent is ready is measured by
#: bench/reliability.py.
READY_TIMEOUT = 120.0
MANY_TOPOLOGY = """\
name: many
hosts:
  - {name: h1, lab: true}
networks:
  - {name: front, subnet: 10.80.0.0/21, host_prefix: 21}
containers: []
"""


@contextlib.contextmanager
def many_containers(cli: Cli, path: Path, count: int) -> Iterator[float]:
    """``count`` running containers on h1 (no image: half bridged, half with no network),
    made through the API; yields how long they took to run, then deletes them."""
    cli.run("up", str(path))
    specs = [pb.Container(name=f"c{i}", host="h1", network="front" if i % 2 == 0 else "none",
                          command=["sleep", "3600"]) for i in range(count)]
    try:
        with api(cli) as client:
            started = time.monotonic()
            for spec in specs:
                client.api.CreateContainer(pb.CreateContainerRequest(container=spec), timeout=30)

            seen: dict[str, str] = {}

            def all_running() -> bool:
                listed = client.api.ListContainers(pb.ListRequest(), timeout=30).containers
                seen.clear()
                seen.update({c.name: f"{c.status.state} {c.status.message}".strip()
                             for c in listed})
                assert not any(s.startswith("error") for s in seen.values()), seen
                return sum(s == "running" for s in seen.values()) == count

            try:
                wait_for(all_running, 60 + count * 2, f"{count} containers to run", 1.0)
            except AssertionError as e:  # say what it saw: states, and the agent's last words
                late = {n: s for n, s in seen.items() if s != "running"}
                host = client.api.GetHost(pb.GetRequest(name="h1"), timeout=30)
                listed = client.api.ListContainers(pb.ListRequest(), timeout=30)
                tail = agent_log(cli, cli.env["SDNCTL_LAB_PREFIX"]).splitlines()[-40:]
                log = cli.run_dir / "controller.log"
                ctl = log.read_text(errors="replace").splitlines()[-20:] if log.exists() else []
                raise AssertionError(
                    f"{e}: {len(late)} not running: {dict(list(late.items())[:10])}; h1 "
                    f"observed revision {host.observed_revision} of {listed.revision}, agent "
                    f"connected {host.agent_connected}, pid {host.agent_pid}\nagent log tail:\n"
                    + "\n".join(tail) + "\ncontroller log tail:\n" + "\n".join(ctl)) from None
            yield time.monotonic() - started
    finally:
        with api(cli) as client:
            for spec in specs:
                with contextlib.suppress(grpc.RpcError):
                    client.api.DeleteContainer(pb.DeleteRequest(name=spec.name), timeout=30)
            wait_for(lambda: not client.api.GetHost(pb.GetRequest(name="h1"), timeout=30)
                     .reported_containers, 60 + count * 2, "the containers to go", 1.0)


def restart_and_adopt(cli: Cli, prefix: str, path: Path, sig: int) -> tuple[float, int]:
    """Stop h1's agent with ``sig``, let `up` start a new one; (its ready ms, first-pass
    actions) from its log line."""
    seen = len(_ready_lines(cli, prefix))
    stop_agent(cli, sig=sig)
    cli.run("up", str(path))
    ms, actions = wait_for(lambda: _ready_line(cli, prefix, seen), READY_TIMEOUT,
                           "the new agent's first pass")
    return float(ms), int(actions)


def test_a_sigkilled_agent_adopts_many_containers(tmp_path: Path, run_prefix: str) -> None:
    """A SIGKILLed agent's successor adopts many running containers (200 by default): its
    first pass changes nothing, and the host's netlink state is what it was. The default run's
    short version of the soak's 1,000."""
    path = tmp_path / "many.yaml"
    path.write_text(MANY_TOPOLOGY)
    with lab_cli(run_prefix) as cli, many_containers(cli, path, MANY_DEFAULT) as built:
        netns = cli.host("h1")["netns"]
        before = netlink_state(netns)
        ms, actions = restart_and_adopt(cli, run_prefix, path, signal.SIGKILL)
        assert actions == 0, (f"the new agent's first pass made {actions} actions; its log:\n"
                              + agent_log(cli, run_prefix)[-4000:])
        assert netlink_state(netns) == before
    print(f"\n{MANY_DEFAULT} containers built in {built:.0f} s; the SIGKILLed agent's successor "
          f"was ready after {ms / 1000:.2f} s, first pass: {actions} actions")


@pytest.mark.skipif(not os.environ.get("SDNCTL_SOAK"), reason="a soak test: `make soak`")
def test_ready_with_1000_containers(tmp_path: Path, run_prefix: str) -> None:
    """A restarted agent (SIGTERM, then SIGKILL) adopts 1,000 running bridged and closed
    containers: its first pass changes nothing."""
    path = tmp_path / "many.yaml"
    path.write_text(MANY_TOPOLOGY)
    with lab_cli(run_prefix) as cli, many_containers(cli, path, MANY) as built:
        netns = cli.host("h1")["netns"]
        before = netlink_state(netns)
        results = [restart_and_adopt(cli, run_prefix, path, sig)
                   for sig in (signal.SIGTERM, signal.SIGKILL)]
        assert netlink_state(netns) == before
    print(f"\n{MANY} containers built in {built:.0f} s; restarted agent ready after "
          + ", ".join(f"{ms / 1000:.2f} s ({n} actions)" for ms, n in results))
    assert all(n == 0 for _, n in results), results
