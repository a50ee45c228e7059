"""Keep-alive machines stepped through virtual time by hand: no sleeps, no clock."""

from __future__ import annotations

import ast
import math
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sipalive.errors import ConfigError, LocalProtocolError
from sipalive.keepalive import (
    CrlfPinger,
    CrlfState,
    FlowFailed,
    MappedAddress,
    MappedAddressChanged,
    PongReceived,
    SendPing,
    SendStun,
    StunErrorResponse,
    StunKeepalive,
    StunKeepaliveEvent,
    StunKeepaliveState,
    TcpKeepaliveOptions,
    UdpCrlfKeepalive,
    jittered,
)
from sipalive.stun import (
    BINDING,
    MAPPED_ADDRESS,
    XOR_MAPPED_ADDRESS,
    StunClass,
    binding_error,
    binding_request,
    binding_success,
    encode,
    encode_address,
    encode_xor_address,
    parse,
)

SRC = Path(__file__).resolve().parents[1] / "src" / "sipalive"
FORBIDDEN = {"asyncio", "socket", "time", "random", "select", "ssl", "threading"}
PUBLIC = ("203.0.113.5", 40000)
REBOUND = ("203.0.113.5", 40001)


def half() -> float:
    """rand() pinned at 0.5: every jittered interval is exactly 90% of the interval."""
    return 0.5


def sequence(*values: float) -> Callable[[], float]:
    it = iter(values)
    return lambda: next(it)


def counter_ids() -> Callable[[int], bytes]:
    """Transaction IDs 0x01.., 0x02.., ... so each transaction is recognisable."""
    counter: Iterator[int] = iter(range(1, 256))
    return lambda n: bytes([next(counter)]) * n


def only(events: list[StunKeepaliveEvent]) -> SendStun:
    assert len(events) == 1
    assert isinstance(events[0], SendStun)
    return events[0]


# The purity rule (STYLE.md): stun/ and keepalive/ never touch the OS.


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


PURE_MODULES = sorted([*(SRC / "stun").glob("*.py"), *(SRC / "keepalive").glob("*.py")])


