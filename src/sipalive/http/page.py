"""The status page and the target page: server-rendered HTML with inline SVG, CSS and JS.

Nothing is fetched from elsewhere (no CDN, no framework). Every string that comes from the
configuration or from a peer goes through :func:`esc` (text and attributes) or
:func:`path_segment` (URLs). The one inline script carries the response's CSP nonce; it polls
``/api/events?after=`` every 2 s (10 s while the tab is hidden), recolours the badges of the
targets that changed and refreshes the counts, title and favicon from ``/api/summary``, so the
page stays current without a reload. It starts after ``EngineStats.last_event_id``.

The table shows unreachable targets first, then lagged, unknown, reachable, nonqualified (in
the view's order within a state), :data:`PAGE_SIZE` rows a page. The search box filters the
rows of the page as one types; Enter searches all targets on the server (``?q=``).

With a registrar (``[registrar]``) and contacts registered, a "Registered contacts" section
follows the table (:func:`contacts_section`): worst first, at most :data:`PAGE_SIZE` of them,
as they were when the page was made (the script does not refresh them).

Times are shown in UTC (the server cannot know the reader's zone) and as "x ago", which the
script keeps current. Plots are SVG drawn here: a sparkline of ``recent_rtts`` per row and, on
the target page, 24 h of per-minute RTT (mean line over a min-max band, a gap where the target
was not measured).
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import repeat
from urllib.parse import quote, urlencode

from sipalive.http.view import ContactView, RttMinuteView, TargetView, TransitionView
from sipalive.qualify.history import rtt_bucket
from sipalive.store.sqlite import iso8601

PAGE_SIZE = 500
ORDER = ("unreachable", "lagged", "unknown", "reachable", "nonqualified")  # rows, worst first
EVENTS_PER_POLL = 500


def esc(text: object) -> str:
    """Text or an attribute value, escaped for HTML (quotes included)."""
    return html.escape(str(text), quote=True)


def path_segment(name: str) -> str:
    """A target name as one URL path segment (``/`` and everything else percent-encoded)."""
    return quote(name, safe="")


def fmt_rtt(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    ms = seconds * 1000
    return f"{ms:.2f} ms" if ms < 10 else f"{ms:.1f} ms" if ms < 1000 else f"{seconds:.2f} s"


def fmt_ago(seconds: float) -> str:
    """A duration as people say it: ``42 s``, ``5 min``, ``3 h 12 min``, ``4 d 2 h``."""
    s = max(int(seconds), 0)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def fmt_utc(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def badge(state: str) -> str:
    return f'<span class="badge" data-state="{esc(state)}">{esc(state)}</span>'


def since_cell(at: float, now: float) -> str:
    return f'<span data-since="{at:.3f}" title="{esc(fmt_utc(at))}">{fmt_ago(now - at)}</span>'


def sparkline(samples: Sequence[float], width: int = 120, height: int = 26) -> str:
    """The RTT samples, oldest first, as a small SVG (y from 0 to the largest sample).

    Coordinates are in tenths of a pixel, as integers: 500 rows of these are on the status
    page, and integers format much faster than floats.
    """
    if not samples:
        return '<span class="muted">–</span>'
    low, high = min(samples), max(samples)
    n, w, h, pad = len(samples), width * 10, height * 10, 20
    step = (w - 2 * pad) / max(n - 1, 1)
    scale = (h - 2 * pad) / max(high, 1e-3)
    base = h - pad
    points = [f"{pad + round(i * step)},{round(base - s * scale)}" for i, s in enumerate(samples)]
    line = " ".join(points)
    x, y = points[-1].split(",")
    label = f"RTT min {fmt_rtt(low)}, max {fmt_rtt(high)}, last {fmt_rtt(samples[-1])}"
    return (
        f'<svg class="spark" width="{width}" height="{height}" viewBox="0 0 {w} {h}" '
        f'role="img" aria-label="{label}"><title>{label}</title>'
        f'<polygon points="{pad},{base} {line} {x},{base}" class="spark-area"/>'
        f'<polyline points="{line}" class="spark-line"/>'
        f'<circle cx="{x}" cy="{y}" r="20" class="spark-dot"/></svg>'
    )


def _nice_step(span: float, ticks: int = 5) -> float:
    """A 1, 2 or 5 times a power of ten close to ``span / ticks``."""
    raw = span / ticks
    power = 10.0 ** math.floor(math.log10(raw))
    return next(m * power for m in (1.0, 2.0, 5.0, 10.0) if m * power >= raw)


def tick_label(seconds: float, step: float) -> str:
    """An axis label, with as many decimals as the step between ticks needs."""
    unit, scale = ("s", 1.0) if step >= 1 else ("ms", 1000.0)
    decimals = max(0, -math.floor(math.log10(step * scale) + 1e-9))
    return f"{seconds * scale:.{decimals}f} {unit}"


_TIME_STEPS = (900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 2 * 86400, 7 * 86400)


def rtt_plot(
    series: Sequence[RttMinuteView],
    since: float,
    until: float,
    gap: float,
    width: int = 1280,
    height: int = 320,
) -> str:
    """Per-minute RTT from ``since`` to ``until``: mean line over a min-max band, with axes.

    Minutes more than ``gap`` seconds apart are not joined: the target was not measured.
    """
    left, right, top, bottom = 64, 16, 16, 36
    pw, ph = width - left - right, height - top - bottom
    y_max_s = max((m.max_s for m in series), default=0.0)
    step = _nice_step(max(y_max_s, 1e-3))
    y_top = step * math.ceil(max(y_max_s, 1e-3) / step)

    def x_of(t: float) -> float:
        return left + pw * (t - since) / (until - since)

    def y_of(s: float) -> float:
        return top + ph * (1 - s / y_top)

    out = [
        f'<svg class="plot" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        'role="img" aria-label="RTT per minute">'
    ]
    k = 0
    while k * step <= y_top + step / 1000:
        y, label = y_of(k * step), tick_label(k * step, step)
        out.append(
            f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
            f'<text x="{left - 8}" y="{y + 4:.1f}" class="ylabel">{label}</text>'
        )
        k += 1
    tick_every = next((t for t in _TIME_STEPS if (until - since) / t <= 9), _TIME_STEPS[-1])
    time_format = "%H:%M" if tick_every < 86400 else "%b %d"
    t = math.ceil(since / tick_every) * tick_every
    while t <= until:
        x = x_of(t)
        label = datetime.fromtimestamp(t, UTC).strftime(time_format)
        out.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{top + ph}" class="grid"/>'
            f'<text x="{x:.1f}" y="{top + ph + 18}" class="xlabel">{label}</text>'
        )
        t += tick_every
    out.append(
        f'<line x1="{left}" x2="{left + pw}" y1="{top + ph}" y2="{top + ph}" class="axis"/>'
        f'<line x1="{left}" x2="{left}" y1="{top}" y2="{top + ph}" class="axis"/>'
        f'<text x="{left + pw}" y="{top + ph + 32}" class="xlabel end">UTC</text>'
    )
    runs: list[list[RttMinuteView]] = []
    for minute in series:
        if runs and minute.minute_start - runs[-1][-1].minute_start <= gap:
            runs[-1].append(minute)
        else:
            runs.append([minute])
    for run in runs:
        if len(run) == 1:
            m = run[0]
            out.append(
                f'<line x1="{x_of(m.minute_start):.1f}" x2="{x_of(m.minute_start):.1f}" '
                f'y1="{y_of(m.min_s):.1f}" y2="{y_of(m.max_s):.1f}" class="band-line"/>'
                f'<circle cx="{x_of(m.minute_start):.1f}" cy="{y_of(m.mean_s):.1f}" r="2" '
                'class="mean-dot"/>'
            )
            continue
        upper = [f"{x_of(m.minute_start):.1f},{y_of(m.max_s):.1f}" for m in run]
        lower = [f"{x_of(m.minute_start):.1f},{y_of(m.min_s):.1f}" for m in reversed(run)]
        mean = [f"{x_of(m.minute_start):.1f},{y_of(m.mean_s):.1f}" for m in run]
        out.append(
            f'<polygon points="{" ".join(upper + lower)}" class="band"/>'
            f'<polyline points="{" ".join(mean)}" class="mean"/>'
        )
    if not series:
        out.append(
            f'<text x="{left + pw / 2}" y="{top + ph / 2}" class="empty">'
            "no RTT measured in this period</text>"
        )
    out.append(
        f'<g class="legend" transform="translate({left + 12},{top + 14})">'
        '<rect x="0" y="-9" width="18" height="10" class="band"/>'
        '<text x="24" y="0">min–max</text>'
        '<line x1="84" x2="102" y1="-4" y2="-4" class="mean"/><text x="108" y="0">mean</text>'
        "</g></svg>"
    )
    return "".join(out)


COLOURS = {
    "reachable": "#1f9d55",
    "lagged": "#e09b00",
    "unreachable": "#d93636",
    "unknown": "#8c939d",
    "nonqualified": "#5f7891",
}

CSS = (
    ":root{"
    + "".join(f"--{state}:{colour};" for state, colour in COLOURS.items())
    + """--bg:#f3f4f7;--fg:#1c2230;--muted:#6b7280;--card:#fff;--line:#e4e7eb;--accent:#2f5d9b}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
