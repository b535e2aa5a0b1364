#!/usr/bin/env bash
# Install Debian's docker.io (run as root) without ever starting its daemon in the host's
# namespaces: tests (tests/netns/test_docker_compat.py) and benchmarks (bench/start.py) start
# their own dockerd inside namespaces of their own. The package's postinst starts docker.service
# and docker.socket (invoke-rc.d, or deb-systemd-invoke on a systemd host), and a running
# dockerd would rewrite the host's firewall; so while apt installs it, a policy-rc.d forbids
# starting services (one that is already there is left alone), and on a systemd host the units
# are disabled so that the next boot does not start them either. Nothing happens when docker.io
# is installed already.
set -euo pipefail
here="$(dirname "$0")"
if dpkg-query -W -f='${Status}' docker.io 2>/dev/null | grep -q "install ok installed"; then
  exit 0
fi
policy=/usr/sbin/policy-rc.d
ours=""
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy"
  chmod 755 "$policy"
  ours=1
fi
trap 'if [ -n "$ours" ]; then rm -f "$policy"; fi' EXIT
"$here/apt-install-missing.sh" docker.io
if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
  systemctl disable docker.service docker.socket >/dev/null 2>&1 || true
fi
