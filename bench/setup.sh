#!/usr/bin/env bash
# Install the reference tools the benchmarks compare against (run as root, Debian 12).
# Only what is missing is installed; scripts/setup.sh stays free of benchmark-only packages.
set -euo pipefail
packages=(containernetworking-plugins iperf3 iptables iproute2 util-linux)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "bench/setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
