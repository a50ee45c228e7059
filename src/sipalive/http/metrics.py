"""Prometheus text exposition (format 0.0.4): the monitor's ``/metrics`` and ``/probe`` bodies.

Families on ``/metrics`` (per target, label ``target`` = the target's name):

- ``sip_peer_up`` gauge: 1 if reachable or lagged, else 0.
- ``sip_peer_state{state}`` gauge: 1 for the current state, 0 for the four others.
- ``sip_peer_rtt_seconds{kind="last"|"srtt"}`` gauge: absent while the target has no RTT.
- ``sip_probes_total{result}`` counter: ``success``, ``rejected`` (a response the settings do
  not accept: ``failures - timeouts - transport_errors``), ``timeout``, ``transport_error``;
  the four add up to the target's probes.

With a registrar (``[registrar]``), per registered contact (labels ``aor`` and ``contact``, the
Contact URI) and for the registrar as a whole:

- ``sip_contact_up`` gauge: 1 if the contact is reachable or lagged, else 0.
- ``sip_contact_rtt_seconds`` gauge: the last qualify's RTT; absent while there is none.
- ``sip_registrar_contacts{state}`` gauge: contacts per state, all five states listed.

Two bindings may share one Contact URI (RFC 5626 outbound: one instance, two ``reg-id``
flows); they make one series, up if either is, with the smaller RTT, because a scrape with
two samples of one series is refused whole.

then the engine's (``sipalive_*``: targets, targets by state, probes in flight, probes by result,
scheduler lag p99, start time, how long the previous scrape took to its last byte sent) and the
process's, read from ``/proc`` as the Prometheus client libraries name them (``process_*``).

Rendering 100k targets. That is 1.2 million lines (about 70 MB): formatting them one
``f``-string each took 0.4 to 0.8 s here, so :class:`TargetFamilies` formats as little as it can
in Python. Lines whose value is a constant (``sip_peer_up``, ``sip_peer_state``) are not
formatted at all: the target names of one state are joined with a separator that closes one
line and opens the next, a single C-level ``str.join`` per (family, state). RTTs are written
with ``:.6f`` (microseconds), three times cheaper than ``repr``. The format wants each family
in one group: the targets are walked once (counting the body's bytes, for its length), then
the body is made family by family, a chunk's lines at a time, as it is sent.
The monitor's ``/metrics`` passes a :class:`LineCache`: the RTT and counter lines of a target
whose sample has not changed since the last scrape are sliced out of the last render instead
(by runs), so a scrape formats only the targets probed since the previous one.

Not blocking the loop. :func:`render_metrics` reads ``view.samples()`` (which the engine builds
as they are read, a tuple per target) and formats them in chunks of :data:`CHUNK` targets,
yielding to the event loop between chunks.
Rendering the same snapshot in a worker thread was measured too (100k targets, 2 cores): the
totals were alike (150-250 ms either way), but the loop stalls were smaller and steadier with
chunks (6-8 ms, against 8-15 ms whenever the loop had to win the GIL back from the thread), and
chunks keep every read of the engine's objects on the loop's thread. The result is a
:class:`Body` whose pieces are made while the handler streams them, so the ~70 MB body never
exists at once (it did, as pieces, until the monitor's peak RSS reached 405 MB at 100k).
"""

from __future__ import annotations

import asyncio
import math
import os
from array import array
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from itertools import accumulate, chain, compress, repeat
from operator import attrgetter, eq, is_not, sub

from sipalive.http.view import (
    STATES,
    ContactView,
    EngineStats,
    MonitorView,
    ProbeReport,
    TargetSample,
    contacts_of,
)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
CHUNK = 1000
UP_STATES = frozenset({"reachable", "lagged"})

_UP = 'sip_peer_up{target="'
_STATE = 'sip_peer_state{target="'
_RTT = 'sip_peer_rtt_seconds{target="'
_PROBES = 'sip_probes_total{target="'
_name = attrgetter("name")
_state = attrgetter("state")


def escape_label(value: str) -> str:
    """A label value as the exposition format quotes it: ``\\``, ``"`` and line feed escaped."""
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


def _needs_escape(values: list[str]) -> bool:
    joined = "".join(values)
    return "\\" in joined or '"' in joined or "\n" in joined


