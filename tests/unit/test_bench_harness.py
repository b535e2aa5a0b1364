"""bench/harness.py: result files say where their figures come from, and the README's tables are
generated between markers from them (issue 15: no figure typed by hand).

The harness is a script beside the benchmarks (``bench/`` is not a package): it is loaded by
path. Everything is written under pytest's tmp_path; nothing is timed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

HARNESS = Path(__file__).resolve().parents[2] / "bench" / "harness.py"


@pytest.fixture
def harness(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_harness", HARNESS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_harness", module)  # dataclasses look it up
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "RESULTS_DIR", str(tmp_path / "results"))
    return module


def test_write_result_records_revision_machine_date_and_load(harness: ModuleType) -> None:
    path = harness.write_result("demo", {"measurements": [
        harness.Measurement("x", "ms", [1.0, 2.0, 3.0])]})
    with open(path) as f:
        doc = json.load(f)
    assert doc["name"] == "demo"
    assert doc["timestamp"].endswith("Z")
    assert doc["mode"] in ("quick", "full")
    assert len(doc["revision"].split("+")[0]) == 40  # a git commit
    assert doc["machine"]["cores"] == os.cpu_count()
    assert doc["machine"]["kernel"] == os.uname().release
    assert doc["machine"]["cpu"]
    assert len(doc["load"]["start"]) == 3 and len(doc["load"]["end"]) == 3
    assert doc["measurements"][0]["median"] == 2.0


def test_a_result_of_another_shape_is_read(harness: ModuleType, tmp_path: Path) -> None:
    """A newer script's file (only samples, no provenance) still makes rows, not a crash."""
    other = tmp_path / "reliability.json"
    other.write_text(json.dumps({"measurements": [{"name": "m", "unit": "s",
                                                   "samples": [1, 3, 2]}],
                                 "comparisons": [{"name": "c", "value": 0.5}]}))
    results = harness.load_results([str(other)])
    assert results[0]["name"] == "reliability"
    text = harness.markdown(results)
    assert "| m | 2 | " in text
    assert "| c | 0.5 |  | - |" in text
    assert "machine not recorded" in text


def test_readme_tables_replaced_between_markers_only(harness: ModuleType,
                                                     tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# prose before\n\n{harness.TABLES_BEGIN}\n\nold | 1.0\n\n"
                      f"{harness.TABLES_END}\n\nprose after\n")
    harness.write_result("demo", {"comparisons": [harness.comparison("a/b", 1.5, "<= 2",
                                                                     True)]})
    harness.write_readme(harness.load_results(), str(readme))
    text = readme.read_text()
    assert text.startswith("# prose before\n")
    assert text.endswith(f"{harness.TABLES_END}\n\nprose after\n")
    assert "old | 1.0" not in text
    assert "| demo | a/b | 1.5 | <= 2 | yes |" in text  # every target at a glance
    assert "### demo" in text


def test_readme_without_markers_is_refused(harness: ModuleType, tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("no markers\n")
    with pytest.raises(SystemExit, match="markers"):
        harness.write_readme([], str(readme))
    assert readme.read_text() == "no markers\n"
