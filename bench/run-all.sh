#!/usr/bin/env bash
# run-all.sh - runs the four side-by-side benchmarks in sequence and prints a markdown table
# (date, machine, each figure and ratio) to paste into README; saves the output of every script,
# the machine-readable figures and the table under bench/results/<date>/ (small text files).
# Three more steps run only when ONLY names them: `monitor` (monitor_scale.sh: the monitor at
# scale against issue 3's targets), `keepalive` (keepalive_bytes.sh: bytes per hour on the wire of
# each keep-alive mode; root for dumpcap) and `registrar` (registrar_vs_kamailio.sh: REGISTERs
# with digest auth per second vs Kamailio).
#
#   bench/run-all.sh                 quick profile (~9 min on the 2-vCPU dev VM)
#   PROFILE=long bench/run-all.sh    10-s points, 3 passes, 3 flood repeats, bisect twice, TCP for
#                                    the responder too (~35-40 min)
#   ONLY="check fastfail" bench/run-all.sh        a subset: check fastfail flood responder
#   ONLY=monitor bench/run-all.sh                 the monitor: 20k UDP targets (quick, ~8 min);
#                                    PROFILE=long: 100k UDP, 10k TCP (~11 min). MON_N etc. below
#   ONLY="keepalive registrar" bench/run-all.sh   issue 4: keep-alive bytes/hour on the wire
#                                    (quick: measured at 5 s for 2 min), registrar knee with auth
#   RAW=1 ...                        also keep each script's raw files (CSV, screens, JSON, logs)
# Any variable of the individual scripts may be set too (it wins over the profile).
# Not a test: exits 0 when every script ran (whatever the figures), 2 if one had a setup error.
set -uo pipefail
trap "exit 130" INT TERM
BENCH="$(cd "$(dirname "$0")" && pwd)"
PROFILE="${PROFILE:-quick}"
ONLY="${ONLY:-check fastfail flood responder}"
case "$PROFILE" in
  quick)
    : "${ROUNDS:=3}" "${RUNS_CHECK:=30}" "${RUNS_FF:=10}" "${FLOOD_REPEAT:=1}" "${FLOOD_COUNT:=50000}"
    : "${DURATION:=5}" "${REFINE:=1}" "${PASSES:=2}" "${RESP_TRANSPORTS:=udp}" "${FLOOD_TRANSPORTS:=udp tcp}"
    : "${MON_N:=20000}" "${MON_DURATION:=90}" "${MON_TCP_N:=5000}" "${MON_TCP_DURATION:=60}" "${MON_DETECT_ROUNDS:=2}"
    : "${KA_INTERVAL:=5}" "${KA_WINDOW:=120}" "${REG_TRANSPORTS:=udp}" ;;
  long)
    : "${ROUNDS:=3}" "${RUNS_CHECK:=30}" "${RUNS_FF:=20}" "${FLOOD_REPEAT:=3}" "${FLOOD_COUNT:=100000}"
    : "${DURATION:=10}" "${REFINE:=2}" "${PASSES:=3}" "${RESP_TRANSPORTS:=udp tcp}" "${FLOOD_TRANSPORTS:=udp tcp}"
    : "${MON_N:=100000}" "${MON_DURATION:=240}" "${MON_TCP_N:=10000}" "${MON_TCP_DURATION:=120}" "${MON_DETECT_ROUNDS:=5}"
    : "${KA_INTERVAL:=25}" "${KA_WINDOW:=600}" "${REG_TRANSPORTS:=udp tcp}" ;;
  *) echo "PROFILE must be quick or long" >&2; exit 2 ;;
esac
STAMP="$(date +%Y-%m-%d_%H%M%S)"
OUT="$BENCH/results/$STAMP"
mkdir -p "$OUT"
SUMMARY="$OUT/summary.tsv"; : >"$SUMMARY"
T0=$SECONDS
FAILED=""