def format_value(value: float) -> str:
    """A sample value: integers without a fraction, ``NaN``/``+Inf``/``-Inf`` as Go spells them."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


def header(name: str, kind: str, text: str) -> str:
    """The ``# HELP`` and ``# TYPE`` lines of a family (HELP escapes ``\\`` and line feed)."""
    text = text.replace("\\", "\\\\").replace("\n", "\\n")
    return f"# HELP {name} {text}\n# TYPE {name} {kind}\n"


def sample(name: str, value: float, labels: Iterable[tuple[str, str]] = ()) -> str:
    """One sample line."""
    inner = ",".join(f'{key}="{escape_label(val)}"' for key, val in labels)
    return (
        f"{name}{{{inner}}} {format_value(value)}\n" if inner else f"{name} {format_value(value)}\n"
    )


def _joined(prefix: str, names: list[str], suffix: str) -> str:
    """``prefix + name + suffix`` for every name, as one string (no per-line formatting)."""
    return prefix + (suffix + prefix).join(names) + suffix if names else ""


# sip_peer_state line endings: _STATE_END[label][value], for label in STATES.
_STATE_END = {x: {v: f'",state="{x}"}} {v}\n' for v in (0, 1)} for x in STATES}


class Rendered:
    """One chunk's sip_peer_rtt_seconds (kind="last", then kind="srtt") and sip_probes_total
    lines, as three strings, with where each target's lines end in each (its lines are
    empty where it has no RTT), and the samples they were made of."""

    __slots__ = ("ends", "samples", "texts")

    def __init__(self, samples: list[TargetSample], texts: list[str], ends: list[array[int]]):
        self.samples = samples
        self.texts = texts
        self.ends = ends

    @classmethod
    def of(cls, samples: list[TargetSample], columns: list[list[str]]) -> Rendered:
        """From one line string per target and column."""
        return cls(
            samples,
            ["".join(c) for c in columns],
            [array("L", accumulate(map(len, c))) for c in columns],
        )


class LineCache:
    """The previous ``/metrics``' :class:`Rendered` chunks. The engine hands out the same
    :class:`TargetSample` object while a target is unchanged, so a target whose sample
    ``is`` the one its chunk was rendered from reuses its lines (a slice) and only the
    targets probed since the last scrape are formatted: fewer the closer the scrapes (a
    scrape ``qualify_frequency`` after the last one formats them all). The chunks hold the
    body's RTT and counter lines once more, ~40 MB at 100k targets, in a few large strings."""

    __slots__ = ("chunks",)

    def __init__(self) -> None:
        self.chunks: list[Rendered] = []


def _format(names: list[str], chunk: list[TargetSample]) -> list[list[str]]:
    """The three columns of :class:`Rendered` for ``chunk`` (``names`` already escaped)."""
    pairs = list(zip(names, chunk, strict=True))
    return [
        ["" if t.rtt_s is None else f'{_RTT}{n}",kind="last"}} {t.rtt_s:.6f}\n' for n, t in pairs],
        [
            "" if t.srtt_s is None else f'{_RTT}{n}",kind="srtt"}} {t.srtt_s:.6f}\n'
            for n, t in pairs
        ],
        [
            f'{_PROBES}{n}",result="success"}} {t.successes}\n'
            f'{_PROBES}{n}",result="rejected"}} {t.failures - t.timeouts - t.transport_errors}\n'
            f'{_PROBES}{n}",result="timeout"}} {t.timeouts}\n'
            f'{_PROBES}{n}",result="transport_error"}} {t.transport_errors}\n'
            for n, t in pairs
        ],
    ]


