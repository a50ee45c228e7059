# shellcheck shell=bash
# bench/lib.sh - helpers sourced by the bench/*.sh scripts (not executable on its own).
#
# Everything runs on 127.0.0.1 with 4-digit ports (sipsak 0.9.8.1 truncates 5-digit ports in the
# Request-URI). Every process a script starts is recorded by PID and stopped on exit or Ctrl-C
# (TERM, up to 3 s, then KILL, by PID only); every daemon also has its own hard stop (SIPp
# -timeout, `timeout` around Kamailio, sipalive respond --duration, `timeout` around probers).
# Nothing outside the repository is read: scenarios and the Kamailio cfg are tests/data copies.
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$BENCH_DIR/.." && pwd)"
SIPALIVE="${SIPALIVE:-$REPO/.venv/bin/sipalive}"  # overridable: a wrapped build for an experiment
VENV_PY="$REPO/.venv/bin/python"
DATA="$REPO/tests/data"
SCEN="$DATA/sipp"
KAM_CFG="$DATA/kamailio.cfg"
HZ=$(getconf CLK_TCK)
NCPU=$(nproc)
UAC_CPU="${UAC_CPU:-0}"          # the instrument / the prober
RESP_CPU="${RESP_CPU:-1}"        # the responder
PIN="${PIN:-1}"                  # 0 = no taskset at all

die()  { echo "bench: error: $*" >&2; exit 2; }
log()  { echo "[$(date +%H:%M:%S)] $*"; }
need() { local c; for c in "$@"; do command -v "$c" >/dev/null 2>&1 || die "missing '$c' (make peers)"; done; }

need sipp sipsak hyperfine taskset ss timeout awk /usr/bin/time
[ -x "$SIPALIVE" ] || die "$SIPALIVE missing: run 'make install' first"
[ -x "$VENV_PY" ] || die "$VENV_PY missing: run 'make install' first"
# The venv's real interpreter (never a pyenv shim): the symlink target.
PYREAL="$(readlink -f "$VENV_PY")"
[ -x "$PYREAL" ] || die "cannot resolve the venv interpreter ($VENV_PY -> $PYREAL)"
case "$PYREAL" in *"/shims/"*) die "resolved interpreter is a pyenv shim: $PYREAL" ;; esac
# small inline parsers: stdlib only, -S = no site (fast, and independent of the venv contents)
py() { "$PYREAL" -S - "$@"; }
KAM_MODDIR=/usr/lib/x86_64-linux-gnu/kamailio/modules

pin() {  # pin CPU -> prefix words for a command (empty when PIN=0)
  [ "$PIN" = 1 ] && echo "taskset -c $1" || true
}

# ------------------------------------------------------------------ work dir, summary
if [ -n "${OUTDIR:-}" ]; then mkdir -p "$OUTDIR"; W="$(cd "$OUTDIR" && pwd)"; KEEP=1
else W="$(mktemp -d /tmp/sipalive-bench.XXXXXX)"; KEEP=0; fi

emit() {  # emit KEY VALUE: one machine-readable figure for run-all.sh (SUMMARY_FILE)
  [ -n "${SUMMARY_FILE:-}" ] && printf '%s\t%s\n' "$1" "$2" >>"$SUMMARY_FILE"
  return 0
}

# ------------------------------------------------------------------ process hygiene (by PID)
STARTED=()          # every PID we started (daemons); stopped in reverse order on exit
declare -A KIDS_OF=()   # PID -> " kid:comm kid:comm" recorded while it ran
CLEANUP_HOOKS=()    # extra commands run at exit (e.g. restore a sysctl)