run_one() {  # NAME SCRIPT ENV... : runs it, tees its output into OUT/NAME.txt
  local name=$1 script=$2 rc; shift 2
  echo "=================== $name ($script) $(date +%H:%M:%S)"
  local raw=(); [ "${RAW:-0}" = 1 ] && raw=(OUTDIR="$OUT/raw-$name")
  env "$@" "${raw[@]}" SUMMARY_FILE="$SUMMARY" bash "$BENCH/$script" 2>&1 | tee "$OUT/$name.txt"
  rc=${PIPESTATUS[0]}
  printf '%s\t%s\n' "${name}_rc" "$rc" >>"$SUMMARY"
  [ "$rc" = 0 ] || FAILED+=" $name(rc=$rc)"
  printf '%s\t%s\n' "secs_$name" "$((SECONDS - T0))" >>"$SUMMARY"
}

for what in $ONLY; do
  case "$what" in
    check)     run_one check check_vs_sipsak.sh ROUNDS="$ROUNDS" RUNS="$RUNS_CHECK" ;;
    fastfail)  run_one fastfail fast_fail.sh RUNS="$RUNS_FF" ;;
    flood)     run_one flood flood_vs_sipp.sh TRANSPORTS="$FLOOD_TRANSPORTS" FLOOD_REPEAT="$FLOOD_REPEAT" \
                 FLOOD_COUNT="$FLOOD_COUNT" DURATION="$DURATION" REFINE="$REFINE" PASSES="$PASSES" ;;
    responder) run_one responder responder_vs_kamailio.sh TRANSPORTS="$RESP_TRANSPORTS" DURATION="$DURATION" \
                 REFINE="$REFINE" PASSES="$PASSES" ;;
    monitor)   run_one monitor monitor_scale.sh N="$MON_N" DURATION="$MON_DURATION" TCP_N="$MON_TCP_N" \
                 TCP_DURATION="$MON_TCP_DURATION" DETECT_ROUNDS="$MON_DETECT_ROUNDS" ;;
    keepalive) run_one keepalive keepalive_bytes.sh INTERVAL="$KA_INTERVAL" WINDOW="$KA_WINDOW" ;;
    registrar) run_one registrar registrar_vs_kamailio.sh TRANSPORTS="$REG_TRANSPORTS" DURATION="$DURATION" \
                 REFINE="$REFINE" PASSES="$PASSES" ;;
    *) echo "unknown benchmark '$what' in ONLY (check fastfail flood responder monitor keepalive registrar)" >&2; exit 2 ;;
  esac
done

# machine line from the first script's header
MACHINE="$(grep -h -m1 '^# [a-z_]*: 20' "$OUT"/*.txt 2>/dev/null | head -1 | sed 's/^# [a-z_]*: //')"
"$(readlink -f "$BENCH/../.venv/bin/python")" -S - "$SUMMARY" "$PROFILE" "$STAMP" "$MACHINE" "$((SECONDS - T0))" \
  >"$OUT/table.md" <<'PY'
import sys, re
summary, profile, stamp, machine, secs = sys.argv[1:6]
d = {}
for line in open(summary):
    parts = line.rstrip("\n").split("\t")
    if len(parts) == 2: d[parts[0]] = parts[1]
    elif len(parts) == 3: d[f"{parts[0]}_{parts[1]}"] = parts[2]
g = lambda k, dflt="n/a": d.get(k, dflt) or dflt
def num(k):
    try: return float(re.sub(r"^[<>=]+", "", d[k]))
    except (KeyError, ValueError): return None
def verdict(r, lower_better, target=1.0):
    r = str(r); bound = r[:2] if r[:2] in ("<=", ">=") else ""
    try: x = float(r[len(bound):])
    except (TypeError, ValueError): return "n/a"
    ok = x <= target if lower_better else x >= target
    # a bound only decides the verdict when it points the right way
    if bound == "<=" and not lower_better and x >= target: return "undecided (bound)"
    if bound == ">=" and lower_better and x <= target: return "undecided (bound)"
    return "meets" if ok else "misses"
