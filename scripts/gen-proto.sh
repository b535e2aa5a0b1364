#!/usr/bin/env bash
# Regenerate the committed Python code for proto/ (tests/unit/test_proto.py fails when it is stale).
# Usage: scripts/gen-proto.sh [OUTPUT_ROOT]   (default: the checkout itself)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$here}
python=${PYTHON:-$here/.venv/bin/python}
mkdir -p "$out/sdnctl/v1"
"$python" -m grpc_tools.protoc -I "$here/proto" \
  --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
  "$here/proto/sdnctl/v1/sdnctl.proto"
touch "$out/sdnctl/v1/__init__.py"
