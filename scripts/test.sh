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
.venv/bin/pytest "$@"