def _render(names: list[str], chunk: list[TargetSample], old: Rendered | None) -> Rendered:
    """``chunk``'s lines, the runs of targets whose sample ``old`` was made of sliced out of
    it, the others formatted; everything formatted when most changed (cheaper)."""
    if old is None:
        return Rendered.of(chunk, _format(names, chunk))
    n, m = len(chunk), len(old.samples)
    kept = min(n, m)
    miss = list(compress(range(kept), map(is_not, chunk, old.samples)))
    if not miss and n == m:
        return old
    miss += range(kept, n)
    if 2 * len(miss) > n:
        return Rendered.of(chunk, _format(names, chunk))
    fresh = _format([names[k] for k in miss], [chunk[k] for k in miss])
    texts = []
    all_ends = []
    for text, ends, lines in zip(old.texts, old.ends, fresh, strict=True):
        pieces = []
        run = 0  # the first target of the current run of unchanged ones
        for k, line in zip(miss, lines, strict=True):
            if run < k:
                pieces.append(text[ends[run - 1] if run else 0 : ends[k - 1]])
            pieces.append(line)
            run = k + 1
        if run < kept:
            pieces.append(text[ends[run - 1] if run else 0 : ends[kept - 1]])
        texts.append("".join(pieces))
        lengths = list(map(sub, ends[:kept], chain((0,), ends)))
        lengths += repeat(0, n - kept)
        for k, line in zip(miss, lines, strict=True):
            lengths[k] = len(line)
        all_ends.append(array("L", accumulate(lengths)))
    return Rendered(chunk, texts, all_ends)


def _size(text: str) -> int:
    """``len(text.encode())`` without the copy when ``text`` is ASCII."""
    return len(text) if text.isascii() else len(text.encode())


_HEADERS = [
    header("sip_peer_up", "gauge", "1 if the target is reachable or lagged, else 0.").encode(),
    header("sip_peer_state", "gauge", "1 for the target's current state.").encode(),
    header("sip_peer_rtt_seconds", "gauge", "Round-trip time: last and smoothed.").encode(),
    header("sip_probes_total", "counter", "Qualify probes by result.").encode(),
]
# The bytes of one target's sip_peer_up and sip_peer_state lines, besides its name (5 times).
_UP_BYTES = len(_UP) + len('"} 1\n')
_STATE_BYTES = sum(len(_STATE) + len(_STATE_END[label][0]) for label in STATES)


class TargetFamilies:
    """The per-target families: :meth:`add` walks the targets chunk by chunk (and counts
    the body's bytes), :meth:`pieces` then makes the body family by family, one chunk's
    lines at a time, so that only one piece of it exists at once besides the ``cache``.
    With a ``cache``, a target unchanged since the last render is not formatted again (the
    body is the same bytes either way), and the cache gets this render's chunks."""

    __slots__ = ("_cache", "_chunks", "by_state", "size")

    def __init__(self, cache: LineCache | None = None) -> None:
        self.by_state: dict[str, int] = dict.fromkeys(STATES, 0)
        self.size = sum(map(len, _HEADERS))
        self._cache = cache
        # Per chunk: its (escaped) names by state and its Rendered lines.
        self._chunks: list[tuple[dict[str, list[str]], Rendered]] = []

    def add(self, chunk: Sequence[TargetSample]) -> None:
        chunk = list(chunk)
        names = list(map(_name, chunk))
        if _needs_escape(names):
            names = list(map(escape_label, names))
        states = list(map(_state, chunk))
        groups = {
            s: list(compress(names, map(eq, states, repeat(s)))) for s in dict.fromkeys(states)
        }
        for state, group in groups.items():
            self.by_state[state] = self.by_state.get(state, 0) + len(group)
        cache = self._cache
        at = len(self._chunks)
        if cache is None:
            rendered = Rendered.of(chunk, _format(names, chunk))
        else:
            chunks = cache.chunks
            rendered = _render(names, chunk, chunks[at] if at < len(chunks) else None)
            if at < len(chunks):
                chunks[at] = rendered  # the old one is freed now, not after the whole render
            else:
                chunks.append(rendered)
        self._chunks.append((groups, rendered))
        self.size += (
            (_UP_BYTES + _STATE_BYTES) * len(chunk)
            + 6 * _size("".join(names))
            + sum(map(_size, rendered.texts))
        )

    def done(self) -> None:
        """The render is over: forget cached chunks beyond the view's end."""
        if self._cache is not None:
            del self._cache.chunks[len(self._chunks) :]

    def pieces(self) -> Iterator[bytes]:
        """The families' bytes (:attr:`size` of them), a header or a chunk's lines each."""
        up_header, state_header, rtt_header, probes_header = _HEADERS
        yield up_header
        for groups, _ in self._chunks:
            up = [n for s, g in groups.items() if s in UP_STATES for n in g]
            down = [n for s, g in groups.items() if s not in UP_STATES for n in g]
            yield (_joined(_UP, up, '"} 1\n') + _joined(_UP, down, '"} 0\n')).encode()
        yield state_header
        for groups, _ in self._chunks:
            yield "".join(
                _joined(_STATE, group, _STATE_END[label][int(state == label)])
                for label in STATES
                for state, group in groups.items()
            ).encode()
        yield rtt_header
        for _, rendered in self._chunks:
            last, srtt, _probes = rendered.texts
            if last or srtt:
                yield (last + srtt).encode()
        yield probes_header
        for _, rendered in self._chunks:
            yield rendered.texts[2].encode()


