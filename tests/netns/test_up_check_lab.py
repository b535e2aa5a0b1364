"""`sdnctl up` checks the whole file against the controller's rules before it builds anything:
a file the controller would refuse fails naming its file and line, with no lab namespace built,
no agent and no controller started (none was running), or, with a controller running that holds
other containers, with that controller asked, left running and nothing changed. Positive
control: the good file comes up, so the namespace probe sees what `up` builds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers.cli import Cli, lab_cli

from agent.kernel.netns import NETNS_RUN_DIR

pytestmark = pytest.mark.netns

TOPOLOGY = """\
name: chk
hosts:
  - {name: h1, lab: true}
networks:
  - {name: front, subnet: 10.63.0.0/16}
  - {name: tiny, subnet: 10.64.0.0/24, host_prefix: 30}
containers:
  - {name: c1, host: h1, network: front, ports: ["8080:80"]}
  - {name: c2, host: h1, network: tiny}
"""

#: (text replaced, by, line, the path the error names): each refused by the controller's rules
REFUSED = [
    ('network: tiny}', 'network: front, ports: ["8080:81"]}', 9, "containers[1].ports[0]"),
    ('network: tiny}', 'network: tiny, ip: 10.64.0.1}', 9, "containers[1].ip"),
    ('  - {name: c2, host: h1, network: tiny}\n',
     '  - {name: c2, host: h1, network: tiny}\n  - {name: c3, host: h1, network: tiny}\n', 10,
     "containers[2]"),
    ("10.63.0.0/16", "192.0.2.0/24", 5, "networks[0].subnet"),
    ("10.64.0.0/24", "203.0.113.0/24", 6, "networks[1].subnet"),
]


def namespaces(prefix: str) -> list[str]:
    return sorted(n for n in os.listdir(NETNS_RUN_DIR) if n.startswith(prefix))


def refused(cli: Cli, path: Path, line: int, field: str) -> None:
    done = cli.run("up", str(path), check=False)
    assert done.returncode == 2, done.stderr
    assert f"{path}:{line}: {field}: " in done.stderr, done.stderr
    assert "lab:" not in done.stderr and "agent for" not in done.stderr  # nothing built


def test_up_refuses_what_the_controller_would_before_building_anything(
        tmp_path: Path, run_prefix: str) -> None:
    path = tmp_path / "chk.yaml"
    with lab_cli(run_prefix) as cli:
        for old, new, line, field in REFUSED:
            assert TOPOLOGY.count(old) == 1
            path.write_text(TOPOLOGY.replace(old, new))
            refused(cli, path, line, field)
            assert namespaces(run_prefix) == []
            assert cli.controller_pid() is None, "up started a controller"
            assert not (cli.run_dir / "controller.sock").exists()
            assert not (cli.run_dir / "lab").exists()

        # Positive control: the good file comes up, and the probe sees its namespaces.
        path.write_text(TOPOLOGY)
        cli.run("up", str(path))
        built = namespaces(run_prefix)
        assert built, "the namespace probe sees nothing"
        controller = cli.controller_pid()
        assert controller is not None

        # A controller runs and holds a container the file does not name: it is asked.
        cli.run("run", "--name", "extra", "--host", "h1", "--network", "front", "-p", "9090:90")
        try:
            path.write_text(TOPOLOGY + '  - {name: c3, host: h1, network: front, '
                            'ports: ["9090:91"]}\n')
            before = cli.json("ps")
            refused(cli, path, 10, "containers[2].ports[0]")
            assert "'extra'" in cli.run("up", "--dry-run", str(path), check=False).stderr
            assert cli.json("ps") == before
            assert namespaces(run_prefix) == built
            assert cli.controller_pid() == controller and os.path.exists(f"/proc/{controller}")
        finally:
            cli.run("rm", "-f", "extra", check=False)  # `down` removes the file's objects only
            path.write_text(TOPOLOGY)
