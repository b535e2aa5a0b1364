"""Lifecycle races, driven through the real CLI on lab hosts (issue 15, part 1).

- ``down`` then ``up`` of another topology, over and over while the CPUs are busy: every ``up``
  succeeds (two controllers never overlap on one socket; ``down`` returns once the controller
  it stops has exited);
- ``up`` after the controller was replaced by one on another socket restarts the lab agents
  that still talk to the old one;
- a joined container (``container:<donor>``) is reported with a PID only once its process is in
  the donor's namespaces: right after ``up`` returns, its ns/net is the donor's;
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.cli import lab_cli
from helpers.hoststate import wait_for

pytestmark = pytest.mark.netns

PY = sys.executable
#: Rounds of each race: a few in the default run, more in `make soak` (SDNCTL_SOAK=1).
ROUNDS = 3 if os.environ.get("SDNCTL_SOAK") else 1

JOINED = """
name: joined
hosts:
  - {name: h1, lab: true}
networks:
  - {name: front, subnet: 10.96.0.0/24}
containers:
  - {name: donor, host: h1, network: front}
  - {name: side1, host: h1, network: "container:donor", share: [uts]}
  - {name: side2, host: h1, network: "container:donor", share: [uts, ipc]}
  - {name: side3, host: h1, network: "container:donor"}
"""


SMALL = """
name: NAME
hosts:
  - {name: NAMEh1, lab: true}
  - {name: NAMEh2, lab: true}
networks:
  - {name: NAMEnet, subnet: SUBNET}
containers:
  - {name: NAMEc1, host: NAMEh1, network: NAMEnet}
  - {name: NAMEc2, host: NAMEh2, network: NAMEnet}
"""


@contextlib.contextmanager
def busy_cpus(count: int = 2) -> Iterator[None]:
    """``count`` processes that spin, ended by their PIDs."""
    spinners = [subprocess.Popen([PY, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield
    finally:
        for proc in spinners:
            proc.send_signal(signal.SIGKILL)
            proc.wait()


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def test_down_then_up_of_another_topology_under_load_always_succeeds(tmp_path: Path) -> None:
    prefix = "l" + secrets.token_hex(3)[:5]
    files = []
    for name, subnet in (("ta", "10.98.0.0/16"), ("tb", "10.99.0.0/16")):
        path = tmp_path / f"{name}.yaml"
        path.write_text(SMALL.replace("NAME", name).replace("SUBNET", subnet))
        files.append(str(path))
    with lab_cli(prefix) as cli, busy_cpus():
        # Each controller stalls after it stopped serving, before it lets go of its socket, as
        # a starved one may: longer than `down` once waited for it.
        cli.env["SDNCTL_FAULT"] = "stop:stall"
        sock = cli.run_dir / "controller.sock"
        for attempt in range(ROUNDS):
            for path in files:
                cli.run("up", path, "--timeout", "90")
                pid = cli.controller_pid()
                assert pid is not None and not gone(pid)
                assert len(cli.json("ps")) == 2
                cli.run("down", path)
                # down returned: the controller it stopped has exited, socket and lock gone
                assert gone(pid), (attempt, path)
                assert not sock.exists() and cli.controller_pid() is None, (attempt, path)


def test_up_restarts_agents_that_talk_to_another_controller(tmp_path: Path) -> None:
    prefix = "r" + secrets.token_hex(3)[:5]
    path = tmp_path / "ta.yaml"
    path.write_text(SMALL.replace("NAME", "ta").replace("SUBNET", "10.98.0.0/16"))
    with lab_cli(prefix) as cli:
        cli.run("up", str(path), "--timeout", "90")
        before = {h: cli.host(h)["agent_pid"] for h in ("tah1", "tah2")}
        assert all(before.values())
        old = cli.controller_pid()
        assert old is not None
        os.kill(old, signal.SIGTERM)  # the controller goes; its replacement has another socket
        wait_for(lambda: gone(old), what="the old controller's exit")
        cli.env["SDNCTL_CONTROLLER"] = f"unix:{cli.run_dir / 'other.sock'}"
        done = cli.run("up", str(path), "--timeout", "90")
        assert "controller started" in done.stderr, done.stderr
        after = {h: cli.host(h) for h in ("tah1", "tah2")}
        for name, host in after.items():
            assert host["agent_connected"] and host["agent_pid"] != before[name], host
            assert gone(before[name])
        assert {c["state"] for c in cli.json("ps")} == {"running"}
        cli.run("down", str(path))


def ns(pid: int, kind: str) -> int:
    return os.stat(f"/proc/{pid}/ns/{kind}").st_ino


def test_joined_containers_are_in_the_donors_namespace_when_up_returns(tmp_path: Path) -> None:
    prefix = "j" + secrets.token_hex(3)[:5]
    path = tmp_path / "joined.yaml"
    path.write_text(JOINED)
    with lab_cli(prefix) as cli, busy_cpus():
        for attempt in range(2 * ROUNDS):
            cli.run("up", str(path), "--timeout", "90")
            listed = {c["name"]: c for c in cli.json("ps")}
            donor = listed["donor"]
            assert donor["state"] == "running" and donor["pid"]
            sandbox = os.stat(donor["netns"]).st_ino
            assert ns(donor["pid"], "net") == sandbox
            for name, shares in (("side1", ("uts",)), ("side2", ("uts", "ipc")), ("side3", ())):
                side = listed[name]
                assert side["state"] == "running" and side["pid"], side
                assert ns(side["pid"], "net") == sandbox, (attempt, name, side)
                for kind in shares:
                    assert ns(side["pid"], kind) == ns(donor["pid"], kind), (attempt, name, kind)
            cli.run("down", str(path))
