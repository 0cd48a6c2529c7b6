#!/usr/bin/env bash
# Installs the Node.js peer's dependencies (ws) from its lock file when they are missing.
set -euo pipefail
dir="$(dirname "$0")/../bench/peers/node_ws"
[ -f "$dir/package.json" ] || exit 0
if ! command -v npm >/dev/null 2>&1; then
  echo "npm is missing: install Node.js 20+ (apt-get install -y nodejs npm) for the Node peer" >&2
  exit 1
fi
if [ ! -d "$dir/node_modules/ws" ]; then
  if [ -f "$dir/package-lock.json" ]; then npm ci --prefix "$dir" --no-audit --no-fund --silent
  else npm install --prefix "$dir" --no-audit --no-fund --silent; fi
fi
