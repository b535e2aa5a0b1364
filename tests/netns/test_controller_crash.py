"""Issue 10.4: the controller SIGKILLed again and again under allocation load.

Clients create containers (on a host with no agent, so that only IPAM works) as fast as they
can while the controller is killed with SIGKILL and started again. Afterwards the SQLite file
passes ``PRAGMA integrity_check``, every creation that was acknowledged is there with the
address it was given, no address is held twice, `sdnctl ipam check` is clean, and two
containers on a lab host pinged each other the whole time without losing a packet.

``SDNCTL_CONTROLLER_KILLS`` sets the number of kills (default 5; `make soak` runs 50).
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.cli import Cli, lab_cli
from helpers.hoststate import api, pid_alive, wait_for

from sdnctl.api import wire
from sdnctl.api.client import Client
from sdnctl.v1 import sdnctl_pb2 as pb

pytestmark = pytest.mark.netns

KILLS = int(os.environ.get("SDNCTL_CONTROLLER_KILLS") or 5)
CLIENTS = 2

TOPOLOGY = """\
name: crash
hosts:
  - {name: h1, lab: true}
networks:
  - {name: front, subnet: 10.77.0.0/24}
  - {name: load, subnet: 10.78.0.0/16, host_prefix: 16}
containers:
  - {name: a, host: h1, network: front, command: [sleep, "3600"]}
  - {name: b, host: h1, network: front, command: [sleep, "3600"]}
"""


#: The controllers this module started itself (``start_controller``): reaped once the lab is
#: down, which stops the last of them (a child nobody waits for stays a zombie of this process,
#: which the leak check reports when no later Popen happened to reap it).
STARTED: list[subprocess.Popen[bytes]] = []


@pytest.fixture
def cli(tmp_path: Path, run_prefix: str) -> Iterator[Cli]:
    path = tmp_path / "crash.yaml"
    path.write_text(TOPOLOGY)
    try:
        yield from _lab(path, run_prefix)
    finally:
        for proc in STARTED:
            if proc.poll() is None:  # `down` stops the controller; if it did not, we do
                proc.kill()
            proc.wait(timeout=30)
        STARTED.clear()


def _lab(path: Path, run_prefix: str) -> Iterator[Cli]:
    with lab_cli(run_prefix) as c:
        c.run("up", str(path))
        with api(c) as client:  # a host without an agent: creating containers there is IPAM only
            client.api.CreateHost(pb.CreateHostRequest(
                host=pb.Host(name="far", underlay_ip="198.51.100.7")), timeout=10)
        # Host far's thousand-odd containers are left to the controller's state, which goes
        # with the lab's run directory (deleting them one by one took 40-50 s): `down` then
        # cannot delete network load, and takes the lab down all the same.
        yield c


def start_controller(cli: Cli) -> int:
    """What `sdnctl up` does when no controller answers (sdnctl.api.client.start_controller)."""
    with open(cli.run_dir / "controller.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sdnctl.controller.server", "--listen",
             f"unix:{cli.run_dir}/controller.sock", "--db",
             str(cli.run_dir / "state" / "controller.db"), "--pidfile",
             str(cli.run_dir / "controller.pid")],
            env=cli.env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            start_new_session=True)
    STARTED.append(proc)
    client = Client(f"unix:{cli.run_dir}/controller.sock")
    try:
        wait_for(lambda: client.healthy(timeout=0.5), 15, "the controller to answer", 0.02)
    finally:
        client.close()
    return proc.pid


class Load(threading.Thread):
    """Creates containers ``<prefix>-<n>`` on host far, retrying through outages."""

    def __init__(self, cli: Cli, prefix: str, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.cli, self.prefix, self.stop = cli, prefix, stop
        self.acked: dict[str, str] = {}  # name -> address, as the reply said
        self.unsure: set[str] = set()  # failed in a way that may or may not have committed
        self.errors: list[str] = []

    def run(self) -> None:
        n = 0
        with api(self.cli) as client:
            while not self.stop.is_set():
                name = f"{self.prefix}-{n}"
                msg = pb.Container(name=name, host="far", network="load", command=["true"])
                try:
                    got = client.api.CreateContainer(
                        pb.CreateContainerRequest(container=msg), timeout=5)
                    self.acked[name] = got.ip
                    self.unsure.discard(name)
                    n += 1
                except wire.RpcError as e:
                    code = e.code()
                    if code == wire.StatusCode.ALREADY_EXISTS and name in self.unsure:
                        n += 1  # the attempt the controller died in did commit
                    elif code in (wire.StatusCode.UNAVAILABLE, wire.StatusCode.DEADLINE_EXCEEDED,
                                  wire.StatusCode.UNKNOWN, wire.StatusCode.INTERNAL,
                                  wire.StatusCode.CANCELLED):
                        self.unsure.add(name)
                        time.sleep(0.02)
                    else:
                        self.errors.append(f"{name}: {code} {e.details()}")
                        n += 1


def test_controller_sigkilled_under_allocation_load(cli: Cli, tmp_path: Path) -> None:
    a, b = cli.container("a"), cli.container("b")
    pinger = subprocess.Popen(["nsenter", f"--net={a['netns']}", "ping", "-n", "-q", "-i",
                               "0.05", b["ip"]], stdout=subprocess.PIPE, text=True)
    stop = threading.Event()
    loads = [Load(cli, f"l{i}", stop) for i in range(CLIENTS)]
    downtime = 0.0
    try:
        for load in loads:
            load.start()
        for _ in range(KILLS):
            time.sleep(random.uniform(0.2, 0.6))
            pid = cli.controller_pid()
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            killed = time.monotonic()
            wait_for(lambda p=pid: not pid_alive(p), 10, "the controller to die", 0.01)
            start_controller(cli)
            downtime += time.monotonic() - killed
        time.sleep(0.5)
    finally:
        stop.set()
        for load in loads:
            load.join(timeout=30)
        pinger.send_signal(signal.SIGINT)
        ping_out, _ = pinger.communicate(timeout=10)

    acked = {name: ip for load in loads for name, ip in load.acked.items()}
    assert not [e for load in loads for e in load.errors]
    assert len(acked) > KILLS, "too little load to prove anything"
    db = cli.run_dir / "state" / "controller.db"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    with api(cli) as client:
        listed = client.api.ListContainers(pb.ListRequest(), timeout=10).containers
    present = {c.name: c.ip for c in listed if c.host == "far"}
    missing = sorted(set(acked) - set(present))
    assert not missing, f"acknowledged but lost: {missing}"
    assert all(present[name] == ip for name, ip in acked.items())
    addresses = [c.ip for c in listed if c.ip]
    assert len(addresses) == len(set(addresses)), "an address is held twice"
    assert cli.run("ipam", "check", check=False).returncode == 0
    assert " 0% packet loss" in ping_out, ping_out
    sent = ping_out.split(" packets transmitted")[0].split()[-1]
    print(f"\ncontroller SIGKILLs: {KILLS}, {len(acked)} allocations acknowledged (all "
          f"present, none twice, {len(present) - len(acked)} committed unacknowledged), "
          f"integrity ok; down {downtime:.1f} s in all; data plane: {sent} pings, 0 lost")
