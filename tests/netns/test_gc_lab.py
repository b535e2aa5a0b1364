"""Issue 10.5 on lab hosts: a host that vanishes (a simulated reboot: its agent and containers
killed, its namespaces and run directory gone) loses its containers' allocations only after the
grace period, and only through `sdnctl ipam gc` seeing it unused twice; a dry run changes
nothing; the host that stays is never touched; the host that comes back gets its subnet and its
containers their addresses again.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.cli import Cli, lab_cli, ping
from helpers.hoststate import get_host, pid_alive, wait_for

from agent.kernel import cgroups
from agent.kernel.netns import remove_netns
from sdnctl.lab.lab import Lab

pytestmark = pytest.mark.netns

GRACE = 3

TOPOLOGY = """\
name: gc
hosts:
  - {name: h1, lab: true}
  - {name: h2, lab: true}
networks:
  - {name: front, subnet: 10.74.0.0/16}
containers:
  - {name: a, host: h1, network: front, command: [sleep, "3600"]}
  - {name: b, host: h2, network: front, command: [sleep, "3600"]}
"""


@pytest.fixture
def cli(tmp_path: Path, run_prefix: str) -> Iterator[Cli]:
    path = tmp_path / "gc.yaml"
    path.write_text(TOPOLOGY)
    with lab_cli(run_prefix) as c:
        c.run("up", str(path))
        yield c


def gc(cli: Cli, *args: str) -> list[tuple[str, str, str]]:
    report = json.loads(cli.run("ipam", "gc", "--grace", str(GRACE), "--json", *args).stdout)
    return [(i["kind"], i["subject"], i["action"]) for i in report["items"]]


def allocations(cli: Cli) -> dict[str, str]:
    return {a["container"]: a["address"] for a in cli.json("ipam")["allocations"]}


def reboot(cli: Cli, prefix: str, host: str, ctr: dict[str, Any]) -> None:
    """What a reboot does to a lab host: every process dies, /run and its namespaces go."""
    agent = get_host(cli, host).agent_pid
    os.kill(agent, signal.SIGKILL)
    os.kill(ctr["pid"], signal.SIGKILL)
    wait_for(lambda: not pid_alive(agent) and not pid_alive(ctr["pid"]), 10, "processes to die")
    run_dir = cli.run_dir / "lab" / f"{prefix}{host}"
    for kind in ("netns", "uts", "ipc"):
        for pin in (run_dir / kind).iterdir():
            remove_netns(str(pin))
    shutil.rmtree(run_dir)
    cgroups.remove_tree(os.path.dirname(ctr["cgroup"]))
    Lab(prefix).remove_host(host)


def test_a_vanished_host_loses_its_allocations_only_after_the_grace(cli: Cli,
                                                                    run_prefix: str) -> None:
    a, b = cli.container("a"), cli.container("b")
    before = allocations(cli)
    assert set(before) == {"a", "b"}
    assert gc(cli, "--dry-run") == [] and gc(cli) == []  # both agents connected: nothing

    reboot(cli, run_prefix, "h2", b)
    vanished = time.monotonic()
    wait_for(lambda: not get_host(cli, "h2").agent_connected, 10, "h2's stream to close")
    assert gc(cli, "--dry-run") == [("lost-host", "h2", "mark")]
    assert gc(cli, "--dry-run") == [("lost-host", "h2", "mark")]  # a dry run marked nothing
    assert gc(cli) == [("lost-host", "h2", "mark")]
    marked = time.monotonic()
    assert gc(cli) == [("lost-host", "h2", "wait")]
    assert allocations(cli) == before  # not before the grace period
    time.sleep(max(0.0, GRACE - (time.monotonic() - marked)))
    assert gc(cli, "--dry-run") == [("lost-host", "h2", "free")]
    assert allocations(cli) == before
    assert gc(cli) == [("lost-host", "h2", "free")]
    freed = time.monotonic()
    assert allocations(cli) == {"a": before["a"]}
    assert [c["name"] for c in cli.json("ps")] == ["a"]
    assert cli.run("ipam", "check", check=False).returncode == 0
    assert gc(cli) == []
    # h1 was never touched: a still runs with its address, and reaches its gateway.
    again = cli.container("a")
    assert (again["pid"], again["ip"], again["state"]) == (a["pid"], a["ip"], "running")
    assert ping(a["netns"], a["gateway"])
    print(f"\nIPAM GC: vanished -> marked {marked - vanished:.2f} s, freed "
          f"{freed - vanished:.2f} s after vanishing (grace {GRACE} s)")

    # h2 comes back (`up` rebuilds it and recreates b): same subnet, same address for b.
    cli.run("up", cli.files["gc"])
    back = cli.container("b")
    assert back["state"] == "running" and back["ip"] == b["ip"]
    assert ping(back["netns"], back["gateway"])