async def contact_metrics(contacts: Sequence[ContactView], chunk: int = CHUNK) -> str:
    """The registrar's families, yielding to the loop every ``chunk`` contacts."""
    up: dict[tuple[str, str], int] = {}
    rtt: dict[tuple[str, str], float] = {}
    by_state = dict.fromkeys(STATES, 0)
    for start in range(0, len(contacts), chunk):
        for c in contacts[start : start + chunk]:
            by_state[c.state] = by_state.get(c.state, 0) + 1
            key = (c.aor, c.contact)
            up[key] = max(up.get(key, 0), int(c.state in UP_STATES))
            if c.rtt_s is not None and c.rtt_s < rtt.get(key, math.inf):
                rtt[key] = c.rtt_s
        await asyncio.sleep(0)
    keys = list(up)
    up_lines = [header("sip_contact_up", "gauge", "1 if the contact is reachable or lagged.")]
    rtt_lines = [header("sip_contact_rtt_seconds", "gauge", "Last qualify RTT of the contact.")]
    for start in range(0, len(keys), chunk):
        for key in keys[start : start + chunk]:
            labels = f'aor="{escape_label(key[0])}",contact="{escape_label(key[1])}"'
            up_lines.append(f"sip_contact_up{{{labels}}} {up[key]}\n")
            if key in rtt:
                rtt_lines.append(f"sip_contact_rtt_seconds{{{labels}}} {rtt[key]:.6f}\n")
        await asyncio.sleep(0)
    return "".join(
        [
            *up_lines,
            *rtt_lines,
            header("sip_registrar_contacts", "gauge", "Registered contacts per state."),
            *(sample("sip_registrar_contacts", n, [("state", s)]) for s, n in by_state.items()),
        ]
    )


def engine_metrics(stats: EngineStats, by_state: dict[str, int], render_s: float | None) -> str:
    """The ``sipalive_*`` families: what the engine as a whole is doing."""
    probes = stats.probes_total
    out = [
        header("sipalive_targets", "gauge", "Targets monitored."),
        sample("sipalive_targets", stats.targets),
        header("sipalive_targets_by_state", "gauge", "Targets per state."),
        *(sample("sipalive_targets_by_state", n, [("state", s)]) for s, n in by_state.items()),
        header("sipalive_probes_in_flight", "gauge", "Qualify probes awaiting their answer."),
        sample("sipalive_probes_in_flight", stats.in_flight),
        header("sipalive_probes_total", "counter", "Qualify probes by result, all targets."),
        *(sample("sipalive_probes_total", n, [("result", r)]) for r, n in probes.items()),
        header("sipalive_start_time_seconds", "gauge", "When the engine started, epoch seconds."),
        sample("sipalive_start_time_seconds", stats.started_at),
    ]
    if stats.scheduler_lag_p99_s is not None:
        out += [
            header(
                "sipalive_scheduler_lag_p99_seconds",
                "gauge",
                "99th percentile of the delay between a probe's due time and its send.",
            ),
            sample("sipalive_scheduler_lag_p99_seconds", stats.scheduler_lag_p99_s),
        ]
    if render_s is not None:
        out += [
            header("sipalive_metrics_render_seconds", "gauge", "Time the previous scrape took."),
            sample("sipalive_metrics_render_seconds", render_s),
        ]
    return "".join(out)


