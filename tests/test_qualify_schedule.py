"""The deadline heap: spread, jitter, lazy deletion, the in-flight bound, 100k targets."""

from __future__ import annotations

import collections
import itertools
import time
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipalive.errors import ConfigError, LocalProtocolError
from sipalive.qualify import JITTER, Due, Scheduler, spread_fraction


def const(value: float) -> Callable[[], float]:
    return lambda: value


def cycle(*values: float) -> Callable[[], float]:
    it: Iterator[float] = itertools.cycle(values)
    return lambda: next(it)


def names(n: int, prefix: str = "peer-") -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


# --- first-probe spread ---------------------------------------------------------------


def test_first_probe_is_spread_by_a_stable_hash() -> None:
    sched = Scheduler(rand=const(1.0))
    sched.add("alice", 60.0, 1000.0)
    # CRC-32 of b"alice", fixed forever: a restart spreads the same way.
    assert spread_fraction("alice") == 0x278EBC47 / 2**32
    assert sched.deadline("alice") == 1000.0 + 60.0 * spread_fraction("alice")
    other = Scheduler(rand=const(0.9))
    keys = names(1000)
    for k in keys:
        sched.add(k, 30.0, 5.0)
        other.add(k, 30.0, 5.0)
    assert [sched.deadline(k) for k in keys] == [other.deadline(k) for k in keys]
    assert all(5.0 <= (sched.deadline(k) or -1) < 35.0 for k in keys)


def test_spread_fraction_is_the_crc32() -> None:
    import zlib

    for key in ("alice", "sip:bob@example.com", "ünïcode"):
        assert spread_fraction(key) == zlib.crc32(key.encode()) / 2**32
        assert 0.0 <= spread_fraction(key) < 1.0


@pytest.mark.parametrize("prefix", ["peer-", "sip:user@10.0.0.", "trunk/"])
def test_spread_is_uniform_ish(prefix: str) -> None:
    n, buckets = 20_000, 20
    counts = collections.Counter(int(spread_fraction(k) * buckets) for k in names(n, prefix))
    expected = n / buckets
    assert set(counts) == set(range(buckets))
    assert all(abs(c - expected) < 0.1 * expected for c in counts.values()), counts


# --- popping and jitter ---------------------------------------------------------------


def test_next_due_pops_in_deadline_order_and_nothing_early() -> None:
    sched = Scheduler(rand=const(1.0))
    for k in names(50):
        sched.add(k, 10.0, 0.0)
    order = sorted(names(50), key=lambda k: sched.deadline(k) or 0.0)
    first = sched.deadline(order[0])
    assert sched.get_timer() == first
    assert first is not None
    assert sched.next_due(first - 1e-9) == []
    assert sched.next_due(first) == [order[0]]
    assert sched.next_due(10.0) == order[1:]
    assert sched.get_timer() is None
    assert sched.in_flight_count == 50


def test_pop_due_reports_the_deadline_for_lag() -> None:
    sched = Scheduler(rand=const(1.0))
    sched.add("a", 10.0, 0.0)
    when = sched.deadline("a")
    assert sched.pop_due(100.0) == [Due("a", when)]  # type: ignore[arg-type]


@pytest.mark.parametrize(("r", "delay"), [(0.0, 9.0), (0.5, 9.5), (1.0, 10.0)])
def test_next_probe_is_jittered_down_by_ten_percent_at_most(r: float, delay: float) -> None:
    sched = Scheduler(rand=const(r))
    sched.add("a", 10.0, 0.0)
    assert sched.next_due(10.0) == ["a"]
    sched.finished("a", 12.0)
    assert sched.deadline("a") == pytest.approx(12.0 + delay, abs=1e-12)
    assert JITTER == 0.1


@settings(max_examples=200, deadline=None)
@given(st.floats(0.0, 1.0), st.floats(0.001, 86400.0), st.floats(0.0, 1e9))
def test_jitter_bounds(r: float, frequency: float, now: float) -> None:
    sched = Scheduler(rand=const(r))
    sched.add("k", frequency, now)
    sched.started("k")
    sched.finished("k", now)
    when = sched.deadline("k")
    assert when is not None
    assert now + 0.9 * frequency * (1 - 1e-12) <= when <= now + frequency * (1 + 1e-12)


