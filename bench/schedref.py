"""REFERENCE MODEL, not used by sipalive: the heap-based ``Scheduler`` of
src/sipalive/qualify/schedule.py as it was before the calendar buckets (commit ae47799),
copied verbatim but for its name.

It is the oracle of tests/test_schedule_calendar.py (the calendar must answer exactly what
this answers, call after call) and the "old" side of bench/schedule_micro.py. Here, in bench/,
both can import it: a bench script has bench/ on its path, pytest adds it (pyproject.toml).
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable

from sipalive.errors import ConfigError, LocalProtocolError
from sipalive.qualify.schedule import _COMPACT_MIN, JITTER, Due, _check_frequency, spread_fraction

_Entry = tuple[float, int, str]


class HeapScheduler:
    """Deadlines for up to 100k targets (keys are target names), and the in-flight bound.

    A key is in exactly one place: the heap (scheduled), the queue (due, waiting for a
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
        self._heap: list[_Entry] = []
        self._queue: deque[_Entry] = deque()
        self._live: dict[str, _Entry] = {}
        self._queued: set[str] = set()
        self._in_flight: set[str] = set()
        self._frequency: dict[str, float] = {}
        self._seq = 0
        self._heap_stale = 0
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
        heap = self._heap
        while heap and self._live.get(heap[0][2]) is not heap[0]:
            heapq.heappop(heap)
            self._heap_stale -= 1
        return heap[0][0] if heap else None

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
        heap = self._heap
        while heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)
            key = entry[2]
            if live.get(key) is not entry:
                self._heap_stale -= 1
                continue
            if free > 0:
                self._hand_out(entry, out)
                free -= 1
            else:
                queue.append(entry)
                self._queued.add(key)
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
        self._live[key] = entry
        heapq.heappush(self._heap, entry)

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
            self._heap_stale += 1
            if self._heap_stale > _COMPACT_MIN and 2 * self._heap_stale > len(self._heap):
                live = self._live
                self._heap = [e for e in self._heap if live.get(e[2]) is e]
                heapq.heapify(self._heap)
                self._heap_stale = 0
