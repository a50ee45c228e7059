#!/usr/bin/env bash
# monitor_scale.sh - `sipalive monitor` at scale: the three benchmarks of issue 3.
#
#  udp     N targets sip:t<i>@127.<a>.<b>.<c>:PORT spread over ADDRS loopback addresses, every
#          FREQ s, answered by ONE `sipalive respond --rcvbuf 4194304` listening on each of
#          those addresses. After a warm-up of one frequency period (+10 % jitter + 5 s: every
#          first probe is out and its unknown->reachable transition written), a quiet window
#          of DURATION s: monitor CPU (utime+stime of all its threads, % of one core), RSS
#          (VmRSS max, VmHWM), probes/s achieved vs N/FREQ, unsuccessful probes; then /metrics
#          SCRAPES times spaced apart (curl: first byte and total time; the scheduler lag p99
#          each reads, i.e. the lag of a quiet loop), then back-to-back scrapes (the lag p99
#          under scrapes), with a poller timing GET /api/targets/t0 every 20 ms (loop stalls).
#          Targets (issue 3): CPU <= 15 %, RSS <= 400 MB, lag p99 <= 20 ms, /metrics < 250 ms
#          without a probe lagging -- at N = 100000, FREQ = 60.
#  tcp     TCP_N targets over TCP with crlf_ping_interval = CRLF s (RFC 5626 keep-alive),
#          one connection each held open to one `sipalive respond` (TCP listeners on the same
#          addresses): after a warm-up of one period, monitor CPU and RSS over TCP_DURATION s,
#          connections established, responder CPU, unsuccessful probes, transitions.
#  detect  DETECT_TARGETS targets every DETECT_FREQ s with qualify_timeout DETECT_TIMEOUT s on
#          one responder; DETECT_ROUNDS times per mode: wait until all are reachable, then at T
#          `kill` it (SIGKILL: the port closes, the kernel answers ICMP port unreachable, a
#          probe fails at once) or `stop` it (SIGSTOP: a silent peer, probes time out); detection
#          = the unreachable transition's `at` (GET /api/targets/NAME/history) minus T, against
#          the bound qualify_frequency + qualify_timeout (fail_threshold 1). A probe is due
#          FREQ x [0.9, 1.0] after the previous one ENDED (+-10 % before perf-monitor, whose
#          worst case was 1.1 FREQ + timeout: still printed). Then the responder is restarted / continued and
#          the recovery time is printed. (A black-holed TCP flow needs a network namespace and
#          iptables: another script.)
#
# Why one listener per address: `sipalive respond --listen udp:0.0.0.0:P` does answer every
# 127.x address, but from 127.0.0.1 (the kernel's source for an unbound reply), and the monitor
# rightly drops an answer whose source is not the address it asked (anti-spoofing), so every
# probe would time out. Loopback answers all of 127/8, and one responder listens on each of the
# ADDRS addresses (1000 sockets by default; ADDRS is bounded by the file-descriptor limit).
#
# Pinning (PIN=1): monitor on UAC_CPU (0), responder and the measuring helper + curl on
# RESP_CPU (1), so the monitor's core is its own (its store thread shares it). PIN=0: no taskset.
# File descriptors: the TCP part needs TCP_N + ADDRS + ~100 per process; the script raises its
# soft limit to the hard one (`ulimit -n`), prints it, and dies if that is still too low.
# Big files (database, /metrics bodies, the generated configs) are deleted on exit even with
# OUTDIR/RAW=1; logs and figures are kept. Not a test: exits 0 after printing, 2 on a setup error.
#
# Env: PARTS="udp tcp detect" N=20000 FREQ=60 DURATION=90 ADDRS=1000 SCRAPES=5
#      TCP_N=5000 TCP_DURATION=60 CRLF=30 DETECT_TARGETS=10 DETECT_ROUNDS=2 DETECT_FREQ=2
#      DETECT_TIMEOUT=1 DETECT_MODES="kill stop" BASE_PORT=7480 PIN=1 UAC_CPU=0 RESP_CPU=1
#      OUTDIR= SUMMARY_FILE=
# The issue's figures: N=100000 DURATION=240 TCP_N=10000 (PROFILE=long in run-all.sh).
. "$(dirname "$0")/lib.sh"

