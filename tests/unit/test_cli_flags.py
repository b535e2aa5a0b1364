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