def test_bad_rand_and_frequency_are_caller_errors() -> None:
    sched = Scheduler(rand=const(1.5))
    sched.add("a", 10.0, 0.0)
    sched.started("a")
    with pytest.raises(LocalProtocolError):
        sched.finished("a", 1.0)
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(LocalProtocolError):
            sched.add("b", bad, 0.0)
    assert "b" not in sched
    for bad_bound in (0, -3, True):
        with pytest.raises(ConfigError):
            Scheduler(rand=const(1.0), max_in_flight=bad_bound)


def test_finished_takes_the_next_interval_and_keeps_it() -> None:
    sched = Scheduler(rand=const(1.0))
    sched.add("a", 60.0, 0.0)
    sched.started("a")
    sched.finished("a", 1.0, frequency=10.0)  # went unreachable: re-probe faster
    assert (sched.deadline("a"), sched.frequency("a")) == (11.0, 10.0)
    sched.started("a")
    sched.finished("a", 12.0)
    assert sched.deadline("a") == 22.0


# --- lazy deletion --------------------------------------------------------------------


def test_rescheduled_keys_never_come_out_stale() -> None:
    sched = Scheduler(rand=const(1.0))
    sched.add("a", 10.0, 0.0)
    sched.add("b", 10.0, 0.0)
    for now in range(1, 6):
        sched.reschedule("a", 10.0, float(now))  # each one leaves a stale entry behind
    assert sched.deadline("a") == 15.0
    popped: list[tuple[str, int]] = []
    for now in range(30):
        popped += [(k, now) for k in sched.next_due(float(now))]
    assert [p for p in popped if p[0] == "a"] == [("a", 15)]
    assert [p[0] for p in popped].count("b") == 1


def test_removed_keys_never_come_out() -> None:
    sched = Scheduler(rand=const(1.0))
    keys = names(100)
    for k in keys:
        sched.add(k, 10.0, 0.0)
    gone = set(keys[::3])
    for k in gone:
        sched.remove(k)
    assert len(sched) == 100 - len(gone)
    out = sched.next_due(10.0)
    assert set(out) == set(keys) - gone
    assert sched.get_timer() is None
    with pytest.raises(LocalProtocolError):
        sched.remove("peer-0")
    with pytest.raises(LocalProtocolError):
        sched.deadline("peer-0")


def put(sched: Scheduler, key: str, when: float) -> None:
    """Schedule ``key`` due exactly at ``when`` (rand pinned at 0.5, frequency 10)."""
    sched.add(key, 10.0, when - 20.0)
    sched.started(key)
    sched.finished(key, when - 10.0)
    assert sched.deadline(key) == when


def test_get_timer_skips_stale_entries() -> None:
    sched = Scheduler(rand=const(1.0))
    put(sched, "early", 5.0)
    put(sched, "middle", 6.0)
    put(sched, "late", 7.0)
    assert sched.get_timer() == 5.0
    sched.remove("early")
    sched.reschedule("middle", 10.0, 0.0)  # now due at 10
    assert sched.get_timer() == 7.0
    assert sched.next_due(9.0) == ["late"]
    assert sched.get_timer() == 10.0


def test_the_deadlines_are_compacted_under_churn() -> None:
    sched = Scheduler(rand=cycle(0.1, 0.7, 0.4))
    keys = names(500)
    for k in keys:
        sched.add(k, 60.0, 0.0)
    for i in range(50):
        for k in keys:
            sched.reschedule(k, 60.0, float(i))
    # 25k stale entries were made; the heap stays near the live count.
    assert len(sched._calendar) <= 2 * len(keys) + 1025
    assert sorted(sched.next_due(1000.0)) == sorted(keys)


def test_reschedule_while_in_flight_only_changes_the_frequency() -> None:
    sched = Scheduler(rand=const(1.0))
    sched.add("a", 10.0, 0.0)
    assert sched.next_due(10.0) == ["a"]
    sched.reschedule("a", 20.0, 11.0)
    assert sched.deadline("a") is None
    assert sched.is_in_flight("a")
    assert sched.next_due(100.0) == []
    sched.finished("a", 12.0)
    assert sched.deadline("a") == 32.0


def test_misuse() -> None:
    sched = Scheduler(rand=const(1.0))
    sched.add("a", 10.0, 0.0)
    with pytest.raises(LocalProtocolError):
        sched.add("a", 10.0, 0.0)
    with pytest.raises(LocalProtocolError):
        sched.finished("a", 1.0)  # not in flight
    sched.started("a")
    with pytest.raises(LocalProtocolError):
        sched.started("a")
    with pytest.raises(LocalProtocolError):
        sched.reschedule("nobody", 10.0, 0.0)
    sched.remove("a")  # removed while in flight ...
    sched.finished("a", 2.0)  # ... so its late end is ignored
    assert "a" not in sched
    assert sched.in_flight_count == 0


