"""Global sdnctl flags."""

from __future__ import annotations

import os

import pytest

from sdnctl.cli import cli


def test_controller_flag_is_the_address_dialled(monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SDNCTL_CONTROLLER", "unix:/elsewhere.sock")
    assert cli.main(["--controller", "unix:/nonexistent/sdnctl.sock", "ps"]) == 1
    assert "no controller answers at unix:/nonexistent/sdnctl.sock" in capsys.readouterr().err
    assert os.environ["SDNCTL_CONTROLLER"] == "unix:/nonexistent/sdnctl.sock"


def test_agent_tls_flags_go_together(capsys: pytest.CaptureFixture[str]) -> None:
    from agent.main import main as agent_main

    with pytest.raises(SystemExit):
        agent_main(["--host", "h1", "--controller", "tcp:127.0.0.1:1", "--tls-cert", "c.pem"])
    assert "go together" in capsys.readouterr().err


def test_controller_tls_flags_go_together(capsys: pytest.CaptureFixture[str]) -> None:
    from sdnctl.controller.server import main as controller_main

    with pytest.raises(SystemExit):
        controller_main(["--store", "memory", "--tls-cert", "c.pem", "--audit-log", ""])
    assert "go together" in capsys.readouterr().err


def test_agent_parallel_starts_is_at_least_one(capsys: pytest.CaptureFixture[str]) -> None:
    from agent.main import main as agent_main

    with pytest.raises(SystemExit):
        agent_main(["--host", "h1", "--controller", "tcp:127.0.0.1:1", "--parallel-starts", "0"])
    assert "--parallel-starts: at least 1" in capsys.readouterr().err


def test_lab_agents_share_the_machines_starts() -> None:
    """A lab host alone starts four containers at once, as an agent on a host of its own; the
    agents of many lab hosts share two starts per core of this machine, at least one each."""
    from agent.containers import PARALLEL_STARTS
    from sdnctl.topology.deploy import LAB_STARTS_MAX, lab_parallel_starts

    assert LAB_STARTS_MAX == PARALLEL_STARTS  # a lab host alone starts as an agent does
    assert [lab_parallel_starts(n, cores=2) for n in (1, 2, 3, 4, 100)] == [4, 2, 1, 1, 1]
    assert lab_parallel_starts(1, cores=16) == 4 and lab_parallel_starts(8, cores=16) == 4
    assert lab_parallel_starts(16, cores=16) == 2