@pytest.mark.parametrize("path", PURE_MODULES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_pure_modules_import_nothing_impure(path: Path) -> None:
    imported = _imports(path)
    assert {name.split(".")[0] for name in imported} & FORBIDDEN == set()
    # Layering: stun and keepalive sit below qualify and io.
    ours = {name for name in imported if name.split(".")[0] == "sipalive"}
    allowed = ("sipalive.errors", "sipalive.stun", "sipalive.keepalive")
    assert all(name.startswith(allowed) for name in ours), ours
    if path.parent.name == "stun":
        assert not any(name.startswith("sipalive.keepalive") for name in ours)


def test_pure_module_list_is_not_empty() -> None:
    names = {p.name for p in PURE_MODULES}
    assert {"codec.py", "crlf.py", "stun.py", "tcp.py"} <= names


# Jitter (RFC 5626 §4.4: 80% to 100% of the interval)


@given(interval=st.floats(0.001, 1e6), r=st.floats(0.0, 1.0))
def test_jitter_stays_between_80_and_100_percent(interval: float, r: float) -> None:
    delay = jittered(interval, lambda: r)
    assert interval * 0.8 <= delay <= interval * 1.0000001


@pytest.mark.parametrize("bad", [-0.1, 1.5, math.nan])
def test_jitter_refuses_a_broken_rand(bad: float) -> None:
    with pytest.raises(LocalProtocolError):
        jittered(10.0, lambda: bad)


# CRLF ping/pong over a stream (RFC 5626 §4.4.1)


def test_crlf_ping_instants_with_prompt_pongs() -> None:
    pinger = CrlfPinger(100.0, rand=sequence(0.0, 1.0, 0.5))
    assert pinger.state is CrlfState.STOPPED
    assert pinger.get_timer() is None
    pinger.start(0.0)
    assert pinger.state is CrlfState.IDLE
    assert pinger.get_timer() == 80.0
    assert pinger.handle_timer(79.999) == []
    assert pinger.handle_timer(80.0) == [SendPing(b"\r\n\r\n")]
    assert pinger.state is CrlfState.WAITING_PONG
    assert pinger.get_timer() == 90.0  # the pong deadline
    assert pinger.pong_received(80.25) == [PongReceived(0.25)]
    assert pinger.state is CrlfState.IDLE
    # The cadence runs ping to ping, not pong to ping: 80 + 100% of 100.
    assert pinger.get_timer() == 180.0
    assert pinger.handle_timer(180.0) == [SendPing()]
    assert pinger.pong_received(181.0) == [PongReceived(1.0)]
    assert pinger.get_timer() == 270.0


def test_crlf_no_pong_fails_exactly_at_ping_plus_timeout() -> None:
    pinger = CrlfPinger(100.0, rand=half)
    pinger.start(0.0)
    assert pinger.handle_timer(90.0) == [SendPing()]
    assert pinger.handle_timer(99.999) == []
    events = pinger.handle_timer(100.0)
    assert len(events) == 1
    failed = events[0]
    assert isinstance(failed, FlowFailed)
    assert failed.at == 100.0
    assert "pong" in failed.reason
    assert pinger.state is CrlfState.FAILED
    assert pinger.get_timer() is None
    assert pinger.pong_received(101.0) == []  # too late to matter
    assert pinger.handle_timer(1000.0) == []


def test_crlf_custom_pong_timeout() -> None:
    pinger = CrlfPinger(100.0, pong_timeout=2.5, rand=half)
    pinger.start(10.0)
    assert pinger.handle_timer(100.0) == [SendPing()]
    assert pinger.get_timer() == 102.5
    assert pinger.handle_timer(102.5) == [
        FlowFailed("no CRLF pong within 2.5 s of the ping", 102.5)
    ]


def test_crlf_pong_read_by_the_deadline_counts() -> None:
    # The io layer reads before it fires timers; a pong in the same loop turn wins.
    pinger = CrlfPinger(100.0, rand=half)
    pinger.start(0.0)
    pinger.handle_timer(90.0)
    assert pinger.pong_received(100.0) == [PongReceived(10.0)]
    assert pinger.handle_timer(100.0) == []
    assert pinger.get_timer() == 180.0


def test_crlf_unsolicited_pong_is_ignored() -> None:
    pinger = CrlfPinger(100.0, rand=half)
    assert pinger.pong_received(1.0) == []  # not started
    pinger.start(0.0)
    assert pinger.pong_received(5.0) == []
    assert pinger.state is CrlfState.IDLE
    assert pinger.get_timer() == 90.0
    pinger.handle_timer(90.0)
    assert pinger.pong_received(90.5) == [PongReceived(0.5)]
    assert pinger.pong_received(90.6) == []  # a second CRLF for the same ping


def test_crlf_no_second_ping_while_one_is_outstanding() -> None:
    # Interval shorter than the pong timeout: the next ping waits for the pong.
    pinger = CrlfPinger(5.0, rand=half)
    pinger.start(0.0)
    assert pinger.handle_timer(4.5) == [SendPing()]
    assert pinger.get_timer() == 14.5  # pong deadline, not the ping due at 9.0
    assert pinger.handle_timer(9.0) == []
    assert pinger.pong_received(12.0) == [PongReceived(7.5)]
    assert pinger.get_timer() == 9.0  # overdue: goes out on the next turn
    assert pinger.handle_timer(12.0) == [SendPing()]
    assert pinger.get_timer() == 22.0


def test_crlf_set_interval_reschedules_from_now() -> None:
    # A Flow-Timer (RFC 5626 §4.4.1) or Via keep (RFC 6223) value arrives at t=30.
    pinger = CrlfPinger(100.0, rand=half)
    pinger.start(0.0)
    pinger.set_interval(20.0, 30.0)
    assert pinger.interval == 20.0
    assert pinger.get_timer() == 48.0
    assert pinger.handle_timer(48.0) == [SendPing()]
    assert pinger.pong_received(48.5) == [PongReceived(0.5)]
    assert pinger.get_timer() == 66.0
    pinger.set_interval(200.0, 50.0)  # longer: the pending ping moves out too
    assert pinger.get_timer() == 230.0


def test_crlf_set_interval_while_waiting_keeps_the_pong_deadline() -> None:
    pinger = CrlfPinger(100.0, rand=half)
    pinger.start(0.0)
    pinger.handle_timer(90.0)
    pinger.set_interval(50.0, 91.0)
    assert pinger.get_timer() == 100.0
    pinger.pong_received(92.0)
    assert pinger.get_timer() == 136.0


def test_crlf_stop_and_restart() -> None:
    pinger = CrlfPinger(100.0, rand=half)
    pinger.start(0.0)
    pinger.handle_timer(90.0)
    pinger.stop()
    assert pinger.state is CrlfState.STOPPED
    assert pinger.get_timer() is None
    assert pinger.handle_timer(500.0) == []
    assert pinger.pong_received(91.0) == []
    pinger.set_interval(10.0, 600.0)
    assert pinger.get_timer() is None
    pinger.start(1000.0)  # a new flow
    assert pinger.get_timer() == 1009.0


def test_crlf_restart_after_failure() -> None:
    pinger = CrlfPinger(100.0, rand=half)
    pinger.start(0.0)
    pinger.handle_timer(90.0)
    pinger.handle_timer(100.0)
    assert pinger.state is CrlfState.FAILED
    pinger.start(200.0)
    assert pinger.state is CrlfState.IDLE
    assert pinger.get_timer() == 290.0


@pytest.mark.parametrize(
    "make",
    [
        lambda: CrlfPinger(0.0, rand=half),
        lambda: CrlfPinger(-5.0, rand=half),
        lambda: CrlfPinger(math.nan, rand=half),
        lambda: CrlfPinger(math.inf, rand=half),
        lambda: CrlfPinger(30.0, 0.0, rand=half),
        lambda: UdpCrlfKeepalive(0.0, rand=half),
    ],
)
def test_crlf_refuses_bad_arguments(make: Callable[[], object]) -> None:
    with pytest.raises(LocalProtocolError):
        make()


@given(
    interval=st.floats(12.5, 3600.0),
    draws=st.lists(st.floats(0.0, 1.0), min_size=21, max_size=21),
    rtts=st.lists(st.floats(0.0, 9.99), min_size=20, max_size=20),
)
def test_crlf_pings_stay_80_to_100_percent_apart(
    interval: float, draws: list[float], rtts: list[float]
) -> None:
    # With 80% of the interval above the pong timeout, every pong lands before the next
    # ping is due, so the pings are exactly one jittered interval apart.
    rand_values = iter(draws)
    pinger = CrlfPinger(interval, rand=lambda: next(rand_values))
    pinger.start(0.0)
    previous = 0.0
    for rtt in rtts:
        due = pinger.get_timer()
        assert due is not None
        slack = 1e-9 * due  # absolute instants lose a few ulps when subtracted
        assert interval * 0.8 - slack <= due - previous <= interval + slack
        assert pinger.handle_timer(due) == [SendPing()]
        [pong] = pinger.pong_received(due + rtt)
        assert pong == PongReceived(pytest.approx(rtt, abs=slack))
        previous = due


def test_crlf_set_interval_refuses_zero() -> None:
    with pytest.raises(LocalProtocolError):
        CrlfPinger(30.0, rand=half).set_interval(0.0, 1.0)


# CRLF over UDP: sent on schedule, nothing expected back


def test_udp_crlf_sends_on_schedule() -> None:
    keepalive = UdpCrlfKeepalive(25.0, rand=sequence(0.0, 1.0, 0.5, 0.5, 0.5))
    assert not keepalive.running
    assert keepalive.get_timer() is None
    assert keepalive.handle_timer(100.0) == []
    keepalive.start(0.0)
    assert keepalive.running
    instants = []
    for _ in range(3):
        deadline = keepalive.get_timer()
        assert deadline is not None
        assert keepalive.handle_timer(deadline - 0.001) == []
        assert keepalive.handle_timer(deadline) == [SendPing(b"\r\n\r\n")]
        instants.append(deadline)
    assert instants == [20.0, 45.0, 67.5]
    keepalive.set_interval(10.0, 70.0)
    assert keepalive.interval == 10.0
    assert keepalive.get_timer() == 79.0
    keepalive.stop()
    assert keepalive.get_timer() is None
    keepalive.set_interval(20.0, 80.0)
    assert keepalive.get_timer() is None


# STUN keep-alive over UDP (RFC 5626 §4.4.2, RFC 5389 §7.2.1)


def run_until_failure(keepalive: StunKeepalive) -> tuple[list[float], FlowFailed]:
    """Fire every timer, answering nothing; return the send instants and the failure."""
    sent: list[float] = []
    while (deadline := keepalive.get_timer()) is not None:
        assert keepalive.handle_timer(deadline - 1e-6) == []
        events = keepalive.handle_timer(deadline)
        assert len(events) == 1
        if isinstance(events[0], FlowFailed):
            return sent, events[0]
        assert isinstance(events[0], SendStun)
        sent.append(deadline)
    raise AssertionError("no FlowFailed")


def test_stun_retransmission_instants_and_give_up() -> None:
    keepalive = StunKeepalive(30.0, rand=half, rand_bytes=counter_ids())
    keepalive.start(0.0)
    assert keepalive.get_timer() == 0.0
    sent, failed = run_until_failure(keepalive)
    assert sent == [0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert failed.at == 39.5  # 31.5 + Rm (16) x RTO (0.5)
    assert failed.reason == "no STUN response to 7 Binding requests"
    assert keepalive.state is StunKeepaliveState.FAILED
    assert keepalive.get_timer() is None


def test_stun_retransmissions_repeat_the_same_request() -> None:
    keepalive = StunKeepalive(30.0, rand=half, rand_bytes=counter_ids(), software="sipalive")
    keepalive.start(0.0)
    first = only(keepalive.handle_timer(0.0))
    again = only(keepalive.handle_timer(0.5))
    assert again == first
    assert first.transaction_id == b"\x01" * 12
    request = parse(first.data)
    assert (request.msg_class, request.method) == (StunClass.REQUEST, BINDING)
    assert request.transaction_id == first.transaction_id
    assert request.software == "sipalive"
    assert request.fingerprint_ok


@pytest.mark.parametrize(
    ("kwargs", "instants", "give_up"),
    [
        ({"rto_cap": 2.0}, [0.0, 0.5, 1.5, 3.5, 5.5, 7.5, 9.5], 17.5),
        ({"max_transmissions": 3, "rm": 4}, [0.0, 0.5, 1.5], 3.5),
        ({"rto": 1.0, "max_transmissions": 1}, [0.0], 16.0),
    ],
)
def test_stun_retransmission_knobs(
    kwargs: dict[str, float], instants: list[float], give_up: float
) -> None:
    keepalive = StunKeepalive(
        30.0,
        rand=half,
        rand_bytes=counter_ids(),
        rto=kwargs.get("rto", 0.5),
        max_transmissions=int(kwargs.get("max_transmissions", 7)),
        rto_cap=kwargs.get("rto_cap"),
        rm=int(kwargs.get("rm", 16)),
    )
    keepalive.start(0.0)
    sent, failed = run_until_failure(keepalive)
    assert sent == instants
    assert failed.at == give_up


def test_stun_success_reports_the_mapping_and_rtt() -> None:
    keepalive = StunKeepalive(30.0, rand=half, rand_bytes=counter_ids())
    keepalive.start(0.0)
    request = only(keepalive.handle_timer(0.0))
    events = keepalive.response_received(binding_success(request.transaction_id, PUBLIC), 0.125)
    assert events == [MappedAddress(PUBLIC, 0.125)]
    assert keepalive.mapped_address == PUBLIC
    assert keepalive.state is StunKeepaliveState.IDLE
    assert keepalive.get_timer() == 27.0  # 90% of 30 after the request went out
    # The same mapping next time: just the report.
    second = only(keepalive.handle_timer(27.0))
    assert second.transaction_id == b"\x02" * 12
    reply = parse(binding_success(second.transaction_id, PUBLIC))  # a parsed message works too
    assert keepalive.response_received(reply, 27.5) == [MappedAddress(PUBLIC, 0.5)]
    assert keepalive.get_timer() == 54.0


def test_stun_no_rtt_sample_after_a_retransmission() -> None:
    # Karn's rule: the retransmission reuses the transaction ID, so the answer is ambiguous.
    keepalive = StunKeepalive(30.0, rand=half, rand_bytes=counter_ids())
    keepalive.start(0.0)
    request = only(keepalive.handle_timer(0.0))
    only(keepalive.handle_timer(0.5))
    events = keepalive.response_received(binding_success(request.transaction_id, PUBLIC), 0.6)
    assert events == [MappedAddress(PUBLIC, None)]
    assert keepalive.handle_timer(1.5) == []  # no more retransmissions


def test_stun_mapped_address_change_fails_the_flow() -> None:
    keepalive = StunKeepalive(30.0, rand=half, rand_bytes=counter_ids())
    keepalive.start(0.0)
    first = only(keepalive.handle_timer(0.0))
    keepalive.response_received(binding_success(first.transaction_id, PUBLIC), 0.1)
    second = only(keepalive.handle_timer(27.0))
    events = keepalive.response_received(binding_success(second.transaction_id, REBOUND), 27.25)
    assert events[:2] == [
        MappedAddress(REBOUND, 0.25),
        MappedAddressChanged(PUBLIC, REBOUND),
    ]
    assert len(events) == 3
    failed = events[2]
    assert isinstance(failed, FlowFailed)
    assert failed.at == 27.25
    assert "changed" in failed.reason
    assert keepalive.state is StunKeepaliveState.FAILED
    assert keepalive.get_timer() is None
    assert keepalive.mapped_address == REBOUND
    # A new flow starts from a clean slate: its first mapping is not a change.
    keepalive.start(100.0)
    assert keepalive.mapped_address is None
    third = only(keepalive.handle_timer(100.0))
    response = binding_success(third.transaction_id, PUBLIC)
    assert keepalive.response_received(response, 100.125) == [MappedAddress(PUBLIC, 0.125)]


def test_stun_ipv6_mapping_and_mapped_address_fallback() -> None:
    keepalive = StunKeepalive(30.0, rand=half, rand_bytes=counter_ids())
    keepalive.start(0.0)
    request = only(keepalive.handle_timer(0.0))
    v6 = ("2001:db8::5", 5060)
    assert keepalive.response_received(binding_success(request.transaction_id, v6), 0.5) == [
        MappedAddress(v6, 0.5)
    ]
    # A server that predates RFC 5389 sends MAPPED-ADDRESS alone; it still counts.
    second = only(keepalive.handle_timer(27.0))
    legacy = encode(
        StunClass.SUCCESS, BINDING, second.transaction_id, [(MAPPED_ADDRESS, encode_address(v6))]
    )
    assert keepalive.response_received(legacy, 27.25) == [MappedAddress(v6, 0.25)]


def test_stun_ignores_what_does_not_answer_the_transaction() -> None:
    keepalive = StunKeepalive(30.0, rand=half, rand_bytes=counter_ids())
    keepalive.start(0.0)
    assert keepalive.response_received(binding_success(b"\x01" * 12, PUBLIC), 0.0) == []
    request = only(keepalive.handle_timer(0.0))
    tid = request.transaction_id
    xor_public = encode_xor_address(PUBLIC, tid)
    stale = binding_success(b"\x09" * 12, PUBLIC)
    ignored = [
        stale,
        binding_request(tid),  # a request, not a response
        binding_success(tid, PUBLIC)[:-1],  # truncated: ParseError, discarded
        b"SIP/2.0 200 OK\r\n\r\n",
        encode(StunClass.SUCCESS, BINDING, tid),  # success without an address
        encode(StunClass.ERROR, BINDING, tid),  # error without ERROR-CODE
        encode(StunClass.SUCCESS, 0x003, tid, [(XOR_MAPPED_ADDRESS, xor_public)]),  # Allocate
    ]
    for data in ignored:
        assert keepalive.response_received(data, 0.1) == []
    assert keepalive.state is StunKeepaliveState.WAITING_RESPONSE
    assert keepalive.get_timer() == 0.5


def test_stun_error_response_ends_the_transaction_but_not_the_flow() -> None:
    keepalive = StunKeepalive(30.0, rand=half, rand_bytes=counter_ids())
    keepalive.start(0.0)
    request = only(keepalive.handle_timer(0.0))
    response = binding_error(request.transaction_id, 420, "Unknown Attribute")
    events = keepalive.response_received(response, 0.2)
    assert events == [StunErrorResponse(420, "Unknown Attribute")]
    assert keepalive.state is StunKeepaliveState.IDLE
    assert keepalive.get_timer() == 27.0


def test_stun_transaction_longer_than_the_interval() -> None:
    # Interval 10 s (9 s jittered) but the answer takes 16 s: the next request goes out as
    # soon as the transaction ends, never two at once.
    keepalive = StunKeepalive(10.0, rand=half, rand_bytes=counter_ids())
    keepalive.start(0.0)
    request = only(keepalive.handle_timer(0.0))
    for instant in (0.5, 1.5, 3.5, 7.5, 15.5):
        assert only(keepalive.handle_timer(instant)) == request
    answer = binding_success(request.transaction_id, PUBLIC)
    assert keepalive.response_received(answer, 16.0) == [MappedAddress(PUBLIC, None)]
    assert keepalive.get_timer() == 9.0
    nxt = only(keepalive.handle_timer(16.0))
    assert nxt.transaction_id != request.transaction_id
    assert keepalive.get_timer() == 16.5


def test_stun_set_interval() -> None:
    keepalive = StunKeepalive(30.0, rand=half, rand_bytes=counter_ids())
    keepalive.start(0.0)
    request = only(keepalive.handle_timer(0.0))
    keepalive.response_received(binding_success(request.transaction_id, PUBLIC), 0.1)
    assert keepalive.get_timer() == 27.0
    keepalive.set_interval(10.0, 5.0)
    assert keepalive.interval == 10.0
    assert keepalive.get_timer() == 14.0
    only(keepalive.handle_timer(14.0))
    keepalive.set_interval(20.0, 14.2)  # mid-transaction: retransmission timer untouched
    assert keepalive.get_timer() == 14.5


def test_stun_stop_ignores_everything_after() -> None:
    keepalive = StunKeepalive(30.0, rand=half, rand_bytes=counter_ids())
    keepalive.start(0.0)
    request = only(keepalive.handle_timer(0.0))
    keepalive.stop()
    assert keepalive.state is StunKeepaliveState.STOPPED
    assert keepalive.get_timer() is None
    assert keepalive.handle_timer(0.5) == []
    assert keepalive.response_received(binding_success(request.transaction_id, PUBLIC), 0.2) == []
    keepalive.set_interval(5.0, 1.0)
    assert keepalive.get_timer() is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"interval": 0.0},
        {"rto": 0.0},
        {"max_transmissions": 0},
        {"rto_cap": 0.25},
        {"rm": 0},
    ],
)
def test_stun_refuses_bad_arguments(kwargs: dict[str, float]) -> None:
    args: dict[str, float] = {"interval": 30.0, **kwargs}
    with pytest.raises(LocalProtocolError):
        StunKeepalive(
            args["interval"],
            rand=half,
            rand_bytes=counter_ids(),
            rto=args.get("rto", 0.5),
            max_transmissions=int(args.get("max_transmissions", 7)),
            rto_cap=args.get("rto_cap"),
            rm=int(args.get("rm", 16)),
        )


