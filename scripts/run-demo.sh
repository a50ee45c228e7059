#!/usr/bin/env bash
# `make run`: the monitor on examples/monitor.toml, watching a local demo peer (sipalive
# respond on 127.0.0.1:5062, UDP and TCP). Page: http://127.0.0.1:8060  Ctrl-C stops both.
# DURATION=S stops after S seconds (used by the tests of this script).
set -euo pipefail
cd "$(dirname "$0")/.."
S=.venv/bin/sipalive
mkdir -p var
$S respond --listen udp:127.0.0.1:5062 --listen tcp:127.0.0.1:5062 --reason Alive \
  --duration "${DURATION:-86400}" 2>>var/demo-peer.log &
PEER=$!
MON=""
cleanup() {
  [ -z "$MON" ] || kill "$MON" 2>/dev/null || true
  kill "$PEER" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM
echo "demo peer: sipalive respond on udp+tcp 127.0.0.1:5062 (log: var/demo-peer.log)"
echo "monitor:   http://127.0.0.1:8060   /metrics   /api/targets   (Ctrl-C stops)"
$S monitor -c examples/monitor.toml &
MON=$!
if [ -n "${DURATION:-}" ]; then
  sleep "$DURATION"
else
  wait "$MON"
fi
