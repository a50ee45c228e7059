"""The peer state machine, stepped by hand through virtual time: hysteresis, causes, settings."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipalive.errors import ConfigError, LocalProtocolError
from sipalive.qualify import (
    PeerState,
    ProbeOutcome,
    QualifyCounters,
    QualifySettings,
    QualifyState,
    Transition,
    TransitionCause,
)
from sipalive.sip.transaction import Cause, TransactionResult

U = QualifyState.UNKNOWN
R = QualifyState.REACHABLE
L = QualifyState.LAGGED
X = QualifyState.UNREACHABLE
N = QualifyState.NONQUALIFIED

OK = ProbeOutcome(200, rtt=0.05)
SLOW = ProbeOutcome(200, rtt=0.5)
TIMEOUT = ProbeOutcome(408, Cause.TIMEOUT)
REFUSED = ProbeOutcome(503, Cause.TRANSPORT_ERROR, error="connection refused")
BUSY = ProbeOutcome(503, rtt=0.04, reason="Service Unavailable")


def machine(**kw: Any) -> PeerState:
    return PeerState(QualifySettings(**kw))


def feed(peer: PeerState, *outcomes: ProbeOutcome, start: float = 0.0) -> list[Transition]:
    """One outcome a second from ``start``; the transitions that happened."""
    out = []
    for i, outcome in enumerate(outcomes):
        t = peer.on_result(outcome, start + i)
        if t is not None:
            out.append(t)
    return out


# --- settings -------------------------------------------------------------------------


def test_defaults_behave_like_asterisk() -> None:
    s = QualifySettings()
    assert (s.qualify_frequency, s.qualify_timeout, s.qualify_2xx_only) == (60.0, 3.0, False)
    assert (s.lagged_rtt, s.fail_threshold, s.recover_threshold) == (None, 1, 1)
    assert s.unreachable_frequency is None
    assert s.expect_codes is None
    assert s.qualified


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("qualify_frequency", -1),
        ("qualify_frequency", float("nan")),
        ("qualify_frequency", float("inf")),
        ("qualify_frequency", "60"),
        ("qualify_frequency", True),
        ("qualify_timeout", 0),
        ("qualify_timeout", -0.5),
        ("qualify_2xx_only", "yes"),
        ("lagged_rtt", 0),
        ("lagged_rtt", 3.0),  # not below qualify_timeout: could never trigger
        ("fail_threshold", 0),
        ("fail_threshold", 1.5),
        ("fail_threshold", True),
        ("recover_threshold", 0),
        ("unreachable_frequency", 0),
        ("expect_codes", ()),
        ("expect_codes", ((200,),)),
        ("expect_codes", ((300, 200),)),
        ("expect_codes", ((100, 199),)),
        ("expect_codes", ((200, 700),)),
        ("expect_codes", (("200", 299),)),
        ("expect_codes", 200),
    ],
)
def test_bad_settings_name_the_field(field: str, value: object) -> None:
    with pytest.raises(ConfigError) as err:
        QualifySettings(**{field: value})  # type: ignore[arg-type]
    assert err.value.where == field


def test_settings_are_normalised() -> None:
    codes: Any = [[200, 299], (404, 404)]  # as a TOML loader hands it over
    s = QualifySettings(qualify_frequency=30, qualify_timeout=2, expect_codes=codes)
    assert s.qualify_frequency == 30.0
    assert isinstance(s.qualify_frequency, float)
    assert s.expect_codes == ((200, 299), (404, 404))
    hash(s)  # frozen and hashable: usable as a group's shared settings


def test_which_codes_prove_alive() -> None:
    anything = QualifySettings()
    assert all(anything.accepts(c) for c in (200, 404, 401, 407, 503, 699))
    only2xx = QualifySettings(qualify_2xx_only=True)
    assert [only2xx.accepts(c) for c in (200, 299, 300, 404, 503)] == [
        True,
        True,
        False,
        False,
        False,
    ]
    explicit = QualifySettings(qualify_2xx_only=True, expect_codes=((200, 200), (404, 404)))
    assert [explicit.accepts(c) for c in (200, 202, 404, 503)] == [True, False, True, False]


def test_a_synthetic_408_is_never_alive_even_if_expected() -> None:
    s = QualifySettings(expect_codes=((408, 408),))
    assert not s.alive(TIMEOUT)
    assert s.alive(ProbeOutcome(408, rtt=0.1))  # a real 408 from the peer


def test_interval_is_faster_while_unreachable() -> None:
    s = QualifySettings(qualify_frequency=60, unreachable_frequency=10)
    assert [s.interval(st) for st in (U, R, L, X)] == [60.0, 60.0, 60.0, 10.0]
    assert QualifySettings(qualify_frequency=60).interval(X) == 60.0
    assert QualifySettings(qualify_frequency=0).interval(N) == 0.0


# --- outcomes -------------------------------------------------------------------------


def test_outcome_from_a_transaction_result() -> None:
    ok = TransactionResult(200, "OK", Cause.RESPONSE, None, 10.0, 10.3, 1, 0.3, 0.1)
    assert ProbeOutcome.from_result(ok) == ProbeOutcome(200, Cause.RESPONSE, 0.3, "OK", None)
    lost = TransactionResult(408, "Request Timeout", Cause.TIMEOUT, None, 0.0, 3.0, 6, None, None)
    assert ProbeOutcome.from_result(lost) == ProbeOutcome(
        408, Cause.TIMEOUT, None, "Request Timeout"
    )
    assert ProbeOutcome.from_result(lost).describe() == "timeout"
    assert BUSY.describe() == "code 503" == TransitionCause.code(503)
    assert REFUSED.describe() == "transport-error"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"status": 180},
        {"status": 700},
        {"status": 200, "rtt": -0.1},
        {"status": 200, "rtt": float("inf")},
    ],
)
def test_bad_outcomes_are_caller_errors(kwargs: dict[str, Any]) -> None:
    with pytest.raises(LocalProtocolError):
        ProbeOutcome(**kwargs)


# --- from UNKNOWN: the first result decides -------------------------------------------


@pytest.mark.parametrize(
    ("outcome", "to", "cause", "rtt"),
    [
        (OK, R, "code 200", 0.05),
        (SLOW, L, "rtt", 0.5),
        (TIMEOUT, X, "timeout", None),
        (REFUSED, X, "transport-error", None),
        (ProbeOutcome(404, rtt=0.01), R, "code 404", 0.01),
    ],
)
def test_first_result_decides_at_once_whatever_the_thresholds(
    outcome: ProbeOutcome, to: QualifyState, cause: str, rtt: float | None
) -> None:
    peer = machine(fail_threshold=3, recover_threshold=3, lagged_rtt=0.2)
    assert peer.state is U
    assert peer.since is None
    assert peer.on_result(outcome, 7.0) == Transition(7.0, U, to, cause, rtt)
    assert peer.state is to
    assert peer.since == 7.0


def test_503_under_qualify_2xx_only_is_down_and_otherwise_up() -> None:
    strict = machine(qualify_2xx_only=True)
    assert strict.on_result(BUSY, 1.0) == Transition(1.0, U, X, "code 503", 0.04)
    lenient = machine()
    assert lenient.on_result(BUSY, 1.0) == Transition(1.0, U, R, "code 503", 0.04)
    assert lenient.on_result(OK, 2.0) is None


# --- hysteresis -----------------------------------------------------------------------


def test_reachable_goes_down_only_after_fail_threshold_consecutive_failures() -> None:
    peer = machine(fail_threshold=3)
    feed(peer, OK)
    flapping = [TIMEOUT, TIMEOUT, OK, TIMEOUT, REFUSED, OK, TIMEOUT, TIMEOUT, OK] * 3
    assert feed(peer, *flapping, start=1.0) == []
    assert peer.state is R
    assert feed(peer, TIMEOUT, TIMEOUT, start=100.0) == []
    assert peer.on_result(REFUSED, 102.0) == Transition(102.0, R, X, "transport-error", None)
    assert peer.since == 102.0


def test_unreachable_recovers_only_after_recover_threshold_consecutive_successes() -> None:
    peer = machine(recover_threshold=2, qualify_2xx_only=True)
    feed(peer, TIMEOUT)
    assert peer.state is X
    assert feed(peer, OK, TIMEOUT, OK, BUSY, OK, REFUSED, start=1.0) == []
    assert peer.state is X
    assert peer.on_result(OK, 10.0) is None
    assert peer.on_result(OK, 11.0) == Transition(11.0, X, R, "recovered", 0.05)


def test_thresholds_of_one_follow_every_result() -> None:
    peer = machine()
    transitions = feed(peer, OK, TIMEOUT, OK, OK, BUSY, REFUSED, OK)
    assert [(t.at, t.from_state, t.to_state, t.cause) for t in transitions] == [
        (0.0, U, R, "code 200"),
        (1.0, R, X, "timeout"),
        (2.0, X, R, "recovered"),
        (5.0, R, X, "transport-error"),
        (6.0, X, R, "recovered"),
    ]


def test_lagged_by_rtt_with_hysteresis_both_ways() -> None:
    peer = machine(lagged_rtt=0.2, fail_threshold=2, recover_threshold=2)
    feed(peer, OK)
    assert feed(peer, SLOW, OK, SLOW, OK, SLOW, start=1.0) == []
    assert peer.on_result(SLOW, 6.0) == Transition(6.0, R, L, "rtt", 0.5)
    assert peer.up
    assert feed(peer, OK, SLOW, OK, start=7.0) == []
    assert peer.on_result(OK, 10.0) == Transition(10.0, L, R, "rtt", 0.05)


def test_rtt_exactly_at_lagged_rtt_is_not_lagged() -> None:
    peer = machine(lagged_rtt=0.2)
    assert peer.on_result(ProbeOutcome(200, rtt=0.2), 0.0) == Transition(0.0, U, R, "code 200", 0.2)
    assert peer.on_result(ProbeOutcome(200, rtt=0.2001), 1.0) == Transition(
        1.0, R, L, "rtt", 0.2001
    )
    assert peer.on_result(ProbeOutcome(200), 2.0) == Transition(2.0, L, R, "rtt", None)


def test_slow_then_failing_degrades_to_lagged_then_unreachable() -> None:
    peer = machine(lagged_rtt=0.2, fail_threshold=2, recover_threshold=2)
    feed(peer, OK)
    assert peer.on_result(SLOW, 1.0) is None
    # Slow then failed: no two failures yet, but no longer fast either.
    assert peer.on_result(TIMEOUT, 2.0) == Transition(2.0, R, L, "timeout", None)
    assert peer.on_result(BUSY, 3.0) is None  # 503 is alive without qualify_2xx_only
    assert peer.on_result(TIMEOUT, 4.0) is None
    assert peer.on_result(TIMEOUT, 5.0) == Transition(5.0, L, X, "timeout", None)


def test_recovery_through_a_slow_answer_lands_on_lagged() -> None:
    peer = machine(lagged_rtt=0.2, recover_threshold=3)
    feed(peer, TIMEOUT)
    assert feed(peer, OK, SLOW, start=1.0) == []
    assert peer.on_result(OK, 3.0) == Transition(3.0, X, L, "recovered", 0.05)
    assert peer.on_result(OK, 4.0) is None  # fast streak is 2 after the slow one
    assert peer.on_result(OK, 5.0) == Transition(5.0, L, R, "rtt", 0.05)


def test_without_lagged_rtt_there_is_no_lagged_state() -> None:
    peer = machine()
    feed(peer, OK, ProbeOutcome(200, rtt=2.9), ProbeOutcome(200, rtt=0.001))
    assert peer.state is R


# --- forced, settings, counters -------------------------------------------------------


def test_force_unreachable_skips_the_thresholds_and_recovery_needs_them() -> None:
    peer = machine(fail_threshold=5, recover_threshold=2)
    feed(peer, OK, OK)
    assert peer.force_unreachable(20.0) == Transition(20.0, R, X, "flow-failed", None)
    assert peer.force_unreachable(21.0, "pong-timeout") is None  # already there
    assert peer.counters.probes == 2  # not a probe
    assert peer.on_result(OK, 22.0) is None  # the streak before the failure does not count
    assert peer.on_result(OK, 23.0) == Transition(23.0, X, R, "recovered", 0.05)
    assert PeerState(QualifySettings(qualify_frequency=0)).force_unreachable(1.0) is None
    fresh = machine()
    assert fresh.force_unreachable(1.0, "pong-timeout") == Transition(1.0, U, X, "pong-timeout")


def test_nonqualified_ignores_results_and_follows_reloads() -> None:
    peer = machine(qualify_frequency=0)
    assert peer.state is N
    assert not peer.up
    assert peer.on_result(OK, 1.0) is None
    assert peer.counters == QualifyCounters()
    assert peer.next_interval() == 0.0
    assert peer.update_settings(QualifySettings(qualify_frequency=30), 5.0) == Transition(
        5.0, N, U, "config"
    )
    assert peer.next_interval() == 30.0
    assert peer.on_result(OK, 6.0) == Transition(6.0, U, R, "code 200", 0.05)
    assert peer.update_settings(QualifySettings(qualify_frequency=15), 7.0) is None
    assert peer.next_interval() == 15.0
    assert peer.update_settings(QualifySettings(qualify_frequency=0), 8.0) == Transition(
        8.0, R, N, "config"
    )
    assert peer.update_settings(QualifySettings(qualify_frequency=0), 9.0) is None


def test_reloaded_thresholds_apply_to_the_running_streak() -> None:
    peer = machine(fail_threshold=5)
    feed(peer, OK, TIMEOUT, TIMEOUT)
    assert peer.state is R
    assert peer.update_settings(QualifySettings(fail_threshold=3), 10.0) is None
    assert peer.on_result(TIMEOUT, 11.0) == Transition(11.0, R, X, "timeout", None)


def test_counters() -> None:
    peer = machine(fail_threshold=9, qualify_2xx_only=True)
    feed(peer, OK, TIMEOUT, REFUSED, BUSY, ProbeOutcome(500, "resolve-error"), OK, OK)
    assert peer.counters == QualifyCounters(
        probes=7,
        successes=3,
        failures=4,
        timeouts=1,
        transport_errors=2,
        rejected=1,
        consecutive_successes=2,
        consecutive_failures=0,
    )
    feed(peer, TIMEOUT, TIMEOUT, start=10.0)
    assert (peer.counters.consecutive_successes, peer.counters.consecutive_failures) == (0, 2)


def test_restore_after_restart() -> None:
    kept = QualifyCounters(probes=10, successes=4, failures=6, timeouts=6, consecutive_failures=6)
    s = QualifySettings(recover_threshold=2)
    peer = PeerState(s, state=X, since=100.0, counters=kept)
    assert (peer.state, peer.since) == (X, 100.0)
    # Totals come back, streaks start again.
    assert peer.counters == QualifyCounters(probes=10, successes=4, failures=6, timeouts=6)
    assert peer.on_result(OK, 200.0) is None
    assert peer.on_result(OK, 201.0) == Transition(201.0, X, R, "recovered", 0.05)
    # The settings win over a restored state that no longer fits them.
    assert PeerState(s, state=N).state is U
    assert PeerState(QualifySettings(qualify_frequency=0), state=R).state is N


# --- properties -----------------------------------------------------------------------

OUTCOMES = st.sampled_from([OK, SLOW, TIMEOUT, REFUSED, BUSY])


@settings(max_examples=300, deadline=None)
@given(
    st.lists(OUTCOMES, max_size=60),
    st.integers(1, 4),
    st.integers(1, 4),
    st.booleans(),
)
def test_transitions_happen_only_through_the_thresholds(
    outcomes: list[ProbeOutcome], fail: int, recover: int, strict: bool
) -> None:
    s = QualifySettings(
        lagged_rtt=0.2, fail_threshold=fail, recover_threshold=recover, qualify_2xx_only=strict
    )
    peer = PeerState(s)
    rank = {X: 0, L: 1, R: 2}

    def verdict(o: ProbeOutcome) -> int:
        if not s.alive(o):
            return 0
        return 1 if o.rtt is not None and o.rtt > 0.2 else 2

    seen: list[int] = []
    for i, outcome in enumerate(outcomes):
        before = peer.state
        t = peer.on_result(outcome, float(i))
        seen.append(verdict(outcome))
        if before is U:
            assert t is not None
            assert rank[t.to_state] == seen[-1]
            continue
        down, up = seen[-fail:], seen[-recover:]
        if len(down) == fail and max(down) < rank[before]:
            assert t is not None
            assert rank[t.to_state] == max(down)
        elif len(up) == recover and min(up) > rank[before]:
            assert t is not None
            assert rank[t.to_state] == min(up)
        else:
            assert t is None
        if t is not None:
            assert (t.from_state, t.to_state, t.at) == (before, peer.state, float(i))
            if t.to_state is X:
                assert seen[-fail:] == [0] * fail
            if before is X:
                assert t.cause == TransitionCause.RECOVERED
                assert 0 not in seen[-recover:]
