"""`up --dry-run`, `up` of an edited file, `status` and `graph`, through the real CLI.

We act through the CLI and assert through other layers: the controller's JSON, /proc (a
container's PID and namespace inode), and the files `graph` writes. The autouse leak check in
conftest.py proves `down` left nothing behind.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.cli import REPO, Cli, lab_cli

pytestmark = pytest.mark.netns

TOPOLOGY = """\
name: edit
hosts: [{name: h1, lab: true}]
networks:
  - {name: front, subnet: 10.61.0.0/24}
  - {name: back, subnet: 10.62.0.0/24}
containers:
  - {name: web, host: h1, network: front}
  - {name: db, host: h1, network: back}
  - {name: side, host: h1, network: "container:web"}
"""


@pytest.fixture
def cli(run_prefix: str) -> Iterator[Cli]:
    with lab_cli(run_prefix) as c:
        yield c


def plan_lines(stdout: str) -> list[str]:
    return [line.strip() for line in stdout.splitlines() if line.startswith("  ")]


def netns_inode(pid: int) -> int:
    return os.stat(f"/proc/{pid}/ns/net").st_ino


def test_dry_run_without_a_controller_starts_nothing(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "edit.yaml"
    path.write_text(TOPOLOGY)
    done = cli.run("up", "--dry-run", str(path))
    assert "no controller answers" in done.stdout
    assert plan_lines(done.stdout)[:3] == ["+ host h1 (lab)", "+ network front bridge "
                                           "10.61.0.0/24", "+ network back bridge 10.62.0.0/24"]
    assert cli.controller_pid() is None and not (cli.run_dir / "lab").exists()


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_an_edited_file_changes_only_what_changed(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "edit.yaml"
    path.write_text(TOPOLOGY)
    first = cli.run("up", str(path))
    assert len(plan_lines(first.stdout)) == 6 and all(
        line.startswith("+") for line in plan_lines(first.stdout))
    before = {c["name"]: c for c in cli.json("ps")}
    web_inode = netns_inode(before["web"]["pid"])

    # the same file: a plan with nothing to do
    assert plan_lines(cli.run("up", "--dry-run", str(path)).stdout) == ["= 6 unchanged"]

    # allow front <-> back, move db to none, add a container on front
    path.write_text(TOPOLOGY.replace("{name: back, subnet: 10.62.0.0/24}",
                                     "{name: back, subnet: 10.62.0.0/24, allow: [front]}")
                    .replace("{name: db, host: h1, network: back}",
                             "{name: db, host: h1, network: none}")
                    + "  - {name: cache, host: h1, network: front}\n")
    expected = ["~ network back: allow [] -> [front]", "~ container db: network back -> none",
                "+ container cache on h1, network front", "= 4 unchanged"]
    dry = cli.run("up", "--dry-run", str(path))
    assert plan_lines(dry.stdout) == expected
    assert {c["name"]: c for c in cli.json("ps")} == before  # --dry-run changed nothing

    seen = max(e["seq"] for e in json_lines(cli.run("events", "--json").stdout))
    again = cli.run("up", str(path))
    assert plan_lines(again.stdout) == expected
    # The hosts were there as the file says: `up` wrote none of them again (audited: writes).
    calls = [e["method"].rsplit("/", 1)[-1]
             for e in json_lines(cli.run("events", "--since", str(seen), "--json").stdout)]
    assert "CreateHost" not in calls and "CreateContainer" in calls, calls
    after = {c["name"]: c for c in cli.json("ps")}
    for name in ("web", "side"):  # on an unchanged network: untouched
        for key in ("ip", "pid", "netns", "state"):
            assert after[name][key] == before[name][key], (name, key)
    assert netns_inode(after["web"]["pid"]) == web_inode
    assert after["db"]["network"] == "none" and after["db"]["ip"] == ""
    assert after["cache"]["state"] == "running" and after["cache"]["ip"].startswith("10.61.0.")
    assert cli.json("inspect", "network", "back")["allow"] == ["front"]

    # an immutable change is refused before anything is touched
    path.write_text(path.read_text().replace("10.61.0.0/24", "10.63.0.0/24"))
    refused = cli.run("up", str(path), check=False)
    assert refused.returncode == 1
    assert "! network front: subnet 10.61.0.0/24 -> 10.63.0.0/24" in refused.stdout
    assert "cannot change in place" in refused.stderr
    assert {c["name"]: c["pid"] for c in cli.json("ps")} == \
        {name: c["pid"] for name, c in after.items()}
    path.write_text(path.read_text().replace("10.63.0.0/24", "10.61.0.0/24"))
    cli.run("down", str(path))


def test_status_and_graph_of_a_running_topology(cli: Cli, tmp_path: Path,
                                               test_image: tuple[str, str]) -> None:
    example = str(REPO / "topology-examples" / "two-hosts.yaml")
    cli.run("up", example, "--image", test_image[0])

    status = cli.json("status", example)
    assert status["health"]["healthy"], status["health"]
    assert {h["name"] for h in status["hosts"]} == {"h1", "h2"}
    assert all(h["agent_connected"] and h["subnets"] for h in status["hosts"])
    assert [n["name"] for n in status["networks"]] == ["ov"]  # not the builtin bridge
    modes = {c["name"]: c["mode"] for c in status["containers"]}
    assert modes == {"web": "bridge", "sidecar": "container", "cache": "bridge",
                     "api": "bridge", "vault": "none", "probe": "host"}
    table = cli.run("status", example).stdout
    for word in ("HOSTS", "NETWORKS", "CONTAINERS", "joined", "closed", "open", "bridged",
                 "healthy: 2 host(s), 2 agent(s) connected"):
        assert word in table, word

    dot_file = tmp_path / "g.dot"
    done = cli.run("graph", example, "-o", str(dot_file))
    assert "from live state" in done.stdout
    dot = dot_file.read_text()
    vni = cli.json("inspect", "network", "ov")["vni"]
    web = cli.json("inspect", "container", "web")
    assert f"VNI {vni}" in dot and web["ip"] in dot
    assert '"h1/vxlan/ov" -- "h2/vxlan/ov"' in dot  # the tunnel between the hosts
    assert "cluster_netns-web" in dot  # sidecar is drawn inside web's namespace
    if shutil.which("dot"):
        for kind in ("svg", "png"):
            out = tmp_path / f"g.{kind}"
            cli.run("graph", example, "-o", str(out))
            assert out.stat().st_size > 1000

    cli.run("down", example)
    gone = cli.run("status", example, check=False)
    assert gone.returncode == 1 and "no controller answers" in gone.stderr
