#!/usr/bin/env bash
# Build the CNI plugin's C shim (sdnctl/cni/shim.c) as OUT, running this checkout's plugin file
# with PYTHON (default: the checkout's .venv python) for what it leaves to Python.
# Usage: scripts/build-cni-shim.sh OUT [PYTHON]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
out=$1
python=${2:-$here/.venv/bin/python}
tmp=$(mktemp "$out.XXXXXX")
trap 'rm -f "$tmp"' EXIT
cc -O2 -Wall -Wextra -Werror -o "$tmp" -DPYTHON="\"$python\"" \
  -DPLUGIN="\"$here/sdnctl/cni/plugin.py\"" "$here/sdnctl/cni/shim.c"
chmod 0755 "$tmp"
mv "$tmp" "$out"
trap - EXIT
