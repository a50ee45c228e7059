#!/usr/bin/env bash
# registrar_vs_kamailio.sh - registrar capacity with digest auth: `sipalive respond --registrar`
# vs Kamailio (auth), same instrument, same run (issue 4, benchmark 2).
#
# The instrument: ONE SIPp UAC (bench/scenarios/uac-register-auth.xml: REGISTER -> 401 ->
# REGISTER with credentials -> 200, i.e. every registration is challenged once; -inf with
# NUSERS distinct users, -buff_size 1048576, -l LIMIT) pinned to cpu UAC_CPU; every registrar
# pinned to cpu RESP_CPU (all of its processes). One "call" = one completed registration.
# Method of responder_vs_kamailio.sh: RATES stepped (DURATION s per point), stop at the first
# failure, bisect REFINE times (rounded to ROUND/s). PASS = 0 failed, 0 retransmissions, all
# registrations completed (200), achieved >= 95 % of target. Knee = highest PASS.
# Registrars (both in memory, both log one line per registration, neither qualifies contacts):
#   kam1tlsf-auth   kamailio -f tests/data/kamailio.cfg -n 1 -N 1 -x tlsf -X tlsf
#                   -A WITH_AUTH -A AUTH_PASSWORD="PW" (one fixed password for any user; usrloc
#                   db_mode 0; the cfg as is, the command line of tests/realpeers.py)
#   sipalive-reg    sipalive respond --registrar --users FILE (NUSERS users, the same password)
#                   --realm bench --digest-algorithms MD5 --registrar-db '' --qualify-frequency 0
#                   --rcvbuf RCVBUF   (one process)
# Before measuring, each registrar must complete SMOKE registrations at 20/s (else: setup error).
# net.core.rmem_max must allow RCVBUF: read; if lower and root, raised for the run and restored.
# PASSES passes, the registrar order reversed every other pass; a registrar's knee is its best
# pass. Prints every point, the knees and the ratio ours/Kamailio (HIGHER is better).
# Not a test: exits 0 after printing, non-zero only on a setup error.
#
# Env: TRANSPORTS=udp (tcp: one connection) DURATION=5 RATES="1000 2000 4000 8000 16000 32000"
#      REFINE=1 ROUND=100 PASSES=2 NUSERS=10000 RCVBUF=4194304 LIMIT=1000 SMOKE=20
#      RESPONDERS="kam1tlsf-auth sipalive-reg" UAC_CPU=0 RESP_CPU=1 PIN=1
#      BASE_PORT=7520 (UAC +0, registrar +20) OUTDIR= SUMMARY_FILE=
. "$(dirname "$0")/lib.sh"
need kamailio sysctl

TRANSPORTS="${TRANSPORTS:-udp}"; DURATION="${DURATION:-5}"; RATES="${RATES:-1000 2000 4000 8000 16000 32000}"
REFINE="${REFINE:-1}"; ROUND="${ROUND:-100}"; PASSES="${PASSES:-2}"; NUSERS="${NUSERS:-10000}"
RCVBUF="${RCVBUF:-4194304}"; SMOKE="${SMOKE:-20}"
RESPONDERS="${RESPONDERS:-kam1tlsf-auth sipalive-reg}"
BASE_PORT="${BASE_PORT:-7520}"; pick_base 0 20
UAC_PORT=$BASE; RESP_PORT=$((BASE + 20))
UAC_SF="$BENCH_DIR/scenarios/uac-register-auth.xml"
[ -f "$UAC_SF" ] || die "missing $UAC_SF"
[ "$NUSERS" -ge 1 ] && [ "$NUSERS" -le 1000000 ] || die "NUSERS: 1 to 1000000"

echo "# registrar_vs_kamailio: $(machine_line)"
echo "# pinning: SIPp UAC on cpu$UAC_CPU, registrar (all its processes) on cpu$RESP_CPU$([ "$PIN" = 1 ] || echo ' -- DISABLED (PIN=0)')"

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