stop_pid() {  # PID: TERM, up to 3 s, then KILL. Only that PID.
  local p="$1" i
  [ -n "$p" ] && kill -0 "$p" 2>/dev/null || return 0
  kill -TERM "$p" 2>/dev/null || true
  for i in $(seq 30); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$p" 2>/dev/null && kill -KILL "$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
}
descendants() {  # PID -> all descendants (children first level, then theirs), recorded at call time
  local p="$1" c
  for c in $(cat /proc/"$p"/task/*/children 2>/dev/null); do echo "$c"; descendants "$c"; done
}
remember_kids() {  # PID: record its descendants with their comm (to stop them safely later)
  local k c
  for k in $(descendants "$1"); do
    c="$(cat "/proc/$k/comm" 2>/dev/null || true)"
    case "${KIDS_OF[$1]:-} " in *" $k:"*) ;; *) KIDS_OF[$1]+=" $k:$c" ;; esac
  done
}
stop_tree() {  # PID: stop it, then each recorded descendant still alive under the same name
  local p="$1" e k
  remember_kids "$p"
  stop_pid "$p"
  for e in ${KIDS_OF[$p]:-}; do
    k=${e%%:*}
    [ "$(cat "/proc/$k/comm" 2>/dev/null)" = "${e#*:}" ] && stop_pid "$k"
  done
  unset "KIDS_OF[$p]"
  return 0
}
forget_pid() {  # PID: no longer ours to stop (it was stopped already)
  local p="$1" i out=()
  for i in "${STARTED[@]}"; do [ "$i" = "$p" ] || out+=("$i"); done
  STARTED=("${out[@]}")
}
INSTALL_STAMP="$(stat -c %Y "$REPO"/.venv/lib/python3*/site-packages/sipalive/__init__.py 2>/dev/null | head -1)"
bench_cleanup() {
  local i h now
  now="$(stat -c %Y "$REPO"/.venv/lib/python3*/site-packages/sipalive/__init__.py 2>/dev/null | head -1)"
  [ "$now" = "$INSTALL_STAMP" ] || echo "# WARNING: the installed sipalive was REPLACED during this run (make install by someone else?): figures may mix two versions"
  for (( i=${#STARTED[@]}-1; i>=0; i-- )); do stop_tree "${STARTED[$i]}"; done
  STARTED=()
  for h in "${CLEANUP_HOOKS[@]}"; do eval "$h" || true; done
  CLEANUP_HOOKS=()
  [ "$KEEP" = 1 ] || rm -rf "$W"
}
trap bench_cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------ ports
listening() {  # PORT udp|tcp
  local opt=-Hlnu; [ "$2" = tcp ] && opt=-Hlnt
  [ -n "$(ss $opt "sport = :$1" 2>/dev/null)" ]
}
port_busy() { listening "$1" udp || listening "$1" tcp || [ -n "$(ss -Hanu "sport = :$1" 2>/dev/null)" ]; }
wait_listen() {  # PORT TR [N sockets] : up to 5 s
  local i n="${3:-1}" opt=-Hlnu; [ "$2" = tcp ] && opt=-Hlnt
  for i in $(seq 50); do
    [ "$(ss $opt "sport = :$1" 2>/dev/null | wc -l)" -ge "$n" ] && return 0
    sleep 0.1
  done
  return 1
}
# pick_base OFFSET...: sets BASE to the first of BASE_PORT, +100, +200 ... (20 tries) for which
# every BASE+OFFSET is a free 4-digit port that avoids 5060/5061, SIPp's RTP 6000-6199 and
# control 8888-8999 (other sessions may be running tests on random ports meanwhile).
pick_base() {
  local b o p ok try
  for try in $(seq 0 19); do
    b=$(( ${BASE_PORT:-7400} + try * 100 )); ok=1
    for o in "$@"; do
      p=$((b + o))
      if [ "$p" -gt 9999 ] || [ "$p" -lt 2000 ] || { [ "$p" -ge 6000 ] && [ "$p" -lt 6200 ]; } \
         || { [ "$p" -ge 8888 ] && [ "$p" -lt 9000 ]; } || [ "$p" = 5060 ] || [ "$p" = 5061 ] \
         || port_busy "$p"; then ok=0; break; fi
    done
    [ "$ok" = 1 ] && { BASE=$b; return 0; }
  done
  die "no free 4-digit port block near BASE_PORT=${BASE_PORT:-7400}"
}

probe_ok() {  # PORT [udp|tcp]: one sipsak OPTIONS gets a 2xx
  local e=(); [ "${2:-udp}" = tcp ] && e=(-E tcp)
  timeout 10 sipsak "${e[@]}" -s "sip:ping@127.0.0.1:$1" >/dev/null 2>&1
}

# ------------------------------------------------------------------ responders
# start_sipp_uas PORT answer|silent udp|tcp [CPU|-] [BUFF] -> SIPP_UAS_PID
start_sipp_uas() {
  local port=$1 mode=$2 tr=$3 cpu=${4:--} buff=${5:-} t=u1 sf bb=() pfx=()
  [ "$tr" = tcp ] && t=t1
  [ "$cpu" != - ] && read -r -a pfx <<<"$(pin "$cpu")"
  [ -n "$buff" ] && bb=(-buff_size "$buff")
  if [ "$mode" = answer ]; then
    sf="$W/uas.xml"; sed -e '/<pause *\/>/d' "$SCEN/uas-options.xml" >"$sf"   # no 0-ms pause
  else
    sf="$SCEN/uas-options-silent.xml"
  fi
  # message trace only for the silent peer (it gives the retransmission schedule as received)
  [ "$mode" = silent ] && bb+=(-trace_msg -message_file "$W/uas-$mode-$port.msg")
  port_busy "$port" && die "port $port busy"
  "${pfx[@]}" sipp -sf "$sf" -i 127.0.0.1 -p "$port" -t "$t" -nostdin -timeout 1800s "${bb[@]}" \
    >"$W/uas-$mode-$port.screen" 2>&1 &
  SIPP_UAS_PID=$!; STARTED+=("$SIPP_UAS_PID")
  wait_listen "$port" "$tr" || die "SIPp UAS ($mode) did not start on $port/$tr: $(tail -3 "$W/uas-$mode-$port.screen")"
}

# start_kamailio PORT WORKERS MM(qm|tlsf) [CPU|-] -> KAM_PID (the `timeout` wrapper), KAM_PIDS (all)
start_kamailio() {
  local port=$1 n=$2 mm=$3 cpu=${4:--} kd pfx=() mmo=() i
  need kamailio
  [ -f "$KAM_MODDIR/sl.so" ] || die "Kamailio modules not found in $KAM_MODDIR"
  [ "$cpu" != - ] && read -r -a pfx <<<"$(pin "$cpu")"
  [ "$mm" = qm ] || mmo=(-x "$mm" -X "$mm")
  port_busy "$port" && die "port $port busy"
  kd="$W/kam-$port-$n$mm"; rm -rf "$kd"; mkdir -p "$kd"
  # the arguments of tests/realpeers.py (TLS off), -n/-N workers, optional TLSF memory managers
  timeout -k 5 1800 "${pfx[@]}" kamailio -f "$KAM_CFG" -L "$KAM_MODDIR" -DD -E -Y "$kd" -P "$kd/kamailio.pid" \
    -w "$kd" -m 32 -M 8 -a no --debug=2 -l "udp:127.0.0.1:$port" -l "tcp:127.0.0.1:$port" \
    -A "CTL_SOCK=\"unix:$kd/ctl\"" -A NATPING_INTERVAL=0 -A KEEPALIVE_TIMEOUT=0 \
    -n "$n" -N "$n" "${mmo[@]}" >"$kd/kamailio.log" 2>&1 &
  KAM_PID=$!; STARTED+=("$KAM_PID")
  for i in $(seq 100); do [ -S "$kd/ctl" ] && break; sleep 0.1; done
  wait_listen "$port" udp && wait_listen "$port" tcp || die "kamailio did not start on $port: $(tail -5 "$kd/kamailio.log")"
  sleep 0.5
  probe_ok "$port" || die "kamailio on $port does not answer sipsak: $(tail -5 "$kd/kamailio.log")"
  remember_kids "$KAM_PID"
  KAM_PIDS="$(descendants "$KAM_PID" | tr '\n' ' ')"
  KAM_NPROC=$(echo "$KAM_PIDS" | wc -w)
}

# start_respond PORT NPROC RCVBUF REUSE(0|1) [CPU|-] -> RESPOND_PIDS
start_respond() {
  local port=$1 nproc=$2 rcvbuf=$3 reuse=$4 cpu=${5:--} pfx=() extra=() i
  [ "$cpu" != - ] && read -r -a pfx <<<"$(pin "$cpu")"
  [ "$reuse" = 1 ] && extra+=(--reuse-port)
  [ -n "$rcvbuf" ] && [ "$rcvbuf" != 0 ] && extra+=(--rcvbuf "$rcvbuf")
  port_busy "$port" && die "port $port busy"
  RESPOND_PIDS=""
  for i in $(seq "$nproc"); do
    "${pfx[@]}" "$SIPALIVE" respond --listen "udp:127.0.0.1:$port" --listen "tcp:127.0.0.1:$port" \
      "${extra[@]}" --duration 1800 >"$W/respond-$port-$nproc-$i.log" 2>&1 &
    STARTED+=("$!"); RESPOND_PIDS+="$! "
    wait_listen "$port" udp "$i" || die "sipalive respond #$i did not start on $port: $(tail -3 "$W/respond-$port-$nproc-$i.log")"
  done
  wait_listen "$port" tcp "$nproc" || die "sipalive respond: $nproc TCP listeners expected on $port"
  sleep 0.3
  probe_ok "$port" || die "sipalive respond on $port does not answer sipsak"
}
stop_pids() {  # "PID PID ..." : stop and forget
  local p; for p in $1; do stop_tree "$p"; forget_pid "$p"; done
}

rcvbuf_of() {  # PORT udp|tcp -> "rb..." of the first matching socket(s), comma-joined
  local opt=-Hamnu; [ "$2" = tcp ] && opt=-Hamnt
  ss $opt "sport = :$1" 2>/dev/null | grep -o 'rb[0-9]*' | sort -u | paste -sd, - || true
}

# ------------------------------------------------------------------ measurement helpers
ticks() { local s=0 p v; for p in "$@"; do v=$(awk '{print $14+$15}' "/proc/$p/stat" 2>/dev/null) && s=$((s+v)); done; echo "$s"; }
cpustat() { awk '/^cpu /{print $5+$6, $9; exit}' /proc/stat; }      # idle+iowait, steal (exact)
udpdrops() { awk '/^Udp:/{n++; if (n==2) {print $4+0; exit}}' /proc/net/snmp; }   # Udp InErrors
# noise_report LABEL: how busy the machine is in the second BEFORE we load it (other sessions,
# test suites, fuzzers...): whole machine from /proc/stat idle+steal (exact), and the processes
# that used the most CPU in that second (per-process utime+stime deltas, not ps's lifetime %).
noise_report() {
  local out busy
  out=$(py "$HZ" "$NCPU" <<'PY'
import os, sys, time
hz, ncpu = int(sys.argv[1]), int(sys.argv[2])
def procs():
    d = {}
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                s = open(f"/proc/{p}/stat").read()
            except OSError:
                continue
            f = s[s.rindex(")") + 2:].split()
            d[p] = (int(f[11]) + int(f[12]), s[s.index("(") + 1:s.rindex(")")])
    return d
def cpu():
    f = open("/proc/stat").readline().split()
    return int(f[4]) + int(f[5]), int(f[8])   # idle+iowait, steal
a, c0, t0 = procs(), cpu(), time.monotonic()
time.sleep(1.0)
b, c1, t1 = procs(), cpu(), time.monotonic()
wall = t1 - t0
busy = max(0.0, ncpu * wall - ((c1[0] - c0[0]) + (c1[1] - c0[1])) / hz) / wall * 100
top = sorted(((b[p][0] - a[p][0], p, b[p][1]) for p in b if p in a), reverse=True)[:4]
print(f"{busy:.0f}")
print(", ".join(f"{n} (pid {p}) {t / hz / wall * 100:.0f}%" for t, p, n in top if t > 0) or "none")
PY
)
  busy=$(echo "$out" | head -1)
  echo "# machine busy before $1: ${busy}% of $((NCPU*100))% (load avg $(cut -d' ' -f1-3 /proc/loadavg))"
  if [ "$busy" -gt 15 ]; then
    echo "#   WARNING: something else uses the CPU, figures below are noisy. Busiest in that second: $(echo "$out" | tail -1)"
  fi
  emit "noise_$1" "$busy"
}

machine_line() {
  local model
  model=$(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo)
  echo "$(date -Is) on $(hostname), nproc $NCPU, ${model:-unknown CPU}, kernel $(uname -r)," \
       "rmem_default=$(sysctl -n net.core.rmem_default) rmem_max=$(sysctl -n net.core.rmem_max)," \
       "python $("$PYREAL" -S -c 'import sys; print(sys.version.split()[0])') ($PYREAL)," \
       "sipp $(sipp -v 2>&1 | grep -o 'v[0-9.]*' | head -1), hyperfine $(hyperfine --version | awk '{print $2}')," \
       "sipalive $(sipalive_rev)"
}
sipalive_rev() {  # read-only: HEAD of the repo (+dirty) and when the venv copy was installed
  local head dirty inst
  head=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo "?")
  dirty=$(git -C "$REPO" status --porcelain --untracked-files=no -- src 2>/dev/null | grep -q . && echo "+dirty-src" || true)
  inst=$(date -r "$("$PYREAL" -S -c 'import sys; print(sys.argv[1])' "$REPO"/.venv/lib/python3*/site-packages/sipalive/__init__.py)" '+%F %T' 2>/dev/null || echo "?")
  echo "HEAD $head$dirty, installed $inst"
}

# ------------------------------------------------------------------ SIPp UAC (the instrument)
# sipp_uac_point PORT TR RATE COUNT "RESP_PIDS" TAG [SIPP ARGS...]
#   -> R_ACH R_OK R_FAIL R_RETR R_DROP R_PEAK R_UAC R_RESP R_UACUS R_PASS R_UNEXP
# One SIPp UAC process (cpu UAC_CPU when pinned), -buff_size 1 MiB, -l LIMIT, -recv_timeout 5000,
# the scenario arguments UAC_SCENARIO (an array; default: tests/data's OPTIONS scenario) and any
# extra SIPp arguments. PASS = rc 0, 0 failed, 0 retransmissions, all COUNT answered,
# achieved >= 95 % of RATE, achieved = Successful / (Outgoing / CallRate) from the last CSV row.
# ROLE names the peer under test in the printed line ("responder", "registrar").
UAC_PORT_DEFAULT=""
sipp_uac_point() {
  local port=$1 tr=$2 rate=$3 count=$4 rpids=$5 tag=$6 t=u1 pfx=() rc=0 r0 r1 d0 d1 w0 w1 csv scr scen=()
  shift 6
  [ "$tr" = tcp ] && t=t1
  if [ -n "${UAC_SCENARIO+set}" ]; then scen=("${UAC_SCENARIO[@]}"); else scen=(-sf "$SCEN/uac-options.xml" -s ping); fi
  read -r -a pfx <<<"$(pin "$UAC_CPU")"
  csv="$W/uac-$tag-$tr-$rate.csv"; scr="$W/uac-$tag-$tr-$rate.screen"; rm -f "$csv" "$W/uac.time"
  r0=$(ticks $rpids); d0=$(udpdrops); w0=$EPOCHREALTIME
  /usr/bin/time -o "$W/uac.time" -f '%U %S %e' "${pfx[@]}" sipp "127.0.0.1:$port" \
    "${scen[@]}" -i 127.0.0.1 -p "$UAC_PORT" -t "$t" \
    -r "$rate" -m "$count" -l "${LIMIT:-1000}" -recv_timeout 5000 -nostdin \
    -timeout "$(( count / rate * 3 + 20 ))s" -buff_size 1048576 \
    -trace_stat -stf "$csv" -fd 1 "$@" >"$scr" 2>&1 &
  local upid=$!; STARTED+=("$upid")
  wait "$upid" || rc=$?
  forget_pid "$upid"
  w1=$EPOCHREALTIME; r1=$(ticks $rpids); d1=$(udpdrops)
  R_PEAK=$(grep -o "Peak was [0-9]* calls" "$scr" 2>/dev/null | tail -1 | grep -o "[0-9]*" || echo 0)
  read -r R_ACH R_OK R_FAIL R_RETR R_DROP R_UAC R_RESP R_UACUS R_PASS R_UNEXP <<<"$(
    awk -F';' -v rate="$rate" -v count="$count" -v hz="$HZ" -v rc="$rc" -v w0="$w0" -v w1="$w1" \
      -v r0="$r0" -v r1="$r1" -v d0="$d0" -v d1="$d1" -v tf="$W/uac.time" '
      NR==1 { for (i=1;i<=NF;i++) col[$i]=i; next }
      { last=$0 }
      END {
        split(last, f, ";")
        cr=f[col["CallRate(C)"]]+0; out=f[col["OutgoingCall(C)"]]+0; ok=f[col["SuccessfulCall(C)"]]+0
        fail=f[col["FailedCall(C)"]]+0; retr=f[col["Retransmissions(C)"]]+0
        unexp=f[col["FailedUnexpectedMessage(C)"]]+0
        el=(cr>0)?out/cr:0; ach=(el>0)?ok/el:0
        while ((getline l < tf) > 0) tl=l
        split(tl, tt, " "); ucpu=tt[1]+tt[2]; wall=w1-w0
        pass=(rc==0 && fail==0 && retr==0 && ok==count && ach>=0.95*rate)?"PASS":"FAIL"
        printf "%.0f %d %d %d %d %.0f %.0f %.1f %s %d\n", ach, ok, fail, retr, d1-d0,
          ucpu/wall*100, (r1-r0)/hz/wall*100, (ok>0)?ucpu/ok*1e6:0, pass, unexp
      }' "$csv" 2>/dev/null || echo "0 0 0 0 0 0 0 0 FAIL 0")"
  local p gone="" role=${ROLE:-responder}
  for p in $rpids; do kill -0 "$p" 2>/dev/null || gone+=" $p"; done
  printf '  %-22s %-3s %7d %8d %7d %5d %5d %6d %5d %5d %6s %6s  %s%s%s\n' "$tag" "$tr" "$rate" "$R_ACH" "$R_OK" \
    "$R_FAIL" "$R_RETR" "$R_DROP" "${R_PEAK:-0}" "$R_UAC" "$R_RESP" "$R_UACUS" "$R_PASS" \
    "$([ "${R_UNEXP:-0}" = 0 ] || echo "  ($R_UNEXP unexpected answers)")" \
    "$([ -z "$gone" ] || echo "  ${role^^} PROCESS(ES) GONE:$gone")"
  [ -z "$gone" ] || die "the $role died during the measurement ($tag, pids$gone)"
  sleep 1
}
uac_header() {  # the column line above sipp_uac_point's lines
  printf '  %-22s %-3s %7s %8s %7s %5s %5s %6s %5s %5s %6s %6s  %s' \
    "${ROLE:-responder}" tr target achieved ok fail retr drops peak uac% "$([ "${ROLE:-responder}" = responder ] && echo resp% || echo reg%)" uac-us verdict
}

# knee_search PORT TR "RESP_PIDS" TAG -> KNEE (highest PASS, 0 = none), FIRST_FAIL (0 = none),
# MAXACH (best achieved in any run). RATES are stepped in order; stop at the first failure,
# then bisect REFINE times (rounded to ROUND/s, default 1000), as peer-baselines.sh capacity does.
knee_search() {
  local port=$1 tr=$2 rpids=$3 tag=$4 rate lo hi mid i dur=${DURATION:-5} round=${ROUND:-1000}
  KNEE=0; FIRST_FAIL=0; MAXACH=0
  for rate in ${RATES:-5000 10000 20000 40000}; do
    sipp_uac_point "$port" "$tr" "$rate" $(( rate * dur )) "$rpids" "$tag"
    [ "$R_ACH" -gt "$MAXACH" ] && MAXACH=$R_ACH
    if [ "$R_PASS" = PASS ]; then KNEE=$rate; else FIRST_FAIL=$rate; break; fi
  done
  if [ "$FIRST_FAIL" -gt 0 ]; then
    lo=$KNEE; hi=$FIRST_FAIL
    for i in $(seq "${REFINE:-1}"); do
      mid=$(( (lo + hi) / (2 * round) * round ))
      { [ "$mid" -le "$lo" ] || [ "$mid" -ge "$hi" ]; } && break
      sipp_uac_point "$port" "$tr" "$mid" $(( mid * dur )) "$rpids" "$tag"
      [ "$R_ACH" -gt "$MAXACH" ] && MAXACH=$R_ACH
      if [ "$R_PASS" = PASS ]; then lo=$mid; else hi=$mid; fi
    done
    KNEE=$lo; FIRST_FAIL=$hi
  fi
}
# best_of_passes TR: from KNEES/FIRSTS/BESTS[kind-TR-pass] (knee_search per pass), for each kind
# in RESPONDERS: K (best knee), KT (its text), BB (best achieved), PER (each pass's knee text).
# Other load can only lower a knee, so the best pass is the estimate.
best_of_passes() {
  local tr=$1 kind pass k f bk bf bb per
  declare -gA K=() KT=() BB=() PER=()
  for kind in $RESPONDERS; do
    bk=-1; bf=0; bb=0; per=""
    for pass in $(seq "$PASSES"); do
      k=${KNEES[$kind-$tr-$pass]}; f=${FIRSTS[$kind-$tr-$pass]}
      per+="$(knee_text "$k" "$f") "
      [ "${BESTS[$kind-$tr-$pass]}" -gt "$bb" ] && bb=${BESTS[$kind-$tr-$pass]}
      if [ "$k" -gt "$bk" ] || { [ "$k" = "$bk" ] && [ "$f" = 0 ]; }; then bk=$k; bf=$f; fi
    done
    K[$kind]=$bk; KT[$kind]=$(knee_text "$bk" "$bf"); BB[$kind]=$bb; PER[$kind]=$per
  done
}
knee_text() {  # KNEE FIRST_FAIL -> "20000" or ">=40000" or "<5000"
  if [ "$2" = 0 ]; then echo ">=$1"; elif [ "$1" = 0 ]; then echo "<$2"; else echo "$1"; fi
}

# sock_drops PORT: sum of the per-socket "drops" column of /proc/net/udp for local port PORT
# (the responder's socket(s); the prober's own socket is gone when it exits, so its drops are
# Udp InErrors minus this).
sock_drops() {
  awk -v p="$(printf '%04X' "$1")" 'NR>1 { split($2, a, ":"); if (a[2]==p) s+=$NF } END { print s+0 }' /proc/net/udp
}

# still_alive PID LABEL SCREEN: 0 if PID runs; else prints why (the tail of its screen) and 1.
# (During development another session's processes were running on this VM and a peer died
# once in a while; the scripts re-check their peers after each measurement and redo it.)
still_alive() {
  kill -0 "$1" 2>/dev/null && [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ] && return 0
  echo "# WARNING: $2 (pid $1) is gone: $(tail -c 300 "$3" 2>/dev/null | tr '\n' ' ' | tr -s ' ')"
  forget_pid "$1"
  return 1
}