def kratio(ours, peer):
    """Ratio of two knees/rates given as text: '15000', '>=40000' (passed the top rate), '<5000'."""
    def parse(t):
        t = str(t); b = t[:2] if t[:2] == ">=" else (t[:1] if t[:1] == "<" else "")
        try: return b, float(t[len(b):])
        except ValueError: return b, None
    (bo, o), (bp, p) = parse(ours), parse(peer)
    if o is None or p is None or p == 0: return "n/a"
    r = f"{o / p:.2f}"
    if bo == ">=" and bp == ">=": return "n/a (both at the top rate)"
    if bp == ">=" or bo == "<": return "<=" + r      # the peer could do more / ours did less
    if bo == ">=" or bp == "<": return ">=" + r
    return r
m = re.match(r"(\S+) on (\S+), nproc (\d+), (.*?), kernel (\S+),", machine or "")
print(f"### sipalive vs established tools: {stamp.replace('_', ' ')} ({profile} profile, {int(secs)//60} min {int(secs)%60} s)\n")
if m:
    print(f"Machine: {m.group(3)} CPUs ({m.group(4)}), kernel {m.group(5)}. "
          f"Full line: `{machine}`\n")
rows = []
if "check_ms" in d:
    rows.append(("one-shot check, answering SIPp UAS, median ms (hyperfine -N, 3x30 runs interleaved)",
                 f"{g('check_ms')}", f"sipsak {g('sipsak_ms')}", g("check_sipsak_ratio"), "lower", "<= 1.0",
                 verdict(g("check_sipsak_ratio"), True)))
    rows.append(("one-shot check, closed port (ICMP unreachable), median ms",
                 f"{g('check_closed_ms')}", f"sipsak {g('sipsak_closed_ms')}", g("closed_ratio"), "lower", "-",
                 "-"))
    rows.append(("interpreter floor, median ms: python -S -c pass / venv python -c pass / python -c pass",
                 f"{g('py_S_ms')} / {g('py_venv_ms')} / {g('py_site_ms')}", "-", "-", "-", "-", "-"))
if "ff_sipalive_ms" in d:
    rows.append(("silent peer give-up, configured 0.700 s: median ms (error)",
                 f"{g('ff_sipalive_ms')} ({g('ff_err_ms')}; timers alone {g('ff_timer_err_ms')})",
                 f"sipsak -Z 100 -D 5: {g('ff_sipsak_ms')} ({g('ff_sipsak_err_ms')})",
                 f"{float(d['ff_sipalive_ms'])/float(d['ff_sipsak_ms']):.3f}", "lower",
                 "error within +-15 ms", "meets" if abs(float(d['ff_err_ms'])) <= 15 else "misses"))
for tr in ("udp", "tcp"):
    if f"flood_{tr}_ours" in d:
        rows.append((f"prober throughput {tr.upper()}, highest zero-failure transactions/s vs kam2tlsf",
                     f"{g(f'flood_{tr}_ours')} (window {g(f'flood_{tr}_ours_window')}; passes {g(f'flood_{tr}_ours_passes')}; "
                     f"0 retransmissions: {g(f'flood_{tr}_ours_strict')}; {g(f'flood_{tr}_ours_us')} CPU-us/txn)",
                     f"SIPp UAC knee {g(f'flood_{tr}_sipp')} (passes {g(f'flood_{tr}_sipp_passes')})",
                     kratio(g(f'flood_{tr}_ours'), g(f'flood_{tr}_sipp')), "higher", ">= 1.0",
                     verdict(kratio(g(f'flood_{tr}_ours'), g(f'flood_{tr}_sipp')), False)))
