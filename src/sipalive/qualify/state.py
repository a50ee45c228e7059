"""A qualified peer's state, with hysteresis, as a pure machine driven by results and ``now``.

States (the values are what the JSON API and the metrics show)::

    NONQUALIFIED   qualify_frequency == 0: nobody probes it, nothing is claimed
    UNKNOWN        the first result decides at once: REACHABLE, LAGGED or UNREACHABLE

    REACHABLE ── fail_threshold not fast ─► LAGGED ── fail_threshold failed ───► UNREACHABLE
    REACHABLE ◄─ recover_threshold fast ─── LAGGED ◄─ recover_threshold alive ── UNREACHABLE
    REACHABLE ── fail_threshold failed ────────────────────────────────────────► UNREACHABLE
    REACHABLE ◄─ recover_threshold fast ──────────────────────────────────────── UNREACHABLE

Every result gets a verdict: *failed* (timeout, transport error, or a response the settings
do not accept), *slow* (accepted, RTT above ``lagged_rtt``) or *fast* (accepted, RTT within
``lagged_rtt``, or no ``lagged_rtt``, or no RTT known). Ranked fast > slow > failed, like
the states they point to (REACHABLE > LAGGED > UNREACHABLE), the rule is:

* going **down** from a state needs the last ``fail_threshold`` verdicts all below it, and
  lands on the best of them: so UNREACHABLE needs ``fail_threshold`` consecutive failures,
  and a REACHABLE peer answering slow, failing, slow... goes LAGGED, not nowhere;
* going **up** needs the last ``recover_threshold`` verdicts all above it, and lands on the
  worst of them: so leaving UNREACHABLE needs ``recover_threshold`` consecutive successes.

Streaks are not reset by a transition (they are "the last k results"): with
``fail_threshold`` 3, slow, failed, failed takes REACHABLE to LAGGED, and one more failure
takes it on to UNREACHABLE.

UNKNOWN has no history to protect, so the first result decides immediately, whatever the
thresholds: an operator wants to see a dead peer as dead right after start, not after
``fail_threshold`` probes. The thresholds guard the states the operator has already seen.

Transition causes are strings (a response code is part of one), named in :class:`TransitionCause`:

=========================  ===================================================================
``timeout``                to UNREACHABLE (or LAGGED) on a probe timeout (synthetic 408)
``transport-error``        same, on a transport error (synthetic 503); other non-response
                           causes from the io layer pass through as they are
``code <N>``               a response decided it: ``code 503`` refused under
                           ``qualify_2xx_only``, or ``code 200`` taking UNKNOWN to REACHABLE
``rtt``                    REACHABLE <-> LAGGED, and UNKNOWN -> LAGGED, by ``lagged_rtt``
``recovered``              UNREACHABLE -> REACHABLE / LAGGED
``flow-failed``            :meth:`PeerState.force_unreachable`'s default (no CRLF pong)
``config``                 to or from NONQUALIFIED when ``qualify_frequency`` changes
=========================  ===================================================================

The RTT that decides LAGGED is the probe's ``rtt_first`` (first transmission to the final
response), as chan_sip measures its pokes: a probe answered only after a retransmission did
take that long, even though Karn's rule keeps it out of the RTT estimator
(:mod:`sipalive.qualify.rtt`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from sipalive.errors import ConfigError, LocalProtocolError
from sipalive.sip.transaction import Cause


class QualifyState(Enum):
    UNKNOWN = "unknown"
    REACHABLE = "reachable"
    LAGGED = "lagged"
    UNREACHABLE = "unreachable"
    NONQUALIFIED = "nonqualified"


_RANK = {QualifyState.UNREACHABLE: 0, QualifyState.LAGGED: 1, QualifyState.REACHABLE: 2}
_BY_RANK = (QualifyState.UNREACHABLE, QualifyState.LAGGED, QualifyState.REACHABLE)
_FAILED, _SLOW, _FAST = 0, 1, 2


class TransitionCause:
    """The cause strings a :class:`Transition` carries; see the module docstring."""

    TIMEOUT = Cause.TIMEOUT
    TRANSPORT_ERROR = Cause.TRANSPORT_ERROR
    RTT = "rtt"
    RECOVERED = "recovered"
    FLOW_FAILED = "flow-failed"
    CONFIG = "config"

    @staticmethod
    def code(status: int) -> str:
        return f"code {status}"


def _seconds(name: str, value: object, *, zero_ok: bool = False) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
        or (value == 0 and not zero_ok)
    ):
        bound = ">= 0" if zero_ok else "> 0"
        raise ConfigError(name, f"must be a finite number of seconds {bound}, got {value!r}")
    return float(value)


def _count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(name, f"must be an integer >= 1, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class QualifySettings:
    """Per-target qualify settings, named as Asterisk names them where it has a name.

    ``qualify_frequency`` (s; 0 = not qualified), ``qualify_timeout`` (s),
    ``qualify_2xx_only`` (only a 2xx proves the peer alive; otherwise any final response
    does, as Asterisk has it: a 404 or a 401 still comes from a live SIP stack),
    ``lagged_rtt`` (s; chan_sip's "Lagged" above it; None: no LAGGED state),
    ``fail_threshold`` / ``recover_threshold`` (the hysteresis counts; 1 and 1 behave as
    Asterisk does), ``unreachable_frequency`` (s between probes while UNREACHABLE; None:
    ``qualify_frequency``) and ``expect_codes`` (inclusive ``(lo, hi)`` ranges of the codes
    that prove the peer alive; overrides both 2xx rules when set).

    A bad value raises :class:`~sipalive.errors.ConfigError` whose ``where`` is the field
    name; the config loader prefixes the file and the key path.
    """

    qualify_frequency: float = 60.0
    qualify_timeout: float = 3.0
    qualify_2xx_only: bool = False
    lagged_rtt: float | None = None
    fail_threshold: int = 1
    recover_threshold: int = 1
    unreachable_frequency: float | None = None
    expect_codes: tuple[tuple[int, int], ...] | None = None

    def __post_init__(self) -> None:
        put = object.__setattr__
        put(
            self,
            "qualify_frequency",
            _seconds("qualify_frequency", self.qualify_frequency, zero_ok=True),
        )
        put(self, "qualify_timeout", _seconds("qualify_timeout", self.qualify_timeout))
        if not isinstance(self.qualify_2xx_only, bool):
            raise ConfigError(
                "qualify_2xx_only", f"must be true or false, got {self.qualify_2xx_only!r}"
            )
        if self.lagged_rtt is not None:
            lagged = _seconds("lagged_rtt", self.lagged_rtt)
            if lagged >= self.qualify_timeout:
                raise ConfigError(
                    "lagged_rtt",
                    f"must be below qualify_timeout ({self.qualify_timeout:g} s), got {lagged:g}",
                )
            put(self, "lagged_rtt", lagged)
        _count("fail_threshold", self.fail_threshold)
        _count("recover_threshold", self.recover_threshold)
        if self.unreachable_frequency is not None:
            put(
                self,
                "unreachable_frequency",
                _seconds("unreachable_frequency", self.unreachable_frequency),
            )
        if self.expect_codes is not None:
            put(self, "expect_codes", _code_ranges(self.expect_codes))

    @property
    def qualified(self) -> bool:
        return self.qualify_frequency > 0

    def accepts(self, status: int) -> bool:
        """Whether a final response with ``status`` proves the peer alive."""
        if self.expect_codes is not None:
            return any(lo <= status <= hi for lo, hi in self.expect_codes)
        if self.qualify_2xx_only:
            return 200 <= status < 300
        return status >= 200

    def alive(self, outcome: ProbeOutcome) -> bool:
        """Whether a probe's outcome proves the peer alive: an accepted final response."""
        return outcome.responded and self.accepts(outcome.status)

    def interval(self, state: QualifyState) -> float:
        """Seconds from one probe's end to the next in ``state``; 0 when not qualified."""
        if state is QualifyState.UNREACHABLE and self.unreachable_frequency is not None:
            return self.unreachable_frequency
        return self.qualify_frequency


def _code_ranges(value: object) -> tuple[tuple[int, int], ...]:
    where = "expect_codes"
    if not isinstance(value, tuple | list) or not value:
        raise ConfigError(where, f"must be a non-empty list of (lo, hi) code ranges, got {value!r}")
    ranges: list[tuple[int, int]] = []
    for item in value:
        if not isinstance(item, tuple | list) or len(item) != 2:
            raise ConfigError(where, f"each range must be a (lo, hi) pair, got {item!r}")
        lo, hi = item
        if any(isinstance(c, bool) or not isinstance(c, int) for c in (lo, hi)):
            raise ConfigError(where, f"codes must be integers, got {item!r}")
        if not 200 <= lo <= hi <= 699:
            raise ConfigError(where, f"range must satisfy 200 <= lo <= hi <= 699, got {item!r}")
        ranges.append((lo, hi))
    return tuple(ranges)


class ProbeResultLike(Protocol):
    """What a finished probe reports; :class:`~sipalive.sip.transaction.TransactionResult` fits."""

    @property
    def status(self) -> int: ...
    @property
    def reason(self) -> str: ...
    @property
    def cause(self) -> str: ...
    @property
    def retransmits(self) -> int: ...
    @property
    def rtt_first(self) -> float | None: ...
    @property
    def rtt_last(self) -> float | None: ...
    @property
    def error(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class ProbeOutcome:
    """One probe's result as the state machine sees it.

    ``cause`` is a :class:`~sipalive.sip.transaction.Cause` string; anything but
    ``response`` is a failure (``status`` is then the synthetic 408 or 503). ``rtt`` is the
    time from the first transmission to the final response, None without a response.
    Whether a response counts as alive is the settings' call (:meth:`QualifySettings.accepts`).
    """

    status: int
    cause: str = Cause.RESPONSE
    rtt: float | None = None
    reason: str = ""
    error: str | None = None

    def __post_init__(self) -> None:
        if self.cause == Cause.RESPONSE and not 200 <= self.status <= 699:
            raise LocalProtocolError(f"a final response has a status 200-699, got {self.status}")
        if self.rtt is not None and not (self.rtt >= 0 and math.isfinite(self.rtt)):
            raise LocalProtocolError(f"rtt must be a finite number >= 0, got {self.rtt!r}")

    @classmethod
    def from_result(cls, result: ProbeResultLike) -> ProbeOutcome:
        rtt = result.rtt_first if result.cause == Cause.RESPONSE else None
        return cls(result.status, result.cause, rtt, result.reason, result.error)

    @property
    def responded(self) -> bool:
        return self.cause == Cause.RESPONSE

    def describe(self) -> str:
        """``code <N>`` for a response, else the cause itself (``timeout``, ...)."""
        return TransitionCause.code(self.status) if self.responded else self.cause


@dataclass(frozen=True, slots=True)
class Transition:
    """The peer went from ``from_state`` to ``to_state`` at ``at`` because of ``cause``.

    ``rtt`` is the deciding probe's RTT (None for a failure or a forced transition)."""

    at: float
    from_state: QualifyState
    to_state: QualifyState
    cause: str
    rtt: float | None = None


@dataclass(frozen=True, slots=True)
class QualifyCounters:
    """Probe totals, and the current streaks.

    ``failures`` = ``timeouts`` + ``transport_errors`` + ``rejected`` (responses the settings
    do not accept); any non-response cause other than a timeout counts as a transport error.
    """

    probes: int = 0
    successes: int = 0
    failures: int = 0
    timeouts: int = 0
    transport_errors: int = 0
    rejected: int = 0
    consecutive_successes: int = 0
    consecutive_failures: int = 0


class PeerState:
    """One target's qualify state. Feed it every probe outcome with :meth:`on_result`.

    ``state``/``since``/``counters`` restore what the store kept across a restart; the
    streaks start again from zero then, which only delays a transition. A qualified target
    never starts NONQUALIFIED and an unqualified one always does (the settings win).
    """

    __slots__ = (
        "_alive",
        "_counts",
        "_failed",
        "_fast",
        "_not_fast",
        "_settings",
        "_since",
        "_state",
    )

    def __init__(
        self,
        settings: QualifySettings,
        *,
        state: QualifyState = QualifyState.UNKNOWN,
        since: float | None = None,
        counters: QualifyCounters | None = None,
    ) -> None:
        self._settings = settings
        if not settings.qualified:
            state = QualifyState.NONQUALIFIED
        elif state is QualifyState.NONQUALIFIED:
            state = QualifyState.UNKNOWN
        self._state = state
        self._since = since
        c = counters or QualifyCounters()
        # [probes, successes, failures, timeouts, transport_errors, rejected]
        self._counts = [
            c.probes,
            c.successes,
            c.failures,
            c.timeouts,
            c.transport_errors,
            c.rejected,
        ]
        # Streaks of the last results: failed (verdict <= failed), not fast (<= slow),
        # alive (>= slow) and fast (>= fast). Restored counters do not restore them.
        self._failed = self._not_fast = self._alive = self._fast = 0

    @property
    def state(self) -> QualifyState:
        return self._state

    @property
    def since(self) -> float | None:
        """When the current state began (None: never changed since construction)."""
        return self._since

    @property
    def settings(self) -> QualifySettings:
        return self._settings

    @property
    def up(self) -> bool:
        """What ``sip_peer_up`` says: REACHABLE or LAGGED."""
        return self._state in (QualifyState.REACHABLE, QualifyState.LAGGED)

    @property
    def counters(self) -> QualifyCounters:
        probes, successes, failures, timeouts, transport_errors, rejected = self._counts
        return QualifyCounters(
            probes, successes, failures, timeouts, transport_errors, rejected,
            consecutive_successes=self._alive, consecutive_failures=self._failed,
        )  # fmt: skip

    def totals(self) -> tuple[int, int, int, int, int, int]:
        """``(probes, successes, failures, timeouts, transport_errors, rejected)``: what
        :attr:`counters` says, without building it (the monitor reads them at every probe)."""
        probes, successes, failures, timeouts, transport_errors, rejected = self._counts
        return probes, successes, failures, timeouts, transport_errors, rejected

    def streak(self) -> int:
        """The current streak of successes or of failures (the longer one)."""
        return max(self._alive, self._failed)

    def next_interval(self) -> float:
        """Seconds from this probe's end to the next; 0 when not qualified."""
        return self._settings.interval(self._state)

    def _verdict(self, outcome: ProbeOutcome) -> int:
        if not self._settings.alive(outcome):
            return _FAILED
        lagged = self._settings.lagged_rtt
        if lagged is not None and outcome.rtt is not None and outcome.rtt > lagged:
            return _SLOW
        return _FAST

    def on_result(self, outcome: ProbeOutcome, now: float) -> Transition | None:
        """Count one probe outcome; the transition it causes, if any.

        Ignored (None, nothing counted) while NONQUALIFIED: a probe still in flight when a
        reload set ``qualify_frequency`` to 0 has nothing left to report to."""
        if self._state is QualifyState.NONQUALIFIED:
            return None
        verdict = self._count(outcome)
        old = self._state
        target = _BY_RANK[verdict] if old is QualifyState.UNKNOWN else self._hysteresis(_RANK[old])
        if target is None:
            return None
        if verdict == _FAILED:
            cause = outcome.describe()
        elif old is QualifyState.UNREACHABLE:
            cause = TransitionCause.RECOVERED
        elif target is QualifyState.LAGGED or old is QualifyState.LAGGED:
            cause = TransitionCause.RTT
        else:
            cause = outcome.describe()
        return self._move(target, now, cause, outcome.rtt)

    def force_unreachable(
        self, now: float, cause: str = TransitionCause.FLOW_FAILED
    ) -> Transition | None:
        """UNREACHABLE at once, whatever the thresholds: the flow to the peer is known dead
        (no CRLF pong within 10 s, RFC 5626 §4.4.1). Recovery then needs
        ``recover_threshold`` successes as usual. None if already UNREACHABLE, or NONQUALIFIED
        (nothing is claimed about an unqualified peer). Not counted as a probe."""
        if self._state in (QualifyState.UNREACHABLE, QualifyState.NONQUALIFIED):
            return None
        self._alive = self._fast = 0
        return self._move(QualifyState.UNREACHABLE, now, cause, None)

    def update_settings(self, settings: QualifySettings, now: float) -> Transition | None:
        """Adopt reloaded settings (SIGHUP), keeping state, counters and streaks.

        ``qualify_frequency`` set to 0 moves to NONQUALIFIED, and from 0 to UNKNOWN; other
        changes take effect with the next result."""
        self._settings = settings
        if not settings.qualified and self._state is not QualifyState.NONQUALIFIED:
            self._failed = self._not_fast = self._alive = self._fast = 0
            return self._move(QualifyState.NONQUALIFIED, now, TransitionCause.CONFIG, None)
        if settings.qualified and self._state is QualifyState.NONQUALIFIED:
            return self._move(QualifyState.UNKNOWN, now, TransitionCause.CONFIG, None)
        return None

    def _count(self, outcome: ProbeOutcome) -> int:
        verdict = self._verdict(outcome)
        counts = self._counts
        counts[0] += 1
        if verdict == _FAILED:
            counts[2] += 1
            if outcome.responded:
                counts[5] += 1
            elif outcome.cause == Cause.TIMEOUT:
                counts[3] += 1
            else:
                counts[4] += 1
            self._failed += 1
            self._not_fast += 1
            self._alive = self._fast = 0
        elif verdict == _SLOW:
            counts[1] += 1
            self._failed = self._fast = 0
            self._not_fast += 1
            self._alive += 1
        else:
            counts[1] += 1
            self._failed = self._not_fast = 0
            self._alive += 1
            self._fast += 1
        return verdict

    def _hysteresis(self, rank: int) -> QualifyState | None:
        down = self._settings.fail_threshold
        if self._failed >= down:
            best_recent = _FAILED
        elif self._not_fast >= down:
            best_recent = _SLOW
        else:
            best_recent = _FAST
        if best_recent < rank:
            return _BY_RANK[best_recent]
        up = self._settings.recover_threshold
        if self._fast >= up:
            worst_recent = _FAST
        elif self._alive >= up:
            worst_recent = _SLOW
        else:
            worst_recent = _FAILED
        if worst_recent > rank:
            return _BY_RANK[worst_recent]
        return None

    def _move(
        self, target: QualifyState, now: float, cause: str, rtt: float | None
    ) -> Transition | None:
        old = self._state
        if target is old:
            return None
        self._state = target
        self._since = now
        return Transition(now, old, target, cause, rtt)
