"""Bounded history: transition and failure rings, per-minute RTT aggregates."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipalive.errors import ConfigError, LocalProtocolError
from sipalive.qualify import (
    MinuteAggregate,
    ProbeFailure,
    ProbeOutcome,
    QualifyState,
    Ring,
    RttMinuteAggregator,
    TargetHistory,
    Transition,
    rtt_bucket,
)
from sipalive.sip.transaction import Cause


def test_ring_keeps_the_last_items_oldest_first() -> None:
    ring: Ring[int] = Ring(3)
    assert (len(ring), ring.last, bool(ring), ring.capacity) == (0, None, False, 3)
    for i in range(5):
        ring.append(i)
    assert list(ring) == [2, 3, 4]
    assert (len(ring), ring.total, ring.dropped, ring.last) == (3, 5, 2, 4)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_bounds_are_validated(bad: object) -> None:
    with pytest.raises(ConfigError):
        Ring(bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError) as err:
        TargetHistory(transitions=bad)  # type: ignore[arg-type]
    assert err.value.where == "transitions"
    with pytest.raises(ConfigError) as err:
        TargetHistory(failures=bad)  # type: ignore[arg-type]
    assert err.value.where == "failures"
    with pytest.raises(ConfigError):
        RttMinuteAggregator(bad)  # type: ignore[arg-type]


def test_target_history_is_bounded() -> None:
    h = TargetHistory()
    assert (h.transitions.capacity, h.failures.capacity) == (256, 32)
    small = TargetHistory(transitions=2, failures=1)
    u, r, x = QualifyState.UNKNOWN, QualifyState.REACHABLE, QualifyState.UNREACHABLE
    for i, (a, b) in enumerate([(u, r), (r, x), (x, r)]):
        small.transitions.append(Transition(float(i), a, b, "timeout"))
    assert [(t.from_state, t.to_state) for t in small.transitions] == [(r, x), (x, r)]


def test_probe_failure_from_outcome() -> None:
    busy = ProbeOutcome(503, rtt=0.1, reason="Service Unavailable")
    assert ProbeFailure.from_outcome(busy, 5.0) == ProbeFailure(
        5.0, "code 503", 503, "Service Unavailable"
    )
    refused = ProbeOutcome(503, Cause.TRANSPORT_ERROR, error="ECONNREFUSED")
    assert ProbeFailure.from_outcome(refused, 6.0) == ProbeFailure(
        6.0, "transport-error", 503, "", "ECONNREFUSED"
    )


def test_minute_aggregates_are_exact() -> None:
    agg = RttMinuteAggregator()
    for rtt, now in ((0.5, 120.0), (0.25, 150.5), (1.0, 179.999), (2.0, 180.0)):
        assert agg.add(rtt, now)
    first, second = agg.aggregates()
    assert first == MinuteAggregate(2, 3, 0.25, 1.0, 1.75, 0.25 + 0.0625 + 1.0)
    assert (first.start, first.mean) == (120.0, 1.75 / 3)
    mean = 1.75 / 3
    assert first.stddev == math.sqrt(1.3125 / 3 - mean * mean)
    assert second == MinuteAggregate(3, 1, 2.0, 2.0, 2.0, 4.0)
    assert second.stddev == 0.0


def test_minutes_are_bounded_and_late_samples_land_in_their_minute() -> None:
    agg = RttMinuteAggregator(max_minutes=3)
    for minute in range(10):
        agg.add(0.1, minute * 60.0 + 1)
    assert [a.minute for a in agg.aggregates()] == [7, 8, 9]
    assert agg.add(0.3, 8 * 60.0 + 30)  # late, but still held
    assert agg.aggregates()[1] == MinuteAggregate(8, 2, 0.1, 0.3, 0.1 + 0.3, 0.1 * 0.1 + 0.3 * 0.3)
    assert not agg.add(0.3, 6 * 60.0 + 59)  # older than the window: dropped
    assert len(agg) == 3
    agg.add(0.1, 20 * 60.0)  # a gap: everything old goes
    assert [a.minute for a in agg.aggregates()] == [20]


def test_closed_minutes_for_the_store() -> None:
    agg = RttMinuteAggregator()
    for now in (60.0, 125.0, 190.0, 200.0):
        agg.add(0.1, now)
    assert [a.minute for a in agg.closed(200.0)] == [1, 2]  # minute 3 is still running
    assert [a.minute for a in agg.closed(240.0)] == [1, 2, 3]
    assert [a.minute for a in agg.closed(240.0, after=2)] == [3]


def test_bad_samples() -> None:
    agg = RttMinuteAggregator()
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(LocalProtocolError):
            agg.add(bad, 0.0)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 5), st.floats(0, 3600)), max_size=200))
def test_aggregates_match_the_samples(samples: list[tuple[float, float]]) -> None:
    agg = RttMinuteAggregator(max_minutes=1000)
    for rtt, now in samples:
        agg.add(rtt, now)
    by_minute: dict[int, list[float]] = {}
    for rtt, now in samples:
        by_minute.setdefault(math.floor(now / 60), []).append(rtt)
    got = agg.aggregates()
    assert [a.minute for a in got] == sorted(by_minute)
    for a in got:
        values = by_minute[a.minute]
        assert (a.count, a.min, a.max) == (len(values), min(values), max(values))
        assert a.sum == pytest.approx(sum(values))
        assert a.stddev >= 0.0


@pytest.mark.parametrize(
    ("frequency", "bucket"),
    [(0.5, 60), (23.9, 60), (24, 120), (60, 300), (179, 840), (180, 900), (86400, 900)],
)
def test_rtt_bucket_keeps_about_five_probes_a_row(frequency: float, bucket: float) -> None:
    assert rtt_bucket(frequency) == bucket