# the users: the same NUSERS users and password for both registrars (Kamailio's WITH_AUTH takes
# one password for any user). The password is random, never on a command line of ours but
# Kamailio's -A define (the lab cfg takes it there).
PW="b$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')"
USERS="$W/users"; SIPP_USERS="$W/users.csv"
: >"$USERS"; chmod 600 "$USERS"; : >"$SIPP_USERS"; chmod 600 "$SIPP_USERS"
py "$NUSERS" "$PW" "$USERS" "$SIPP_USERS" <<'PY'
import sys
n, pw, ours, sipp = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
names = [f"u{i:07d}" for i in range(n)]
with open(ours, "w") as f:
    f.writelines(f"{u}:{pw}\n" for u in names)
with open(sipp, "w") as f:
    f.write("SEQUENTIAL\n")
    f.writelines(f"{u};[authentication username={u} password={pw}];\n" for u in names)
PY
echo "# users: $NUSERS distinct (u0000000...), one binding each, taken in turn by SIPp (-inf SEQUENTIAL)"

# start_kamailio_auth PORT CPU -> KAM_PID, KAM_PIDS, KAM_NPROC: lib.sh's start_kamailio (1 worker,
# TLSF) plus the cfg's WITH_AUTH and AUTH_PASSWORD defines, as tests/realpeers.py passes them.
start_kamailio_auth() {
  local port=$1 cpu=$2 kd pfx=() i
  [ -f "$KAM_MODDIR/auth.so" ] || die "Kamailio auth module not found in $KAM_MODDIR"
  read -r -a pfx <<<"$(pin "$cpu")"
  port_busy "$port" && die "port $port busy"
  kd="$W/kam-$port-auth"; rm -rf "$kd"; mkdir -p "$kd"
  timeout -k 5 1800 "${pfx[@]}" kamailio -f "$KAM_CFG" -L "$KAM_MODDIR" -DD -E -Y "$kd" -P "$kd/kamailio.pid" \
    -w "$kd" -m 32 -M 8 -a no --debug=2 -l "udp:127.0.0.1:$port" -l "tcp:127.0.0.1:$port" \
    -A "CTL_SOCK=\"unix:$kd/ctl\"" -A NATPING_INTERVAL=0 -A KEEPALIVE_TIMEOUT=0 \
    -A WITH_AUTH -A "AUTH_PASSWORD=\"$PW\"" \
    -n 1 -N 1 -x tlsf -X tlsf >"$kd/kamailio.log" 2>&1 &
  KAM_PID=$!; STARTED+=("$KAM_PID")
  for i in $(seq 100); do [ -S "$kd/ctl" ] && break; sleep 0.1; done
  wait_listen "$port" udp && wait_listen "$port" tcp || die "kamailio did not start on $port: $(tail -5 "$kd/kamailio.log")"
  sleep 0.5
  probe_ok "$port" || die "kamailio on $port does not answer sipsak: $(tail -5 "$kd/kamailio.log")"
  remember_kids "$KAM_PID"
  KAM_PIDS="$(descendants "$KAM_PID" | tr '\n' ' ')"
  KAM_NPROC=$(echo "$KAM_PIDS" | wc -w)
  KAM_LOG="$kd/kamailio.log"
}

# start_registrar PORT CPU -> REG_PID: one sipalive respond --registrar
start_registrar() {
  local port=$1 cpu=$2 pfx=()
  read -r -a pfx <<<"$(pin "$cpu")"
  port_busy "$port" && die "port $port busy"
  "${pfx[@]}" "$SIPALIVE" respond --listen "udp:127.0.0.1:$port" --listen "tcp:127.0.0.1:$port" \
    --registrar --users "$USERS" --realm bench --digest-algorithms MD5 --registrar-db '' \
    --qualify-frequency 0 --rcvbuf "$RCVBUF" --duration 1800 >"$W/registrar-$port.log" 2>&1 &
  REG_PID=$!; STARTED+=("$REG_PID")
  wait_listen "$port" udp && wait_listen "$port" tcp || die "sipalive registrar did not start on $port: $(tail -3 "$W/registrar-$port.log")"
  sleep 0.3
  probe_ok "$port" || die "sipalive registrar on $port does not answer sipsak"
}