def test_stun_refuses_a_short_transaction_id() -> None:
    keepalive = StunKeepalive(30.0, rand=half, rand_bytes=lambda n: b"\x00" * (n - 1))
    keepalive.start(0.0)
    with pytest.raises(LocalProtocolError):
        keepalive.handle_timer(0.0)


# Kernel TCP keep-alive options


def test_tcp_sockopts_enabled() -> None:
    options = TcpKeepaliveOptions(True, idle_time=10, interval_time=5, probe_count=3)
    assert options.sockopts() == [
        ("SOL_SOCKET", "SO_KEEPALIVE", 1),
        ("IPPROTO_TCP", "TCP_KEEPIDLE", 10),
        ("IPPROTO_TCP", "TCP_KEEPINTVL", 5),
        ("IPPROTO_TCP", "TCP_KEEPCNT", 3),
    ]
    assert options.detection_bound() == 25.0


def test_tcp_sockopts_with_user_timeout() -> None:
    options = TcpKeepaliveOptions(True, 10, 5, 3, user_timeout_ms=30000)
    assert options.sockopts()[-1] == ("IPPROTO_TCP", "TCP_USER_TIMEOUT", 30000)
    assert len(options.sockopts()) == 5


def test_tcp_sockopts_disabled() -> None:
    options = TcpKeepaliveOptions(False, 7200, 75, 9)
    assert options.sockopts() == [("SOL_SOCKET", "SO_KEEPALIVE", 0)]
    assert options.detection_bound() == math.inf
    with_timeout = TcpKeepaliveOptions(False, 7200, 75, 9, user_timeout_ms=5000)
    assert with_timeout.sockopts()[-1] == ("IPPROTO_TCP", "TCP_USER_TIMEOUT", 5000)


