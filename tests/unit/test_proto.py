"""The committed generated code (sdnctl/v1/) is what scripts/gen-proto.sh makes of proto/."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ("sdnctl_pb2.py", "sdnctl_pb2_grpc.py", "sdnctl_pb2.pyi")


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gen")
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gen-proto.sh"), str(out)],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, f"scripts/gen-proto.sh failed:\n{result.stderr}"
    return out / "sdnctl" / "v1"


@pytest.mark.parametrize("name", GENERATED)
def test_generated_code_is_fresh(regenerated: Path, name: str) -> None:
    fresh = (regenerated / name).read_bytes()
    committed = (ROOT / "sdnctl" / "v1" / name).read_bytes()
    assert fresh, f"gen-proto.sh produced an empty {name}"
    assert committed == fresh, (
        f"sdnctl/v1/{name}: generated code is stale: run scripts/gen-proto.sh")
