"""Bounded memory of what happened to a target: transitions, recent failures, RTT per minute.

The store keeps everything for good; these are what the status page and the API read
without a query, and what the store flushes from. Every one has its bound in the
constructor (like blackbox_exporter's ``prober/history.go``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from sipalive.errors import ConfigError, LocalProtocolError
from sipalive.qualify.state import ProbeOutcome, Transition

T = TypeVar("T")

DEFAULT_TRANSITIONS = 256
DEFAULT_FAILURES = 32
DEFAULT_MINUTES = 60


def _bound(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(name, f"must be an integer >= 1, got {value!r}")
    return value


class Ring(Generic[T]):
    """The last ``capacity`` items appended, oldest first; ``total`` counts every append.

    A list that grows to ``capacity`` and is then overwritten in a circle: unlike a
    ``deque(maxlen=...)``, which allocates a 64-slot block at once, a target with two
    transitions holds two slots (100k targets each keep two of these)."""

    __slots__ = ("_capacity", "_items", "_start", "_total")

    def __init__(self, capacity: int) -> None:
        self._capacity = _bound("capacity", capacity)
        self._items: list[T] = []
        self._start = 0
        self._total = 0

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def total(self) -> int:
        return self._total

    @property
    def dropped(self) -> int:
        """Items pushed out by newer ones."""
        return self._total - len(self._items)

    @property
    def last(self) -> T | None:
        if not self._items:
            return None
        return self._items[self._start - 1]

    def append(self, item: T) -> None:
        if len(self._items) < self._capacity:
            self._items.append(item)
        else:
            self._items[self._start] = item
            self._start = (self._start + 1) % self._capacity
        self._total += 1

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[T]:
        items, start = self._items, self._start
        return iter(items[start:] + items[:start])

    def __bool__(self) -> bool:
        return bool(self._items)


@dataclass(frozen=True, slots=True)
class ProbeFailure:
    """A failed probe, for the page's "recent failures": ``cause`` as a transition names it
    (``timeout``, ``transport-error``, ``code 503``), with the status, reason and error text."""

    at: float
    cause: str
    status: int
    reason: str = ""
    error: str | None = None

    @classmethod
    def from_outcome(cls, outcome: ProbeOutcome, at: float) -> ProbeFailure:
        return cls(at, outcome.describe(), outcome.status, outcome.reason, outcome.error)


class TargetHistory:
    """A target's last ``transitions`` transitions and last ``failures`` failed probes."""

    __slots__ = ("failures", "transitions")

    def __init__(
        self, transitions: int = DEFAULT_TRANSITIONS, failures: int = DEFAULT_FAILURES
    ) -> None:
        self.transitions: Ring[Transition] = Ring(_bound("transitions", transitions))
        self.failures: Ring[ProbeFailure] = Ring(_bound("failures", failures))


def rtt_bucket(frequency: float) -> float:
    """Seconds of RTT samples one stored row aggregates for a target probed every
    ``frequency`` seconds: ``frequency / 12`` whole minutes, from 1 to 15 (about five probes).

    A row per target and minute was a row per probe at ``qualify_frequency`` 60: 100k
    targets wrote 10.6 GB a day. Targets probed more often than every 24 s keep per-minute
    rows; every 60 s, 5-minute rows; every 3 minutes or less often, 15-minute rows."""
    return 60.0 * max(1, min(15, int(frequency // 12)))


@dataclass(frozen=True, slots=True)
class MinuteAggregate:
    """RTT samples of the minute starting at ``minute * 60``: enough to merge minutes and
    to give mean and standard deviation, which is what the store keeps and plots draw."""

    minute: int
    count: int
    min: float
    max: float
    sum: float
    sumsq: float

    @property
    def start(self) -> float:
        return self.minute * 60.0

    @property
    def mean(self) -> float:
        return self.sum / self.count

    @property
    def stddev(self) -> float:
        """Population standard deviation (0 for one sample)."""
        mean = self.mean
        # Rounding can make sumsq/n - mean**2 a hair negative when all samples are equal.
        return math.sqrt(max(0.0, self.sumsq / self.count - mean * mean))


class RttMinuteAggregator:
    """Per-minute RTT aggregates, keyed by ``floor(now / 60)``, for the last ``max_minutes``
    minutes up to the newest one seen. A sample older than that is dropped (``add`` says
    False); a late one within it still lands in its own minute."""

    __slots__ = ("_buckets", "_max_minutes", "_newest")

    def __init__(self, max_minutes: int = DEFAULT_MINUTES) -> None:
        self._max_minutes = _bound("rtt_minutes", max_minutes)
        # minute -> [count, min, max, sum, sumsq]
        self._buckets: dict[int, list[float]] = {}
        self._newest: int | None = None

    @property
    def max_minutes(self) -> int:
        return self._max_minutes

    def __len__(self) -> int:
        return len(self._buckets)

    def add(self, rtt: float, now: float) -> bool:
        if not (rtt >= 0 and math.isfinite(rtt)):
            raise LocalProtocolError(f"an RTT sample must be a finite number >= 0, got {rtt!r}")
        minute = math.floor(now / 60)
        newest = self._newest
        if newest is not None and minute <= newest - self._max_minutes:
            return False
        bucket = self._buckets.get(minute)
        if bucket is None:
            self._buckets[minute] = [1, rtt, rtt, rtt, rtt * rtt]
            if newest is None or minute > newest:
                self._newest = minute
                cutoff = minute - self._max_minutes
                for old in [m for m in self._buckets if m <= cutoff]:
                    del self._buckets[old]
            return True
        bucket[0] += 1
        bucket[1] = min(bucket[1], rtt)
        bucket[2] = max(bucket[2], rtt)
        bucket[3] += rtt
        bucket[4] += rtt * rtt
        return True

    def aggregates(self) -> list[MinuteAggregate]:
        """Every minute held, oldest first."""
        return [self._aggregate(m) for m in sorted(self._buckets)]

    def closed(self, now: float, after: int | None = None) -> list[MinuteAggregate]:
        """The minutes that ended by ``now`` (and come after minute ``after``, the last one
        the store has written), oldest first: the ones safe to persist."""
        current = math.floor(now / 60)
        return [
            self._aggregate(m)
            for m in sorted(self._buckets)
            if m < current and (after is None or m > after)
        ]

    def _aggregate(self, minute: int) -> MinuteAggregate:
        count, lo, hi, total, squares = self._buckets[minute]
        return MinuteAggregate(minute, int(count), lo, hi, total, squares)
