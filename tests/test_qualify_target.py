"""One target end to end: transaction results in, transitions, RTT, history and interval out."""

from __future__ import annotations

import itertools

import pytest

from sipalive.qualify import (
    ProbeFailure,
    QualifySettings,
    QualifyState,
    QualifyTarget,
    Scheduler,
    Transition,
)
from sipalive.sip.transaction import Cause, TransactionResult

R = QualifyState.REACHABLE
L = QualifyState.LAGGED
X = QualifyState.UNREACHABLE
U = QualifyState.UNKNOWN


def ok(rtt: float, retransmits: int = 0, status: int = 200) -> TransactionResult:
    return TransactionResult(status, "OK", Cause.RESPONSE, None, 0.0, rtt, retransmits, rtt, rtt)


def lost() -> TransactionResult:
    return TransactionResult(408, "Request Timeout", Cause.TIMEOUT, None, 0.0, 3.0, 6, None, None)


def test_results_drive_state_rtt_and_history() -> None:
    s = QualifySettings(
        qualify_frequency=60, unreachable_frequency=10, fail_threshold=2, lagged_rtt=0.5
    )
    target = QualifyTarget("pbx", s)
    assert (target.state, target.next_interval()) == (U, 60.0)
    assert target.on_probe_result(ok(0.125), 0.0) == Transition(0.0, U, R, "code 200", 0.125)
    assert target.on_probe_result(lost(), 60.0) is None
    assert target.on_probe_result(lost(), 70.0) == Transition(70.0, R, X, "timeout", None)
    assert target.next_interval() == 10.0  # re-probe faster while down
    # Answered after a retransmission: alive, and slow by rtt_first, but no RTT sample.
    assert target.on_probe_result(ok(0.75, retransmits=1), 80.0) == Transition(
        80.0, X, L, "recovered", 0.75
    )
    assert target.next_interval() == 60.0
    assert (target.rtt.samples, target.rtt.ambiguous, target.rtt.last) == (1, 1, 0.125)
    assert [(t.from_state, t.to_state) for t in target.history.transitions] == [
        (U, R),
        (R, X),
        (X, L),
    ]
    assert list(target.history.failures) == [
        ProbeFailure(60.0, "timeout", 408, "Request Timeout"),
        ProbeFailure(70.0, "timeout", 408, "Request Timeout"),
    ]
    assert [(a.minute, a.count) for a in target.minutes.aggregates()] == [(0, 1)]


def test_rejected_code_is_a_failure_in_the_ring() -> None:
    target = QualifyTarget("trunk", QualifySettings(qualify_2xx_only=True))
    t = target.on_probe_result(ok(0.02, status=503), 1.0)
    assert t == Transition(1.0, U, X, "code 503", 0.02)
    assert [f.cause for f in target.history.failures] == ["code 503"]
    assert target.rtt.last == 0.02  # the peer answered: the RTT is real


def test_flow_failure_and_reload_are_recorded() -> None:
    target = QualifyTarget("edge", QualifySettings(recover_threshold=2))
    assert target.version == 0
    target.on_probe_result(ok(0.01), 0.0)
    assert target.version == 1  # every change moves the version (a cache key for /metrics)
    assert target.on_flow_failed(5.0) == Transition(5.0, R, X, "flow-failed")
    assert target.on_flow_failed(6.0) is None
    assert target.version == 3
    off = QualifySettings(qualify_frequency=0)
    assert target.update_settings(off, 7.0) == Transition(
        7.0, X, QualifyState.NONQUALIFIED, "config"
    )
    assert target.version == 4
    assert target.settings is off
    assert target.next_interval() == 0.0
    assert target.on_probe_result(ok(0.01), 8.0) is None
    assert target.rtt.samples == 1  # a late result after the reload is ignored entirely
    assert [t.cause for t in target.history.transitions] == ["code 200", "flow-failed", "config"]


def test_restored_target() -> None:
    target = QualifyTarget("pbx", QualifySettings(), state=X, since=123.0, rtt_window=8)
    assert (target.state, target.peer.since, target.rtt.window) == (X, 123.0, 8)


def test_driver_loop_with_scheduler_in_virtual_time() -> None:
    """How io/ drives it: one timer, next_due, results, finished with the next interval."""
    s = QualifySettings(qualify_frequency=30, unreachable_frequency=5)
    targets = {n: QualifyTarget(n, s) for n in ("a", "b", "c")}
    sched = Scheduler(rand=lambda: 1.0, max_in_flight=2)
    for name in targets:
        sched.add(name, s.qualify_frequency, 0.0)
    dead = {"b"}
    probes: list[tuple[float, str]] = []
    now = 0.0
    while (timer := sched.get_timer()) is not None and timer < 120.0:
        now = max(now, timer)
        for name in sched.next_due(now):
            probes.append((now, name))
            result = lost() if name in dead else ok(0.01)
            end = now + (3.0 if name in dead else 0.01)
            targets[name].on_probe_result(result, end)
            sched.finished(name, end, targets[name].next_interval())
    assert {n: t.state for n, t in targets.items()} == {"a": R, "b": X, "c": R}
    times_b = [t for t, n in probes if n == "b"]
    gaps_b = [b - a for a, b in itertools.pairwise(times_b)]
    assert len(gaps_b) > 10
    assert gaps_b == pytest.approx([8.0] * len(gaps_b))  # 3 s timeout + 5 s re-probe
    assert sum(1 for _, n in probes if n == "a") == 4


def test_without_history_the_same_transitions_and_rtt() -> None:
    """The monitor's targets keep no history in memory (its store does): the same results
    make the same transitions, counters and RTT figures either way."""
    s = QualifySettings(fail_threshold=2, lagged_rtt=0.5)
    kept, lean = QualifyTarget("a", s), QualifyTarget("a", s, keep_history=False)
    assert lean.history is None
    assert lean.minutes is None
    results = [ok(0.1), lost(), lost(), ok(0.7, retransmits=1), ok(0.02, status=503), ok(0.2)]
    for i, result in enumerate(results):
        at = 60.0 * i
        assert kept.on_probe_result(result, at) == lean.on_probe_result(result, at)
    assert kept.on_flow_failed(999.0) == lean.on_flow_failed(999.0)
    assert kept.peer.counters == lean.peer.counters
    assert kept.rtt.snapshot() == lean.rtt.snapshot()
