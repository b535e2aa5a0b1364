"""Hooks for the whole suite.

A failure is printed the moment it happens, with its test's name, not only in the summary at the
end: if a later test hangs and the run is cut short (CI has a time limit), the log still says
what failed before. Each test also has a time limit (scripts/test.sh passes `--timeout`, from
pytest-timeout), so a hang fails that one test with its traceback instead of the whole run.
"""

from __future__ import annotations

import pytest


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    # Runs in pytest-xdist's controller too, as each worker's reports arrive.
    if report.failed:
        reporter = _reporter
        if reporter is not None:
            reporter.write_line(f"\nFAILED ({report.when}) {report.nodeid}", red=True)


_reporter: pytest.TerminalReporter | None = None


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    global _reporter
    _reporter = config.pluginmanager.get_plugin("terminalreporter")
