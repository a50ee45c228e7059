#!/usr/bin/env bash
# responder_vs_kamailio.sh - responder capacity: `sipalive respond` vs Kamailio (1 worker, TLSF),
# same instrument, same run.
#
# The instrument: ONE SIPp UAC (tests/data/sipp/uac-options.xml, -buff_size 1048576, -l 1000)
# pinned to cpu UAC_CPU; every responder pinned to cpu RESP_CPU (all of its processes).
# Method of peer-baselines.sh capacity: RATES stepped (DURATION s per point), stop at the first
# failure, bisect REFINE times (rounded to 1000/s). PASS = 0 failed, 0 retransmissions, all
# answered, achieved >= 95 % of target. Knee = highest PASS.
# Responders:
#   kam1tlsf        kamailio -f tests/data/kamailio.cfg -n 1 -N 1 -x tlsf -X tlsf
#   sipalive-1      sipalive respond --rcvbuf RCVBUF                    (one process)
#   sipalive-Nrp    NPROC x sipalive respond --reuse-port --rcvbuf RCVBUF
# net.core.rmem_max must allow RCVBUF: read; if lower and root, raised for the run and restored.
# PASSES passes, the responder order reversed every other pass; the knee of a responder is its
# best pass (other load on the machine can only lower a knee).
# Prints every point, the knees and the ratios ours/Kamailio (HIGHER is better).
# Not a test: exits 0 after printing, non-zero only on a setup error.
#
# Env: TRANSPORTS=udp (tcp: one connection) DURATION=5 RATES="5000 10000 20000 40000" REFINE=1 PASSES=2
#      NPROC=2 RCVBUF=4194304 RESPONDERS="kam1tlsf sipalive-1 sipalive-Nrp" LIMIT=1000
#      UAC_CPU=0 RESP_CPU=1 PIN=1 BASE_PORT=7460 (UAC +0, responder +20) OUTDIR= SUMMARY_FILE=
. "$(dirname "$0")/lib.sh"
need kamailio sysctl

TRANSPORTS="${TRANSPORTS:-udp}"; DURATION="${DURATION:-5}"; RATES="${RATES:-5000 10000 20000 40000}"
REFINE="${REFINE:-1}"; PASSES="${PASSES:-2}"; NPROC="${NPROC:-2}"; RCVBUF="${RCVBUF:-4194304}"
RESPONDERS="${RESPONDERS:-kam1tlsf sipalive-1 sipalive-Nrp}"
BASE_PORT="${BASE_PORT:-7460}"; pick_base 0 20 21
UAC_PORT=$BASE; RESP_PORT=$((BASE + 20))

echo "# responder_vs_kamailio: $(machine_line)"
echo "# pinning: SIPp UAC on cpu$UAC_CPU, responder (all its processes) on cpu$RESP_CPU$([ "$PIN" = 1 ] || echo ' -- DISABLED (PIN=0)')"

# rmem_max must allow the requested SO_RCVBUF (else the kernel silently caps it)
RMEM_MAX=$(sysctl -n net.core.rmem_max)
if [ "$RMEM_MAX" -lt "$RCVBUF" ]; then
  if [ "$(id -u)" = 0 ]; then
    sysctl -q -w net.core.rmem_max="$RCVBUF" || die "cannot raise net.core.rmem_max"
    CLEANUP_HOOKS+=("sysctl -q -w net.core.rmem_max=$RMEM_MAX && echo '# restored net.core.rmem_max=$RMEM_MAX'")
    echo "# net.core.rmem_max was $RMEM_MAX < --rcvbuf $RCVBUF: RAISED to $RCVBUF for this run (restored on exit)"
  else
    echo "# WARNING: net.core.rmem_max=$RMEM_MAX < --rcvbuf $RCVBUF and not root: the kernel caps SO_RCVBUF at $RMEM_MAX"
  fi
else
  echo "# net.core.rmem_max=$RMEM_MAX >= --rcvbuf $RCVBUF: unchanged (rmem_default=$(sysctl -n net.core.rmem_default))"
fi

