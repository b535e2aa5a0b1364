"""Issue 10.1: a failure at any step of a container's setup leaves nothing half-built.

For every step (sdnctl.api.faults.STEPS) the agent (or, for ``ipam``, the controller) is restarted
with ``SDNCTL_FAULT=<step>:<action>`` and a container is created:

- ``fail``: the step raises. Once the failure is reported the faulty agent is stopped (SIGTERM:
  it finishes its pass, rollback included) and the host must be exactly as before the call:
  links, addresses, routes, permanent neighbours and FDB, /run/netns, mounts, cgroups, the
  agent's files (nftables may already hold the desired state's guard for the container). The
  half-built container is then deleted (it succeeds, and again), an agent without the fault
  starts, and the host is as before, nftables and store rows included.
- ``kill``: the process dies by SIGKILL at the step. Either an agent without the fault starts
  and must bring the host to what the desired state says (the container runs, reachable) and
  deleting it (twice) brings everything back to the "before" snapshot, store rows included; or
  the half-built container is deleted while no agent runs, and the next agent must remove
  every piece of it. By default the steps alternate between the two; `make soak` does both.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.cli import Cli, lab_cli, ping
from helpers.hoststate import (
    get_container,
    get_host,
    host_state,
    pid_alive,
    stop_agent,
    wait_for,
)

from sdnctl.api.faults import STEPS

pytestmark = pytest.mark.netns

TOPOLOGY = """\
name: faults
hosts:
  - {name: h1, lab: true}
networks:
  - {name: front, subnet: 10.72.0.0/24}
containers:   # holds h1's lease of front: its bridge and table exist before each call
  - {name: keep, host: h1, network: front, command: [sleep, "3600"]}
"""
TAG = "sdnctl-test:latest"
AGENT_STEPS = [s for s in STEPS if s not in ("ipam", "watch", "stop")]  # not the controller's
#: `make soak`: after a kill, both complete the half-built container and delete it, at every
#: step; by default, one or the other, alternately.
SOAK = bool(os.environ.get("SDNCTL_SOAK"))


@pytest.fixture
def cli(tmp_path: Path, run_prefix: str, test_image: tuple[str, str]) -> Iterator[Cli]:
    path = tmp_path / "faults.yaml"
    path.write_text(TOPOLOGY)
    with lab_cli(run_prefix) as c:
        c.env["SDNCTL_RESYNC"] = "1"
        c.run("up", str(path))
        c.run("image", "load", "-i", test_image[0])
        c.files["topology"] = str(path)
        yield c
        left = [x["name"] for x in c.json("ps")] if c.controller_pid() else []
        if left:
            c.run("rm", "-f", *left, check=False)


def restart(cli: Cli, fault: str = "") -> None:
    """(Re)start the controller or the agent that is not running, with ``fault`` armed."""
    if fault:
        cli.env["SDNCTL_FAULT"] = fault
    else:
        cli.env.pop("SDNCTL_FAULT", None)
    cli.run("up", cli.files["topology"])


def run_c1(cli: Cli, timeout: float) -> None:
    """`sdnctl run` c1; it fails (the agent fails or dies), so its exit status is not checked."""
    cli.run("run", "--name", "c1", "--host", "h1", "--network", "front", "--image", TAG,
            "--timeout", str(timeout), "--", "sleep", "3600", check=False)


def status(cli: Cli) -> str:
    got = get_container(cli, "c1")
    return got.status.state if got is not None else "gone"


@pytest.mark.parametrize("action", ["fail", "kill"])
def test_fault_at_every_step_leaves_nothing_half_built(cli: Cli, run_prefix: str,
                                                       action: str) -> None:
    before = host_state(cli, run_prefix)
    for i, step in enumerate(AGENT_STEPS):
        started = time.monotonic()
        stop_agent(cli)
        restart(cli, f"{step}:{action}")
        agent = get_host(cli).agent_pid
        run_c1(cli, 4 if action == "fail" else 0.5)
        if action == "fail":
            wait_for(lambda: status(cli) == "error", 20, f"{step}: the failure to be reported")
            message = cli.container("c1")["message"]
            assert "injected fault" in message or step == "nftables", (step, message)
            stop_agent(cli)  # finishes its pass (rollback included), then exits
            after = host_state(cli, run_prefix)
            # The ruleset may already guard c1's port: that is the desired state's, not c1's.
            skip = ("rows",) if step == "nftables" else ("rows", "nft")
            assert not before.diff(after, skip=skip), (step, before.diff(after, skip=skip))
            cli.run("rm", "c1")  # never fully built, no agent running: still succeeds
            cli.run("rm", "-f", "c1")  # and again
            restart(cli)
            wait_for(lambda: get_host(cli).agent_synced, 20, "the agent's first pass")
        else:
            wait_for(lambda a=agent: not pid_alive(a), 20, f"{step}: the agent to die")
            paths = ("complete", "delete") if SOAK else (("complete", "delete")[i % 2],)
            for n, then in enumerate(paths):
                if n > 0:  # half-build c1 again
                    stop_agent(cli)
                    restart(cli, f"{step}:{action}")
                    agent = get_host(cli).agent_pid
                    run_c1(cli, 0.5)
                    wait_for(lambda a=agent: not pid_alive(a), 20, f"{step}: the agent to die")
                if then == "delete":  # deleted while the agent that half-built it is dead
                    cli.run("rm", "c1")
                    cli.run("rm", "-f", "c1")
                    restart(cli)
                    wait_for(lambda: not before.diff(host_state(cli, run_prefix)), 20,
                             f"{step}: the new agent to remove the half-built c1")
                else:  # the new agent completes it
                    restart(cli)
                    wait_for(lambda: status(cli) == "running", 30, f"{step}: c1 to run")
                    ctr = cli.container("c1")
                    assert ping(ctr["netns"], ctr["gateway"]), step
                    cli.run("rm", "c1")
                    cli.run("rm", "-f", "c1")
        after = host_state(cli, run_prefix)
        assert not before.diff(after), (step, before.diff(after))
        print(f"fault {step}:{action}: rolled back or repaired, then removed, in "
              f"{time.monotonic() - started:.1f} s")


@pytest.mark.parametrize("action", ["fail", "kill"])
def test_controller_fault_at_the_ipam_commit_records_nothing(cli: Cli, run_prefix: str,
                                                            action: str) -> None:
    before = host_state(cli, run_prefix)
    controller = cli.controller_pid()
    assert controller is not None
    os.kill(controller, signal.SIGTERM)
    wait_for(lambda: not pid_alive(controller), 15, "the controller to stop")
    restart(cli, f"ipam:{action}")
    faulty = cli.controller_pid()
    done = cli.run("run", "--name", "c1", "--host", "h1", "--network", "front", "--image", TAG,
                   "--", "sleep", "3600", check=False)
    assert done.returncode != 0
    if action == "kill":
        assert faulty is not None
        wait_for(lambda: not pid_alive(faulty), 15, "the controller to die")
    restart(cli)
    assert [c["name"] for c in cli.json("ps")] == ["keep"]
    cli.run("rm", "-f", "c1")  # never recorded: deleting it is no error with -f
    assert not before.diff(host_state(cli, run_prefix))
    assert cli.run("ipam", "check", check=False).returncode == 0
