#!/usr/bin/env bash
# Install the reference tools the benchmarks compare against (run as root, Debian 12).
# Only what is missing is installed; scripts/setup.sh stays free of benchmark-only packages.
#
# docker.io (bench/start.py) must never run its daemon in the host's namespaces: the benchmark
# starts its own dockerd inside a namespace of its own. So while apt installs it, a
# policy-rc.d forbids starting services (the package's postinst would otherwise start
# docker.service on a systemd host); one that is already there is left alone.
set -euo pipefail
here="$(dirname "$0")"
"$here/../scripts/apt-install-missing.sh" \
  containernetworking-plugins iperf3 iptables iproute2 util-linux crun dnsperf aardvark-dns
if ! dpkg-query -W -f='${Status}' docker.io 2>/dev/null | grep -q "install ok installed"; then
  policy=/usr/sbin/policy-rc.d
  ours=""
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    ours=1
  fi
  trap '[ -n "$ours" ] && rm -f "$policy"' EXIT
  "$here/../scripts/apt-install-missing.sh" docker.io
  # On a systemd host, keep the service from starting at the next boot as well.
  if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    systemctl disable docker.service docker.socket >/dev/null 2>&1 || true
  fi
fi
