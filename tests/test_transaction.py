"""RFC 3261 §17.1.2 non-INVITE client transaction, stepped through virtual time."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sipalive.errors import ConfigError, LocalProtocolError
from sipalive.sip.transaction import (
    Cause,
    ClientTransaction,
    Completed,
    Event,
    Provisional,
    Terminated,
    TimerConfig,
    TransactionState,
    Transmit,
)
from sipfactory import options, response_to


def run_silent(txn: ClientTransaction, start: float = 100.0) -> tuple[list[float], float]:
    """Drive a transaction that never gets an answer; return send instants and the end."""
    sends: list[float] = []
    events: list[Event] = txn.start(start)
    now = start
    for _ in range(1000):
        for ev in events:
            if isinstance(ev, Transmit):
                sends.append(round(now - start, 9))
            if isinstance(ev, Completed):
                assert ev.result.status == 408
                assert ev.result.cause == Cause.TIMEOUT
                return sends, round(now - start, 9)
        when = txn.get_timer()
        assert when is not None
        assert when > now
        now = when
        events = txn.handle_timer(now)
    raise AssertionError("transaction never ended")


def test_rfc_defaults_udp() -> None:
    txn = ClientTransaction(options(), reliable=False, timers=TimerConfig())
    sends, end = run_silent(txn)
    # Timer E: 0.5, 1, 2, 4, then T2=4 each time; Timer F = 64*T1 = 32 s
    assert sends == [0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert end == 32.0
    assert txn.state == TransactionState.TERMINATED


def test_retransmit_cap_gives_up_when_next_is_due() -> None:
    timers = TimerConfig(t1=0.1, retransmits=3)
    txn = ClientTransaction(options(), reliable=False, timers=timers)
    sends, end = run_silent(txn)
    assert sends == [0, 0.1, 0.3, 0.7]
    assert end == 1.5
    assert timers.send_offsets() == pytest.approx(sends)
    assert timers.give_up_after() == 1.5
    assert txn.result is not None
    assert txn.result.retransmits == 3


def test_fast_fail_schedule_of_the_benchmark() -> None:
    sends, end = run_silent(
        ClientTransaction(options(), reliable=False, timers=TimerConfig(t1=0.1, retransmits=2))
    )
    assert (sends, end) == ([0, 0.1, 0.3], 0.7)


def test_timeout_cuts_the_schedule_short() -> None:
    timers = TimerConfig(t1=0.1, retransmits=3, timeout=0.5)
    sends, end = run_silent(ClientTransaction(options(), reliable=False, timers=timers))
    assert sends == [0, 0.1, 0.3]
    assert end == 0.5


def test_reliable_transport_sends_once_with_the_same_deadline() -> None:
    timers = TimerConfig(t1=0.1, retransmits=3)
    sends, end = run_silent(
        ClientTransaction(options("z9hG4bKtcp", "TCP"), reliable=True, timers=timers)
    )
    assert sends == [0]
    assert end == 1.5
    sends, end = run_silent(ClientTransaction(options(), reliable=True, timers=TimerConfig()))
    assert (sends, end) == ([0], 32.0)


def test_t2_caps_the_interval() -> None:
    timers = TimerConfig(t1=1.0, t2=2.0, timeout=10.0)
    sends, end = run_silent(ClientTransaction(options(), reliable=False, timers=timers))
    assert sends == [0, 1, 3, 5, 7, 9]
    assert end == 10.0


def test_final_response_then_timer_k_udp() -> None:
    req = options()
    txn = ClientTransaction(req, reliable=False, timers=TimerConfig())
    txn.start(10.0)
    txn.handle_timer(10.5)  # one retransmission at 10.5
    events = txn.receive_response(response_to(req), 10.7)
    (done,) = [e for e in events if isinstance(e, Completed)]
    assert done.result.status == 200
    assert done.result.rtt_first == pytest.approx(0.7)
    assert done.result.rtt_last == pytest.approx(0.2)
    assert done.result.retransmits == 1
    assert txn.state == TransactionState.COMPLETED
    assert txn.get_timer() == pytest.approx(15.7)  # Timer K = T4
    assert txn.receive_response(response_to(req), 11.0) == []  # absorbed
    assert txn.handle_timer(15.7) == [Terminated()]
    assert txn.get_timer() is None


def test_timer_k_is_zero_on_reliable_transports() -> None:
    req = options("z9hG4bKtcp2", "TCP")
    txn = ClientTransaction(req, reliable=True, timers=TimerConfig())
    txn.start(0.0)
    events = txn.receive_response(response_to(req), 0.01)
    assert isinstance(events[-1], Terminated)
    assert txn.state == TransactionState.TERMINATED


def test_provisional_moves_to_proceeding_and_retransmits_every_t2() -> None:
    req = options()
    txn = ClientTransaction(req, reliable=False, timers=TimerConfig(t1=0.5, t2=4.0))
    txn.start(0.0)
    assert txn.handle_timer(0.5) == [Transmit(txn.data, 1)]
    events = txn.receive_response(response_to(req, 100, "Trying"), 0.6)
    assert isinstance(events[0], Provisional)
    assert txn.state == TransactionState.PROCEEDING
    assert txn.get_timer() == pytest.approx(4.5)  # last send 0.5 + T2
    assert txn.handle_timer(4.5) == [Transmit(txn.data, 2)]
    assert txn.get_timer() == pytest.approx(8.5)
    done = txn.receive_response(response_to(req), 5.0)
    assert isinstance(done[0], Completed)
    assert done[0].result.provisional_rtt == pytest.approx(0.6)


def test_transport_error_is_a_503_at_once() -> None:
    txn = ClientTransaction(options(), reliable=False, timers=TimerConfig())
    txn.start(0.0)
    events = txn.transport_error(0.002, "ICMP port unreachable")
    (done,) = [e for e in events if isinstance(e, Completed)]
    assert (done.result.status, done.result.cause) == (503, Cause.TRANSPORT_ERROR)
    assert done.result.error == "ICMP port unreachable"
    assert done.result.duration == pytest.approx(0.002)
    assert txn.transport_error(0.003, "again") == []


def test_matching_is_by_branch_and_method() -> None:
    req = options("z9hG4bKaaa")
    txn = ClientTransaction(req, reliable=False, timers=TimerConfig())
    assert txn.matches(response_to(req))
    assert not txn.matches(response_to(options("z9hG4bKbbb")))
    with pytest.raises(LocalProtocolError):
        txn.receive_response(response_to(options("z9hG4bKbbb")), 1.0)


def test_late_timer_does_not_burst() -> None:
    txn = ClientTransaction(options(), reliable=False, timers=TimerConfig(t1=0.1))
    txn.start(0.0)
    events = txn.handle_timer(0.35)  # the loop stalled past two Timer E instants
    assert [e for e in events if isinstance(e, Transmit)] == [Transmit(txn.data, 1)]
    when = txn.get_timer()
    assert when is not None
    assert when >= 0.35


@pytest.mark.parametrize(
    ("field", "value"),
    [("t1", 0.0), ("t2", -1.0), ("t4", 0.0), ("timeout", 0.0), ("retransmits", -1)],
)
def test_bad_timer_config_names_the_field(field: str, value: float) -> None:
    with pytest.raises(ConfigError) as info:
        TimerConfig(**{field: value})  # type: ignore[arg-type]
    assert info.value.where == field


@given(
    t1=st.floats(0.01, 2.0),
    t2=st.floats(2.0, 8.0),
    retransmits=st.one_of(st.none(), st.integers(0, 12)),
    reliable=st.booleans(),
)
def test_schedule_matches_the_config(
    t1: float, t2: float, retransmits: int | None, reliable: bool
) -> None:
    timers = TimerConfig(t1=t1, t2=t2, retransmits=retransmits)
    sends, end = run_silent(ClientTransaction(options(), reliable=reliable, timers=timers))
    assert end == pytest.approx(timers.give_up_after(), abs=1e-6)
    expected = [0.0] if reliable else timers.send_offsets()
    assert sends == pytest.approx(expected, abs=1e-6)
    assert end <= timers.timer_f + 1e-6
    if retransmits is not None and not reliable:
        assert len(sends) <= retransmits + 1
