#!/usr/bin/env bash
# The demo: set up, then bring up topology-examples/two-hosts.yaml on two lab hosts (a VXLAN
# overlay between them, and all four network modes: bridged, joined, closed, open), show its
# status, prove it with `sdnctl check` (real packets from inside the containers) and draw it.
# It stays up afterwards; the last lines say how to take it down.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
scripts/setup.sh
example=${1:-topology-examples/two-hosts.yaml}
graph=${SDNCTL_DEMO_GRAPH:-${SDNCTL_RUN_DIR:-/run/sdnctl}/demo-topology.svg}
sdnctl=.venv/bin/sdnctl

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

image=${SDNCTL_RUN_DIR:-/run/sdnctl}/sdnctl-test.tar
mkdir -p "$(dirname "$image")"
step "the busybox test image -> $image"
.venv/bin/python -m sdnctl.lab.testimage -o "$image"

step "sdnctl up $example --image $image   (the plan first, then the build)"
$sdnctl up "$example" --image "$image"

step "sdnctl status $example"
$sdnctl status "$example"

step "sdnctl check $example   (expected vs measured, probed from inside the containers)"
check_rc=0
$sdnctl check "$example" || check_rc=$?

step "sdnctl graph $example -o $graph"
$sdnctl graph "$example" -o "$graph"

echo
if ((check_rc == 0)); then
  echo "Every expectation held."
else
  echo "sdnctl check exited $check_rc: see the mismatches above."
fi
echo "The drawing is in $graph"
echo "The live view (open it in a browser on this machine; it follows every change):"
echo "  $($sdnctl ui)"
echo "Prometheus metrics: controller and agents ($sdnctl status --json shows every URL):"
echo "  $($sdnctl ui --json | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)["metrics_url"])')"
echo "The topology stays up. Look around with:"
echo "  $sdnctl status; $sdnctl ps; $sdnctl inspect container web --json; $sdnctl image ls"
echo "  $sdnctl exec web -- ps; $sdnctl logs web"
echo "  $sdnctl up --dry-run $example      # the plan: nothing to do"
echo "Take it down with:"
echo "  $sdnctl down $example"
exit "$check_rc"
