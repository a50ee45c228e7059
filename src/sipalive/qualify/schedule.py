"""When to probe which target: one deadline calendar for every target, pure and now-driven.

The deadlines are ``(when, seq, key)`` entries in a calendar queue (Brown, CACM 1988) with
lazy deletion, as trio keeps its deadlines: rescheduling or removing a key does not search
the store, it just forgets the entry (``_live`` maps a key to its one live entry tuple;
``seq`` is unique per entry, so it is the entry's generation as well as the FIFO tie-break
among equal deadlines). A stale entry is dropped when it comes up, and the store is rebuilt
once stale entries outnumber live ones (and a thousand), so it stays within about twice the
number of targets.

The calendar: buckets :data:`BUCKET_WIDTH` (5 ms, the monitor's tick) wide, numbered
``int(when / BUCKET_WIDTH)``, each an unsorted list in a dict, and a small heap of the bucket
numbers (pushed once, when a bucket is created). The earliest bucket is taken out, sorted
once and read from a position: popping an entry is an index step, and a deadline that lands
in that head bucket is put in place by bisection. It replaced one heap of 100k entries,
where each pop walked ~17 levels of tuples scattered in memory: ~4 us per ``heappop`` in a
profile of the monitor at 100k targets, about 8 % of its CPU. In bench/schedule_micro.py
(the monitor's steady state at 100k targets: pop, finished, get_timer) a probe costs the
calendar 2.75 us against 3.45 us for the heap (0.80); at 20k targets the heap still fits the
caches and is faster (2.3 against 2.7 us).

The bucket number is monotone in ``when`` (a correctly rounded division, then truncation), so
bucket order never contradicts deadline order, and equal deadlines share a bucket: the
calendar hands out exactly what the heap did, in the same order
(tests/test_schedule_calendar.py drives both side by side).

* :meth:`Scheduler.add` places a key's first probe in ``[now, now + frequency)`` by a
  CRC-32 of the key: the spread is uniform, and the same after every restart.
* A probe's end (:meth:`Scheduler.finished`) schedules the next one ``frequency`` later,
  less up to 10% by the injected ``rand``: measured from the end, a slow probe never overlaps
  the next; jittered downwards only, a peer that dies right after an answer is probed again
  within ``frequency``, so it is detected within ``frequency`` + the probe timeout.
* At most ``max_in_flight`` keys are out at once. Keys that fall due while the set is full
  wait in a FIFO queue, in deadline order, and leave it before any later deadline: late,
  never dropped, never overtaken.

The driver arms one loop timer at :meth:`Scheduler.get_timer`, calls :meth:`next_due`
when it fires and after every :meth:`finished` (a slot has freed).
"""

from __future__ import annotations

import math
import zlib
from bisect import insort
from collections import deque
from collections.abc import Callable
from heapq import heappop, heappush
from typing import NamedTuple

from sipalive.errors import ConfigError, LocalProtocolError

JITTER = 0.1
"""Each next probe is ``frequency`` * [1 - JITTER, 1] after the last one ended."""

BUCKET_WIDTH = 0.005
"""Seconds of deadlines per calendar bucket: the monitor's timer tick (100k targets every
60 s put ~8 deadlines in a bucket)."""

_COMPACT_MIN = 1024

_Entry = tuple[float, int, str]


class Due(NamedTuple):
    """A key handed out by :meth:`Scheduler.pop_due`, and the deadline it had (the
    difference to ``now`` is the scheduling lag)."""

    key: str
    when: float


def spread_fraction(key: str) -> float:
    """A stable position in [0, 1) for ``key``: CRC-32 of its UTF-8, over 2**32."""
    return zlib.crc32(key.encode("utf-8")) / 2**32


def _check_frequency(frequency: float) -> float:
    if not (frequency > 0 and math.isfinite(frequency)):
        raise LocalProtocolError(
            f"a probe frequency must be positive and finite, got {frequency!r}"
        )
    return frequency


def _bucket(when: float) -> float:
    """The number of ``when``'s bucket, monotone in ``when``."""
    try:
        return int(when / BUCKET_WIDTH)
    except OverflowError:  # +-inf: a bucket of their own, before or after every other
        return math.copysign(math.inf, when)
    except ValueError:  # NaN: never <= now, so never due; last
        return math.inf


