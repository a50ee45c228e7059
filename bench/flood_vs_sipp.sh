#!/usr/bin/env bash
# flood_vs_sipp.sh - prober throughput: `sipalive ping --flood` vs one SIPp UAC, same responder,
# same run.
#
# Responder: Kamailio with tests/data/kamailio.cfg, 2 workers, TLSF (`-n 2 -N 2 -x tlsf -X tlsf`),
# pinned to cpu RESP_CPU; its knee (~40k/s pinned in bench-peers) is above both probers' rates.
# Both probers are pinned to cpu UAC_CPU and measured one after the other against it:
#  (a) sipalive ping --flood -c FLOOD_COUNT --window W --json  for W in WINDOWS (closed loop: at
#      most W in flight). Zero-failure = failures 0 and answered == sent == COUNT; "strict" also
#      asks for 0 retransmissions (SIPp's criterion). Best zero-failure rate over all windows/runs.
#  (b) SIPp UAC (tests/data/sipp/uac-options.xml, -buff_size 1048576, -l 1000), open loop at
#      -r RATE for DURATION s, RATES stepped, stop at the first failure, bisect REFINE times
#      (peer-baselines.sh capacity). PASS = 0 failed, 0 retransmissions, all answered, achieved
#      >= 95 % of target. Knee = highest PASS.
# PASSES passes, the order of (a) and (b) reversed every other pass; each prober's best pass
# counts (other load can only lower a rate). Prints both and the ratio ours/SIPp (HIGHER is
# better; target >= 1.0), per transport.
# drops: Udp InErrors delta (whole machine) and, in brackets, those at the responder's socket.
# Not a test: exits 0 after printing, non-zero only on a setup error.
#
# Env: TRANSPORTS="udp tcp" WINDOWS="50 200 500" FLOOD_COUNT=50000 FLOOD_REPEAT=1
#      FLOOD_TIMEOUT=120 DURATION=5 RATES="5000 10000 20000 40000 80000" REFINE=1 LIMIT=1000 PASSES=2
#      UAC_CPU=0 RESP_CPU=1 PIN=1 BASE_PORT=7440 (UAC +0, Kamailio +20) OUTDIR= SUMMARY_FILE=
. "$(dirname "$0")/lib.sh"
need kamailio

TRANSPORTS="${TRANSPORTS:-udp tcp}"; WINDOWS="${WINDOWS:-50 200 500}"
FLOOD_COUNT="${FLOOD_COUNT:-50000}"; FLOOD_REPEAT="${FLOOD_REPEAT:-1}"; FLOOD_TIMEOUT="${FLOOD_TIMEOUT:-120}"
RATES="${RATES:-5000 10000 20000 40000 80000}"; DURATION="${DURATION:-5}"; REFINE="${REFINE:-1}"
PASSES="${PASSES:-2}"
BASE_PORT="${BASE_PORT:-7440}"; pick_base 0 20 21
UAC_PORT=$BASE; KAM_PORT=$((BASE + 20))

echo "# flood_vs_sipp: $(machine_line)"
echo "# pinning: probers (sipalive ping / SIPp UAC) on cpu$UAC_CPU, Kamailio (all processes) on cpu$RESP_CPU$([ "$PIN" = 1 ] || echo ' -- DISABLED (PIN=0)')"
start_kamailio "$KAM_PORT" 2 tlsf "$RESP_CPU"
echo "# Kamailio kam2tlsf on 127.0.0.1:$KAM_PORT: $KAM_NPROC processes, UDP socket $(rcvbuf_of "$KAM_PORT" udp)"

