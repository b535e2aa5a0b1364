#!/usr/bin/env bash
# Install the reference tools the benchmarks compare against (run as root, Debian 12).
# Only what is missing is installed; scripts/setup.sh stays free of benchmark-only packages.
set -euo pipefail
"$(dirname "$0")/../scripts/apt-install-missing.sh" \
  containernetworking-plugins iperf3 iptables iproute2 util-linux
