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
    return b"".join(up + rest)


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


@settings(max_examples=300)
@given(scrapes(), st.integers(1, 12))
def test_cached_render_is_the_uncached_render(views: list[list[TargetSample]], chunk: int) -> None:
    cache = LineCache()
    for view in views:
        assert body(view, cache, chunk) == body(view, None, chunk)


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