class _Calendar:
    """The scheduled entries, live (``live[key] is entry``) or stale and not yet dropped.

    ``len()`` counts both. :meth:`first` and :meth:`pop_until` drop the stale entries they
    meet; :meth:`forgot` counts a new stale one and rebuilds when they outnumber the live.
    """

    __slots__ = ("_buckets", "_head", "_head_num", "_live", "_numbers", "_pos", "_size", "_stale")

    def __init__(self, live: dict[str, _Entry]) -> None:
        self._live = live
        self._buckets: dict[float, list[_Entry]] = {}
        self._numbers: list[float] = []  # a heap of the keys of _buckets
        # The earliest bucket, out of _buckets and sorted. Its entries before _pos are gone
        # (they stay in the list until the next bucket takes its place).
        self._head: list[_Entry] = []
        self._head_num: float | None = None
        self._pos = 0
        self._size = 0
        self._stale = 0

    def __len__(self) -> int:
        return self._size

    def push(self, entry: _Entry) -> None:
        num = _bucket(entry[0])
        head_num = self._head_num
        if head_num is not None and num <= head_num:
            if num == head_num:
                insort(self._head, entry, lo=self._pos)
                self._size += 1
                return
            self._shelve_head()
        bucket = self._buckets.get(num)
        if bucket is None:
            self._buckets[num] = [entry]
            heappush(self._numbers, num)
        else:
            bucket.append(entry)
        self._size += 1

    def first(self) -> _Entry | None:
        """The earliest live entry, left in place."""
        live = self._live
        while True:
            head = self._head
            pos = start = self._pos
            end = len(head)
            while pos < end:
                entry = head[pos]
                if live.get(entry[2]) is entry:
                    break
                pos += 1
            if pos > start:
                self._pos = pos
                self._size -= pos - start
                self._stale -= pos - start
            if pos < end:
                return head[pos]
            if not self._numbers:
                return None
            self._next_head()

    def pop_until(self, now: float) -> list[_Entry]:
        """Take out every entry due by ``now``, and return the live ones in deadline order."""
        live = self._live
        out: list[_Entry] = []
        while True:
            head = self._head
            pos = start = self._pos
            end = len(head)
            stale = 0
            while pos < end:
                entry = head[pos]
                if not entry[0] <= now:
                    break
                if live.get(entry[2]) is entry:
                    out.append(entry)
                else:
                    stale += 1
                pos += 1
            self._pos = pos
            self._size -= pos - start
            self._stale -= stale
            if pos < end or not self._numbers:
                return out
            self._next_head()

    def forgot(self) -> None:
        """One more entry went stale."""
        self._stale += 1
        if self._stale > _COMPACT_MIN and 2 * self._stale > self._size:
            self._shelve_head()
            live = self._live
            buckets: dict[float, list[_Entry]] = {}
            for num, bucket in self._buckets.items():
                kept = [e for e in bucket if live.get(e[2]) is e]
                if kept:
                    buckets[num] = kept
            self._buckets = buckets
            self._numbers = sorted(buckets)  # a sorted list is a heap
            self._size = sum(map(len, buckets.values()))
            self._stale = 0

    def _next_head(self) -> None:
        num = heappop(self._numbers)
        head = self._buckets.pop(num)
        head.sort()
        self._head = head
        self._head_num = num
        self._pos = 0

    def _shelve_head(self) -> None:
        """Put the head's remaining entries back among the buckets (still sorted: a later
        :meth:`_next_head` sorts them again in linear time)."""
        if self._head_num is None:
            return
        rest = self._head[self._pos :]
        if rest:
            self._buckets[self._head_num] = rest
            heappush(self._numbers, self._head_num)
        self._head = []
        self._head_num = None
        self._pos = 0


