#!/usr/bin/env bash
# fast_fail.sh - how long a check takes to give up on a SILENT peer, vs the configured schedule.
#
# A silent SIPp UAS (tests/data/sipp/uas-options-silent.xml: receives OPTIONS, never answers):
#   sipalive check -H 127.0.0.1 -p PORT --t1 0.1 --retransmits 2    sends at 0, 0.1, 0.3 s and
#                                                                     gives up at 0.7 s (configured)
#   sipsak -Z 100 -D 5 -s sip:ping@127.0.0.1:PORT                    the same 100/200/400 ms timers
#                                                                     (734.7 ms measured in bench-peers)
# hyperfine -N -i --warmup WARMUP --runs RUNS (non-zero exits are expected and accepted).
# Prints each median and its error vs 0.700 s (target: sipalive within +-15 ms), and the
# retransmission schedule as the peer received it (SIPp's message trace, per Call-ID).
# Not a test: exits 0 after printing, non-zero only on a setup error.
#
# Env: RUNS=10 WARMUP=1 BASE_PORT=7420 (silent UAS +14) OUTDIR= SUMMARY_FILE=
. "$(dirname "$0")/lib.sh"

RUNS="${RUNS:-10}"; WARMUP="${WARMUP:-1}"
BASE_PORT="${BASE_PORT:-7420}"; pick_base 14 39
SILENT_PORT=$((BASE + 14)); CLOSED_PORT=$((BASE + 39))
EXPECT=0.700

echo "# fast_fail: $(machine_line)"
start_sipp_uas "$SILENT_PORT" silent udp -
CHECK="$SIPALIVE check -H 127.0.0.1 -p $SILENT_PORT --t1 0.1 --retransmits 2"
SIPSAK="sipsak -Z 100 -D 5 -s sip:ping@127.0.0.1:$SILENT_PORT"
# reference: the same check against a closed port = process start + exit, no timers
CHECK_C="$SIPALIVE check -H 127.0.0.1 -p $CLOSED_PORT --t1 0.1 --retransmits 2"
port_busy "$CLOSED_PORT" && die "closed port $CLOSED_PORT is in use"
rc=0; out=$($CHECK) || rc=$?
echo "# sanity: sipalive check (silent peer) -> rc $rc: $out"
[ "$rc" = 2 ] || die "expected CRITICAL (2) from sipalive check against the silent peer"
rc=0; timeout 20 $SIPSAK >/dev/null 2>&1 || rc=$?
echo "# sanity: sipsak -Z 100 -D 5 (silent peer) -> rc $rc"

noise_report fastfail
for attempt in 1 2 3; do
  log "hyperfine -N -i --warmup $WARMUP --runs $RUNS (three commands), attempt $attempt"
  hyperfine -N -i --warmup "$WARMUP" --runs "$RUNS" --style none --export-json "$W/fastfail.json" \
    "$CHECK" "$SIPSAK" "$CHECK_C" >"$W/hyperfine.txt" 2>&1 || die "hyperfine failed: $(tail -5 "$W/hyperfine.txt")"
  sleep 0.5   # let SIPp flush its message trace
  still_alive "$SIPP_UAS_PID" "silent SIPp UAS" "$W/uas-silent-$SILENT_PORT.screen" && break
  [ "$attempt" = 3 ] && die "the silent SIPp UAS keeps dying"
  echo "# the silent peer died during the measurement: restarting it and measuring again"
  mv "$W/uas-silent-$SILENT_PORT.msg" "$W/uas-silent-$SILENT_PORT.msg.$attempt" 2>/dev/null || true
  start_sipp_uas "$SILENT_PORT" silent udp -
done

