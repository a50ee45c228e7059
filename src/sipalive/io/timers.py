"""Drives many pure machines (``get_timer()`` / ``handle_timer(now)``) on ONE loop timer.

STYLE habit 2 and 8: a machine never sleeps or schedules itself; this wheel asks each for its
next deadline, keeps a heap with lazy deletion, and re-arms a single ``call_later``. After any
outside event (a pong, a response) the owner calls ``touch(machine)`` so the new deadline is
seen. Events a machine returns are handed to that machine's callback.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable, Sequence
from typing import Protocol

from sipalive import clock


class Machine(Protocol):
    def get_timer(self) -> float | None: ...

    def handle_timer(self, now: float) -> Sequence[object]: ...


Handler = Callable[[Sequence[object]], None]


class TimerWheel:
    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.loop = loop or asyncio.get_running_loop()
        self._handlers: dict[int, tuple[Machine, Handler]] = {}
        self._heap: list[tuple[float, int, int]] = []
        self._seq = itertools.count()
        self._handle: asyncio.TimerHandle | None = None
        self._armed_for: float | None = None
        self.fired = 0

    def __len__(self) -> int:
        return len(self._handlers)

    def add(self, machine: Machine, handler: Handler) -> None:
        self._handlers[id(machine)] = (machine, handler)
        self.touch(machine)

    def remove(self, machine: Machine) -> None:
        self._handlers.pop(id(machine), None)  # its heap entries die lazily

    def touch(self, machine: Machine) -> None:
        """Re-read the machine's deadline after something other than a timer changed it."""
        if id(machine) not in self._handlers:
            return
        when = machine.get_timer()
        if when is None:
            return
        heapq.heappush(self._heap, (when, next(self._seq), id(machine)))
        if self._armed_for is None or when < self._armed_for:
            self._arm(when)

    def _arm(self, when: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._armed_for = when
        self._handle = self.loop.call_later(max(0.0, when - clock.monotonic()), self._fire)

    def _fire(self) -> None:
        self._handle = None
        self._armed_for = None
        now = clock.monotonic()
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, key = heapq.heappop(heap)
            entry = self._handlers.get(key)
            if entry is None:
                continue
            machine, handler = entry
            due = machine.get_timer()
            if due is None or due > now:
                continue  # stale entry: a newer one for this machine is in the heap
            self.fired += 1
            events = machine.handle_timer(now)
            if events:
                handler(events)
            self.touch(machine)
        while heap and heap[0][2] not in self._handlers:
            heapq.heappop(heap)
        if heap:
            self._arm(heap[0][0])

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handlers.clear()
        self._heap.clear()
