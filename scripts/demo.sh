#!/usr/bin/env bash
# The demo: set up, bring up topology-examples/single-host.yaml on lab hosts, show it working.
# It stays up afterwards; remove it with: .venv/bin/sdnctl down topology-examples/single-host.yaml
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
scripts/setup.sh
example=${1:-topology-examples/single-host.yaml}
sdnctl=.venv/bin/sdnctl

$sdnctl up "$example"
echo
$sdnctl ps
echo
field() { $sdnctl inspect container "$1" --json | .venv/bin/python -c "import json,sys; print(json.load(sys.stdin)['$2'])"; }
web_ns=$(field web netns)
db_ip=$(field db ip)
gw=$(field web gateway)
echo "web -> db ($db_ip):";         nsenter --net="$web_ns" ping -n -c 2 -W 1 "$db_ip" | tail -2
echo "web -> gateway ($gw):";       nsenter --net="$web_ns" ping -n -c 1 -W 1 "$gw" | tail -1
echo "web -> outside (203.0.113.1, masqueraded to h1's underlay address):"
nsenter --net="$web_ns" ping -n -c 1 -W 1 203.0.113.1 | tail -1
echo
echo "The topology stays up. Look around with:"
echo "  $sdnctl inspect host h1 --json"
echo "  nsenter --net=$web_ns ip addr"
echo "Remove it with:"
echo "  $sdnctl down $example"
