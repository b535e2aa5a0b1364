"""The everyday verbs on lab hosts, through the real CLI, controller and agents: network
create/ls/inspect/rm, run/exec/logs/rm, network connect/disconnect, host ls. Asserted through
other layers: raw netlink dumps of the container's namespace and the PID the agent reports."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.cli import Cli, kernel_state, lab_cli

pytestmark = pytest.mark.netns

TOPOLOGY = """\
name: verbs
hosts:
  - {name: h1, lab: true}
networks:
  - {name: front, subnet: 10.61.0.0/16}
containers:
  - {name: base, host: h1, network: front}
"""


@pytest.fixture
def cli(tmp_path: Path, run_prefix: str) -> Iterator[Cli]:
    path = tmp_path / "verbs.yaml"
    path.write_text(TOPOLOGY)
    with lab_cli(run_prefix) as c:
        c.run("up", str(path))
        try:
            yield c
        finally:
            remove_extras(c, containers={"base"}, networks={"front"})


def remove_extras(cli: Cli, containers: set[str], networks: set[str]) -> None:
    """What a test made beyond the topology (`down` removes only the topology's objects)."""
    extra = [c["name"] for c in cli.json("ps") if c["name"] not in containers]
    if extra:
        cli.run("rm", "-f", *extra, check=False)
    extra = [n["name"] for n in cli.json("network", "ls")
             if n["name"] not in networks and not n["builtin"]]
    if extra:
        cli.run("network", "rm", *extra, check=False)


def alive(pid: int) -> bool:
    """Running, not merely a zombie waiting for its reaper."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_network_round_trip(cli: Cli) -> None:
    assert cli.run("network", "create", "back", "--subnet", "10.62.0.0/24", "--gateway",
                   "10.62.0.254", "--internal", "--allow", "front").stdout == "back\n"
    listed = {n["name"]: n for n in cli.json("network", "ls")}
    assert listed["back"]["gateway"] == "10.62.0.254" and listed["back"]["internal"]
    assert "back" in cli.run("network", "ls").stdout
    cli.run("run", "--name", "b1", "--host", "h1", "--network", "back")
    data = cli.json("network", "inspect", "back")
    assert [(c["name"], c["state"]) for c in data["containers"]] == [("b1", "running")]
    assert data["leases"] == [{"host": "h1", "subnet": "10.62.0.0/24",
                               "gateway": "10.62.0.254", "subnet6": "", "gateway6": ""}]
    busy = cli.run("network", "rm", "back", check=False)
    assert busy.returncode == 1 and busy.stderr.startswith("sdnctl: could not remove network")
    cli.run("rm", "b1")
    cli.run("network", "rm", "back")
    assert "back" not in {n["name"] for n in cli.json("network", "ls")}
    gone = cli.run("network", "inspect", "back", check=False)
    assert gone.returncode == 1 and "not found" in gone.stderr


def test_run_exec_logs(cli: Cli) -> None:
    cli.run("run", "--name", "talker", "--host", "h1", "--network", "front", "--",
            "sh", "-c", "echo hello from $(hostname); sleep infinity")
    ctr = cli.json("inspect", "container", "talker")
    assert ctr["state"] == "running" and ctr["ip"].startswith("10.61.")
    assert cli.run("exec", "talker", "hostname").stdout == "talker\n"
    failing = cli.run("exec", "talker", "sh", "-c", "exit 7", check=False)
    assert failing.returncode == 7
    # exec really is inside: the container's own address and PID namespace (its /proc is the
    # host's: containers have no mount namespace yet)
    assert ctr["ip"] in cli.run("exec", "talker", "ip", "-4", "addr").stdout
    pid_ns = cli.run("exec", "talker", "readlink", "/proc/self/ns/pid").stdout.strip()
    assert pid_ns == os.readlink(f"/proc/{ctr['pid']}/ns/pid")
    assert cli.run("logs", "talker").stdout == "hello from talker\n"
    hosts = cli.json("host", "ls")
    assert [(h["name"], h["agent_connected"]) for h in hosts] == [("h1", True)]
    assert "connected (pid" in cli.run("host", "ls").stdout
    assert cli.run("rm", "talker").stdout == "talker\n"
    assert not alive(ctr["pid"])  # rm waited for the agent to stop it
    assert cli.run("rm", "talker", check=False).returncode == 1
    assert cli.run("rm", "-f", "talker").returncode == 0
    bad = cli.run("run", "--name", "lost", "--host", "h1", "--network", "nowhere",
                  check=False)
    assert bad.returncode == 1 and bad.stderr.startswith("sdnctl: could not create container")


def test_connect_and_disconnect(cli: Cli) -> None:
    cli.run("network", "create", "side", "--subnet", "10.63.0.0/16")
    before = cli.json("inspect", "container", "base")
    moved = cli.run("network", "connect", "side", "base")
    after = cli.json("inspect", "container", "base")
    assert after["network"] == "side" and after["ip"].startswith("10.63.")
    assert after["state"] == "running" and after["pid"] != before["pid"]
    assert after["ip"] in moved.stdout
    addrs = kernel_state(after["netns"])["addrs"]
    assert any(f"'{after['ip']}'" in a for a in addrs)
    assert not any(f"'{before['ip']}'" in a for a in addrs)

    wrong = cli.run("network", "disconnect", "front", "base", check=False)
    assert wrong.returncode == 1 and "is not on network 'front'" in wrong.stderr
    cli.run("network", "disconnect", "side", "base")
    closed = cli.json("inspect", "container", "base")
    assert (closed["network"], closed["mode"], closed["ip"]) == ("none", "none", "")
    links = kernel_state(closed["netns"])["links"]
    assert [eval(link)[0] for link in links] == ["lo"]  # only lo is left
    cli.run("network", "connect", "front", "base")  # back as the topology has it, for `down`
    assert cli.json("inspect", "container", "base")["network"] == "front"
    cli.run("network", "rm", "side")


def test_down_removes_what_was_run_beside_the_topology(tmp_path: Path, run_prefix: str) -> None:
    """A container made by `sdnctl run` on a lab host goes with `down`: before, the network's
    deletion was refused for it and `down` stopped half-way, leaving the lab's namespaces and
    the container's sandbox mounts in the run directory behind."""
    path = tmp_path / "verbs.yaml"
    path.write_text(TOPOLOGY)
    with lab_cli(run_prefix) as c:
        c.run("up", str(path))
        c.run("run", "--name", "beside", "--host", "h1", "--network", "front", "--",
              "sleep", "infinity")
        beside = c.container("beside")
        assert beside["state"] == "running" and alive(beside["pid"])
        with open("/proc/mounts") as f:  # positive control: its sandbox is mounted there
            assert str(c.run_dir) in f.read()
        c.run("down", str(path))
        assert not alive(beside["pid"])
        assert not [n for n in os.listdir("/run/netns") if n.startswith(run_prefix)]
        with open("/proc/mounts") as f:
            assert str(c.run_dir) not in f.read()
