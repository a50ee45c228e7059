"""``/metrics`` with a LineCache against the uncached render: the same body, scrape after scrape.

Between scrapes targets change (a new sample object, as the engine makes one when a target's
version moves), appear, disappear, or stay the same object; names may need escaping, RTTs may
be absent. Each cached render must be byte for byte the uncached one of the same samples, and
an unchanged target must not be formatted again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fakeview import FakeView, make_target
from sipalive.http import metrics
from sipalive.http.metrics import LineCache, TargetFamilies
from sipalive.http.view import STATES, TargetSample

RTTS = st.one_of(st.none(), st.floats(0, 5, allow_nan=False))
NAMES = st.sampled_from(["t", "a b", 'q"x', "back\\slash", "nl\nx", "é", "t" * 40])


def body(samples: Sequence[TargetSample], cache: LineCache | None, chunk: int) -> bytes:
    families = TargetFamilies(cache)
    up = [families.add(samples[start : start + chunk]) for start in range(0, len(samples), chunk)]
    families.done()
    rest = list(families.rest())
    assert all(rest), "an empty piece would end a chunked body"
    return b"".join([metrics._HEADERS[0], *up, *rest])  # the Body's first piece: its header


@st.composite
def sample(draw: st.DrawFn, i: int) -> TargetSample:
    return TargetSample(
        f"{draw(NAMES)}{i}", draw(st.sampled_from(STATES)), draw(RTTS), draw(RTTS),
        draw(st.integers(0, 10**6)), draw(st.integers(0, 50)), draw(st.integers(0, 20)),
        draw(st.integers(0, 20)),
    )  # fmt: skip


@st.composite
def scrapes(draw: st.DrawFn) -> list[list[TargetSample]]:
    """A few successive views: each keeps, replaces, drops or adds targets."""
    n = draw(st.integers(0, 30))
    view = [draw(sample(i)) for i in range(n)]
    views = [view]
    for _ in range(draw(st.integers(1, 4))):
        nxt = []
        for i, t in enumerate(view):
            action = draw(st.sampled_from(["keep", "keep", "keep", "change", "drop"]))
            if action == "keep":
                nxt.append(t)
            elif action == "change":
                nxt.append(draw(sample(i)))
        for j in range(draw(st.integers(0, 3))):
            nxt.insert(draw(st.integers(0, len(nxt))), draw(sample(1000 + j)))
        views.append(nxt)
        view = nxt
    return views


def reference(samples: Sequence[TargetSample]) -> dict[bytes, list[bytes]]:
    """Each family's lines, sorted, one generic ``sample()`` call per line (RTTs as ``:.6f``)."""
    families: dict[str, list[str]] = {}
    for t in samples:
        name = [("target", t.name)]
        families.setdefault("sip_peer_up", []).append(
            metrics.sample("sip_peer_up", t.state in ("reachable", "lagged"), name)
        )
        for s in STATES:
            line = metrics.sample("sip_peer_state", s == t.state, [*name, ("state", s)])
            families.setdefault("sip_peer_state", []).append(line)
        label = f'sip_peer_rtt_seconds{{target="{metrics.escape_label(t.name)}",kind='
        for kind, rtt in (("last", t.rtt_s), ("srtt", t.srtt_s)):
            if rtt is not None:
                families.setdefault("sip_peer_rtt_seconds", []).append(
                    f'{label}"{kind}"}} {rtt:.6f}\n'
                )
        rejected = t.failures - t.timeouts - t.transport_errors
        for result, n in (
            ("success", t.successes), ("rejected", rejected), ("timeout", t.timeouts),
            ("transport_error", t.transport_errors),
        ):  # fmt: skip
            line = metrics.sample("sip_probes_total", n, [*name, ("result", result)])
            families.setdefault("sip_probes_total", []).append(line)
    return {k.encode(): sorted(x.encode() for x in v) for k, v in families.items()}


def by_family(out: bytes) -> dict[bytes, list[bytes]]:
    """The lines of each family of a body (the ``# HELP``/``# TYPE`` lines apart), sorted."""
    families: dict[bytes, list[bytes]] = {}
    for section in out.split(b"# HELP ")[1:]:
        name = section.split(b" ", 1)[0]
        lines = section.split(b"\n")[2:-1]
        assert section.split(b"\n")[1].startswith(b"# TYPE " + name + b" ")
        if lines:
            families[name] = sorted(line + b"\n" for line in lines)
    return families


