#!/usr/bin/env bash
# keepalive_bytes.sh - what keeping one binding alive costs on the wire, per keep-alive mode of
# `sipalive register`, at the same interval, measured on the wire (issue 4, benchmark 1).
#
# One registrar, `sipalive respond --registrar --users FILE --realm bench --digest-algorithms MD5
# --registrar-db '' --qualify-frequency 0` (qualify off: only the UA's traffic is on the wire),
# listening on one UDP and one TCP port per mode. One `sipalive register --keepalive MODE
# --keepalive-interval INTERVAL --expires EXPIRES` per mode, each its own user, all at once
# (bytes do not depend on CPU contention, and one window serves every mode). Modes (MODES):
#   udp-crlf udp-stun udp-options udp-register tcp-crlf, and udp-none as a control (nothing
#   should cross the wire in its window).
# Capture: `dumpcap -i lo -P` with a BPF filter on the registrar ports, started before the
# registrar; bench/keepalive_bytes.py reads it. Per mode the window opens MARGIN s after the
# registrar's first 200 to a REGISTER (the initial registration is excluded and printed apart)
# and lasts WINDOW s; the UAs are stopped (SIGTERM: they un-REGISTER) only after every window.
# Bytes are IP bytes (IPv4 + UDP/TCP headers + payload), both directions.
# Prints bytes/hour per binding at INTERVAL (measured) and scaled to SCALE_TO s (the default
# keep-alive interval, 25 s), the ratio to udp-crlf (LOWER is cheaper), and an all-in estimate
# that adds the registration refreshes. Not a test: exits 0 after printing, 2 on a setup error.
#
# Env: MODES="udp-crlf udp-stun udp-options udp-register tcp-crlf udp-none" INTERVAL=5 WINDOW=120
#      MARGIN=1 SCALE_TO=25 EXPIRES=3600 BASE_PORT=7500 (one port per mode from +0) OUTDIR=
#      SUMMARY_FILE=   (root: dumpcap on lo)
. "$(dirname "$0")/lib.sh"
need dumpcap

MODES="${MODES:-udp-crlf udp-stun udp-options udp-register tcp-crlf udp-none}"
INTERVAL="${INTERVAL:-5}"; WINDOW="${WINDOW:-120}"; MARGIN="${MARGIN:-1}"; SCALE_TO="${SCALE_TO:-25}"
EXPIRES="${EXPIRES:-3600}"
NONCE_TTL=300   # the registrar's nonce lifetime (RegistrarConfig.nonce_ttl; no CLI option)
HELPER="$BENCH_DIR/keepalive_bytes.py"
[ "$(id -u)" = 0 ] || die "needs root (dumpcap on lo)"
read -r -a MODE_LIST <<<"$MODES"
N=${#MODE_LIST[@]}
[ "$N" -ge 1 ] && [ "$N" -le 20 ] || die "MODES: 1 to 20 modes"
offsets=(); for i in $(seq 0 $((N - 1))); do offsets+=("$i"); done
BASE_PORT="${BASE_PORT:-7500}"; pick_base "${offsets[@]}"

echo "# keepalive_bytes: $(machine_line)"
noise_report keepalive

# the users file: one user per mode, same password (never in argv: --password-env)
USERS="$W/users"; PW="bench-$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')"
: >"$USERS"; chmod 600 "$USERS"
for m in "${MODE_LIST[@]}"; do echo "ka-$m:$PW" >>"$USERS"; done

HARD=$(( WINDOW + 120 ))      # every daemon's own hard stop (s)
listen=(); specs=(); filter=""
for i in $(seq 0 $((N - 1))); do
  p=$((BASE + i)); m=${MODE_LIST[$i]}
  case "$m" in udp-crlf|udp-stun|udp-options|udp-register|udp-none|tcp-crlf|tcp-options|tcp-register|tcp-none) ;;
    *) die "unknown mode $m (TRANSPORT-MODE: udp-crlf udp-stun udp-options udp-register tcp-crlf ...)" ;; esac
  listen+=(--listen "udp:127.0.0.1:$p" --listen "tcp:127.0.0.1:$p")
  specs+=("$m:$p:${m%%-*}:${m#*-}")
  filter+="${filter:+ or }port $p"
done

# 1. the capture, before anything is sent
CAP="$W/keepalive.pcap"
timeout -k 5 "$HARD" dumpcap -i lo -P -B 8 -f "ip and (udp or tcp) and ($filter)" -w "$CAP" >"$W/dumpcap.log" 2>&1 &
DUMP_PID=$!; STARTED+=("$DUMP_PID")
for _ in $(seq 50); do grep -q "^Capturing on" "$W/dumpcap.log" 2>/dev/null && break; sleep 0.1; done
grep -q "^Capturing on" "$W/dumpcap.log" || die "dumpcap did not start: $(tail -3 "$W/dumpcap.log")"
sleep 0.5

