"""Scheduler micro-benchmark: the calendar queue against the heap it replaced (bench/schedref.py).

Builds N keys (``t<i>``) at frequency FREQ with the CRC spread of ``Scheduler.add``, runs one
simulated frequency to reach the steady state, then measures SECONDS of simulated time as the
monitor drives it: ``pop_due`` every 5 ms tick, ``finished`` for each popped key (the probe
ended 20 ms later) and ``get_timer`` after each ``finished``; at 100k keys / 60 s that is
~1667 probes per simulated second. Prints microseconds of CPU per probe for both structures
(best of PASSES, alternating), and new/old.

    .venv/bin/python bench/schedule_micro.py [N] [SECONDS]
"""

from __future__ import annotations

import collections
import itertools
import os
import sys
import time
from collections.abc import Callable
from typing import Protocol

from schedref import HeapScheduler

from sipalive.qualify.schedule import Due, Scheduler

FREQ = 60.0
TICK = 0.005
PROBE = 0.02
PASSES = 3


class Sched(Protocol):
    def add(self, key: str, frequency: float, now: float) -> None: ...
    def pop_due(self, now: float) -> list[Due]: ...
    def finished(self, key: str, now: float, frequency: float | None = None) -> None: ...
    def get_timer(self) -> float | None: ...


def rand() -> Callable[[], float]:
    it = itertools.cycle([0.13, 0.91, 0.47, 0.72, 0.05, 0.66, 0.29, 0.84])
    return lambda: next(it)


def steady(make: Callable[[], Sched], n: int, seconds: float) -> tuple[float, int]:
    """CPU seconds and probes over ``seconds`` of simulated steady state."""
    sched = make()
    for i in range(n):
        sched.add(f"t{i}", FREQ, 0.0)
    running: collections.deque[tuple[float, list[str]]] = collections.deque()

    def run(ticks: int, start: int) -> int:
        probes = 0
        for tick in range(start, start + ticks):
            now = tick * TICK
            while running and running[0][0] <= now:
                for key in running.popleft()[1]:
                    sched.finished(key, now)
                    sched.get_timer()
                    probes += 1
            due = sched.pop_due(now)
            sched.get_timer()
            if due:
                running.append((now + PROBE, [d.key for d in due]))
        return probes

    warm = round(FREQ / TICK)
    run(warm, 0)  # one full cycle: every key has been probed and rescheduled once
    t0 = time.process_time()
    probes = run(round(seconds / TICK), warm)
    return time.process_time() - t0, probes


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 30.0
    load = os.getloadavg()[0]
    print(f"Machine busy: load average {load:.2f} on {os.cpu_count()} cores")
    print(f"{n} keys, frequency {FREQ:g} s, {seconds:g} s simulated steady state, best of {PASSES}")
    best: dict[str, float] = {}
    makers: dict[str, Callable[[], Sched]] = {
        "heap (old)": lambda: HeapScheduler(rand=rand()),
        "calendar (new)": lambda: Scheduler(rand=rand()),
    }
    for _ in range(PASSES):
        for name, make in makers.items():
            cpu, probes = steady(make, n, seconds)
            us = cpu / probes * 1e6
            best[name] = min(best.get(name, us), us)
            print(f"  {name:15} {probes} probes ({probes / seconds:.0f}/s)  {us:.3f} us/probe")
    old, new = best["heap (old)"], best["calendar (new)"]
    print(f"best: heap {old:.3f} us/probe, calendar {new:.3f} us/probe, new/old = {new / old:.2f}")


if __name__ == "__main__":
    main()
