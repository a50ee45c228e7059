"""The calendar-queue Scheduler against the heap it replaced, call by call.

The oracle is bench/schedref.py's ``HeapScheduler``: the heap-based Scheduler as it was,
verbatim. Both are driven by the same calls with the same ``rand``; every answer (return
value or error) must be the same, and so must every state query after every step. Their
stores must also hold the same number of entries: the heap drops a stale entry when it
reaches the top, the calendar when it reaches it in deadline order, which is the same moment,
so compaction happens at the same call in both.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from schedref import HeapScheduler

from sipalive.qualify.schedule import _COMPACT_MIN, BUCKET_WIDTH, Scheduler, _bucket, _Calendar

KEYS = [f"k{i}" for i in range(7)]


def rand_from(values: list[float]) -> Callable[[], float]:
    it: Iterator[float] = itertools.cycle(values)
    return lambda: next(it)


def answer(call: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return ("ok", call())
    except Exception as exc:  # the same error, with the same message, is the same answer
        return (type(exc).__name__, str(exc))


def check_calendar(sched: Scheduler) -> None:
    """The calendar's own invariants: its count and stale count are what it holds, it holds
    every live entry not queued, the head is sorted and earlier than every bucket, each
    entry sits in its own bucket."""
    cal: _Calendar = sched._calendar
    live = sched._live
    rest = cal._head[cal._pos :]
    held = rest + [e for bucket in cal._buckets.values() for e in bucket]
    assert len(cal) == len(held)
    assert cal._stale == sum(1 for e in held if live.get(e[2]) is not e)
    held_ids = {id(e) for e in held}
    assert all(id(e) in held_ids for k, e in live.items() if k not in sched._queued)
    assert rest == sorted(rest)
    assert sorted(cal._numbers) == sorted(cal._buckets)
    assert all(_bucket(e[0]) == num for num, b in cal._buckets.items() for e in b)
    if cal._head_num is not None:
        assert all(_bucket(e[0]) == cal._head_num for e in rest)
        assert all(num > cal._head_num for num in cal._buckets)


class Pair:
    """A Scheduler and its reference, driven together."""

    def __init__(self, rand: list[float], max_in_flight: int | None) -> None:
        self.new = Scheduler(rand=rand_from(rand), max_in_flight=max_in_flight)
        self.ref = HeapScheduler(rand=rand_from(rand), max_in_flight=max_in_flight)

    def same(self, method: str, *args: Any) -> Any:
        got = answer(lambda: getattr(self.new, method)(*args))
        want = answer(lambda: getattr(self.ref, method)(*args))
        assert got == want, (method, args)
        return got[1]

    def check(self, keys: list[str]) -> None:
        new, ref = self.new, self.ref
        assert (len(new), new.in_flight_count, new.queued_count) == (
            len(ref),
            ref.in_flight_count,
            ref.queued_count,
        )
        for key in keys:
            assert (key in new) == (key in ref)
            assert new.is_in_flight(key) == ref.is_in_flight(key)
            assert answer(lambda k=key: new.deadline(k)) == answer(lambda k=key: ref.deadline(k))
            assert answer(lambda k=key: new.frequency(k)) == answer(lambda k=key: ref.frequency(k))
        assert len(new._calendar) == len(ref._heap)
        check_calendar(new)


# Steps of time: none (equal deadlines), within one bucket, across a few, far apart.
STEPS = st.sampled_from([0.0, 0.0, 0.0001, BUCKET_WIDTH / 2, BUCKET_WIDTH, 0.012, 0.7, 59.9])
# Deadlines in the bucket being read, in the next ones, and far away.
FREQS = st.sampled_from([0.001, 0.002, 0.004, BUCKET_WIDTH, 0.013, 1.0, 60.0]) | st.floats(
    0.0005, 120.0
)


def ops_with(freqs: st.SearchStrategy[float]) -> st.SearchStrategy[tuple[Any, ...]]:
    return st.one_of(
        st.tuples(st.just("add"), st.sampled_from(KEYS), freqs),
        st.tuples(st.just("reschedule"), st.sampled_from(KEYS), freqs),
        st.tuples(st.just("remove"), st.sampled_from(KEYS)),
        st.tuples(st.just("started"), st.sampled_from(KEYS)),
        st.tuples(st.just("finished"), st.sampled_from(KEYS), st.none() | freqs),
        st.tuples(st.just("probe"), st.sampled_from(KEYS), freqs),  # started + finished
        st.tuples(st.just("pop_due")),
        st.tuples(st.just("next_due")),
        st.tuples(st.just("get_timer")),
        st.tuples(st.just("deadline"), st.sampled_from(KEYS)),
    )


OPS = ops_with(FREQS)
# Everything within a bucket or two: most pushes land in the bucket being read.
TIGHT_OPS = ops_with(st.floats(0.0002, 2 * BUCKET_WIDTH))
TIGHT_STEPS = st.sampled_from([0.0, 0.0001, 0.0007, 0.002])


def run(pair: Pair, ops: list[tuple[Any, ...]], steps: list[float], keys: list[str]) -> None:
    now = 1000.0
    for op, step in zip(ops, itertools.cycle(steps), strict=False):
        now += step
        name, *args = op
        if name in ("add", "reschedule"):
            pair.same(name, args[0], args[1], now)
        elif name == "finished":
            pair.same(name, args[0], now, args[1])
        elif name == "probe":
            pair.same("started", args[0])
            pair.same("finished", args[0], now, args[1])
        elif name in ("pop_due", "next_due"):
            pair.same(name, now)
        else:
            pair.same(name, *args)
        pair.check(keys)


@settings(max_examples=400, deadline=None)
@given(
    ops=st.lists(OPS, max_size=120),
    steps=st.lists(STEPS, min_size=1, max_size=20),
    rand=st.lists(st.sampled_from([0.0, 0.5, 1.0]) | st.floats(0.0, 1.0), min_size=1),
    max_in_flight=st.none() | st.integers(1, 3),
)
def test_same_answers_as_the_heap(
    ops: list[tuple[Any, ...]], steps: list[float], rand: list[float], max_in_flight: int | None
) -> None:
    run(Pair(rand, max_in_flight), ops, steps, KEYS)


@settings(max_examples=300, deadline=None)
@given(
    ops=st.lists(TIGHT_OPS, max_size=120),
    steps=st.lists(TIGHT_STEPS, min_size=1, max_size=20),
    rand=st.lists(st.sampled_from([0.0, 1.0]) | st.floats(0.0, 1.0), min_size=1),
    max_in_flight=st.none() | st.integers(1, 3),
)
def test_same_answers_as_the_heap_within_a_bucket(
    ops: list[tuple[Any, ...]], steps: list[float], rand: list[float], max_in_flight: int | None
) -> None:
    run(Pair(rand, max_in_flight), ops, steps, KEYS)


@settings(max_examples=200, deadline=None)
@given(
    ops=st.lists(st.sampled_from(["pop_due", "get_timer", "finish_all", "churn"]), max_size=60),
    steps=st.lists(STEPS, min_size=1, max_size=10),
    max_in_flight=st.none() | st.integers(1, 50),
)
def test_same_answers_at_a_hundred_keys_with_one_rand(
    ops: list[str], steps: list[float], max_in_flight: int | None
) -> None:
    """Many keys due together: a constant rand gives equal deadlines, FIFO by seq."""
    keys = [f"t{i}" for i in range(100)]
    pair = Pair([1.0], max_in_flight)
    now = 0.0
    for key in keys:
        pair.same("add", key, 0.05, now)
    for op, step in zip(ops, itertools.cycle(steps), strict=False):
        now += step
        if op == "finish_all":
            for key in keys:
                if pair.ref.is_in_flight(key):
                    pair.same("finished", key, now)
        elif op == "churn":
            for key in keys[::7]:
                pair.same("reschedule", key, 0.05, now)
        elif op == "pop_due":
            pair.same(op, now)
        else:
            pair.same(op)
        pair.check(keys[:5])
    pair.check(keys)


def test_compaction_under_removals_and_reschedules() -> None:
    """More than _COMPACT_MIN entries go stale: both rebuild at the same call, and the
    calendar's store stays within twice the live count (+ _COMPACT_MIN)."""
    keys = [f"peer-{i}" for i in range(3 * _COMPACT_MIN)]
    pair = Pair([0.1, 0.7, 0.4, 1.0, 0.0], max_in_flight=200)
    now = 0.0
    for key in keys:
        pair.same("add", key, 2.0, now)
    largest, compactions = 0, 0
    for rnd in range(6):
        for i, key in enumerate(keys):
            before = len(pair.new._calendar)
            if rnd == 2 and i % 2 == 0:
                pair.same("remove", key)
            elif i % 3 == rnd % 3:
                pair.same("reschedule", key, 2.0, now)
            compactions += len(pair.new._calendar) < before
            if i % 97 == 0:
                now += 0.01
                for due in pair.same("pop_due", now):
                    pair.same("finished", due.key, now + 0.003)
                pair.same("get_timer")
            largest = max(largest, len(pair.new._calendar))
        pair.check(keys[:50])
    removed = len(keys) - len(pair.new)
    assert removed > _COMPACT_MIN
    assert compactions >= 1
    assert largest <= 2 * len(keys) + _COMPACT_MIN + 1
    while len(pair.new) > pair.new.in_flight_count + pair.new.queued_count or pair.new.queued_count:
        now += 0.5
        for due in pair.same("pop_due", now):
            pair.same("finished", due.key, now)
        pair.check(keys[:50])
        if now > 100:
            break
    pair.check(keys)