py "$W/fastfail.json" "$W/uas-silent-$SILENT_PORT.msg" "$EXPECT" "$REPO" "${SUMMARY_FILE:-}" <<'PY'
import json, re, statistics as st, sys, collections, datetime
jf, msgf, expect, repo, summary = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4], sys.argv[5]
res = json.load(open(jf))["results"]
print(f"\n== silent peer: time to give up, ms (hyperfine -N -i, {len(res[0]['times'])} runs each)")
print(f"{'command':<78} {'median':>8} {'mean':>8} {'sd':>6} {'min':>8} {'max':>8} {'err-vs-700':>10}  exit")
meds = {}
for r in res:
    t = [x * 1000 for x in r["times"]]
    m = st.median(t)
    name = "sipsak" if r["command"].startswith("sipsak") else ("sipalive" if r is res[0] else "closed")
    meds[name] = m
    ec = " ".join(f"rc{k}:{v}" for k, v in sorted(collections.Counter(r.get("exit_codes", [])).items()))
    e = f"{m - expect * 1000:+10.2f}" if name != "closed" else f"{'(start)':>10}"
    print(f"{r['command'].replace(repo + '/', ''):<78} {m:8.2f} {st.mean(t):8.2f} {st.stdev(t):6.2f} "
          f"{min(t):8.2f} {max(t):8.2f} {e}  {ec}")
err = meds["sipalive"] - expect * 1000
print(f"\nsipalive error vs the configured {expect*1000:.0f} ms: {err:+.2f} ms -> "
      f"{'MEETS' if abs(err) <= 15 else 'MISSES'} the +-15 ms target;"
      f" sipsak error {meds['sipsak'] - expect*1000:+.2f} ms;"
      f" ratio sipalive/sipsak = {meds['sipalive']/meds['sipsak']:.3f} (lower = gives up sooner)")
print(f"sipalive minus its own start+exit (closed-port check, {meds['closed']:.2f} ms) = "
      f"{meds['sipalive'] - meds['closed']:.2f} ms: the timer schedule itself is off by "
      f"{meds['sipalive'] - meds['closed'] - expect*1000:+.2f} ms")
# schedule as received by the silent peer: SIPp -trace_msg, grouped by Call-ID, by User-Agent
text = open(msgf, errors="replace").read() if msgf else ""
heads = list(re.finditer(r"^-{10,} (\S+ \S+)\n\S+ message received[^\n]*\n", text, re.M))
calls = collections.OrderedDict()
for h, nxt in zip(heads, heads[1:] + [None]):
    body = text[h.end(): nxt.start() if nxt else len(text)]
    cid = re.search(r"^Call-ID:\s*(\S+)", body, re.M | re.I)
    ua = re.search(r"^User-Agent:\s*(.+)$", body, re.M | re.I)
    try:
        ts = datetime.datetime.strptime(h.group(1), "%Y-%m-%d %H:%M:%S.%f").timestamp()
    except ValueError:
        continue
    who = "sipalive" if ua and "sipalive" in ua.group(1).lower() else "sipsak"
    calls.setdefault((who, cid.group(1) if cid else "?"), []).append(ts)
sched = collections.defaultdict(list)
for (who, _), ts in calls.items():
    sched[who].append(tuple(round((t - ts[0]) * 1000, 1) for t in ts))
for who, rows in sched.items():
    n = collections.Counter(len(r) for r in rows)
    k = n.most_common(1)[0][0]
    cols = list(zip(*[r for r in rows if len(r) == k]))
    print(f"received by the peer ({who}, {len(rows)} probes, {k} transmissions in {n[k]} of them):"
          f" offsets median " + " / ".join(f"{st.median(c):.1f}" for c in cols) + " ms")
if summary:
    with open(summary, "a") as f:
        f.write(f"ff_sipalive_ms\t{meds['sipalive']:.2f}\nff_sipsak_ms\t{meds['sipsak']:.2f}\n"
                f"ff_err_ms\t{err:+.2f}\nff_timer_err_ms\t{meds['sipalive'] - meds['closed'] - expect*1000:+.2f}\nff_sipsak_err_ms\t{meds['sipsak'] - expect*1000:+.2f}\n")
PY
exit 0