# --- in-flight bound ------------------------------------------------------------------


def test_in_flight_bound_queues_and_queued_keys_go_first() -> None:
    sched = Scheduler(rand=const(1.0), max_in_flight=2)
    for k, at in (("a", 1.0), ("b", 2.0), ("c", 3.0), ("d", 4.0), ("e", 50.0)):
        put(sched, k, at)
    assert sched.next_due(4.0) == ["a", "b"]
    assert (sched.in_flight_count, sched.queued_count) == (2, 2)
    assert sched.get_timer() is None  # full: wait for finished()
    assert sched.next_due(60.0) == []
    assert sched.queued_count == 3  # e fell due too, queued behind c and d
    sched.finished("a", 60.0)
    assert sched.get_timer() == 3.0  # in the past: fire at once
    assert sched.next_due(60.0) == ["c"]
    sched.finished("b", 61.0)
    sched.finished("c", 61.0)
    # a (due at 70) and b, c (71) are due, but d and e waited: they go first.
    assert sched.next_due(80.0) == ["d", "e"]
    sched.finished("d", 81.0)
    sched.finished("e", 81.0)
    assert sched.next_due(81.0) == ["a", "b"]


def test_started_counts_against_the_bound_and_may_exceed_it() -> None:
    sched = Scheduler(rand=const(1.0), max_in_flight=1)
    for k in "abc":
        sched.add(k, 10.0, 0.0)
    assert len(sched.next_due(10.0)) == 1
    queued = sched.queued_count
    assert queued == 2
    waiting = [k for k in "abc" if not sched.is_in_flight(k)]
    sched.started(waiting[0])  # on demand: cancels its queued turn
    assert (sched.in_flight_count, sched.queued_count) == (2, 1)
    assert sched.next_due(20.0) == []


def simulate(n: int, seconds: float) -> tuple[dict[str, list[float]], float]:
    """``n`` targets every 10 s, 5 in flight, each probe 0.2 s (capacity 25 probes/s),
    polled every 50 ms: when each target was probed, and the worst scheduling lag."""
    sched = Scheduler(rand=cycle(0.0, 0.25, 0.5, 0.75, 1.0), max_in_flight=5)
    keys = names(n)
    for k in keys:
        sched.add(k, 10.0, 0.0)
    probes: dict[str, list[float]] = {k: [] for k in keys}
    running: list[tuple[float, str]] = []
    now, max_lag = 0.0, 0.0
    while now < seconds:
        for _, k in [r for r in running if r[0] <= now]:
            sched.finished(k, now)
        running = [r for r in running if r[0] > now]
        for due in sched.pop_due(now):
            max_lag = max(max_lag, now - due.when)
            probes[due.key].append(now)
            running.append((now + 0.2, due.key))
        assert sched.in_flight_count <= 5
        now = round(now + 0.05, 6)
    return probes, max_lag


def test_no_starvation_under_a_tight_bound() -> None:
    probes, max_lag = simulate(200, 300.0)  # offered 20 probes/s
    for k, times in probes.items():
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert len(times) >= 25
        assert max(gaps) <= 11.0 + 0.25 + 0.5, (k, gaps)
    assert max_lag < 0.5


def test_overload_is_shared_fairly() -> None:
    probes, _ = simulate(1000, 300.0)  # offered 100 probes/s: four times the capacity
    counts = sorted(len(times) for times in probes.values())
    assert counts[0] >= 5  # everyone gets probed, late, and ...
    # ... nobody much more than anybody else (the 10% jitter alone makes some faster).
    assert counts[-1] - counts[0] <= 2


# --- scale ----------------------------------------------------------------------------


def test_100k_targets_add_and_a_full_cycle_in_a_few_seconds() -> None:
    n = 100_000
    keys = names(n)
    t0 = time.perf_counter()
    sched = Scheduler(rand=cycle(0.1, 0.9, 0.5, 0.3, 0.7), max_in_flight=1000)
    for k in keys:
        sched.add(k, 60.0, 0.0)
    seen = 0
    now = 0.0
    while now <= 60.0:
        for k in sched.next_due(now):
            seen += 1
            sched.finished(k, now + 0.01)
        now += 0.1
    elapsed = time.perf_counter() - t0
    assert seen >= n  # every target probed once in the first cycle (some twice)
    assert len(sched) == n
    assert sched.in_flight_count == 0
    assert elapsed < 8.0, f"100k adds + one cycle took {elapsed:.2f} s"
