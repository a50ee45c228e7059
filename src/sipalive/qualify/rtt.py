"""Per-target RTT statistics, TCP-style: RFC 6298 smoothing and Karn's rule.

* last, min and max (min and max over every sample since construction);
* smoothed RTT and RTT variance as RFC 6298 §2 computes them (alpha 1/8, beta 1/4; the
  first sample R gives SRTT = R, RTTVAR = R/2);
* p50/p90/p99 over a sliding window of the last ``window`` samples (nearest-rank: the
  smallest sample with at least p% of the window at or below it).

Karn's rule (RFC 6298 §3): a probe answered after a retransmission gives no sample. SIP
retransmits OPTIONS with the same branch and the response does not say which copy it
answers, so ``rtt_first`` (from the first copy) may be too long and ``rtt_last`` (from the
last) too short; either would bias the estimator. Such probes are only counted as
``ambiguous``. The state machine still sees ``rtt_first`` for LAGGED: the peer did take
that long to answer.

The window is a flat ``array('d')`` ring that grows to ``window`` samples and then wraps:
8 bytes a sample, so 100k targets at the default 128 hold about 100 MB of samples.
"""

from __future__ import annotations

import math
from array import array
from dataclasses import dataclass
from typing import Protocol

from sipalive.errors import ConfigError, LocalProtocolError

ALPHA = 1 / 8
"""RFC 6298 §2.3: SRTT gain."""

BETA = 1 / 4
"""RFC 6298 §2.3: RTTVAR gain."""

DEFAULT_WINDOW = 128


class KarnInput(Protocol):
    """The RTT fields of :class:`~sipalive.sip.transaction.TransactionResult`."""

    @property
    def rtt_first(self) -> float | None: ...
    @property
    def rtt_last(self) -> float | None: ...
    @property
    def retransmits(self) -> int: ...


@dataclass(frozen=True, slots=True)
class RttSnapshot:
    """A :class:`RttEstimator`'s figures at one moment; every RTT is None before a sample."""

    samples: int
    ambiguous: int
    last: float | None
    min: float | None
    max: float | None
    srtt: float | None
    rttvar: float | None
    p50: float | None
    p90: float | None
    p99: float | None


def nearest_rank(ordered: list[float], p: float) -> float:
    """The p-th percentile (0 < p <= 100) of an ascending, non-empty list, nearest-rank."""
    rank = max(1, math.ceil(p * len(ordered) / 100))
    return ordered[rank - 1]


class RttEstimator:
    """RTT statistics for one target. Feed it every answered probe with :meth:`add`."""

    __slots__ = (
        "_ambiguous",
        "_buf",
        "_count",
        "_last",
        "_max",
        "_min",
        "_pos",
        "_rttvar",
        "_srtt",
        "_window",
    )

    def __init__(self, window: int = DEFAULT_WINDOW) -> None:
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ConfigError("rtt_window", f"must be an integer >= 1, got {window!r}")
        self._window = window
        self._buf = array("d")
        self._pos = 0
        self._count = 0
        self._ambiguous = 0
        self._last: float | None = None
        self._min = math.inf
        self._max = -math.inf
        self._srtt: float | None = None
        self._rttvar = 0.0

    @property
    def window(self) -> int:
        return self._window

    @property
    def samples(self) -> int:
        return self._count

    @property
    def ambiguous(self) -> int:
        """Answered probes Karn's rule kept out: they had been retransmitted."""
        return self._ambiguous

    @property
    def last(self) -> float | None:
        return self._last

    @property
    def srtt(self) -> float | None:
        return self._srtt

    @property
    def rttvar(self) -> float | None:
        return None if self._srtt is None else self._rttvar

    def add(self, result: KarnInput) -> float | None:
        """Take the sample a finished probe gives, if any, and return it.

        None for an unanswered probe, and for an answered one that was retransmitted
        (Karn's rule; counted in ``ambiguous``)."""
        if result.rtt_first is None:
            return None
        if result.retransmits > 0:
            self._ambiguous += 1
            return None
        self.add_sample(result.rtt_first)
        return result.rtt_first

    def add_sample(self, rtt: float) -> None:
        """An unambiguous RTT sample (a first-copy response, a CRLF pong)."""
        if not (rtt >= 0 and math.isfinite(rtt)):
            raise LocalProtocolError(f"an RTT sample must be a finite number >= 0, got {rtt!r}")
        if self._srtt is None:
            self._srtt = rtt
            self._rttvar = rtt / 2
        else:
            # RFC 6298 §2.3: RTTVAR first, from the SRTT before this sample.
            self._rttvar = (1 - BETA) * self._rttvar + BETA * abs(self._srtt - rtt)
            self._srtt = (1 - ALPHA) * self._srtt + ALPHA * rtt
        self._last = rtt
        self._min = min(self._min, rtt)
        self._max = max(self._max, rtt)
        if len(self._buf) < self._window:
            self._buf.append(rtt)
        else:
            self._buf[self._pos] = rtt
            self._pos = (self._pos + 1) % self._window
        self._count += 1

    def recent(self) -> list[float]:
        """The samples in the window, oldest first."""
        return (self._buf[self._pos :] + self._buf[: self._pos]).tolist()

    def percentile(self, p: float) -> float | None:
        """The nearest-rank p-th percentile (0 < p <= 100) of the window; None if empty."""
        if not 0 < p <= 100:
            raise LocalProtocolError(f"a percentile is in (0, 100], got {p!r}")
        if self._count == 0:
            return None
        return nearest_rank(sorted(self._buf), p)

    def snapshot(self) -> RttSnapshot:
        empty = self._count == 0
        # sorted for this call only: a sorted copy kept per target would hold ``window``
        # float objects each (4 kB at 128), 400 MB at 100k targets
        ordered = sorted(self._buf)
        return RttSnapshot(
            samples=self._count,
            ambiguous=self._ambiguous,
            last=self._last,
            min=None if empty else self._min,
            max=None if empty else self._max,
            srtt=self._srtt,
            rttvar=self.rttvar,
            p50=None if empty else nearest_rank(ordered, 50),
            p90=None if empty else nearest_rank(ordered, 90),
            p99=None if empty else nearest_rank(ordered, 99),
        )
