#!/usr/bin/env bash
# Installs the Node.js peers' dependencies from their committed lock files when they are missing:
# bench/peers/node_ws (ws) and bench/peers/uws (uwebsockets: uWebSockets.js's prebuilt native
# addon for every supported Node ABI, loaded by its uws.js). `npm ci` installs exactly the locked
# versions and runs no install scripts of ours.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
if ! command -v npm >/dev/null 2>&1; then
  echo "npm is missing: install Node.js 20+ (apt-get install -y nodejs npm) for the Node peers" >&2
  exit 1
fi
install_peer() {  # install_peer DIR MODULE
  local dir="$root/bench/peers/$1" module="$2"
  [ -f "$dir/package.json" ] || return 0
  [ -d "$dir/node_modules/$module" ] && return 0
  if [ -f "$dir/package-lock.json" ]; then npm ci --prefix "$dir" --no-audit --no-fund --silent
  else npm install --prefix "$dir" --no-audit --no-fund --silent; fi
}
install_peer node_ws ws
install_peer uws uwebsockets
# uWebSockets.js ships one binary per platform and Node ABI: say so now if none fits this Node.
if [ -d "$root/bench/peers/uws/node_modules/uwebsockets" ]; then
  if ! (cd "$root/bench/peers/uws" && node -e "require('uwebsockets')" >/dev/null 2>&1); then
    echo "warning: uwebsockets has no binary for node $(node --version) on $(uname -m);" \
      "the uws peer will be skipped" >&2
  fi
fi