# flood_run TR WINDOW -> F_* and prints one row
flood_run() {
  local tr=$1 win=$2 pfx=() rc=0 r0 r1 d0 d1 s0 s1 w0 w1 tgt="sip:ping@127.0.0.1:$KAM_PORT" tro=()
  read -r -a pfx <<<"$(pin "$UAC_CPU")"
  [ "$tr" = tcp ] && tro=(-T tcp)
  r0=$(ticks $KAM_PIDS); d0=$(udpdrops); s0=$(sock_drops "$KAM_PORT"); w0=$EPOCHREALTIME
  /usr/bin/time -o "$W/flood.time" -f '%U %S %e' timeout -k 5 "$FLOOD_TIMEOUT" "${pfx[@]}" \
    "$SIPALIVE" ping "${tro[@]}" --flood -c "$FLOOD_COUNT" --window "$win" --json -q "$tgt" \
    >"$W/flood-$tr-$win.out" 2>"$W/flood-$tr-$win.err" &
  local fpid=$!; STARTED+=("$fpid")
  wait "$fpid" || rc=$?
  forget_pid "$fpid"
  w1=$EPOCHREALTIME; r1=$(ticks $KAM_PIDS); d1=$(udpdrops); s1=$(sock_drops "$KAM_PORT")
  read -r F_RATE F_SENT F_ANS F_FAIL F_RETR F_CPU F_US F_KAM F_PASS F_STRICT <<<"$(
    py "$W/flood-$tr-$win.out" "$W/flood.time" "$FLOOD_COUNT" "$rc" "$r0" "$r1" "$HZ" "$w0" "$w1" <<'PY'
import json, sys
out, tf, count, rc, r0, r1, hz, w0, w1 = sys.argv[1:10]
s = {}
for line in open(out, errors="replace"):
    try:
        o = json.loads(line)
    except ValueError:
        continue
    if o.get("type") == "summary":
        s = o
tl = [l for l in open(tf) if l.strip()][-1].split()
cpu = float(tl[0]) + float(tl[1]); wall = float(w1) - float(w0)
sent, ans = int(s.get("sent", 0)), int(s.get("answered", 0))
fail = int(s.get("failures", sent - ans if s else int(count)))
retr = s.get("retransmits", "?")
ok = bool(s) and fail == 0 and ans == sent == int(count) and rc == "0"
strict = ok and retr == 0
print(f"{float(s.get('rate_per_s', 0)):.0f} {sent} {ans} {fail} {retr} {cpu / wall * 100:.0f} "
      f"{cpu / ans * 1e6 if ans else 0:.1f} {(int(r1) - int(r0)) / int(hz) / wall * 100:.0f} "
      f"{'PASS' if ok else 'FAIL'} {'yes' if strict else 'no'}")
PY
  )"
  F_DROP=$((d1 - d0)); F_RDROP=$((s1 - s0))
  printf '  %-8s %-3s %6s %7d %7d %7d %5d %5s %10s %5d %6s %5d  %s (strict: %s)%s\n' sipalive "$tr" "$win" \
    "$F_RATE" "$F_SENT" "$F_ANS" "$F_FAIL" "$F_RETR" "$F_DROP[$F_RDROP]" "$F_CPU" "$F_US" "$F_KAM" "$F_PASS" \
    "$F_STRICT" "$([ "$rc" = 0 ] || echo " rc=$rc")"
  sleep 1
}

sipalive_part() {  # TR
  local tr=$1 win i pb=0
  echo "== $tr pass $pass (a) sipalive ping --flood -c $FLOOD_COUNT, windows: $WINDOWS, $FLOOD_REPEAT run(s) each"
  printf '  %-8s %-3s %6s %7s %7s %7s %5s %5s %10s %5s %6s %5s  %s\n' prober tr window rate/s sent answered \
    fail retr drops[resp] cpu% us/txn kam% verdict
  for win in $WINDOWS; do
    for i in $(seq "$FLOOD_REPEAT"); do
      flood_run "$tr" "$win"
      [ "$F_RATE" -gt "$BEST_ANY" ] && BEST_ANY=$F_RATE
      [ "$F_PASS" = PASS ] && [ "$F_RATE" -gt "$pb" ] && pb=$F_RATE
      if [ "$F_PASS" = PASS ] && [ "$F_RATE" -gt "$BEST" ]; then BEST=$F_RATE; BEST_W=$win; BEST_US=$F_US; fi
      if [ "$F_STRICT" = yes ] && [ "$F_RATE" -gt "$BEST_STRICT" ]; then BEST_STRICT=$F_RATE; BEST_STRICT_W=$win; fi
    done
  done
  PASS_OURS+="$pb "
}
sipp_part() {  # TR
  local tr=$1
  echo "== $tr pass $pass (b) SIPp UAC -r RATE -l ${LIMIT:-1000} -buff_size 1048576, ${DURATION} s per point, rates: $RATES (refine $REFINE)"
  uac_header; echo
  knee_search "$KAM_PORT" "$tr" "$KAM_PIDS" "sipp-uac->kam2tlsf"
  PASS_SIPP+="$(knee_text "$KNEE" "$FIRST_FAIL") "
  [ "$MAXACH" -gt "$S_MAXACH" ] && S_MAXACH=$MAXACH
  if [ "$KNEE" -gt "$S_KNEE" ] || { [ "$KNEE" = "$S_KNEE" ] && [ "$FIRST_FAIL" = 0 ]; }; then
    S_KNEE=$KNEE; S_FIRST=$FIRST_FAIL
  fi
}