# 2. the registrar (one process, all ports)
for i in $(seq 0 $((N - 1))); do port_busy $((BASE + i)) && die "port $((BASE + i)) busy"; done
"$SIPALIVE" respond "${listen[@]}" --registrar --users "$USERS" --realm bench --digest-algorithms MD5 \
  --registrar-db '' --qualify-frequency 0 --duration "$HARD" >"$W/registrar.log" 2>&1 &
REG_PID=$!; STARTED+=("$REG_PID")
for i in $(seq 0 $((N - 1))); do
  wait_listen $((BASE + i)) udp && wait_listen $((BASE + i)) tcp \
    || die "the registrar did not listen on $((BASE + i)): $(tail -3 "$W/registrar.log")"
done
echo "# registrar: sipalive respond --registrar --digest-algorithms MD5 --registrar-db '' --qualify-frequency 0 (pid $REG_PID), ports $BASE-$((BASE + N - 1))"
echo "# UAs: sipalive register --keepalive MODE --keepalive-interval $INTERVAL --expires $EXPIRES, one per mode, all at once"

# 3. one UA per mode
UA_PIDS=""
for i in $(seq 0 $((N - 1))); do
  p=$((BASE + i)); m=${MODE_LIST[$i]}
  BENCH_KA_PW="$PW" "$SIPALIVE" register --registrar "sip:127.0.0.1:$p" --user "ka-$m" \
    --password-env BENCH_KA_PW --transport "${m%%-*}" --keepalive "${m#*-}" \
    --keepalive-interval "$INTERVAL" --expires "$EXPIRES" --json --duration "$HARD" \
    >"$W/ua-$m.log" 2>&1 &
  STARTED+=("$!"); UA_PIDS+="$! "
done
# every UA registered (bounded: 15 s)
for _ in $(seq 150); do
  n=0; for m in "${MODE_LIST[@]}"; do grep -q '"event": "registered"' "$W/ua-$m.log" 2>/dev/null && n=$((n + 1)); done
  [ "$n" = "$N" ] && break; sleep 0.1
done
for m in "${MODE_LIST[@]}"; do
  grep -q '"event": "registered"' "$W/ua-$m.log" || die "UA $m did not register: $(tail -3 "$W/ua-$m.log")"
done
log "all $N UAs registered; measuring a ${WINDOW}-s window (+${MARGIN} s margin)"
sleep "$(awk -v w="$WINDOW" -v m="$MARGIN" 'BEGIN { print w + m + 2 }')"

# 4. anything wrong during the window (a flow failure, a re-registration) is printed
for m in "${MODE_LIST[@]}"; do
  other=$(grep -v -e '"event": "flow_up"' -e '"event": "registered"' -e '"event": "refreshed"' "$W/ua-$m.log" || true)
  [ -n "$other" ] && echo "# WARNING: UA $m logged: $(echo "$other" | head -3 | tr '\n' ' ')"
  [ "${m#*-}" = register ] || ! grep -q '"event": "refreshed"' "$W/ua-$m.log" \
    || echo "# WARNING: UA $m refreshed its registration inside the window (counted)"
done
for p in $UA_PIDS $REG_PID; do still_alive "$p" "a UA or the registrar" "$W/registrar.log" \
  || die "a process died during the window"; done

# 5. stop the UAs (they un-REGISTER, after the window), then the registrar and the capture
stop_pids "$UA_PIDS"
sleep 0.5
stop_pids "$REG_PID"
stop_pids "$DUMP_PID"
echo "# registrar $(grep -o 'stopped: .*' "$W/registrar.log" || echo 'did not log its stop')"

rc=0
"$PYREAL" -S "$HELPER" "$CAP" "${specs[@]}" --window "$WINDOW" --margin "$MARGIN" --interval "$INTERVAL" \
  --scale-to "$SCALE_TO" --expires "$EXPIRES" --nonce-ttl "$NONCE_TTL" --emit "$W/emit.tsv" || rc=$?
[ "$rc" = 0 ] || [ "$rc" = 3 ] || die "the capture could not be read (helper rc $rc)"
[ "$rc" = 3 ] && echo "# WARNING: some modes gave no figure (see NO RESULT above)"
while IFS=$'\t' read -r k v; do emit "$k" "$v"; done <"$W/emit.tsv"
exit 0