for tr in ("udp", "tcp"):
    if f"resp_{tr}_kam1tlsf" in d:
        for kind, what in (("sipalive-1", "1 process, --rcvbuf 4 MiB"),
                           ("sipalive-Nrp", f"{g('resp_nproc')} processes, --reuse-port")):
            if f"resp_{tr}_{kind}" in d:
                rows.append((f"responder knee {tr.upper()}, one SIPp UAC, /s: sipalive respond {what}",
                             f"{g(f'resp_{tr}_{kind}')} (passes {g(f'resp_{tr}_{kind}_passes')}; best achieved {g(f'resp_{tr}_{kind}_best')})",
                             f"Kamailio 1 worker TLSF {g(f'resp_{tr}_kam1tlsf')} (passes {g(f'resp_{tr}_kam1tlsf_passes')}; best achieved {g(f'resp_{tr}_kam1tlsf_best')})",
                             kratio(g(f'resp_{tr}_{kind}'), g(f'resp_{tr}_kam1tlsf')), "higher", ">= 1.0",
                             verdict(kratio(g(f'resp_{tr}_{kind}'), g(f'resp_{tr}_kam1tlsf')), False)))
def target_verdict(value, limit, lower_better=True, strict=False):
    """ratio value/limit and meets/misses against an absolute target of issue 3"""
    try:
        x, lim = float(value), float(limit)
    except (TypeError, ValueError):
        return "n/a", "n/a"
    ok = (x < lim if strict else x <= lim) if lower_better else x >= lim
    return f"{x / lim:.2f}", "meets" if ok else "misses"
if "mon_udp_cpu_pct" in d:
    n, f = g("mon_udp_n"), g("mon_udp_freq")
    scale = "" if n == "100000" else f" (at N={n}; the target is for 100k)"
    what = f"monitor, {n} UDP targets every {f} s, one responder on many 127.x addresses"
    r, v = target_verdict(d["mon_udp_cpu_pct"], 15)
    rows.append((f"{what}: CPU, % of one core ({g('mon_udp_duration')}-s quiet window after a period of warm-up)",
                 f"{g('mon_udp_cpu_pct')} %", "-", f"{r} of target", "lower", "<= 15 %", v + scale))
    r, v = target_verdict(d.get("mon_udp_rss_mb"), 400)
    rows.append((f"{what}: RSS, MB (max VmRSS in the window; peak VmHWM)",
                 f"{g('mon_udp_rss_mb')} (peak {g('mon_udp_hwm_mb')})", "-", f"{r} of target", "lower", "<= 400 MB",
                 v + scale))
    r, v = target_verdict(d.get("mon_udp_lag_quiet_ms"), 20)
    rows.append((f"{what}: scheduler lag p99, ms (quiet loop: sipalive_scheduler_lag_p99_seconds)",
                 f"{g('mon_udp_lag_quiet_ms')} (read by spaced scrapes: {g('mon_udp_lag_spaced_ms')})", "-",
                 f"{r} of target", "lower", "<= 20 ms", v + scale))
    r, v = target_verdict(d.get("mon_udp_metrics_total_ms"), 250, strict=True)
    rows.append((f"{what}: /metrics, ms (curl time_total, median of spaced scrapes; first byte; max)",
                 f"{g('mon_udp_metrics_total_ms')} (first byte {g('mon_udp_metrics_first_ms')}; max "
                 f"{g('mon_udp_metrics_total_max_ms')}; {g('mon_udp_metrics_mb')} MB)", "-", f"{r} of target",
                 "lower", "< 250 ms", v + scale))
    r, v = target_verdict(d.get("mon_udp_lag_scraped_ms"), 20)
    rows.append((f"{what}: scheduler lag p99 under back-to-back scrapes, ms (longest loop stall seen during a "
                 "spaced scrape / when quiet)",
                 f"{g('mon_udp_lag_scraped_ms')} (stall {g('mon_udp_stall_scrape_ms')} / {g('mon_udp_stall_quiet_ms')})",
                 "-", f"{r} of target", "lower", "<= 20 ms (no probe lagging)", v + scale))
    r, v = target_verdict(d.get("mon_udp_probes_per_s"), d.get("mon_udp_probes_expected"), lower_better=False)
    ok = v == "meets" or (r != "n/a" and float(r) >= 0.99)
    rows.append((f"{what}: probes/s achieved vs N/frequency; unsuccessful probes",
                 f"{g('mon_udp_probes_per_s')} of {g('mon_udp_probes_expected')}; {g('mon_udp_unsuccessful')} unsuccessful",
                 "-", r, "higher", ">= 0.99, 0 unsuccessful",
                 "meets" if ok and g("mon_udp_unsuccessful") == "0" else "misses"))
