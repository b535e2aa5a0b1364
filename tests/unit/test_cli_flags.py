"""Global sdnctl flags."""

from __future__ import annotations

import os

import pytest

from sdnctl import cli


def test_controller_flag_is_the_address_dialled(monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SDNCTL_CONTROLLER", "unix:/elsewhere.sock")
    assert cli.main(["--controller", "unix:/nonexistent/sdnctl.sock", "ps"]) == 1
    assert "no controller answers at unix:/nonexistent/sdnctl.sock" in capsys.readouterr().err
    assert os.environ["SDNCTL_CONTROLLER"] == "unix:/nonexistent/sdnctl.sock"
