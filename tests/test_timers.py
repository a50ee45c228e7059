"""TimerWheel: many machines, one loop timer, lazy deletion."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from sipalive import clock
from sipalive.io.timers import TimerWheel


class Ticker:
    """Fires every ``period`` seconds, ``count`` times."""

    def __init__(self, period: float, count: int) -> None:
        self.period = period
        self.left = count
        self.next = clock.monotonic() + period
        self.fired_at: list[float] = []
        self.early = 0  # handle_timer calls before the deadline (the wheel must not make any)

    def get_timer(self) -> float | None:
        return self.next if self.left else None

    def handle_timer(self, now: float) -> Sequence[object]:
        if now < self.next or not self.left:
            self.early += now < self.next
            return []
        self.left -= 1
        self.fired_at.append(now)
        self.next += self.period
        return [("tick", self)]


async def _run() -> None:
    wheel = TimerWheel()
    got: list[object] = []
    tickers = [Ticker(0.01 + 0.002 * i, 3) for i in range(50)]
    for t in tickers:
        wheel.add(t, got.extend)
    removed = Ticker(0.005, 5)
    wheel.add(removed, got.extend)
    wheel.remove(removed)
    for _ in range(500):  # bounded wait (5 s; the tickers need ~0.3 s on an idle machine)
        if all(not t.left for t in tickers):
            break
        await asyncio.sleep(0.01)
    assert all(len(t.fired_at) == 3 for t in tickers)
    assert removed.fired_at == []
    assert len(got) == 150
    # never called before a deadline (how much after depends on the machine's load)
    assert [t.early for t in tickers] == [0] * len(tickers)
    # one loop timer at most is pending at any time
    assert len([h for h in asyncio.get_running_loop()._scheduled if not h.cancelled()]) <= 2  # type: ignore[attr-defined]
    wheel.close()


def test_wheel() -> None:
    asyncio.run(_run())
