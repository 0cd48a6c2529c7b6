#!/usr/bin/env bash
# Installs the Debian packages the test-suite drives for real (Chromium for the browser
# tests, redis-server/redis-cli for the scaling tests, nginx for the reverse-proxy test, openssl
# for test certificates, prometheus/promtool for the monitoring tests, caddy for the shipped
# Caddyfile) when missing.
set -euo pipefail
declare -A wanted=([chromium]=/usr/bin/chromium [redis-server]=redis-server [redis-tools]=redis-cli [nginx]=nginx [openssl]=openssl [prometheus]=promtool [caddy]=caddy)
missing=()
for pkg in "${!wanted[@]}"; do
  command -v "${wanted[$pkg]}" >/dev/null 2>&1 || [ -x "${wanted[$pkg]}" ] || [ -x "/usr/sbin/${wanted[$pkg]}" ] || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "missing system packages: ${missing[*]}; install them with: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "installing system packages: ${missing[*]}"
# The tests start their own nginx, redis-server and prometheus on loopback; the packages' own
# services (prometheus's listens on every address, port 9090) must not start on install.
# policy-rc.d is the Debian hook that invoke-rc.d asks; add a refusing one unless one exists.
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
  chmod 755 /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