background:var(--bg);color:var(--fg)}
a{color:var(--accent);text-decoration:none}a:hover{text-decoration:underline}
header{background:#1c2230;color:#fff;padding:12px 24px;display:flex;align-items:center;gap:18px}
header h1{font-size:18px;margin:0;font-weight:650;letter-spacing:.2px}
header h1 a{color:#fff}header .sub{color:#aab1bd;font-size:13px}
#live{margin-left:auto;font-size:12px;color:#cfd5de}
#live::before{content:"";display:inline-block;width:8px;height:8px;border-radius:50%;
background:var(--reachable);margin-right:6px;vertical-align:1px}
#live.stale::before{background:var(--unreachable)}
main{padding:20px 24px 40px;max-width:1440px;margin:0 auto}
[data-state=reachable]{--c:var(--reachable)}[data-state=lagged]{--c:var(--lagged)}
[data-state=unreachable]{--c:var(--unreachable)}[data-state=unknown]{--c:var(--unknown)}
[data-state=nonqualified]{--c:var(--nonqualified)}
.cards{display:grid;grid-template-columns:repeat(5,minmax(120px,1fr));gap:12px;margin-bottom:18px}
.card{background:var(--card);border-radius:10px;padding:12px 16px;border-top:4px solid var(--c);
color:inherit;box-shadow:0 1px 2px rgba(16,24,40,.06)}
.card:hover{text-decoration:none;box-shadow:0 2px 8px rgba(16,24,40,.12)}
.card.selected{outline:2px solid var(--c)}
.card .n{display:block;font-size:30px;font-weight:700;color:var(--c);line-height:1.2;
font-variant-numeric:tabular-nums}
.card .l{color:var(--muted);text-transform:capitalize}
.badge{display:inline-block;min-width:104px;padding:2px 10px;border-radius:999px;
background:var(--c);color:#fff;font-size:12px;font-weight:600;text-align:center}
.toolbar{display:flex;gap:12px;align-items:center;margin-bottom:12px;flex-wrap:wrap}
.toolbar input{font:inherit;padding:7px 12px;border:1px solid #cfd4dc;border-radius:8px;
width:360px;background:#fff}
.toolbar .info{color:var(--muted)}
.pager{margin-left:auto;display:flex;gap:10px;align-items:center;color:var(--muted)}
table{width:100%;border-collapse:collapse;background:var(--card);border-radius:10px;
overflow:hidden;box-shadow:0 1px 2px rgba(16,24,40,.06)}
th,td{padding:7px 12px;text-align:left;border-bottom:1px solid var(--line);white-space:nowrap;
vertical-align:middle}
th{font-size:11px;text-transform:uppercase;letter-spacing:.4px;color:var(--muted);
background:#fafbfc;font-weight:600}
tbody tr:hover{background:#f8f9fb}
tr[data-state=unreachable] td:first-child{box-shadow:inset 3px 0 var(--unreachable)}
tr[data-state=lagged] td:first-child{box-shadow:inset 3px 0 var(--lagged)}
tr.flash{animation:flash 1.5s ease-out}
@keyframes flash{from{background:#fff3c4}to{background:transparent}}
.num{text-align:right;font-variant-numeric:tabular-nums}
.name{font-weight:600}.uri{display:block;color:var(--muted);font:12px ui-monospace,monospace;
max-width:360px;overflow:hidden;text-overflow:ellipsis}
.muted{color:var(--muted)}.err{color:var(--unreachable)}
.spark{display:block}.spark-line{fill:none;stroke:var(--accent);stroke-width:1.4;
vector-effect:non-scaling-stroke}
.spark-area{fill:var(--accent);opacity:.12}.spark-dot{fill:var(--accent)}
.panel{background:var(--card);border-radius:10px;padding:16px 20px;margin-bottom:18px;
box-shadow:0 1px 2px rgba(16,24,40,.06)}
.panel h2{font-size:15px;margin:0 0 12px}
.title{display:flex;align-items:center;gap:14px;margin:0 0 4px}
.title h2{margin:0;font-size:22px}
.stats{display:grid;grid-template-columns:repeat(auto-fill,minmax(180px,1fr));gap:10px 18px}
.stats div{border-left:3px solid var(--line);padding-left:10px}
.stats dt{color:var(--muted);font-size:12px}.stats dd{margin:0;font-weight:600;
font-variant-numeric:tabular-nums}
.plot{width:100%;height:auto}.plot text{font-size:11px;fill:var(--muted)}
.plot .ylabel{text-anchor:end}.plot .xlabel{text-anchor:middle}.plot .end{text-anchor:end}
.plot .grid{stroke:var(--line)}.plot .axis{stroke:#9aa3af}
.plot .band{fill:var(--accent);opacity:.18}.plot .band-line{stroke:var(--accent);opacity:.4}
.plot .mean{fill:none;stroke:var(--accent);stroke-width:1.6}.plot .mean-dot{fill:var(--accent)}
.plot .empty{text-anchor:middle;font-size:14px}
.plot .legend text{fill:var(--fg)}
"""
)

SCRIPT = """
(() => {
  "use strict";
  const body = document.body;
  let last = Number(body.dataset.lastEvent || 0);
  const live = document.getElementById("live");
  const byName = new Map();
  for (const el of document.querySelectorAll("[data-target]")) {
    if (!byName.has(el.dataset.target)) byName.set(el.dataset.target, []);
    byName.get(el.dataset.target).push(el);
  }
  const ago = (s) => {
    s = Math.max(0, Math.floor(s));
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min";
    if (s < 86400) return Math.floor(s / 3600) + " h " + Math.floor(s % 3600 / 60) + " min";
    return Math.floor(s / 86400) + " d " + Math.floor(s % 86400 / 3600) + " h";
  };
  const rtt = (s) => {
    if (s === null || s === undefined) return "\\u2013";
    const ms = s * 1000;
    if (ms < 10) return ms.toFixed(2) + " ms";
    return ms < 1000 ? ms.toFixed(1) + " ms" : s.toFixed(2) + " s";
  };
  const tick = () => {
    const now = Date.now() / 1000;
    for (const el of document.querySelectorAll("[data-since]")) {
      el.textContent = ago(now - Number(el.dataset.since));
    }
  };
  const apply = (ev) => {
    for (const el of byName.get(ev.target) || []) {
      el.dataset.state = ev.to;
      for (const b of el.querySelectorAll(".badge")) {
        b.dataset.state = ev.to;
        b.textContent = ev.to;
      }
      for (const s of el.querySelectorAll("[data-since]")) {
        s.dataset.since = String(Date.parse(ev.at) / 1000);
        s.title = ev.at;
      }
      for (const r of el.querySelectorAll(".rtt")) r.textContent = rtt(ev.rtt_s);
      el.classList.remove("flash");
      void el.offsetWidth;
      el.classList.add("flash");
    }
  };
  const get = async (url) => {
    const r = await fetch(url, {headers: {Accept: "application/json"}, cache: "no-store"});
    if (!r.ok) throw new Error(url + ": " + r.status);
    return r.json();
  };
  const poll = async () => {
    let delay = document.hidden ? 10000 : 2000;
    try {
      const events = await get("/api/events?after=" + last + "&limit=EVENTS_PER_POLL");
      for (const ev of events) { apply(ev); last = Math.max(last, ev.id); }
      if (events.length) {
        const summary = await get("/api/summary");
        const cards = document.querySelectorAll("[data-count]");
        for (const el of cards) el.textContent = String(summary.counts[el.dataset.count] || 0);
        if (cards.length) {
          const worst = ["unreachable", "lagged", "unknown"].find((s) => summary.counts[s] > 0);
          const colour = getComputedStyle(document.documentElement)
            .getPropertyValue("--" + (worst || "reachable")).trim();
          document.title = "sipalive \u00b7 " + (summary.counts.unreachable || 0) + " unreachable";
          document.querySelector("link[rel=icon]").href = "data:image/svg+xml," +
            encodeURIComponent("<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 16 16'>" +
              "<circle cx='8' cy='8' r='7' fill='" + colour + "'/></svg>");
        }
      }
      if (events.length === EVENTS_PER_POLL) delay = 0;
      live.classList.remove("stale");
      live.textContent = "live";
    } catch (err) {
      live.classList.add("stale");
      live.textContent = "offline, retrying";
    }
    tick();
    setTimeout(poll, delay);
  };
  const search = document.getElementById("search");
  if (search) {
    const rows = Array.from(document.querySelectorAll("tbody tr[data-find]"));
    const shown = document.getElementById("shown");
    search.addEventListener("input", () => {
      const q = search.value.trim().toLowerCase();
      let n = 0;
      for (const tr of rows) {
        tr.hidden = q !== "" && !tr.dataset.find.includes(q);
        if (!tr.hidden) n++;
      }
      if (shown) shown.textContent = String(n);
    });
  }
  setTimeout(poll, 2000);
})();
""".replace("EVENTS_PER_POLL", str(EVENTS_PER_POLL))


def favicon(state: str) -> str:
    """A dot in the colour of ``state``, as a data: URL."""
    svg = (
        "<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 16 16'>"
        f"<circle cx='8' cy='8' r='7' fill='{COLOURS.get(state, COLOURS['unknown'])}'/></svg>"
    )
    return "data:image/svg+xml," + quote(svg, safe=" =:/'")


def worst(counts: Mapping[str, int]) -> str:
    """The state that colours a summary: the first of ORDER with a target, reachable if none."""
    return next((s for s in ORDER[:3] if counts.get(s)), "reachable")


def _document(title: str, body: str, nonce: str, last_event_id: int, icon: str) -> str:
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<title>{esc(title)}</title><link rel="icon" href="{esc(favicon(icon))}">'
        f'<style nonce="{esc(nonce)}">{CSS}</style></head>'
        f'<body data-last-event="{last_event_id}"><header><h1><a href="/">sipalive</a></h1>'
        '<span class="sub">SIP liveness monitor</span><span id="live">live</span></header>'
        f'<main>{body}</main><script nonce="{esc(nonce)}">{SCRIPT}</script></body></html>'
    )


@dataclass(frozen=True, slots=True)
class IndexQuery:
    """The status page's filters: a state, a substring of name or URI, a group; a page."""

    state: str | None = None
    q: str | None = None
    group: str | None = None
    page: int = 1

    def url(self, **changes: str | int | None) -> str:
        params: dict[str, str | int | None] = {
            "state": self.state,
            "q": self.q,
            "group": self.group,
            "page": self.page,
        }
        params.update(changes)
        kept = {k: v for k, v in params.items() if v and not (k == "page" and v == 1)}
        return "/?" + urlencode(kept) if kept else "/"


def index_page(
    query: IndexQuery,
    counts: Mapping[str, int],
    matched: int,
    shown: int,
    rows_html: str,
    nonce: str,
    last_event_id: int,
    contacts_html: str = "",
) -> str:
    """The status page: counts per state, a search box, one page of targets (:func:`rows`),
    then ``contacts_html`` (:func:`contacts_section`)."""
    pages = max(1, math.ceil(matched / PAGE_SIZE))
    cards = "".join(
        f'<a class="card{" selected" if query.state == s else ""}" data-state="{s}" '
        f'href="{esc(query.url(state=None if query.state == s else s, page=1))}">'
        f'<span class="n" data-count="{s}">{counts.get(s, 0)}</span>'
        f'<span class="l">{s}</span></a>'
        for s in ORDER
    )
    filtered = bool(query.q or query.state or query.group)
    described = ", ".join(
        esc(f"{key} {value}")
        for key, value in (("state", query.state), ("group", query.group))
        if value
    )
    info = (
        f'<span id="shown">{shown}</span> shown of {matched} '
        + ("matching" if filtered else "targets")
        + (f" ({described})" if described else "")
        + (' · <a href="/">clear filters</a>' if filtered else "")
    )
    pager = ""
    if pages > 1:
        prev = (
            f'<a href="{esc(query.url(page=query.page - 1))}">‹ prev</a>' if query.page > 1 else ""
        )
        nxt = (
            f'<a href="{esc(query.url(page=query.page + 1))}">next ›</a>'
            if query.page < pages
            else ""
        )
        pager = f'<span class="pager">{prev}<span>page {query.page} of {pages}</span>{nxt}</span>'
    hidden = "".join(
        f'<input type="hidden" name="{k}" value="{esc(v)}">'
        for k, v in (("state", query.state), ("group", query.group))
        if v
    )
    toolbar = (
        '<form class="toolbar" method="get" action="/" role="search">'
        f'<input id="search" type="search" name="q" value="{esc(query.q or "")}" '
        'placeholder="Filter by name, URI or group" autocomplete="off" '
        'title="Filters this page as you type; Enter searches all targets">'
        f'{hidden}<span class="info">{info}</span>{pager}</form>'
    )
    table = (
        '<table><thead><tr><th>State</th><th>Target</th><th>Group</th><th class="num">RTT</th>'
        '<th class="num">sRTT</th><th class="num">p99</th><th>Since</th><th>Recent RTT</th>'
        f"<th>Last answer</th></tr></thead><tbody>{rows_html}</tbody></table>"
    )
    if not shown:
        table += '<p class="muted">No target matches.</p>'
    return _document(
        f"sipalive · {counts.get('unreachable', 0)} unreachable",
        f'<nav class="cards">{cards}</nav>{toolbar}{table}{contacts_html}',
        nonce,
        last_event_id,
        worst(counts),
    )


def _last_answer(t: TargetView) -> str:
    if t.last_error:
        status = esc(t.last_status) if t.last_status is not None else ""
        return f'<span class="err" title="{esc(t.last_error)}">{status} {esc(t.last_error)}</span>'
    if t.last_status is not None:
        return esc(t.last_status)
    return '<span class="muted">–</span>'


def rows(targets: Iterable[TargetView], now: float) -> str:
    """Rows of the status page's table."""
    return "".join(map(_row, targets, repeat(now)))


def _row(t: TargetView, now: float) -> str:
    find = " ".join(x for x in (t.name, t.uri, t.group or "") if x).lower()
    return (
        f'<tr data-target="{esc(t.name)}" data-state="{esc(t.state)}" data-find="{esc(find)}">'
        f"<td>{badge(t.state)}</td>"
        f'<td><a class="name" href="/targets/{path_segment(t.name)}">{esc(t.name)}</a>'
        f'<span class="uri">{esc(t.uri)}</span></td>'
        f"<td>{esc(t.group or '')}</td>"
        f'<td class="num rtt">{fmt_rtt(t.rtt_s)}</td>'
        f'<td class="num">{fmt_rtt(t.srtt_s)}</td>'
        f'<td class="num">{fmt_rtt(t.rtt_p99_s)}</td>'
        f"<td>{since_cell(t.since, now)}</td>"
        f"<td>{sparkline(t.recent_rtts)}</td>"
        f"<td>{_last_answer(t)}</td></tr>"
    )


def contacts_section(contacts: Sequence[ContactView], now: float) -> str:
    """The registrar's contacts, worst state first, then by AOR; "" when there are none."""
    if not contacts:
        return ""
    rank = {state: i for i, state in enumerate(ORDER)}
    shown = sorted(contacts, key=lambda c: (rank.get(c.state, len(ORDER)), c.aor, c.contact))
    shown = shown[:PAGE_SIZE]
    more = len(contacts) - len(shown)
    note = (
        f'<p class="muted">{more} more in <a href="/api/contacts">/api/contacts</a>.</p>'
        if more
        else ""
    )
    return (
        '<section class="panel contacts" id="contacts"><h2>Registered contacts '
        f'<span class="muted">({len(contacts)})</span></h2>'
        "<table><thead><tr><th>State</th><th>AOR</th><th>Contact</th><th>Source</th>"
        '<th class="num">RTT</th><th>Expires in</th></tr></thead><tbody>'
        + "".join(map(_contact_row, shown, repeat(now)))
        + f"</tbody></table>{note}</section>"
    )


def _contact_row(c: ContactView, now: float) -> str:
    agent = f' title="{esc(c.user_agent)}"' if c.user_agent else ""
    return (
        f'<tr data-state="{esc(c.state)}"><td>{badge(c.state)}</td>'
        f'<td class="name">{esc(c.aor)}</td>'
        f'<td><span class="uri"{agent}>{esc(c.contact)}</span></td>'
        f"<td>{esc(c.transport)} {esc(c.source)}</td>"
        f'<td class="num">{fmt_rtt(c.rtt_s)}</td>'
        f'<td title="{esc(fmt_utc(c.expires_at))}">{fmt_ago(c.expires_at - now)}</td></tr>'
    )


def target_page(
    t: TargetView,
    history: Sequence[TransitionView],
    series: Sequence[RttMinuteView],
    now: float,
    hours: float,
    nonce: str,
    last_event_id: int,
) -> str:
    """One target: its numbers, ``hours`` of RTT per minute, its transitions (newest first)."""
    facts: Iterable[tuple[str, str]] = [
        ("last RTT", fmt_rtt(t.rtt_s)),
        ("smoothed RTT", fmt_rtt(t.srtt_s)),
        ("RTT variance", fmt_rtt(t.rttvar_s)),
        ("min / max", f"{fmt_rtt(t.rtt_min_s)} / {fmt_rtt(t.rtt_max_s)}"),
        ("p50 / p90", f"{fmt_rtt(t.rtt_p50_s)} / {fmt_rtt(t.rtt_p90_s)}"),
        ("p99", fmt_rtt(t.rtt_p99_s)),
        ("probes", str(t.probes)),
        ("successes", str(t.successes)),
        ("failures", str(t.failures)),
        ("timeouts", str(t.timeouts)),
        ("transport errors", str(t.transport_errors)),
        ("last status", str(t.last_status) if t.last_status is not None else "–"),
        ("last error", t.last_error or "–"),
        ("last probe", fmt_ago(now - t.last_probe_at) + " ago" if t.last_probe_at else "–"),
        ("qualify every", f"{t.qualify_frequency:g} s" if t.qualify_frequency else "off"),
        ("transport", t.transport or "RFC 3263"),
        ("group", t.group or "–"),
    ]
    stats = "".join(f"<div><dt>{esc(k)}</dt><dd>{esc(v)}</dd></div>" for k, v in facts)
    head = (
        f'<section class="panel" data-target="{esc(t.name)}" data-state="{esc(t.state)}">'
        f'<div class="title"><h2>{esc(t.name)}</h2>{badge(t.state)}'
        f'<span class="muted">since {since_cell(t.since, now)} ago</span></div>'
        f'<p class="uri">{esc(t.uri)}</p><dl class="stats">{stats}</dl></section>'
    )
    gap = max(300.0, 2.5 * t.qualify_frequency, 2 * rtt_bucket(t.qualify_frequency))
    plot = (
        f'<section class="panel"><h2>RTT per minute, last {hours:g} h</h2>'
        f"{rtt_plot(series, now - hours * 3600, now, gap)}</section>"
    )
    trs = "".join(
        f'<tr><td title="{esc(iso8601(h.at))}">{esc(fmt_utc(h.at))}</td>'
        f"<td>{badge(h.from_state)}</td><td>{badge(h.to_state)}</td>"
        f'<td>{esc(h.cause)}</td><td class="num">{fmt_rtt(h.rtt_s)}</td></tr>'
        for h in reversed(history)
    )
    transitions = (
        '<section class="panel"><h2>Transitions</h2>'
        + (
            "<table><thead><tr><th>At</th><th>From</th><th>To</th><th>Cause</th>"
            f'<th class="num">RTT</th></tr></thead><tbody>{trs}</tbody></table>'
            if history
            else '<p class="muted">No transition recorded.</p>'
        )
        + "</section>"
    )
    back = '<p><a href="/">← all targets</a></p>'
    body = back + head + plot + transitions
    return _document(f"{t.name} · sipalive", body, nonce, last_event_id, t.state)


def not_found(name: str, nonce: str) -> str:
    body = f'<p><a href="/">← all targets</a></p><p>No target named <b>{esc(name)}</b>.</p>'
    return _document("not found · sipalive", body, nonce, 0, "unknown")