@pytest.mark.parametrize("order", ["late first", "early first"])
def test_a_deadline_landing_in_the_bucket_being_read(order: str) -> None:
    """The head bucket is sorted once; a later push into it must go in its place."""
    pair = Pair([1.0], max_in_flight=None)
    frequencies = [0.004, 0.002, 0.003, 0.001] if order == "late first" else [0.001, 0.004]
    keys = [f"k{i}" for i in range(len(frequencies))]
    for key in keys:
        pair.same("add", key, 10.0, 0.0)
        pair.same("started", key)
    for key, frequency in zip(keys, frequencies, strict=True):
        pair.same("finished", key, 0.0, frequency)  # due at 0 + frequency, all in bucket 0
        assert pair.same("get_timer") == min(frequencies[: keys.index(key) + 1])
        pair.check(keys)
    for now in (0.0015, 0.0025, 0.0035, 0.0045):
        pair.same("pop_due", now)
        pair.check(keys)
    assert len(pair.new) == pair.new.in_flight_count == len(keys)


@pytest.mark.parametrize("base", [math.inf, -math.inf, 1e300, -1e300, 0.0])
def test_non_finite_and_huge_instants_as_the_heap(base: float) -> None:
    pair = Pair([0.5], max_in_flight=None)
    pair.same("add", "a", 1.0, 0.0)
    pair.same("add", "b", 1.0, base)
    pair.same("add", "c", 1.0, -base)
    pair.same("add", "d", 1e-300, 1e-300)
    for now in (-math.inf, -1e300, 0.0, 0.9, 1.0, 1e300, math.inf):
        pair.same("get_timer")
        pair.same("pop_due", now)
        pair.check(["a", "b", "c", "d"])


def test_bucket_numbers_never_contradict_the_order() -> None:
    """Monotone: an earlier deadline is never in a later bucket (the proof of the order)."""
    values = sorted(
        {
            *(i * BUCKET_WIDTH for i in range(-50, 50)),
            *(math.nextafter(i * BUCKET_WIDTH, d) for i in range(-50, 50) for d in (-9, 9)),
            -math.inf,
            math.inf,
            -1e308,
            1e308,
            5e-324,
            -5e-324,
        }
    )
    numbers = [_bucket(v) for v in values]
    assert numbers == sorted(numbers)