def process_metrics(proc: str = "/proc/self") -> str:
    """``process_*`` as the Prometheus client libraries export them; empty without ``/proc``."""
    try:
        with open(f"{proc}/stat") as f:
            stat = f.read()
        with open("/proc/stat") as f:
            btime = next(int(line.split()[1]) for line in f if line.startswith("btime "))
        open_fds = len(os.listdir(f"{proc}/fd"))
        with open(f"{proc}/limits") as f:
            max_fds = next(line.split()[3] for line in f if line.startswith("Max open files"))
    except (OSError, StopIteration, IndexError, ValueError):
        return ""
    # proc(5): the fields after "(comm)", numbered from 3 (state); comm may hold spaces.
    fields = stat[stat.rindex(")") + 2 :].split()
    ticks = os.sysconf("SC_CLK_TCK")
    utime, stime, start = int(fields[14 - 3]), int(fields[15 - 3]), int(fields[22 - 3])
    vsize, rss_pages = int(fields[23 - 3]), int(fields[24 - 3])
    out = [
        header("process_cpu_seconds_total", "counter", "User and system CPU time, seconds."),
        sample("process_cpu_seconds_total", (utime + stime) / ticks),
        header("process_resident_memory_bytes", "gauge", "Resident memory size, bytes."),
        sample("process_resident_memory_bytes", rss_pages * os.sysconf("SC_PAGE_SIZE")),
        header("process_virtual_memory_bytes", "gauge", "Virtual memory size, bytes."),
        sample("process_virtual_memory_bytes", vsize),
        header("process_start_time_seconds", "gauge", "Start time of the process, epoch seconds."),
        sample("process_start_time_seconds", btime + start / ticks),
        header("process_open_fds", "gauge", "Open file descriptors."),
        sample("process_open_fds", open_fds),
    ]
    if max_fds.isdigit():
        out += [
            header("process_max_fds", "gauge", "Limit on open file descriptors."),
            sample("process_max_fds", int(max_fds)),
        ]
    return "".join(out)


class Body:
    """A ``/metrics`` body: its :attr:`size` in bytes, and its pieces, made as they are
    iterated (yielding to the loop after each)."""

    __slots__ = ("_families", "_tail", "size")

    def __init__(self, families: TargetFamilies, tail: bytes) -> None:
        self._families = families
        self._tail = tail
        self.size = families.size + len(tail)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self._families.pieces():
            yield piece
            await asyncio.sleep(0)
        yield self._tail


async def render_metrics(
    view: MonitorView,
    *,
    chunk: int = CHUNK,
    previous_render_s: float | None = None,
    cache: LineCache | None = None,
) -> Body:
    """The ``/metrics`` body, its targets walked in chunks of ``chunk`` (yielding to the loop
    after each); ``cache``: the previous render's lines, replaced by this one's
    (:class:`LineCache`). The lines that are not cached are made as the body is sent."""
    targets = view.samples()
    stats = view.stats()
    families = TargetFamilies(cache)
    for start in range(0, len(targets), chunk):
        families.add(targets[start : start + chunk])
        await asyncio.sleep(0)
    families.done()
    contacts = contacts_of(view)
    tail = "" if contacts is None else await contact_metrics(contacts, chunk)
    tail += engine_metrics(stats, families.by_state, previous_render_s) + process_metrics()
    return Body(families, tail.encode())


def render_probe(report: ProbeReport) -> str:
    """The ``/probe`` body, blackbox_exporter style."""
    out = [
        header("probe_success", "gauge", "1 if the probe succeeded, else 0."),
        sample("probe_success", int(report.success)),
        header("probe_duration_seconds", "gauge", "How long the probe took, seconds."),
        sample("probe_duration_seconds", report.duration_s),
        header(
            "probe_sip_status_code",
            "gauge",
            "Status code of the final response (408 timeout, 503 transport error); 0 if none.",
        ),
        sample("probe_sip_status_code", report.status or 0),
    ]
    if report.phases:
        out.append(header("probe_phase_duration_seconds", "gauge", "Duration of each phase."))
        out += [
            sample("probe_phase_duration_seconds", seconds, [("phase", phase)])
            for phase, seconds in report.phases.items()
        ]
    return "".join(out)
