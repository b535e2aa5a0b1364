"""The test suite itself: every test module's file name is unique across ``tests/``. pytest
imports test modules by their base name (rootdir-relative packages are not used here), so a
second ``test_x.py`` in another folder fails to import ("import file mismatch") or, worse, is
never collected: it happened twice (``test_ipv6.py``, ``test_docker_plugin.py``)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent


def test_test_modules_have_unique_names() -> None:
    names = Counter(p.name for p in TESTS.rglob("test_*.py"))
    assert len(names) > 50  # it sees the suite
    assert [name for name, n in names.items() if n > 1] == []
