"""Helpers of bench/monitor_scale.sh (stdlib only; the script runs them with ``python -S``).

    config      a monitor TOML file: N targets sip:t<i>@127.<a>.<b>.<c>:PORT over ADDRS addresses
    listen      the matching ``--listen T:ADDR:PORT`` arguments of one ``sipalive respond``
    udp-scale   warm-up, then the measured window of the UDP scale run (CPU, RSS, lag, /metrics)
    tcp-hold    warm-up, then the window of the TCP keep-alive run (CPU, RSS, connections)
    wait-state  wait until the named targets are all in one state; print each transition time

Every wait is bounded (a deadline or a count) and every figure is printed as it is measured;
the last line of udp-scale / tcp-hold is ``RESULT {json}`` for the shell to emit.

Where the figures come from:

* CPU: utime + stime of the monitor process (all its threads) from /proc/PID/stat over the
  window, as a share of one core. RSS: VmRSS sampled every second (max and last), VmHWM.
* Scheduler lag: ``sipalive_scheduler_lag_p99_seconds`` from /metrics. The engine computes it
  over its last LAG_RING probes (``Ring(4096)`` in monitor/engine.py), i.e. over the last
  LAG_RING / (N / frequency) seconds, and a scrape reads it BEFORE its own rendering. So a
  scrape taken more than that span after the previous HTTP call reads the lag of a quiet
  loop, and a scrape that follows another one at once reads the lag under scrapes.
* /metrics time: curl's ``time_starttransfer`` (the engine walks every target, formatting
  what changed, before the first byte; the rest is made as it is sent) and ``time_total`` (the
  whole ~70 MB at 100k targets), and the engine's own ``sipalive_metrics_render_seconds``
  (the previous scrape, from its start to its last byte written).
* Loop stalls: a thread GETs ``/api/targets/t0`` (one small JSON object) every POLL_S; a
  request that takes long waited for the event loop, which was held by something else.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime

LAG_RING = 4096
POLL_S = 0.02
HZ = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------ config and listen args
def address(k: int, first: int) -> str:
    """The k-th loopback address from 127.<first>.0.1: 254 hosts per /24, never .0 or .255."""
    b, c = divmod(k, 254)
    a, b = divmod(b, 256)
    return f"127.{first + a}.{b}.{c + 1}"


def cmd_config(a: argparse.Namespace) -> None:
    out = [
        f'[http]\nlisten = "127.0.0.1:{a.http_port}"\n\n',
        f'[storage]\npath = "{a.db}"\n\n',
        "[defaults]\n",
        f"qualify_frequency = {a.freq}\nqualify_timeout = {a.timeout}\n",
        f'transport = "{a.transport}"\n',
    ]
    if a.transport == "tcp":
        out.append(f"crlf_ping_interval = {a.crlf}\n")
    out.extend(f"{line}\n" for line in a.set)
    out.append("\n")
    uri = "sip:t{i}@{addr}:{port}"
    for i in range(a.n):
        addr = address(i % a.addrs, a.first)
        target_uri = uri.format(i=i, addr=addr, port=a.port)
        out.append(f'[[targets]]\nname = "t{i}"\nuri = "{target_uri}"\n')
    with open(a.out, "w") as f:
        f.write("".join(out))


def cmd_listen(a: argparse.Namespace) -> None:
    for k in range(a.addrs):
        for tr in a.transport.split(","):
            print(f"--listen {tr}:{address(k, a.first)}:{a.port}")


# ------------------------------------------------------------------ process and HTTP readers
def ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        s = f.read()
    fields = s[s.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


def status_kb(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:", "Threads:")):
                key, value = line.split(":", 1)
                out[key] = int(value.split()[0])
    return out


def udp_inerrors() -> int:
    with open("/proc/net/snmp") as f:
        rows = [line.split() for line in f if line.startswith("Udp:")]
    return int(rows[1][rows[0].index("InErrors")])


def db_bytes(path: str) -> int:
    """The SQLite file and its WAL."""
    return sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class Api:
    """One keep-alive HTTP connection to the monitor."""

    def __init__(self, port: int, timeout: float = 60.0) -> None:
        self.port = port
        self.timeout = timeout
        self.conn: http.client.HTTPConnection | None = None

    def get(self, path: str) -> tuple[int, bytes]:
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            try:
                self.conn.request("GET", path)
                r = self.conn.getresponse()
                return r.status, r.read()
            except (OSError, http.client.HTTPException):
                self.conn.close()
                self.conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def json(self, path: str) -> object:
        status, body = self.get(path)
        if status != 200:
            raise RuntimeError(f"GET {path}: HTTP {status}: {body[:200]!r}")
        return json.loads(body)


def summary(api: Api) -> tuple[dict, float, float]:
    """/api/summary, when it was answered (monotonic) and how long it took."""
    t0 = time.monotonic()
    s = api.json("/api/summary")
    t1 = time.monotonic()
    assert isinstance(s, dict)
    return s, t1, t1 - t0


def probes(s: dict) -> tuple[int, int]:
    """(all probes, unsuccessful probes) from a summary."""
    p = s["probes_total"]
    return sum(p.values()), p.get("failure", 0) + p.get("timeout", 0) + p.get("transport_error", 0)


def wait_up(api: Api, pid: int, limit: float) -> float:
    """Seconds until /api/summary answers (the monitor has loaded its targets)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        if not alive(pid):
            sys.exit(f"monitor_scale: the monitor (pid {pid}) exited during start-up")
        try:
            if api.get("/api/summary")[0] == 200:
                return time.monotonic() - t0
        except (OSError, http.client.HTTPException):
            pass
        time.sleep(0.25)
    sys.exit(f"monitor_scale: the monitor did not answer HTTP within {limit:.0f} s")


