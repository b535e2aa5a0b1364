#!/usr/bin/env bash
# Install the reference tools the benchmarks compare against (run as root, Debian 12).
# Only what is missing is installed; scripts/setup.sh stays free of benchmark-only packages.
# Latency (bench/dataplane.py) is measured with ping: Debian's netperf (TCP_RR) is in non-free.
#
# docker.io (bench/start.py) must never run its daemon in the host's namespaces: the benchmark
# starts its own dockerd inside a namespace of its own (scripts/install-no-services.sh keeps the
# package from starting it).
set -euo pipefail
here="$(dirname "$0")"
"$here/../scripts/apt-install-missing.sh" \
  containernetworking-plugins iperf3 iptables iproute2 util-linux crun iputils-ping \
  dnsperf aardvark-dns
"$here/../scripts/install-no-services.sh" docker.io