# lib.sh's sipp_uac_point and knee_search with the REGISTER scenario and the users file,
# bisecting to ROUND/s
UAC_SCENARIO=(-sf "$UAC_SF" -inf "$SIPP_USERS")
ROLE=registrar

start_kind() {  # KIND -> RPIDS (CPU accounting), RSTOP, RDESC, RLOG
  case "$1" in
    kam1tlsf-auth)
      start_kamailio_auth "$RESP_PORT" "$RESP_CPU"; RPIDS=$KAM_PIDS; RSTOP=$KAM_PID; RLOG=$KAM_LOG
      RDESC="Kamailio -n 1 -N 1 -x tlsf -X tlsf -A WITH_AUTH, $KAM_NPROC processes" ;;
    sipalive-reg)
      start_registrar "$RESP_PORT" "$RESP_CPU"; RPIDS=$REG_PID; RSTOP=$REG_PID; RLOG="$W/registrar-$RESP_PORT.log"
      RDESC="sipalive respond --registrar --digest-algorithms MD5 --registrar-db '' --qualify-frequency 0 --rcvbuf $RCVBUF, 1 process" ;;
    *) die "unknown registrar $1 (kam1tlsf-auth sipalive-reg)" ;;
  esac
  RDESC+=", UDP socket $(rcvbuf_of "$RESP_PORT" udp)"
}

