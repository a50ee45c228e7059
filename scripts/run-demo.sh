#!/usr/bin/env bash
# `make run` until the monitor exists: a local responder, pinged live. Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
S=.venv/bin/sipalive
PORT="${PORT:-5062}"
COUNT="${COUNT:-10}"
$S respond --listen "udp:127.0.0.1:$PORT" --listen "tcp:127.0.0.1:$PORT" --reason Alive --duration 600 &
RESP=$!
trap 'kill $RESP 2>/dev/null; wait $RESP 2>/dev/null || true' EXIT
sleep 0.5
echo "== sipalive ping -c $COUNT sip:demo@127.0.0.1:$PORT (udp) and ;transport=tcp"
$S ping -c "$COUNT" -i 0.5 "sip:demo@127.0.0.1:$PORT" "sip:demo@127.0.0.1:$PORT;transport=tcp"
echo "== sipalive check -H 127.0.0.1 -p $PORT -w 100ms -c 500ms"
$S check -H 127.0.0.1 -p "$PORT" -w 100ms -c 500ms || true