@pytest.mark.parametrize(
    ("user_timeout_ms", "bound"),
    [
        (None, 25.0),  # idle + interval x count
        (0, 25.0),  # 0 is the system default: the probe count rules
        (7000, 15.0),  # before the first probe: dropped at the second tick
        (30000, 30.0),  # beyond the probe count: Linux keeps probing until then
        (21000, 25.0),  # rounds up to the next tick
    ],
)
def test_tcp_detection_bound_under_linux_user_timeout(
    user_timeout_ms: int | None, bound: float
) -> None:
    options = TcpKeepaliveOptions(True, 10, 5, 3, user_timeout_ms=user_timeout_ms)
    assert options.detection_bound() == bound


def test_tcp_asterisk_like_defaults() -> None:
    # Linux's own defaults: 2 hours idle, 75 s apart, 9 probes.
    assert TcpKeepaliveOptions(True, 7200, 75, 9).detection_bound() == 7875.0


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [
        ("enable", {"enable": "yes"}),
        ("idle_time", {"idle_time": 0}),
        ("idle_time", {"idle_time": 32768}),
        ("idle_time", {"idle_time": 10.5}),
        ("idle_time", {"idle_time": True}),
        ("interval_time", {"interval_time": -1}),
        ("probe_count", {"probe_count": 0}),
        ("probe_count", {"probe_count": 128}),
        ("user_timeout_ms", {"user_timeout_ms": -1}),
        ("user_timeout_ms", {"user_timeout_ms": 2**31}),
    ],
)
def test_tcp_validation_names_the_field(field: str, kwargs: dict[str, object]) -> None:
    values: dict[str, object] = {
        "enable": True,
        "idle_time": 10,
        "interval_time": 5,
        "probe_count": 3,
        **kwargs,
    }
    with pytest.raises(ConfigError) as info:
        TcpKeepaliveOptions(**values)  # type: ignore[arg-type]
    assert info.value.where == field


