"""RTT estimator: RFC 6298 arithmetic, Karn's rule, sliding-window percentiles."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipalive.errors import ConfigError, LocalProtocolError
from sipalive.qualify import RttEstimator, RttSnapshot, nearest_rank
from sipalive.sip.transaction import Cause, TransactionResult


def answered(rtt: float, retransmits: int = 0, rtt_last: float | None = None) -> TransactionResult:
    last = rtt if rtt_last is None else rtt_last
    return TransactionResult(200, "OK", Cause.RESPONSE, None, 0.0, rtt, retransmits, rtt, last)


LOST = TransactionResult(408, "Request Timeout", Cause.TIMEOUT, None, 0.0, 32.0, 6, None, None)


def test_rfc6298_first_and_following_samples() -> None:
    est = RttEstimator()
    assert (est.srtt, est.rttvar) == (None, None)
    est.add_sample(1.0)
    assert (est.srtt, est.rttvar) == (1.0, 0.5)  # SRTT = R, RTTVAR = R/2
    est.add_sample(2.0)
    # RTTVAR = 3/4 * 0.5 + 1/4 * |1 - 2| = 0.625 (from the old SRTT); SRTT = 7/8 + 2/8
    assert (est.srtt, est.rttvar) == (1.125, 0.625)
    est.add_sample(1.125)
    assert (est.srtt, est.rttvar) == (1.125, 0.46875)


def test_last_min_max_over_all_samples() -> None:
    est = RttEstimator(window=2)
    for rtt in (0.3, 0.1, 0.7, 0.2):
        est.add_sample(rtt)
    snap = est.snapshot()
    assert (snap.last, snap.min, snap.max, snap.samples) == (0.2, 0.1, 0.7, 4)
    assert est.recent() == [0.7, 0.2]  # the window holds only the last two


def test_karn_takes_no_sample_from_a_retransmitted_probe() -> None:
    est = RttEstimator()
    assert est.add(answered(0.04)) == 0.04
    # Answered after one retransmission: 0.54 from the first copy, 0.04 from the second;
    # which copy was answered is unknown, so neither is a sample.
    assert est.add(answered(0.54, retransmits=1, rtt_last=0.04)) is None
    assert est.add(LOST) is None
    snap = est.snapshot()
    assert (snap.samples, snap.ambiguous, snap.last, snap.srtt) == (1, 1, 0.04, 0.04)


def test_empty_snapshot() -> None:
    assert RttEstimator().snapshot() == RttSnapshot(0, 0, *([None] * 8))


def test_snapshot_percentiles() -> None:
    est = RttEstimator(window=100)
    for ms in range(100, 0, -1):
        est.add_sample(ms / 1000)
    snap = est.snapshot()
    assert (snap.p50, snap.p90, snap.p99) == (0.05, 0.09, 0.099)
    est.add_sample(1.0)  # pushes 0.1 out of the window
    assert (est.percentile(99), est.percentile(100)) == (0.099, 1.0)


def test_bad_inputs() -> None:
    for window in (0, -1, 1.5, True):
        with pytest.raises(ConfigError):
            RttEstimator(window)  # type: ignore[arg-type]
    est = RttEstimator()
    for rtt in (-0.001, math.nan, math.inf):
        with pytest.raises(LocalProtocolError):
            est.add_sample(rtt)
    for p in (0, -1, 100.5):
        with pytest.raises(LocalProtocolError):
            est.percentile(p)
    assert est.percentile(50) is None
    assert est.samples == 0


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(0, 10, allow_nan=False), min_size=1, max_size=300),
    st.integers(1, 64),
    st.floats(0.01, 100),
)
def test_percentiles_match_a_sorted_window(samples: list[float], window: int, p: float) -> None:
    est = RttEstimator(window)
    for rtt in samples:
        est.add_sample(rtt)
    tail = samples[-window:]
    assert est.recent() == tail
    value = est.percentile(p)
    assert value == nearest_rank(sorted(tail), p)
    # Nearest rank, from its definition: at least p% at or below, fewer than p% below.
    n = len(tail)
    assert sum(x <= value for x in tail) >= p * n / 100
    assert sum(x < value for x in tail) < p * n / 100
    snap = est.snapshot()
    assert snap.min == min(samples)
    assert snap.max == max(samples)
    assert snap.last == samples[-1]