@settings(max_examples=300)
@given(scrapes(), st.integers(1, 12), st.lists(st.booleans(), min_size=5, max_size=5))
def test_cached_render_is_the_uncached_render(
    views: list[list[TargetSample]], chunk: int, sent: list[bool]
) -> None:
    """... and both are the generic rendering's lines. A render may be abandoned after its
    targets were read (a HEAD, a scraper gone): its chunks' lines were never made."""
    cache = LineCache()
    for view, whole in zip(views, sent, strict=False):
        if not whole:
            families = TargetFamilies(cache)
            for start in range(0, len(view), chunk):
                families.add(view[start : start + chunk])
            families.done()
            continue
        out = body(view, cache, chunk)
        assert out == body(view, None, chunk)
        assert by_family(out) == reference(view)


def test_interleaved_renders_share_the_cache() -> None:
    """Two scrapes at once: the second reads the targets before the first made its lines."""
    first = [TargetSample(f"t{i}", "reachable", 0.001 * i, None, i, 2, 1, 0) for i in range(30)]
    second = [t._replace(successes=7) if i % 4 == 0 else t for i, t in enumerate(first)]
    cache = LineCache()
    body(first, cache, 10)
    a, b = TargetFamilies(cache), TargetFamilies(cache)
    up_a = [a.add(second[start : start + 10]) for start in range(0, 30, 10)]
    a.done()
    third = [t._replace(state="lagged") if i == 5 else t for i, t in enumerate(second)]
    up_b = [b.add(third[start : start + 10]) for start in range(0, 30, 10)]
    b.done()
    head = metrics._HEADERS[0]
    assert b"".join([head, *up_b, *b.rest()]) == body(third, None, 10)
    assert b"".join([head, *up_a, *a.rest()]) == body(second, None, 10)
    assert all(c._base is None for c in cache.chunks)  # the older lines are not kept


def test_unchanged_targets_are_not_formatted(monkeypatch: pytest.MonkeyPatch) -> None:
    samples = [TargetSample(f"t{i}", "reachable", 0.001 * i, 0.002, i, 0, 0, 0) for i in range(50)]
    cache = LineCache()
    first = body(samples, cache, 10)
    formatted: list[int] = []
    real = metrics._format

    def counting(names: list[str], chunk: list[TargetSample]) -> tuple[list[bytes], list[bytes]]:
        formatted.append(len(chunk))
        return real(names, chunk)

    monkeypatch.setattr(metrics, "_format", counting)
    assert body(samples, cache, 10) == first
    assert formatted == []
    samples[13] = samples[13]._replace(successes=99)
    changed = body(samples, cache, 10)
    assert formatted == [1]  # the one changed target; its chunk's others are sliced
    assert changed == body(samples, None, 10)
    assert b'sip_probes_total{target="t13",result="success"} 99\n' in changed


def test_render_metrics_fills_the_cache() -> None:
    view = FakeView([make_target(f"t{i}", i=i) for i in range(25)])
    cache = LineCache()

    async def scrape(cache: LineCache | None) -> bytes:
        body = metrics.render_metrics(view, chunk=10, cache=cache)
        out = b"".join([piece async for piece in body])
        return out.split(b"# HELP sipalive_")[0]  # not the process's

    assert asyncio.run(scrape(cache)) == asyncio.run(scrape(None))
    assert [len(c.samples) for c in cache.chunks] == [10, 10, 5]


def test_abandoned_renders_do_not_chain_lines() -> None:
    """HEAD after HEAD (lines never made): a chunk never keeps more than one older chunk."""
    samples = [TargetSample(f"t{i}", "reachable", 0.001, 0.002, i, 0, 0, 0) for i in range(20)]
    cache = LineCache()
    body(samples, cache, 10)
    for k in range(3):
        samples[k] = samples[k]._replace(successes=100 + k)
        families = TargetFamilies(cache)
        for start in range(0, 20, 10):
            families.add(samples[start : start + 10])
        families.done()
    assert all(c._base is None or c._base._base is None for c in cache.chunks)
    assert body(samples, cache, 10) == body(samples, None, 10)