@pytest.mark.skipif(sys.platform != "linux", reason="option names as Linux spells them")
def test_tcp_option_names_exist_in_the_socket_module() -> None:
    options = TcpKeepaliveOptions(True, 10, 5, 3, user_timeout_ms=1000)
    for level, name, _ in options.sockopts():
        assert hasattr(socket, level), level
        assert hasattr(socket, name), name


def test_stun_keepalive_timeout_bounds_the_transaction() -> None:
    """A cut shorter than RFC 5389's 39.5 s must still be seen (found by the NAT tests)."""
    from sipalive.keepalive.stun import SendStun as _Send
    from sipalive.keepalive.stun import StunKeepalive, StunKeepaliveState

    ka = StunKeepalive(25.0, rand=lambda: 1.0, rand_bytes=lambda n: b"\x01" * n, timeout=2.0)
    ka.start(0.0)
    assert isinstance(ka.handle_timer(0.0)[0], _Send)
    sends = [0.0]
    now = 0.0
    for _ in range(20):  # bounded
        when = ka.get_timer()
        assert when is not None
        now = when
        events = ka.handle_timer(now)
        if any(isinstance(e, _Send) for e in events):
            sends.append(now)
        if ka.state is StunKeepaliveState.FAILED:
            break
    assert ka.state is StunKeepaliveState.FAILED
    assert now == 2.0  # 0.5 + 1.0 + (cut short at 2.0 instead of the 4.0 s RTO step)
    assert sends == [0.0, 0.5, 1.5]
    assert "within 2 s" in events[-1].reason  # type: ignore[attr-defined]
