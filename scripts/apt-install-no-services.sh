#!/usr/bin/env bash
# Install, through apt-get, those of the Debian packages named as arguments that are missing
# (run as root), without letting their maintainer scripts start a service on this machine:
# `prometheus` (for `promtool`, which the metrics tests run) would otherwise start a Prometheus
# server scraping the host, and the tests only want the tool. While apt runs, a policy-rc.d
# forbids starting services (one that is already there is left alone: it is the image's), and
# on a systemd host the named units are disabled so that the next boot does not start them
# either. The pattern of scripts/install-docker-io.sh.
set -euo pipefail
here="$(dirname "$0")"
missing=()
for p in "$@"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
((${#missing[@]})) || exit 0
policy=/usr/sbin/policy-rc.d
ours=""
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy"
  chmod 755 "$policy"
  ours=1
fi
trap 'if [ -n "$ours" ]; then rm -f "$policy"; fi' EXIT
"$here/apt-install-missing.sh" "${missing[@]}"
if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
  for p in "${missing[@]}"; do
    systemctl disable "$p.service" >/dev/null 2>&1 || true
    systemctl stop "$p.service" >/dev/null 2>&1 || true
  done
fi