declare -A KNEES=() FIRSTS=() BESTS=() BB=() PER=()
start_kind() {  # KIND -> RPIDS (for CPU accounting), RDESC
  case "$1" in
    kam1tlsf)
      start_kamailio "$RESP_PORT" 1 tlsf "$RESP_CPU"; RPIDS=$KAM_PIDS; RSTOP=$KAM_PID
      RDESC="Kamailio -n 1 -N 1 -x tlsf -X tlsf, $KAM_NPROC processes" ;;
    sipalive-1)
      start_respond "$RESP_PORT" 1 "$RCVBUF" 0 "$RESP_CPU"; RPIDS=$RESPOND_PIDS; RSTOP=$RESPOND_PIDS
      RDESC="sipalive respond --rcvbuf $RCVBUF, 1 process" ;;
    sipalive-Nrp)
      start_respond "$RESP_PORT" "$NPROC" "$RCVBUF" 1 "$RESP_CPU"; RPIDS=$RESPOND_PIDS; RSTOP=$RESPOND_PIDS
      RDESC="sipalive respond --reuse-port --rcvbuf $RCVBUF, $NPROC processes" ;;
    *) die "unknown responder $1" ;;
  esac
  RDESC+=", UDP socket(s) $(rcvbuf_of "$RESP_PORT" udp)"
}

for tr in $TRANSPORTS; do
  for pass in $(seq "$PASSES"); do
    order=$RESPONDERS
    [ $((pass % 2)) = 0 ] && order=$(echo "$RESPONDERS" | tr ' ' '\n' | tac | tr '\n' ' ')
    noise_report "responder_${tr}_pass$pass"
    echo "== $tr pass $pass/$PASSES (order: $order): one SIPp UAC, ${DURATION} s per point, rates: $RATES (refine $REFINE)"
    uac_header; echo
    for kind in $order; do
      start_kind "$kind"
      echo "  # $kind: $RDESC"
      knee_search "$RESP_PORT" "$tr" "$RPIDS" "$kind"
      KNEES[$kind-$tr-$pass]=$KNEE; FIRSTS[$kind-$tr-$pass]=$FIRST_FAIL; BESTS[$kind-$tr-$pass]=$MAXACH
      stop_pids "$RSTOP"
      if [[ "$kind" == sipalive-* ]]; then
        # per-process share of the requests (SO_REUSEPORT hashes the 4-tuple: one UAC = one socket)
        n=1; [ "$kind" = sipalive-Nrp ] && n=$NPROC
        share=""; for f in "$W"/respond-"$RESP_PORT"-"$n"-*.log; do
          share+="$(grep -o 'stopped: [0-9]* requests' "$f" | grep -o '[0-9]*' || echo '?') "
        done
        echo "  # $kind: requests per process at stop: $share"
      fi
      sleep 1
    done
  done
  echo "== $tr knees (highest rate with 0 failed, 0 retransmissions, all answered, achieved >= 95%)"
  echo "   per pass, and the best pass (other load can only lower a knee, so the best pass is the estimate)"
  best_of_passes "$tr"
  kam=${K[kam1tlsf]:-0}
  for kind in $RESPONDERS; do
    ratio=n/a
    if [ "$kind" != kam1tlsf ] && [ "$kam" -gt 0 ]; then
      ratio=$(awk -v a="${K[$kind]}" -v b="$kam" 'BEGIN{printf "%.2f", a/b}')
      # Kamailio passed the top rate: its knee is a lower bound, so the ratio is an upper bound
      if [[ "${KT[kam1tlsf]}" == ">="* ]]; then
        [[ "${KT[$kind]}" == ">="* ]] && ratio="n/a (both passed the top rate)" || ratio="<=$ratio"
      fi
    fi
    printf '  %-14s knee %9s/s   passes: %-24s best achieved %6d/s   ratio ours/kam1tlsf %s\n' "$kind" "${KT[$kind]}" \
      "${PER[$kind]}" "${BB[$kind]}" "$ratio"
    emit "resp_${tr}_${kind}" "${KT[$kind]}"; emit "resp_${tr}_${kind}_best" "${BB[$kind]}"
    emit "resp_${tr}_${kind}_passes" "${PER[$kind]% }"
    [ "$kind" = kam1tlsf ] || emit "resp_${tr}_${kind}_ratio" "$ratio"
  done
  echo "  (ratio: HIGHER is better, target >= 1.0. A '>=' knee means the top rate passed: the instrument,"
  echo "   not the responder, may be the limit, and a ratio against it is an upper bound. SO_REUSEPORT"
  echo "   spreads by 4-tuple hash: ONE SIPp UAC socket always lands on ONE process, see the shares above.)"
done
emit resp_nproc "$NPROC"
exit 0