class Scheduler:
    """Deadlines for up to 100k targets (keys are target names), and the in-flight bound.

    A key is in exactly one place: the calendar (scheduled), the queue (due, waiting for a
    slot) or in flight (handed out, until :meth:`finished`). ``max_in_flight`` None means
    no bound. ``rand`` returns a number in [0, 1], like ``random.random``.
    """

    def __init__(self, *, rand: Callable[[], float], max_in_flight: int | None = None) -> None:
        if max_in_flight is not None and (
            isinstance(max_in_flight, bool)
            or not isinstance(max_in_flight, int)
            or max_in_flight < 1
        ):
            raise ConfigError("max_in_flight", f"must be an integer >= 1, got {max_in_flight!r}")
        self._rand = rand
        self._max_in_flight = max_in_flight
        self._live: dict[str, _Entry] = {}
        self._calendar = _Calendar(self._live)
        self._queue: deque[_Entry] = deque()
        self._queued: set[str] = set()
        self._in_flight: set[str] = set()
        self._frequency: dict[str, float] = {}
        self._seq = 0
        self._queue_stale = 0

    def __len__(self) -> int:
        return len(self._frequency)

    def __contains__(self, key: object) -> bool:
        return key in self._frequency

    @property
    def max_in_flight(self) -> int | None:
        return self._max_in_flight

    @property
    def in_flight_count(self) -> int:
        return len(self._in_flight)

    @property
    def queued_count(self) -> int:
        """Keys past their deadline, waiting for an in-flight slot."""
        return len(self._queued)

    def is_in_flight(self, key: str) -> bool:
        return key in self._in_flight

    def frequency(self, key: str) -> float:
        return self._frequency[self._known(key)]

    def deadline(self, key: str) -> float | None:
        """When ``key`` is (or was, if queued) due; None while it is in flight."""
        entry = self._live.get(self._known(key))
        return None if entry is None else entry[0]

    def add(self, key: str, frequency: float, now: float) -> None:
        """Start scheduling ``key``: first probe at ``now + frequency * spread_fraction(key)``."""
        if key in self._frequency:
            raise LocalProtocolError(f"{key!r} is already scheduled")
        self._frequency[key] = _check_frequency(frequency)
        self._push(key, now + frequency * spread_fraction(key))

    def reschedule(self, key: str, frequency: float, now: float) -> None:
        """Adopt a new ``frequency`` and put the next probe one jittered interval from now.

        While ``key`` is in flight only the frequency changes: :meth:`finished` schedules."""
        self._frequency[self._known(key)] = _check_frequency(frequency)
        if key in self._in_flight:
            return
        self._forget(key)
        self._push(key, now + self._jittered(frequency))

    def remove(self, key: str) -> None:
        """Forget ``key`` wherever it is; a later :meth:`finished` for it is ignored."""
        self._known(key)
        self._forget(key)
        self._in_flight.discard(key)
        del self._frequency[key]

    def started(self, key: str) -> None:
        """``key`` is being probed outside the schedule (on demand): it takes a slot and
        loses its pending deadline. It may push the in-flight count over the bound; then
        :meth:`next_due` hands out nothing until it is back under."""
        if key in self._in_flight:
            raise LocalProtocolError(f"{key!r} is already in flight")
        self._known(key)
        self._forget(key)
        self._in_flight.add(key)

    def finished(self, key: str, now: float, frequency: float | None = None) -> float:
        """The probe of ``key`` ended at ``now``: free its slot and schedule the next probe
        one jittered interval later, at ``frequency`` if given (it then becomes the key's
        frequency; pass the target's next interval, which is shorter while it is down).
        Returns that next deadline.

        Ignored for a key removed while in flight (returns +inf)."""
        if key not in self._frequency:
            return math.inf
        if key not in self._in_flight:
            raise LocalProtocolError(f"{key!r} is not in flight")
        self._in_flight.remove(key)
        if frequency is not None:
            self._frequency[key] = _check_frequency(frequency)
        when = now + self._jittered(self._frequency[key])
        self._push(key, when)
        return when

    def get_timer(self) -> float | None:
        """The next instant :meth:`next_due` has a key to hand out (in the past if keys are
        queued), or None: nothing scheduled, or every slot taken (wait for :meth:`finished`)."""
        if self._free() <= 0:
            return None
        queue = self._queue
        while queue and self._live.get(queue[0][2]) is not queue[0]:
            queue.popleft()
            self._queue_stale -= 1
        if queue:
            return queue[0][0]
        entry = self._calendar.first()
        return None if entry is None else entry[0]

    def next_due(self, now: float) -> list[str]:
        """The keys to probe now, marked in flight; see :meth:`pop_due`."""
        return [due.key for due in self.pop_due(now)]

    def pop_due(self, now: float) -> list[Due]:
        """Hand out the queued keys first, then those due by ``now`` in deadline order, as
        many as there are free slots; queue the rest of the due ones."""
        out: list[Due] = []
        free = self._free()
        live = self._live
        queue = self._queue
        while free > 0 and queue:
            entry = queue.popleft()
            key = entry[2]
            if live.get(key) is not entry:
                self._queue_stale -= 1
                continue
            self._queued.remove(key)
            self._hand_out(entry, out)
            free -= 1
        for entry in self._calendar.pop_until(now):
            if free > 0:
                self._hand_out(entry, out)
                free -= 1
            else:
                queue.append(entry)
                self._queued.add(entry[2])
        return out

    def _hand_out(self, entry: _Entry, out: list[Due]) -> None:
        key = entry[2]
        del self._live[key]
        self._in_flight.add(key)
        out.append(Due(key, entry[0]))

    def _free(self) -> float:
        if self._max_in_flight is None:
            return math.inf
        return self._max_in_flight - len(self._in_flight)

    def _known(self, key: str) -> str:
        if key not in self._frequency:
            raise LocalProtocolError(f"{key!r} is not scheduled")
        return key

    def _jittered(self, frequency: float) -> float:
        r = self._rand()
        if not 0.0 <= r <= 1.0:
            raise LocalProtocolError(f"rand() returned {r!r}, outside [0, 1]")
        return frequency * (1 - JITTER + JITTER * r)

    def _push(self, key: str, when: float) -> None:
        self._seq += 1
        entry = (when, self._seq, key)
        self._calendar.push(entry)
        self._live[key] = entry

    def _forget(self, key: str) -> None:
        """Make ``key``'s pending entry stale, wherever it is."""
        if self._live.pop(key, None) is None:
            return
        if key in self._queued:
            self._queued.remove(key)
            self._queue_stale += 1
            if self._queue_stale > _COMPACT_MIN and 2 * self._queue_stale > len(self._queue):
                live = self._live
                self._queue = deque(e for e in self._queue if live.get(e[2]) is e)
                self._queue_stale = 0
        else:
            self._calendar.forgot()
