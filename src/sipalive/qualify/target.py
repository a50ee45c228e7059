"""One qualified target: settings, state machine, RTT statistics and history together.

The driver owns a :class:`~sipalive.qualify.schedule.Scheduler` and one
:class:`QualifyTarget` per target; when a probe ends it calls :meth:`QualifyTarget.on_probe_result`
and then ``scheduler.finished(name, now, target.next_interval())``.

The per-minute RTT aggregator holds only a few minutes here (``rtt_minutes``): enough for
the store to flush closed minutes from; 24-hour plots read the store. At 100k targets a
long in-memory series per target would not fit the memory budget.
"""

from __future__ import annotations

from sipalive.qualify.history import (
    DEFAULT_FAILURES,
    DEFAULT_TRANSITIONS,
    ProbeFailure,
    RttMinuteAggregator,
    TargetHistory,
)
from sipalive.qualify.rtt import DEFAULT_WINDOW, RttEstimator
from sipalive.qualify.state import (
    PeerState,
    ProbeOutcome,
    ProbeResultLike,
    QualifyCounters,
    QualifySettings,
    QualifyState,
    Transition,
    TransitionCause,
)

DEFAULT_TARGET_MINUTES = 3


class QualifyTarget:
    """Everything the qualify engine knows about one target."""

    __slots__ = ("history", "minutes", "name", "peer", "rtt", "version")

    def __init__(
        self,
        name: str,
        settings: QualifySettings,
        *,
        rtt_window: int = DEFAULT_WINDOW,
        transitions: int = DEFAULT_TRANSITIONS,
        failures: int = DEFAULT_FAILURES,
        rtt_minutes: int = DEFAULT_TARGET_MINUTES,
        state: QualifyState = QualifyState.UNKNOWN,
        since: float | None = None,
        counters: QualifyCounters | None = None,
        keep_history: bool = True,
    ) -> None:
        """``keep_history`` False: no ``history`` and no ``minutes`` (None), for a caller
        whose store keeps both (the monitor: ~550 bytes less per target, 55 MB at 100k)."""
        self.name = name
        self.peer = PeerState(settings, state=state, since=since, counters=counters)
        self.rtt = RttEstimator(rtt_window)
        self.history = TargetHistory(transitions, failures) if keep_history else None
        self.minutes = RttMinuteAggregator(rtt_minutes) if keep_history else None
        # bumped by every method that may change the state, the RTTs or the counters: what a
        # reader that caches something derived from them (the monitor's /metrics) compares
        self.version = 0

    @property
    def state(self) -> QualifyState:
        return self.peer.state

    @property
    def settings(self) -> QualifySettings:
        return self.peer.settings

    def next_interval(self) -> float:
        """Seconds from this probe's end to the next: ``unreachable_frequency`` while
        UNREACHABLE (when set), else ``qualify_frequency``; 0 means do not schedule."""
        return self.peer.next_interval()

    def on_probe_result(self, result: ProbeResultLike, now: float) -> Transition | None:
        """Account one finished probe: RTT sample (Karn's rule; the minute aggregates take
        the same samples), failure ring, state; the transition, if any, is also recorded.
        Ignored while NONQUALIFIED, as :meth:`PeerState.on_result` ignores it."""
        if self.peer.state is QualifyState.NONQUALIFIED:
            return None
        self.version += 1
        outcome = ProbeOutcome.from_result(result)
        sample = self.rtt.add(result)
        if sample is not None and self.minutes is not None:
            self.minutes.add(sample, now)
        if self.history is not None and not self.settings.alive(outcome):
            self.history.failures.append(ProbeFailure.from_outcome(outcome, now))
        return self._record(self.peer.on_result(outcome, now))

    def on_flow_failed(
        self, now: float, cause: str = TransitionCause.FLOW_FAILED
    ) -> Transition | None:
        """The flow to the target failed (no CRLF pong): UNREACHABLE at once."""
        self.version += 1
        return self._record(self.peer.force_unreachable(now, cause))

    def update_settings(self, settings: QualifySettings, now: float) -> Transition | None:
        self.version += 1
        return self._record(self.peer.update_settings(settings, now))

    def _record(self, transition: Transition | None) -> Transition | None:
        if transition is not None and self.history is not None:
            self.history.transitions.append(transition)
        return transition
