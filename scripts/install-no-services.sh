#!/usr/bin/env bash
# Install Debian packages that ship a daemon (docker.io, containerd, podman, prometheus, ...)
# without ever starting that daemon in the host's namespaces: tests and benchmarks start their
# own dockerd, containerd, prometheus... inside namespaces and state directories of their own.
# A package's postinst starts its services (invoke-rc.d, or deb-systemd-invoke on a systemd
# host), and a running dockerd would rewrite the host's firewall; so while apt installs them, a
# policy-rc.d forbids starting services (one that is already there is left alone), and on a
# systemd host the packages' units are disabled so that the next boot does not start them
# either. Packages installed already are left alone.
# Usage: scripts/install-no-services.sh PACKAGE...
set -euo pipefail
here="$(dirname "$0")"
missing=()
for p in "$@"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ "${#missing[@]}" -eq 0 ] && exit 0
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
    for unit in $(dpkg -L "$p" 2>/dev/null | grep -E '/systemd/system/[^/]+\.(service|socket)$'); do
      systemctl disable "$(basename "$unit")" >/dev/null 2>&1 || true
    done
  done
fi