declare -A KNEES=() FIRSTS=() BESTS=() BB=() PER=()
for tr in $TRANSPORTS; do
  for pass in $(seq "$PASSES"); do
    order=$RESPONDERS
    [ $((pass % 2)) = 0 ] && order=$(echo "$RESPONDERS" | tr ' ' '\n' | tac | tr '\n' ' ')
    noise_report "registrar_${tr}_pass$pass"
    echo "== $tr pass $pass/$PASSES (order: $order): one SIPp UAC, REGISTER+401+REGISTER+200, ${DURATION} s per point, rates: $RATES (refine $REFINE, to $ROUND/s)"
    uac_header; echo
    for kind in $order; do
      start_kind "$kind"
      echo "  # $kind: $RDESC"
      # smoke: a registrar that refuses the credentials is a setup error, not a slow registrar
      msg="$W/uac-$kind-smoke-$tr.msg"; rm -f "$msg"
      sipp_uac_point "$RESP_PORT" "$tr" 20 "$SMOKE" "$RPIDS" "$kind-smoke" -trace_msg -message_file "$msg"
      [ "$R_OK" = "$SMOKE" ] || die "$kind: only $R_OK of $SMOKE registrations completed at 20/s (auth set-up?): $(grep -m3 -iE -A3 'unexpected|aborting' "$W/uac-$kind-smoke-$tr-20.screen" "$msg" | head -c 800)"
      echo "  # $kind challenge: $(grep -m1 -i '^WWW-Authenticate:' "$msg" | sed -E 's/nonce="[^"]*"/nonce="..."/' | tr -d '\r')"
      knee_search "$RESP_PORT" "$tr" "$RPIDS" "$kind"
      KNEES[$kind-$tr-$pass]=$KNEE; FIRSTS[$kind-$tr-$pass]=$FIRST_FAIL; BESTS[$kind-$tr-$pass]=$MAXACH
      stop_pids "$RSTOP"
      case "$kind" in
        sipalive-reg) echo "  # $kind: $(grep -o 'stopped: [0-9]* requests, [0-9]* answered' "$RLOG" || echo 'no stop line'); registered/refreshed lines: $(grep -cE 'registrar: (registered|refreshed)' "$RLOG" || true)" ;;
        kam1tlsf-auth) echo "  # $kind: REGISTER log lines: $(grep -c 'REGISTER sip:' "$RLOG" || true); errors: $(grep -ciE 'ERROR|out of memory' "$RLOG" || true)" ;;
      esac
      sleep 1
    done
  done
  echo "== $tr knees (highest completed-registrations/s with 0 failed, 0 retransmissions, all 200, achieved >= 95%)"
  echo "   per pass, and the best pass (other load can only lower a knee, so the best pass is the estimate)"
  best_of_passes "$tr"
  kam=${K[kam1tlsf-auth]:-0}; ours=${K[sipalive-reg]:-0}
  ratio=n/a
  if [ -n "${K[kam1tlsf-auth]:-}" ] && [ -n "${K[sipalive-reg]:-}" ] && [ "$kam" -gt 0 ]; then
    ratio=$(awk -v a="$ours" -v b="$kam" 'BEGIN{printf "%.2f", a/b}')
    if [[ "${KT[kam1tlsf-auth]}" == ">="* ]]; then
      [[ "${KT[sipalive-reg]}" == ">="* ]] && ratio="n/a (both passed the top rate)" || ratio="<=$ratio"
    elif [[ "${KT[sipalive-reg]}" == ">="* ]]; then ratio=">=$ratio"
    fi
  fi
  for kind in $RESPONDERS; do
    printf '  %-14s knee %9s/s   passes: %-24s best achieved %6d/s\n' "$kind" "${KT[$kind]}" "${PER[$kind]}" "${BB[$kind]}"
    emit "reg_${tr}_${kind}" "${KT[$kind]}"; emit "reg_${tr}_${kind}_best" "${BB[$kind]}"
    emit "reg_${tr}_${kind}_passes" "${PER[$kind]% }"
  done
  echo "  ratio sipalive-reg/kam1tlsf-auth: $ratio (HIGHER is better, target >= 1.0)"
  emit "reg_${tr}_ratio" "$ratio"
  echo
  echo "| registrar, ${tr^^}, REGISTER with digest auth (challenged once each), one SIPp UAC, ${DURATION}-s points | knee, registrations/s | passes | best achieved /s | ratio ours/Kamailio |"
  echo "|---|---|---|---|---|"
  echo "| sipalive respond --registrar, 1 process, MD5, qop=auth, in memory, $NUSERS users | ${KT[sipalive-reg]:-n/a} | $(echo ${PER[sipalive-reg]:-n/a}) | ${BB[sipalive-reg]:-n/a} | $ratio |"
  echo "| Kamailio 1 worker TLSF, lab cfg WITH_AUTH (usrloc in memory, no qop), $NUSERS users | ${KT[kam1tlsf-auth]:-n/a} | $(echo ${PER[kam1tlsf-auth]:-n/a}) | ${BB[kam1tlsf-auth]:-n/a} | - |"
  echo
  echo "  (A '>=' knee passed the top rate: the instrument may be the limit, and a ratio against it is a"
  echo "   bound. Each registration is two SIP transactions: REGISTER/401 and REGISTER/200.)"
  if [ -n "${K[sipalive-reg]:-}" ] && [ -n "${K[kam1tlsf-auth]:-}" ]; then
    emit "mdrow_reg_${tr}" "| registrar knee ${tr^^}, REGISTERs with digest auth (challenged once each) completed/s, one SIPp UAC, $NUSERS users: sipalive respond --registrar, 1 process, MD5 | ${KT[sipalive-reg]} (passes ${PER[sipalive-reg]% }; best achieved ${BB[sipalive-reg]}) | Kamailio 1 worker TLSF WITH_AUTH ${KT[kam1tlsf-auth]} (passes ${PER[kam1tlsf-auth]% }; best achieved ${BB[kam1tlsf-auth]}) | $ratio | higher | >= 1.0 | $(awk -v r="$ratio" 'BEGIN { if (r ~ /^[0-9.]+$/) print (r >= 1.0 ? "meets" : "misses"); else if (r ~ /^<=/ && substr(r, 3) + 0 < 1.0) print "misses"; else print "n/a" }') |"
  fi
done
exit 0