PARTS="${PARTS:-udp tcp detect}"
N="${N:-20000}"; FREQ="${FREQ:-60}"; DURATION="${DURATION:-90}"; ADDRS="${ADDRS:-1000}"
SCRAPES="${SCRAPES:-5}"
TCP_N="${TCP_N:-5000}"; TCP_DURATION="${TCP_DURATION:-60}"; CRLF="${CRLF:-30}"
DETECT_TARGETS="${DETECT_TARGETS:-10}"; DETECT_ROUNDS="${DETECT_ROUNDS:-2}"
DETECT_FREQ="${DETECT_FREQ:-2}"; DETECT_TIMEOUT="${DETECT_TIMEOUT:-1}"; DETECT_MODES="${DETECT_MODES:-kill stop}"
BASE_PORT="${BASE_PORT:-7480}"; pick_base 0 1 2 3
SIP_PORT=$BASE; HTTP_PORT=$((BASE + 1)); TCP_PORT=$((BASE + 2)); DET_PORT=$((BASE + 3))
HELPER="$BENCH_DIR/monitor_scale.py"
helper() { "$PYREAL" -S "$HELPER" "$@"; }
MPFX=(); HPFX=()
read -r -a MPFX <<<"$(pin "$UAC_CPU")"
read -r -a HPFX <<<"$(pin "$RESP_CPU")"
# big files go even when kept (OUTDIR/RAW): the databases, the /metrics body, the generated
# configs; a monitor log or event stream over 200 kB (10k+ transitions) keeps its first and last
# 100 lines
trim_big() {
  local f n
  rm -f "$W"/*.db "$W"/*.db-wal "$W"/*.db-shm "$W"/metrics.body "$W"/*.toml
  for f in "$W"/monitor-*.log "$W"/monitor-*.out; do
    [ -f "$f" ] && [ "$(stat -c %s "$f")" -gt 200000 ] || continue
    n=$(wc -l <"$f")
    { head -100 "$f"; echo "[... $((n - 200)) of $n lines cut by monitor_scale.sh ...]"; tail -100 "$f"; } >"$f.trimmed"
    mv "$f.trimmed" "$f"
  done
}
CLEANUP_HOOKS+=(trim_big)
for p in $PARTS; do case "$p" in udp|tcp|detect) ;; *) die "PARTS: unknown part '$p' (udp tcp detect)" ;; esac; done

echo "# monitor_scale: $(machine_line)"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
echo "# parts: $PARTS; ports: SIP $SIP_PORT (udp), $TCP_PORT (tcp), $DET_PORT (detect), HTTP $HTTP_PORT;" \
     "open files limit $(ulimit -n) (hard $(ulimit -Hn)); pinning: $([ "$PIN" = 1 ] && echo "monitor cpu$UAC_CPU, responder + helper cpu$RESP_CPU" || echo none)"

# start_responder TAG PORT ADDRS FIRST TRANSPORTS(udp|tcp|udp,tcp) -> RESP_PID
start_responder() {
  local tag=$1 port=$2 n=$3 first=$4 trs=$5 args=() i
  mapfile -t args < <(helper listen --addrs "$n" --first "$first" --port "$port" --transport "$trs" | tr ' ' '\n')
  "${HPFX[@]}" "$SIPALIVE" respond "${args[@]}" --rcvbuf 4194304 --duration 3600 >"$W/respond-$tag.log" 2>&1 &
  RESP_PID=$!; STARTED+=("$RESP_PID")
  for i in $(seq 100); do
    grep -q "listening on" "$W/respond-$tag.log" 2>/dev/null && return 0
    kill -0 "$RESP_PID" 2>/dev/null || break
    sleep 0.1
  done
  die "sipalive respond ($tag, $n addresses) did not start: $(tail -c 300 "$W/respond-$tag.log")"
}

# start_monitor TAG CONFIG HARD_STOP_S -> MON_WRAP (timeout wrapper), MON_PID (the monitor)
start_monitor() {
  local tag=$1 cfg=$2 hard=$3 i
  timeout -k 5 "$hard" "${MPFX[@]}" "$SIPALIVE" monitor -c "$cfg" >"$W/monitor-$tag.out" 2>"$W/monitor-$tag.log" &
  MON_WRAP=$!; STARTED+=("$MON_WRAP"); MON_PID=""
  for i in $(seq 50); do
    MON_PID=$(descendants "$MON_WRAP" | tail -1)
    [ -n "$MON_PID" ] && [ "$(cat "/proc/$MON_PID/comm" 2>/dev/null)" != taskset ] && break
    sleep 0.1
  done
  [ -n "$MON_PID" ] || die "the monitor ($tag) did not start: $(tail -c 300 "$W/monitor-$tag.log")"
  remember_kids "$MON_WRAP"
}

# stop_monitor TAG: SIGTERM to the monitor itself (it commits its state), up to 60 s, then the
# wrapper is stopped the usual way (TERM, 3 s, KILL)
stop_monitor() {
  local tag=$1 t0=$EPOCHREALTIME i
  kill -TERM "$MON_PID" 2>/dev/null || true
  for i in $(seq 600); do kill -0 "$MON_PID" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$MON_PID" 2>/dev/null; then
    echo "# WARNING: the monitor ($tag) did not stop within 60 s of SIGTERM: killed"
  else
    echo "# monitor ($tag) stopped $(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.1f", b-a}') s after SIGTERM"
  fi
  stop_tree "$MON_WRAP"; forget_pid "$MON_WRAP"
  grep -E "Traceback|ERROR" "$W/monitor-$tag.log" | head -5 || true
}

result_of() { sed -n 's/^RESULT //p' "$1" | tail -1; }
jget() { py "$1" "$2" <<'PY'
import json, sys
v = json.loads(sys.argv[1]).get(sys.argv[2])
print("" if v is None else v)
PY
}

# ------------------------------------------------------------------ udp
if [[ " $PARTS " == *" udp "* ]]; then
  echo; echo "== udp: $N targets every $FREQ s over $ADDRS addresses, one responder"
  [ "$(ulimit -n)" -gt $((ADDRS + 100)) ] || die "open files limit $(ulimit -n) < ADDRS + 100"
  helper config --n "$N" --addrs "$ADDRS" --port "$SIP_PORT" --http-port "$HTTP_PORT" \
    --db "$W/udp.db" --freq "$FREQ" --out "$W/udp.toml"
  echo "# config: $(grep -c '^\[\[targets' "$W/udp.toml") targets, e.g. $(grep -m1 '^uri' "$W/udp.toml"), $(du -h "$W/udp.toml" | cut -f1)"
  start_responder udp "$SIP_PORT" "$ADDRS" 1 udp
  noise_report monitor_udp
  hard=$(awk -v f="$FREQ" -v d="$DURATION" -v s="$SCRAPES" 'BEGIN{printf "%d", 1.1*f + d + 300 + s*30}')
  start_monitor udp "$W/udp.toml" "$hard"
  e0=$(udpdrops)
  "${HPFX[@]}" "$PYREAL" -S "$HELPER" udp-scale --pid "$MON_PID" --http-port "$HTTP_PORT" --n "$N" \
    --freq "$FREQ" --duration "$DURATION" --scrapes "$SCRAPES" --body "$W/metrics.body" --db "$W/udp.db" \
    | tee "$W/udp-scale.txt" || die "the UDP scale measurement failed (see above)"
  still_alive "$RESP_PID" "the responder" "$W/respond-udp.log" || die "the responder died"
  echo "# Udp InErrors over the whole run (machine): +$(( $(udpdrops) - e0 ))"
  stop_monitor udp
  stop_pids "$RESP_PID"; sed -n 's/^.*stopped: /# responder: /p' "$W/respond-udp.log"
  R=$(result_of "$W/udp-scale.txt")
  for k in cpu_pct rss_mb hwm_mb lag_quiet_ms lag_spaced_ms lag_scraped_ms lag_scraped_max_ms \
           metrics_first_ms metrics_total_ms metrics_total_max_ms metrics_mb stall_quiet_ms \
           stall_scrape_ms probes_per_s probes_expected unsuccessful summary_ms db_mb_per_min; do
    emit "mon_udp_$k" "$(jget "$R" "$k")"
  done
  emit mon_udp_n "$N"; emit mon_udp_freq "$FREQ"; emit mon_udp_duration "$DURATION"
fi

# ------------------------------------------------------------------ tcp
if [[ " $PARTS " == *" tcp "* ]]; then
  echo; echo "== tcp: $TCP_N targets over TCP, crlf_ping_interval $CRLF s, every $FREQ s, one responder"
  need_fd=$((TCP_N + ADDRS + 100))
  [ "$(ulimit -n)" -ge "$need_fd" ] || die "open files limit $(ulimit -n) < TCP_N + ADDRS + 100 = $need_fd (raise the hard limit)"
  TADDRS=$(( ADDRS < TCP_N ? ADDRS : TCP_N ))
  helper config --n "$TCP_N" --addrs "$TADDRS" --first 1 --port "$TCP_PORT" --http-port "$HTTP_PORT" \
    --db "$W/tcp.db" --freq "$FREQ" --transport tcp --crlf "$CRLF" --out "$W/tcp.toml"
  start_responder tcp "$TCP_PORT" "$TADDRS" 1 tcp
  noise_report monitor_tcp
  start_monitor tcp "$W/tcp.toml" "$(awk -v f="$FREQ" -v d="$TCP_DURATION" 'BEGIN{printf "%d", 1.1*f + d + 300}')"
  "${HPFX[@]}" "$PYREAL" -S "$HELPER" tcp-hold --pid "$MON_PID" --http-port "$HTTP_PORT" --n "$TCP_N" \
    --freq "$FREQ" --duration "$TCP_DURATION" --port "$TCP_PORT" --resp-pids "$RESP_PID" \
    | tee "$W/tcp-hold.txt" || die "the TCP measurement failed (see above)"
  still_alive "$RESP_PID" "the responder" "$W/respond-tcp.log" || die "the responder died"
  stop_monitor tcp
  stop_pids "$RESP_PID"; sed -n 's/^.*stopped: /# responder: /p' "$W/respond-tcp.log"
  R=$(result_of "$W/tcp-hold.txt")
  for k in cpu_pct rss_mb hwm_mb resp_cpu_pct conns probes_per_s unsuccessful transitions; do
    emit "mon_tcp_$k" "$(jget "$R" "$k")"
  done
  emit mon_tcp_n "$TCP_N"; emit mon_tcp_crlf "$CRLF"
fi

# ------------------------------------------------------------------ detect
if [[ " $PARTS " == *" detect "* ]]; then
  echo; echo "== detect: $DETECT_TARGETS targets every $DETECT_FREQ s, qualify_timeout $DETECT_TIMEOUT s;" \
       "$DETECT_ROUNDS rounds per mode ($DETECT_MODES)"
  helper config --n "$DETECT_TARGETS" --addrs "$DETECT_TARGETS" --first 2 --port "$DET_PORT" \
    --http-port "$HTTP_PORT" --db "$W/detect.db" --freq "$DETECT_FREQ" --timeout "$DETECT_TIMEOUT" \
    --out "$W/detect.toml"
  NAMES=$(seq -s, -f 't%.0f' 0 $((DETECT_TARGETS - 1)))
  start_responder detect "$DET_PORT" "$DETECT_TARGETS" 2 udp
  noise_report monitor_detect
  nmodes=$(echo "$DETECT_MODES" | wc -w)
  start_monitor detect "$W/detect.toml" $(( 120 + nmodes * DETECT_ROUNDS * (30 + 4 * DETECT_FREQ) ))
  LIMIT=$(awk -v f="$DETECT_FREQ" -v t="$DETECT_TIMEOUT" 'BEGIN{printf "%.1f", 3 * (1.1*f + t) + 5}')
  : >"$W/detect.tsv"
  helper wait-state --pid "$MON_PID" --http-port "$HTTP_PORT" --names "$NAMES" --state reachable --since 0 --limit 60 \
    >"$W/detect-up0.txt" || die "wait-state failed"
  grep -q " none " "$W/detect-up0.txt" && die "the detect targets did not all become reachable: $(grep ' none ' "$W/detect-up0.txt" | head -3)"
  for mode in $DETECT_MODES; do
    case "$mode" in kill|stop) ;; *) die "DETECT_MODES: unknown mode '$mode' (kill stop)" ;; esac
    for round in $(seq "$DETECT_ROUNDS"); do
      sleep "$(awk -v f="$DETECT_FREQ" -v r="$RANDOM" 'BEGIN{printf "%.2f", 1 + f * r / 32768}')"   # a random phase
      T=$EPOCHREALTIME
      if [ "$mode" = kill ]; then kill -KILL "$RESP_PID"; wait "$RESP_PID" 2>/dev/null || true; forget_pid "$RESP_PID"
      else kill -STOP "$RESP_PID"; fi
      helper wait-state --pid "$MON_PID" --http-port "$HTTP_PORT" --names "$NAMES" --state unreachable --since "$T" \
        --limit "$LIMIT" >"$W/detect-$mode-$round.txt" || die "wait-state failed"
      awk -v m="$mode" -v r="$round" '{print m "\t" r "\t" $1 "\t" $2 "\t" $3}' "$W/detect-$mode-$round.txt" >>"$W/detect.tsv"
      T2=$EPOCHREALTIME
      if [ "$mode" = kill ]; then start_responder "detect-$round" "$DET_PORT" "$DETECT_TARGETS" 2 udp
      else kill -CONT "$RESP_PID"; fi
      helper wait-state --pid "$MON_PID" --http-port "$HTTP_PORT" --names "$NAMES" --state reachable --since "$T2" \
        --limit "$LIMIT" >"$W/recover-$mode-$round.txt" || die "wait-state failed"
      awk -v m="$mode" -v r="$round" '{print "recover-" m "\t" r "\t" $1 "\t" $2 "\t" $3}' "$W/recover-$mode-$round.txt" >>"$W/detect.tsv"
      log "detect $mode round $round: $(awk '{print $2}' "$W/detect-$mode-$round.txt" | paste -sd' ')"
    done
  done
  stop_monitor detect
  stop_pids "$RESP_PID"
  py "$W/detect.tsv" "$DETECT_FREQ" "$DETECT_TIMEOUT" "${SUMMARY_FILE:-}" <<'PY'
import statistics as st, sys
tsv, f, t, summary = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
rows = [line.rstrip("\n").split("\t") for line in open(tsv) if line.strip()]
bound, design = f + t, 1.1 * f + t
print(f"\n   {'mode':<14} {'n':>3} {'median s':>9} {'p90 s':>7} {'max s':>7} {'missed':>6}  "
      f"{'> bound':>7} {'> 1.1f+t':>8}  causes")
out = {}
for mode in dict.fromkeys(r[0] for r in rows):
    sel = [r for r in rows if r[0] == mode]
    v = sorted(float(r[3]) for r in sel if r[3] != "none")
    missed = sum(1 for r in sel if r[3] == "none")
    causes = sorted({r[4] for r in sel})
    if not v:
        print(f"   {mode:<14} {len(sel):>3} {'-':>9} {'-':>7} {'-':>7} {missed:>6}")
        continue
    med, p90, mx = st.median(v), v[min(len(v) - 1, int(0.9 * len(v)))], v[-1]
    over = sum(x > bound for x in v)
    over_d = sum(x > design for x in v)
    print(f"   {mode:<14} {len(sel):>3} {med:>9.3f} {p90:>7.3f} {mx:>7.3f} {missed:>6}  "
          f"{over:>7} {over_d:>8}  {', '.join(causes)}")
    out[mode] = (med, mx, len(sel), missed, over)
print(f"   bound qualify_frequency + qualify_timeout = {bound:g} s (fail_threshold 1); "
      f"with the old +-10 % jitter 1.1 x {f:g} + {t:g} = {design:g} s. recover-*: restart/continue -> reachable.")
if summary:
    with open(summary, "a") as fh:
        for mode, (med, mx, n, missed, over) in out.items():
            key = mode.replace("-", "_")
            fh.write(f"mon_det_{key}_median\t{med:.3f}\nmon_det_{key}_max\t{mx:.3f}\n"
                     f"mon_det_{key}_n\t{n}\nmon_det_{key}_missed\t{missed}\nmon_det_{key}_over\t{over}\n")
        fh.write(f"mon_det_bound\t{bound:g}\nmon_det_design\t{design:g}\n")
PY
fi

echo
echo "# raw files: $W$([ "$KEEP" = 1 ] || echo ' (removed on exit; OUTDIR=dir keeps them)')"
exit 0
