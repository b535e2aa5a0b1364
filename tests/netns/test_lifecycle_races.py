"""Lifecycle races, driven through the real CLI on lab hosts (issue 15, part 1).

- a joined container (``container:<donor>``) is reported with a PID only once its process is in
  the donor's namespaces: right after ``up`` returns, its ns/net is the donor's;
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

import pytest
from helpers.cli import lab_cli

pytestmark = pytest.mark.netns

PY = sys.executable

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


def ns(pid: int, kind: str) -> int:
    return os.stat(f"/proc/{pid}/ns/{kind}").st_ino


def test_joined_containers_are_in_the_donors_namespace_when_up_returns(tmp_path: Path) -> None:
    prefix = "j" + secrets.token_hex(3)[:5]
    path = tmp_path / "joined.yaml"
    path.write_text(JOINED)
    with lab_cli(prefix) as cli:
        for attempt in range(6):
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