if "mon_tcp_cpu_pct" in d:
    rows.append((f"monitor, {g('mon_tcp_n')} TCP targets held open, CRLF keep-alive every {g('mon_tcp_crlf')} s: "
                 "CPU % of one core, RSS MB",
                 f"CPU {g('mon_tcp_cpu_pct')} %, RSS {g('mon_tcp_rss_mb')} (peak {g('mon_tcp_hwm_mb')}); "
                 f"{g('mon_tcp_conns')} connections, {g('mon_tcp_unsuccessful')} unsuccessful, "
                 f"{g('mon_tcp_transitions')} transitions",
                 f"responder CPU {g('mon_tcp_resp_cpu_pct')} %", "-", "lower", "-", "-"))
for mode, what in (("kill", "peer killed (ICMP port unreachable)"), ("stop", "peer silent (SIGSTOP)")):
    if f"mon_det_{mode}_median" in d:
        r, v = target_verdict(d.get(f"mon_det_{mode}_max"), d.get("mon_det_bound"))
        rows.append((f"monitor, detection of a dead UDP peer, {what}: median / max s over "
                     f"{g(f'mon_det_{mode}_n')} (missed {g(f'mon_det_{mode}_missed')})",
                     f"{g(f'mon_det_{mode}_median')} / {g(f'mon_det_{mode}_max')}", "-", f"{r} (max/bound)", "lower",
                     f"<= qualify_frequency + qualify_timeout = {g('mon_det_bound')} s "
                     f"(the +-10 % jitter of session 1 allowed 1.1 f + t = {g('mon_det_design')} s)", v))
# rows the scripts wrote whole (keepalive_bytes.sh, registrar_vs_kamailio.sh): "| a | b | ... |"
for k, v in d.items():
    if k.startswith("mdrow_"):
        rows.append(tuple(c.strip() for c in v.strip().strip("|").split("|")))
print("| benchmark | sipalive | peer | ratio ours/peer | better | target | verdict |")
print("|---|---|---|---|---|---|---|")
for r in rows:
    print("| " + " | ".join(str(x) for x in r) + " |")
noise = {k[6:]: v for k, v in d.items() if k.startswith("noise_")}
if noise:
    print("\nMachine busy (% of all CPUs x100) in the second before each part: "
          + ", ".join(f"{k} {v}%" for k, v in noise.items())
          + ". Above ~15 % something else was running: treat the figures as noisy.")
bad = [k[:-3] for k, v in d.items() if k.endswith("_rc") and v != "0"]
if bad:
    print(f"\n**Setup error in: {', '.join(bad)}** (see its .txt)")
print("\nRatios are ours/peer measured side by side in the same run. A `>=` knee passed the highest rate tried "
      "(the instrument may be the limit), so a ratio against it is a bound (`<=`). Knees: the best of the passes "
      "(other load only lowers them). Pinned: prober / SIPp UAC on cpu0, responder on cpu1.")
PY
echo
echo "=================== summary table ($OUT/table.md)"
cat "$OUT/table.md"
echo
echo "raw output: $OUT  (total $((SECONDS - T0)) s)"
[ -z "$FAILED" ] || { echo "setup error in:$FAILED" >&2; exit 2; }
exit 0