class RssWatch:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.max_kb = 0
        self.last_kb = 0

    def sample(self) -> None:
        kb = status_kb(self.pid).get("VmRSS", 0)
        self.last_kb = kb
        self.max_kb = max(self.max_kb, kb)


def sleep_watching(seconds: float, pid: int, rss: RssWatch, label: str) -> None:
    """Sleep ``seconds`` in 1-s steps, sampling RSS; exit if the monitor is gone."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        time.sleep(min(1.0, left))
        if not alive(pid):
            sys.exit(f"monitor_scale: the monitor (pid {pid}) died during {label}")
        rss.sample()


def scrape(port: int, body: str) -> dict:
    """One /metrics with curl: render (first byte) and total time, size, and the engine's
    own figures from the end of the body."""
    t0 = time.monotonic()
    out = subprocess.run(
        [
            "curl", "-s", "-o", body, "--max-time", "60",
            "-w", "%{http_code} %{time_starttransfer} %{time_total} %{size_download}",
            f"http://127.0.0.1:{port}/metrics",
        ],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    t1 = time.monotonic()
    code, first, total, size = out.stdout.split()
    if code != "200":
        raise RuntimeError(f"/metrics: HTTP {code}")
    figures: dict[str, float] = {}
    with open(body, "rb") as f:
        f.seek(max(0, int(size) - 16384))
        for line in f.read().decode("utf-8", "replace").splitlines():
            if line.startswith(("sipalive_", "process_")) and " " in line:
                name, value = line.rsplit(" ", 1)
                figures[name] = float(value)
    return {
        "t0": t0,
        "t1": t1,
        "first_s": float(first),
        "total_s": float(total),
        "mb": int(size) / 1e6,
        "lag_p99_s": figures.get("sipalive_scheduler_lag_p99_seconds"),
        "render_prev_s": figures.get("sipalive_metrics_render_seconds"),
    }


class Poller(threading.Thread):
    """GET /api/targets/t0 every POLL_S; records (start, latency) of each request."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.api = Api(port, timeout=30.0)
        self.samples: list[tuple[float, float]] = []
        self.errors = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            t0 = time.monotonic()
            try:
                self.api.get("/api/targets/t0")
            except (OSError, http.client.HTTPException):
                self.errors += 1
            t1 = time.monotonic()
            self.samples.append((t0, t1 - t0))
            self.stop.wait(max(0.0, POLL_S - (t1 - t0)))


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, int(p * len(v)))]


