#!/usr/bin/env bash
# The whole test suite: lint (ruff), types (mypy), unit tests and namespace tests (as root).
# Extra arguments go to pytest, e.g. scripts/test.sh -k e2e
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
scripts/setup.sh
echo "== ruff";  .venv/bin/ruff check .
echo "== mypy";  .venv/bin/mypy
echo "== pytest"
# Two workers (pytest-xdist), each taking one test file at a time (a module's shared lab stays in
# one process): namespace tests mostly wait on kernels and daemons, so two of them share the two
# cores well, and every test names what it builds with a prefix of its own, so they never meet.
# SDNCTL_TEST_WORKERS=0 runs everything in this one process.
# --timeout: no test takes 100 s on a quiet machine; one that hangs fails after 300 s with its
# traceback (pytest-timeout), and the run goes on, instead of running into CI's time limit.
.venv/bin/pytest -n "${SDNCTL_TEST_WORKERS:-2}" --dist loadfile \
  --timeout "${SDNCTL_TEST_TIMEOUT:-300}" "$@"
