#!/usr/bin/env bash
# Install what sdnctl needs on a Debian 12 machine (run as root): system packages through apt-get,
# then a virtualenv at .venv in the checkout with sdnctl installed (editable) plus its dev tools.
# Safe to run again: it installs only what is missing.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"

scripts/apt-install-missing.sh python3 python3-venv python3-pip iproute2 nftables tcpdump \
  iputils-ping util-linux mount procps graphviz crun runc busybox-static etcd-server \
  bind9-dnsutils

if [[ ! -x .venv/bin/python ]]; then
  echo "setup: creating .venv"
  python3 -m venv .venv
fi
if ! .venv/bin/python -c "import sdnctl.v1.sdnctl_pb2, jsonschema, pytest, ruff, mypy" 2>/dev/null \
    || [[ pyproject.toml -nt .venv/.installed ]]; then
  echo "setup: installing Python packages into .venv"
  .venv/bin/pip install -q --disable-pip-version-check -e '.[dev]'
  touch .venv/.installed
fi
echo "setup: ready"