for tr in $TRANSPORTS; do
  BEST=0; BEST_W=-; BEST_US=""; BEST_STRICT=0; BEST_STRICT_W=-; BEST_ANY=0
  S_KNEE=-1; S_FIRST=0; S_MAXACH=0; PASS_OURS=""; PASS_SIPP=""
  for pass in $(seq "$PASSES"); do
    noise_report "flood_${tr}_pass$pass"
    if [ $((pass % 2)) = 1 ]; then sipalive_part "$tr"; sipp_part "$tr"
    else sipp_part "$tr"; sipalive_part "$tr"; fi
  done
  [ "$S_KNEE" -ge 0 ] || S_KNEE=0
  KT=$(knee_text "$S_KNEE" "$S_FIRST")
  echo "== $tr summary ($PASSES pass(es), the order of the two probers reversed every other pass; best pass counts)"
  echo "  sipalive best zero-failure rate: $BEST/s (window $BEST_W; per pass: ${PASS_OURS% }); strict (0 retransmissions): $BEST_STRICT/s (window $BEST_STRICT_W); best rate incl. failed runs: $BEST_ANY/s"
  echo "  SIPp UAC knee: $KT/s (per pass: ${PASS_SIPP% }; first failing target of the best pass: $([ "$S_FIRST" = 0 ] && echo none || echo "$S_FIRST/s")); best achieved in any run: $S_MAXACH/s"
  if [ "$S_KNEE" -gt 0 ]; then
    RATIO=$(awk -v a="$BEST" -v b="$S_KNEE" 'BEGIN{printf "%.2f", a/b}')
    RATIO_S=$(awk -v a="$BEST_STRICT" -v b="$S_KNEE" 'BEGIN{printf "%.2f", a/b}')
    echo "  RATIO ours/SIPp (HIGHER is better, target >= 1.0): $RATIO$([ "$S_FIRST" = 0 ] && echo " (upper bound: SIPp knee is a lower bound)")   strict: $RATIO_S"
  else
    RATIO=n/a; RATIO_S=n/a; echo "  RATIO: n/a (SIPp did not pass its lowest rate)"
  fi
  emit "flood_${tr}_ours" "$BEST"; emit "flood_${tr}_ours_window" "$BEST_W"; emit "flood_${tr}_ours_strict" "$BEST_STRICT"
  emit "flood_${tr}_ours_us" "${BEST_US:-}"; emit "flood_${tr}_sipp" "$KT"; emit "flood_${tr}_ratio" "$RATIO"
  emit "flood_${tr}_ratio_strict" "$RATIO_S"; emit "flood_${tr}_ours_passes" "${PASS_OURS% }"
  emit "flood_${tr}_sipp_passes" "${PASS_SIPP% }"
done
echo "# columns: cpu% = prober CPU (% of one core, rusage), us/txn = prober CPU microseconds per answered"
echo "#   transaction, kam% = Kamailio (all processes) CPU; for SIPp rows uac% / resp% / uac-us are the same."
echo "#   On loopback the kernel's delivery work is charged to the SENDER (no IRQ time accounting)."
exit 0
