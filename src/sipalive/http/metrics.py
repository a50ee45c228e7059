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

Rendering 100k targets. That is 1.2 million lines (about 63 MB): formatting them one
``f``-string each took 0.4 to 0.8 s here, so :class:`TargetFamilies` formats as little as it can
in Python. Lines whose value is a constant (``sip_peer_up``, ``sip_peer_state``) are not
formatted at all: the target names of one state are joined with a separator that closes one
line and opens the next, a single C-level ``str.join`` per (family, state). RTTs are written
with ``:.6f`` (microseconds), three times cheaper than ``repr``. A target's RTT lines are one
bytes object, its counter lines another: the monitor's ``/metrics`` passes a :class:`LineCache`
holding them per :class:`Chunk` of targets, and a target whose sample is the very object its
chunk was made of keeps its lines, so a scrape formats only the targets probed since the
previous one, and reads nothing else of the others (not their names, not their lines' lengths:
at 100k targets, touching every object costs tens of milliseconds in cache misses alone). The
sip_peer_up/sip_peer_state lines (~25 MB) are not cached: they would cost their bytes in RSS.

Streaming. The body is sent with chunked transfer encoding, made as it is sent, so it never
exists at once (when it did, as pieces, the monitor's peak RSS reached 405 MB at 100k) and no
length is needed beforehand: the targets are read (their states, which changed) while the
sip_peer_up lines go out, then the lines of the other families are made, changed targets
formatted, one chunk at a time while the client reads the previous ones. It was sent with a
Content-Length before, which needed a first walk of every target, formatting included, before
the first byte (70-130 ms at 100k targets); see bench/README.md for the numbers.

Not blocking the loop. The targets (``view.samples()``, which the engine builds as they are
read, a tuple per target, the same object while a target is unchanged) are read in chunks of
:data:`CHUNK` targets and every piece of the body is one chunk's lines, with a yield to the
event loop between them. Rendering the same snapshot in a worker thread was measured too
(100k targets, 2 cores): the totals were alike (150-250 ms either way), but the loop stalls
were smaller and steadier with chunks (6-8 ms, against 8-15 ms whenever the loop had to win the
GIL back from the thread), and chunks keep every read of the engine's objects on the loop's
thread.
"""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from itertools import chain, compress, repeat
from operator import attrgetter, eq, is_not

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


class Chunk:
    """One chunk of targets as a render read them: their samples, names and states (and the
    escaped names by state), and, once :meth:`lines` made them, per target its
    sip_peer_rtt_seconds lines (``kind="last"`` then ``"srtt"``; ``b""`` without an RTT)
    and its four sip_probes_total lines, as bytes. :meth:`update` makes the next render's
    chunk, which shares this one's lines for the unchanged targets; a chunk's lines never
    change once made (a body being sent may still read them)."""

    __slots__ = ("_base", "_lines", "groups", "names", "samples", "states")

    def __init__(
        self,
        samples: list[TargetSample],
        names: list[str],
        states: list[str],
        groups: dict[str, list[str]],
        base: Chunk | None,
    ) -> None:
        self.samples = samples
        self.names = names
        self.states = states
        self.groups = groups
        self._base = base  # the chunk whose lines this one's start from; None: format all
        self._lines: tuple[list[bytes], list[bytes]] | None = None

    @classmethod
    def of(cls, samples: list[TargetSample]) -> Chunk:
        """A chunk whose lines will all be formatted (no older chunk to take them from)."""
        names = list(map(_name, samples))
        states = list(map(_state, samples))
        return cls(samples, names, states, _groups(names, states), None)

    def update(self, samples: list[TargetSample]) -> Chunk:
        """The chunk of ``samples``: this one when every sample is the one it was made of,
        else one that takes this one's lines for the targets whose sample is (all formatted
        when most changed, or the count did, or this one's lines were never made). Only the
        changed targets are read: reading every sample of 100k targets costs milliseconds
        in cache misses alone."""
        n = len(samples)
        if n != len(self.samples) or self._lines is None:
            return Chunk.of(samples)
        miss = list(compress(range(n), map(is_not, samples, self.samples)))
        if not miss:
            return self
        changed = [samples[k] for k in miss]
        names, states, groups = self.names, self.states, self.groups
        fresh_names = list(map(_name, changed))
        fresh_states = list(map(_state, changed))
        if fresh_names != [names[k] for k in miss] or fresh_states != [states[k] for k in miss]:
            names = names.copy()
            states = states.copy()
            for k, name, state in zip(miss, fresh_names, fresh_states, strict=True):
                names[k] = name
                states[k] = state
            groups = _groups(names, states)
        return Chunk(samples, names, states, groups, None if 2 * len(miss) > n else self)

    def lines(self) -> tuple[list[bytes], list[bytes]]:
        """The RTT lines and the counter lines of each target, made at the first call."""
        if self._lines is None:
            base, self._base = self._base, None
            samples = self.samples
            if base is None:
                self._lines = _format(_escaped(self.names), samples)
            else:
                rtt, probes = base.lines()
                miss = list(compress(range(len(samples)), map(is_not, samples, base.samples)))
                fresh_rtt, fresh_probes = _format(
                    _escaped([self.names[k] for k in miss]), [samples[k] for k in miss]
                )
                rtt = rtt.copy()
                probes = probes.copy()
                for k, r, p in zip(miss, fresh_rtt, fresh_probes, strict=True):
                    rtt[k] = r
                    probes[k] = p
                self._lines = rtt, probes
        return self._lines


class LineCache:
    """The previous ``/metrics``' :class:`Chunk` objects. The engine hands out the same
    :class:`TargetSample` object while a target is unchanged, so a target whose sample
    ``is`` the one its chunk was made of keeps its lines and only the targets probed since
    the last scrape are formatted: fewer the closer the scrapes (a scrape
    ``qualify_frequency`` after the last one formats them all). The chunks hold the body's
    RTT and counter lines once more: ~40 MB at 100k targets, two bytes objects per target."""

    __slots__ = ("chunks",)

    def __init__(self) -> None:
        self.chunks: list[Chunk] = []


def _escaped(names: list[str]) -> list[str]:
    return list(map(escape_label, names)) if _needs_escape(names) else names


def _rtt(n: str, last: float | None, srtt: float | None) -> bytes:
    """A target's sip_peer_rtt_seconds lines (``n`` escaped), for any RTTs."""
    out = "" if last is None else f'{_RTT}{n}",kind="last"}} {last:.6f}\n'
    if srtt is not None:
        out += f'{_RTT}{n}",kind="srtt"}} {srtt:.6f}\n'
    return out.encode()


def _format(names: list[str], chunk: list[TargetSample]) -> tuple[list[bytes], list[bytes]]:
    """The RTT lines and the counter lines of each target of ``chunk`` (``names`` escaped)."""
    pairs = list(zip(names, chunk, strict=True))
    rejected = [t.failures - t.timeouts - t.transport_errors for t in chunk]
    return (
        [
            _rtt(n, t.rtt_s, t.srtt_s)
            if t.rtt_s is None or t.srtt_s is None
            else (
                f'{_RTT}{n}",kind="last"}} {t.rtt_s:.6f}\n{_RTT}{n}",kind="srtt"}} {t.srtt_s:.6f}\n'
            ).encode()
            for n, t in pairs
        ],
        [
            (
                f'{_PROBES}{n}",result="success"}} {t.successes}\n'
                f'{_PROBES}{n}",result="rejected"}} {r}\n'
                f'{_PROBES}{n}",result="timeout"}} {t.timeouts}\n'
                f'{_PROBES}{n}",result="transport_error"}} {t.transport_errors}\n'
            ).encode()
            for (n, t), r in zip(pairs, rejected, strict=True)
        ],
    )


def _groups(names: list[str], states: list[str]) -> dict[str, list[str]]:
    """The escaped ``names`` by state."""
    escaped = _escaped(names)
    return {s: list(compress(escaped, map(eq, states, repeat(s)))) for s in dict.fromkeys(states)}


_HEADERS = [
    header("sip_peer_up", "gauge", "1 if the target is reachable or lagged, else 0.").encode(),
    header("sip_peer_state", "gauge", "1 for the target's current state.").encode(),
    header("sip_peer_rtt_seconds", "gauge", "Round-trip time: last and smoothed.").encode(),
    header("sip_probes_total", "counter", "Qualify probes by result.").encode(),
]


class TargetFamilies:
    """The per-target families of one render: :meth:`add` reads a chunk of targets (which
    targets changed, their states) and gives its sip_peer_up lines; :meth:`rest` then makes
    the three other families, one chunk's lines at a time, formatting what changed as it
    goes. With a ``cache``, a target unchanged since the last render is not formatted again
    (the body is the same bytes either way), and the cache gets this render's chunks;
    without one every target is formatted."""

    __slots__ = ("_cache", "_chunks", "by_state")

    def __init__(self, cache: LineCache | None = None) -> None:
        self.by_state: dict[str, int] = dict.fromkeys(STATES, 0)
        self._cache = cache
        self._chunks: list[Chunk] = []

    def add(self, samples: Sequence[TargetSample]) -> bytes:
        """Read a chunk of targets; its sip_peer_up lines."""
        cache = self._cache
        at = len(self._chunks)
        if cache is None:
            chunk = Chunk.of(list(samples))
        else:
            chunks = cache.chunks
            chunk = (
                chunks[at].update(list(samples)) if at < len(chunks) else Chunk.of(list(samples))
            )
            if at < len(chunks):
                chunks[at] = chunk
            else:
                chunks.append(chunk)
        self._chunks.append(chunk)
        groups = chunk.groups
        for state, group in groups.items():
            self.by_state[state] = self.by_state.get(state, 0) + len(group)
        up = list(chain.from_iterable(g for s, g in groups.items() if s in UP_STATES))
        down = list(chain.from_iterable(g for s, g in groups.items() if s not in UP_STATES))
        return (_joined(_UP, up, '"} 1\n') + _joined(_UP, down, '"} 0\n')).encode()

    def done(self) -> None:
        """Every target was read: forget cached chunks beyond the view's end."""
        if self._cache is not None:
            del self._cache.chunks[len(self._chunks) :]

    def rest(self) -> Iterator[bytes]:
        """sip_peer_state, sip_peer_rtt_seconds and sip_probes_total: a header or a chunk's
        lines each (never empty)."""
        _, state_header, rtt_header, probes_header = _HEADERS
        yield state_header
        for chunk in self._chunks:
            yield "".join(
                _joined(_STATE, group, _STATE_END[label][int(state == label)])
                for label in STATES
                for state, group in chunk.groups.items()
            ).encode()
        yield rtt_header
        for chunk in self._chunks:
            rtt = b"".join(chunk.lines()[0])
            if rtt:
                yield rtt
        yield probes_header
        for chunk in self._chunks:
            yield b"".join(chunk.lines()[1])


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
    """A ``/metrics`` body, made as it is iterated (yielding to the loop after each piece):
    the targets are read at the first piece, then the families are made one after the
    other, a header or a chunk's lines at a time. Its length is known only at the end."""

    __slots__ = ("_cache", "_chunk", "_previous_render_s", "_view")

    def __init__(
        self,
        view: MonitorView,
        chunk: int,
        previous_render_s: float | None,
        cache: LineCache | None,
    ) -> None:
        self._view = view
        self._chunk = chunk
        self._previous_render_s = previous_render_s
        self._cache = cache

    async def __aiter__(self) -> AsyncIterator[bytes]:
        view, chunk = self._view, self._chunk
        targets = view.samples()
        stats = view.stats()
        families = TargetFamilies(self._cache)
        yield _HEADERS[0]
        for start in range(0, len(targets), chunk):
            yield families.add(targets[start : start + chunk])
            await asyncio.sleep(0)
        families.done()
        for piece in families.rest():
            yield piece
            await asyncio.sleep(0)
        contacts = contacts_of(view)
        tail = "" if contacts is None else await contact_metrics(contacts, chunk)
        tail += engine_metrics(stats, families.by_state, self._previous_render_s)
        yield (tail + process_metrics()).encode()


def render_metrics(
    view: MonitorView,
    *,
    chunk: int = CHUNK,
    previous_render_s: float | None = None,
    cache: LineCache | None = None,
) -> Body:
    """The ``/metrics`` body of ``view``, its targets read in chunks of ``chunk``;
    ``cache``: the previous render's lines, replaced by this one's (:class:`LineCache`)."""
    return Body(view, chunk, previous_render_s, cache)


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
