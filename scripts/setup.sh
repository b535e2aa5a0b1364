#!/usr/bin/env bash
# Install what sdnctl needs on a Debian 12 machine (run as root): system packages through apt-get,
# then a virtualenv at .venv in the checkout with sdnctl installed (editable) plus its dev tools.
# Safe to run again: it installs only what is missing.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"

scripts/apt-install-missing.sh python3 python3-venv python3-pip iproute2 nftables tcpdump \
  iputils-ping util-linux mount procps graphviz crun runc busybox-static etcd-server \
  containernetworking-plugins bind9-dnsutils gcc libc6-dev apache2-utils
# Real clients and servers the tests drive (docker load; Podman and containerd through the CNI
# plugin; promtool for the metrics; a headless chromium for the live view, through Playwright's
# executable_path: Playwright never downloads a browser here; the lab's registry,
# docker-registry, with htpasswd from apache2-utils), installed so that none of their daemons is
# ever started on this host (see the script).
scripts/install-no-services.sh docker.io podman containerd iperf3 prometheus chromium \
  docker-registry

if [[ ! -x .venv/bin/python ]]; then
  echo "setup: creating .venv"
  python3 -m venv .venv
fi
if ! .venv/bin/python -c "import sdnctl.v1.sdnctl_pb2, jsonschema, pytest, ruff, mypy" 2>/dev/null \
    || [[ pyproject.toml -nt .venv/.installed ]]; then
  echo "setup: installing Python packages into .venv"
  # compat: the checkout on sys.path through a .pth line, not setuptools' import hook (which
  # took 14 ms of every process's start, a CLI verb's included)
  .venv/bin/pip install -q --disable-pip-version-check -e '.[dev]' \
    --config-settings editable_mode=compat
  touch .venv/.installed
fi
# The CNI plugin (issue 17): type "sdnctl" in a CNI directory, never on PATH (where `sdnctl` is
# the CLI). A runtime starts it once per call: the C shim (sdnctl/cni/shim.c, ~1 ms to start)
# hands the call to the host's agent and leaves VERSION and a missing agent to the venv's python
# without site on the stdlib-only plugin file (without a C compiler, a wrapper runs that file
# for every call). .venv/bin/sdnctl-cni is the Python program alone, for other layouts.
plugin=$(mktemp)
if ! scripts/build-cni-shim.sh "$plugin" "$here/.venv/bin/python"; then
  echo "setup: could not build the CNI shim; the plugin runs Python for every call"
  printf '#!/bin/sh\n# sdnctl CNI plugin, installed by %s/scripts/setup.sh\nexec %s -S -E %s "$@"\n' \
    "$here" "$here/.venv/bin/python" "$here/sdnctl/cni/plugin.py" >"$plugin"
fi
for dir in /opt/cni/bin /usr/lib/cni; do
  if ! cmp -s "$plugin" "$dir/sdnctl" 2>/dev/null; then
    install -D -m 0755 "$plugin" "$dir/sdnctl"
    echo "setup: CNI plugin installed as $dir/sdnctl"
  fi
done
rm -f "$plugin"
# Bytecode for our own modules, written here once: every CLI call, agent and controller is a new
# process, and where PYTHONDONTWRITEBYTECODE is set (some CI images set it) an editable install
# would otherwise compile every module from source on each start (about 0.1 s for a CLI verb).
.venv/bin/python -m compileall -q -j 0 sdnctl agent >/dev/null
echo "setup: ready"