def ms(x: float | None) -> str:
    return "n/a" if x is None else f"{x * 1000:.1f}"


def r_ms(x: float | None) -> float | None:
    return None if x is None else round(x * 1000, 1)


def med(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def top(values: list[float]) -> float | None:
    return max(values) if values else None


# ------------------------------------------------------------------ UDP scale run
def cmd_udp_scale(a: argparse.Namespace) -> None:
    api = Api(a.http_port)
    rate = a.n / a.freq
    span = LAG_RING / rate
    rss = RssWatch(a.pid)
    up = wait_up(api, a.pid, a.start_limit)
    rss.sample()
    print(f"# monitor answering HTTP after {up:.1f} s; RSS {rss.last_kb / 1024:.0f} MB")
    print(
        f"# expected {rate:.0f} probes/s; the lag p99 covers the last {LAG_RING} probes "
        f"= {span:.1f} s of probing"
    )
    warm = a.freq * 1.1 + 5
    print(f"# warm-up {warm:.0f} s (one frequency period + 10 % + 5 s: every first probe is out)")
    sleep_watching(warm, a.pid, rss, "warm-up")
    s0, ts0, d0 = summary(api)
    print(
        f"# after warm-up: states {s0['counts']}, in_flight {s0['in_flight']}, "
        f"/api/summary took {d0 * 1000:.0f} ms"
    )
    settle = max(3.0, min(span + 1, 15.0))
    sleep_watching(settle, a.pid, rss, "settle")

    # phase A: quiet window, nothing but /proc reads
    print(f"# phase A: {a.duration:.0f} s quiet (no HTTP request)")
    c0, w0, e0, b0 = ticks(a.pid), time.monotonic(), udp_inerrors(), db_bytes(a.db)
    sleep_watching(a.duration, a.pid, rss, "the quiet window")
    c1, w1, e1, b1 = ticks(a.pid), time.monotonic(), udp_inerrors(), db_bytes(a.db)
    db_rate = (b1 - b0) / 1e6 / ((w1 - w0) / 60)
    cpu = (c1 - c0) / HZ / (w1 - w0) * 100
    quiet = scrape(a.http_port, a.body)
    s1, ts1, _ = summary(api)
    (p0, f0), (p1, f1) = probes(s0), probes(s1)
    achieved = (p1 - p0) / (ts1 - ts0)
    st = status_kb(a.pid)
    print(
        f"  CPU {cpu:.1f} % of one core ({(c1 - c0) / HZ:.1f} s in {w1 - w0:.0f} s), "
        f"RSS max {rss.max_kb / 1024:.0f} MB, now {st['VmRSS'] / 1024:.0f} MB, "
        f"peak (VmHWM) {st['VmHWM'] / 1024:.0f} MB, threads {st.get('Threads')}"
    )
    print(
        f"  lag p99 (quiet, first scrape after the window): {ms(quiet['lag_p99_s'])} ms; "
        f"probes {achieved:.0f}/s vs {rate:.0f}/s expected ({achieved / rate:.3f}); "
        f"unsuccessful {f1 - f0}; states {s1['counts']}; Udp InErrors +{e1 - e0}"
    )
    print(
        f"  database (file + WAL) {b1 / 1e6:.0f} MB, grew {db_rate:.1f} MB/min in the window "
        f"(= {db_rate * 1440 / 1000:.1f} GB/day at this rate)"
    )

    # phase B: spaced scrapes (each one reads the lag of a quiet loop), poller running
    gap = max(5.0, span * 1.5)
    poller = Poller(a.http_port)
    print(
        f"# phase B: {a.scrapes} scrapes {gap:.1f} s apart, "
        f"/api/targets/t0 polled every {POLL_S * 1000:.0f} ms"
    )
    sleep_watching(gap, a.pid, rss, "phase B")
    poller.start()
    spaced = []
    for i in range(a.scrapes):
        sleep_watching(gap, a.pid, rss, "phase B")
        spaced.append(scrape(a.http_port, a.body))
        r = spaced[-1]
        print(
            f"  scrape {i + 1}: first byte {ms(r['first_s'])} ms, total {ms(r['total_s'])} ms, "
            f"{r['mb']:.1f} MB, lag p99 before it {ms(r['lag_p99_s'])} ms, "
            f"engine: previous scrape {ms(r['render_prev_s'])} ms"
        )
    # phase C: back-to-back scrapes for max(10 s, 2 spans), at most 200
    busy_for = max(10.0, 2 * span)
    print(f"# phase C: back-to-back scrapes for {busy_for:.0f} s")
    back: list[dict] = []
    tc = time.monotonic()
    while time.monotonic() - tc < busy_for and len(back) < 200:
        back.append(scrape(a.http_port, a.body))
        if not alive(a.pid):
            sys.exit("monitor_scale: the monitor died during phase C")
    poller.stop.set()
    poller.join(5)
    under = [r["lag_p99_s"] for r in back if r["t0"] - tc >= span and r["lag_p99_s"] is not None]
    if not under:
        under = [r["lag_p99_s"] for r in back[1:] if r["lag_p99_s"] is not None]

    def stalls(intervals: list[tuple[float, float]]) -> list[float]:
        return [
            lat for t, lat in poller.samples if any(t < e and t + lat > s for s, e in intervals)
        ]

    spaced_iv = [(r["t0"], r["t1"]) for r in spaced]
    during = stalls(spaced_iv)
    quiet_poll = [
        lat
        for t, lat in poller.samples
        if t < tc and not any(t < e + 0.5 and t + lat > s - 0.5 for s, e in spaced_iv)
    ]
    during_c = stalls([(r["t0"], r["t1"]) for r in back])
    firsts = [r["first_s"] for r in spaced]
    totals = [r["total_s"] for r in spaced]
    lag_spaced = [r["lag_p99_s"] for r in spaced if r["lag_p99_s"] is not None]
    quiet_lag = quiet["lag_p99_s"]
    print(
        f"  /metrics (spaced): first byte median {ms(med(firsts))} ms max {ms(top(firsts))} ms; "
        f"total median {ms(med(totals))} ms max {ms(top(totals))} ms"
    )
    print(
        f"  lag p99 read by the spaced scrapes (quiet loop): median {ms(med(lag_spaced))} ms, "
        f"max {ms(top(lag_spaced))} ms"
    )
    print(
        f"  lag p99 under back-to-back scrapes ({len(back)} scrapes, {len(under)} readings): "
        f"median {ms(med(under))} ms, max {ms(top(under))} ms"
    )
    print(
        f"  loop responsiveness (/api/targets/t0, {len(poller.samples)} requests, "
        f"{poller.errors} errors): quiet p99 {ms(pct(quiet_poll, 0.99))} ms "
        f"max {ms(top(quiet_poll))} ms; during a spaced scrape max {ms(top(during))} ms; "
        f"during back-to-back scrapes p99 {ms(pct(during_c, 0.99))} ms max {ms(top(during_c))} ms"
    )
    st = status_kb(a.pid)
    s2, _, d2 = summary(api)
    unsuccessful = probes(s2)[1] - f0
    print(
        f"  at the end: RSS {st['VmRSS'] / 1024:.0f} MB, VmHWM {st['VmHWM'] / 1024:.0f} MB; "
        f"unsuccessful probes since warm-up {unsuccessful}; /api/summary took {d2 * 1000:.0f} ms"
    )
    result = {
        "n": a.n,
        "freq": a.freq,
        "cpu_pct": round(cpu, 1),
        "rss_mb": round(rss.max_kb / 1024),
        "hwm_mb": round(st["VmHWM"] / 1024),
        "lag_quiet_ms": r_ms(quiet_lag),
        "lag_spaced_ms": r_ms(med(lag_spaced)),
        "lag_scraped_ms": r_ms(med(under)),
        "lag_scraped_max_ms": r_ms(top(under)),
        "metrics_first_ms": r_ms(med(firsts)),
        "metrics_total_ms": r_ms(med(totals)),
        "metrics_total_max_ms": r_ms(top(totals)),
        "metrics_mb": round(spaced[0]["mb"], 1),
        "stall_quiet_ms": r_ms(top(quiet_poll)),
        "stall_scrape_ms": r_ms(top(during)),
        "probes_per_s": round(achieved),
        "probes_expected": round(rate),
        "unsuccessful": unsuccessful,
        "summary_ms": round(d0 * 1000),
        "db_mb_per_min": round(db_rate, 1),
        "start_s": round(up, 1),
    }
    print("RESULT " + json.dumps(result))


# ------------------------------------------------------------------ TCP keep-alive run
def established(port: int) -> int:
    out = subprocess.run(
        ["ss", "-Htn", "state", "established", f"( dport = :{port} )"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return len(out.stdout.splitlines())


def cmd_tcp_hold(a: argparse.Namespace) -> None:
    api = Api(a.http_port)
    rss = RssWatch(a.pid)
    up = wait_up(api, a.pid, a.start_limit)
    warm = a.freq * 1.1 + 5
    print(f"# monitor answering HTTP after {up:.1f} s; warm-up {warm:.0f} s (all connections open)")
    sleep_watching(warm, a.pid, rss, "warm-up")
    s0, ts0, _ = summary(api)
    conns0 = established(a.port)
    print(f"# after warm-up: states {s0['counts']}, {conns0} connections established to :{a.port}")
    c0 = ticks(a.pid)
    r0 = sum(ticks(p) for p in a.resp_pids)
    w0 = time.monotonic()
    sleep_watching(a.duration, a.pid, rss, "the window")
    c1 = ticks(a.pid)
    r1 = sum(ticks(p) for p in a.resp_pids)
    w1 = time.monotonic()
    conns1 = established(a.port)
    s1, ts1, _ = summary(api)
    st = status_kb(a.pid)
    cpu = (c1 - c0) / HZ / (w1 - w0) * 100
    rcpu = (r1 - r0) / HZ / (w1 - w0) * 100
    (p0, f0), (p1, f1) = probes(s0), probes(s1)
    achieved = (p1 - p0) / (ts1 - ts0)
    transitions = s1["last_event_id"] - s0["last_event_id"]
    print(
        f"  monitor CPU {cpu:.1f} % of one core, RSS max {rss.max_kb / 1024:.0f} MB "
        f"(VmHWM {st['VmHWM'] / 1024:.0f} MB, {rss.max_kb / max(1, conns1):.1f} kB per connection "
        f"all included); responder CPU {rcpu:.1f} %"
    )
    print(
        f"  connections {conns0} -> {conns1}; probes {achieved:.0f}/s vs {a.n / a.freq:.0f}/s "
        f"expected; unsuccessful {f1 - f0}; transitions in the window {transitions}; "
        f"states {s1['counts']}"
    )
    result = {
        "n": a.n,
        "cpu_pct": round(cpu, 1),
        "rss_mb": round(rss.max_kb / 1024),
        "hwm_mb": round(st["VmHWM"] / 1024),
        "resp_cpu_pct": round(rcpu, 1),
        "conns": conns1,
        "probes_per_s": round(achieved),
        "unsuccessful": f1 - f0,
        "transitions": transitions,
    }
    print("RESULT " + json.dumps(result))


# ------------------------------------------------------------------ detection
def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def cmd_wait_state(a: argparse.Namespace) -> None:
    """Wait until every name is in ``state`` (bounded by ``limit``), then print, per name,
    the time of its first transition to ``state`` at or after ``since`` minus ``since``."""
    api = Api(a.http_port)
    wait_up(api, a.pid, 60)
    names = a.names.split(",")
    end = time.monotonic() + a.limit
    pending = set(names)
    while pending and time.monotonic() < end:
        for name in sorted(pending):
            t = api.json(f"/api/targets/{name}")
            assert isinstance(t, dict)
            if t["state"] == a.state:
                pending.discard(name)
        if pending:
            time.sleep(0.05)
    for name in names:
        if name in pending:
            print(f"{name} none timeout")
            continue
        history = api.json(f"/api/targets/{name}/history?limit=50")
        assert isinstance(history, list)
        hit = [h for h in history if h["to"] == a.state and epoch(h["at"]) >= a.since - 0.002]
        if hit:
            print(f"{name} {epoch(hit[0]['at']) - a.since:.3f} {hit[0]['cause'].replace(' ', '_')}")
        else:
            print(f"{name} none no-transition")


def main() -> None:
    p = argparse.ArgumentParser(prog="monitor_scale.py")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("config")
    c.add_argument("--n", type=int, required=True)
    c.add_argument("--addrs", type=int, required=True)
    c.add_argument("--first", type=int, default=1, help="second octet of the first address")
    c.add_argument("--port", type=int, required=True)
    c.add_argument("--http-port", type=int, required=True)
    c.add_argument("--db", required=True)
    c.add_argument("--freq", type=float, default=60)
    c.add_argument("--timeout", type=float, default=3)
    c.add_argument("--transport", default="udp", choices=["udp", "tcp"])
    c.add_argument("--crlf", type=float, default=30)
    c.add_argument("--set", action="append", default=[], help="extra [defaults] line")
    c.add_argument("--out", required=True)
    c.set_defaults(fn=cmd_config)
    li = sub.add_parser("listen")
    li.add_argument("--addrs", type=int, required=True)
    li.add_argument("--first", type=int, default=1)
    li.add_argument("--port", type=int, required=True)
    li.add_argument("--transport", default="udp")
    li.set_defaults(fn=cmd_listen)
    for name, fn in (("udp-scale", cmd_udp_scale), ("tcp-hold", cmd_tcp_hold)):
        m = sub.add_parser(name)
        m.add_argument("--pid", type=int, required=True)
        m.add_argument("--http-port", type=int, required=True)
        m.add_argument("--n", type=int, required=True)
        m.add_argument("--freq", type=float, required=True)
        m.add_argument("--duration", type=float, required=True)
        m.add_argument("--start-limit", type=float, default=180)
        m.set_defaults(fn=fn)
        if name == "udp-scale":
            m.add_argument("--scrapes", type=int, default=5)
            m.add_argument("--body", required=True, help="file for the /metrics body")
            m.add_argument("--db", required=True, help="the monitor's database (its growth)")
        else:
            m.add_argument("--port", type=int, required=True)
            m.add_argument("--resp-pids", type=int, nargs="*", default=[])
    w = sub.add_parser("wait-state")
    w.add_argument("--http-port", type=int, required=True)
    w.add_argument("--pid", type=int, required=True, help="the monitor")
    w.add_argument("--names", required=True)
    w.add_argument("--state", required=True)
    w.add_argument("--since", type=float, required=True, help="epoch seconds")
    w.add_argument("--limit", type=float, required=True)
    w.set_defaults(fn=cmd_wait_state)
    a = p.parse_args()
    a.fn(a)


if __name__ == "__main__":
    main()
