"""NAT binding lifetime: the server's delayed answers (bounds, keep-alives, order) and the
client's search against a simulated NAT in virtual time, with and without loss (pure); then
the asyncio client and ``respond``'s side on 127.0.0.1, and the command. Through a real NAT:
test_natlife_netns.py.

The simulation (:class:`World`) is a client machine, a NAT and a server queue exchanging real
STUN bytes. The NAT forgets a binding ``lifetime`` seconds after the last packet that
refreshed it (outbound always; inbound only with ``inbound_refresh``), drops what arrives for
a forgotten one, and gives a socket a new public port after expiry unless ``keep_port``.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
import random
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from procs import respond, sipalive
from realpeers import free_port
from sipalive.errors import LocalProtocolError, ParseError
from sipalive.io.limits import Admission
from sipalive.io.natlife import measure
from sipalive.io.server import Listener, ListenSpec, start_listeners
from sipalive.keepalive.natlife import (
    MAX_KEEPALIVES,
    SIPALIVE_DELAY,
    SIPALIVE_REFRESH,
    CloseTrial,
    ConntrackTimeouts,
    DelayedReplies,
    NatLifetimeResult,
    NatLifetimeSearch,
    OpenTrial,
    Phase,
    ProbeResolved,
    SearchConfig,
    SearchEvent,
    SearchFinished,
    SendOnTrial,
    SendTo,
    conntrack_advice,
    decode_ms,
    delayed_binding_request,
    encode_ms,
    recommended_keepalive,
)
from sipalive.sip.responder import StatelessResponder
from sipalive.stun import codec as stun

PUBLIC_IP = "203.0.113.7"
SERVER = ("198.51.100.2", 3478)


def tid(n: int) -> bytes:
    return n.to_bytes(12, "big")


def counter_bytes() -> Callable[[int], bytes]:
    numbers = itertools.count(1)
    return lambda size: next(numbers).to_bytes(size, "big")


# -- the server's half ----------------------------------------------------------------------


def test_delay_zero_is_answered_at_once_with_the_delay_echoed() -> None:
    replies: DelayedReplies[str] = DelayedReplies(software="sipalive/test")
    out = replies.receive(delayed_binding_request(tid(1), 0.0), ("192.0.2.9", 4000), "udp0", 5.0)
    assert out is not None
    assert len(out) == 1
    assert out[0].addr == ("192.0.2.9", 4000)
    assert out[0].route == "udp0"
    msg = stun.parse(out[0].data)
    assert msg.msg_class is stun.StunClass.SUCCESS
    assert msg.transaction_id == tid(1)
    assert msg.xor_mapped_address == ("192.0.2.9", 4000)
    assert msg.get(SIPALIVE_DELAY) == encode_ms(0)
    assert msg.software == "sipalive/test"
    assert replies.get_timer() is None
    assert len(replies) == 0


def test_a_delayed_answer_goes_out_once_at_its_time_to_the_address_seen() -> None:
    replies: DelayedReplies[str] = DelayedReplies()
    source = ("192.0.2.9", 4000)
    assert replies.receive(delayed_binding_request(tid(2), 7.25), source, "r", 100.0) == []
    assert len(replies) == 1
    assert replies.get_timer() == pytest.approx(107.25)
    assert replies.handle_timer(107.2) == []
    (sent,) = replies.handle_timer(107.25)
    msg = stun.parse(sent.data)
    assert msg.transaction_id == tid(2)
    assert msg.xor_mapped_address == source
    assert decode_ms(msg.get(SIPALIVE_DELAY) or b"", "x") == 7.25
    assert replies.get_timer() is None
    assert len(replies) == 0
    assert replies.handle_timer(1e9) == []


def test_server_keepalives_every_interval_until_the_answer() -> None:
    replies: DelayedReplies[None] = DelayedReplies()
    request = delayed_binding_request(tid(3), 10.0, refresh=3.0)
    assert replies.receive(request, ("192.0.2.9", 4000), None, 0.0) == []
    sent: list[tuple[float, SendTo[None]]] = []
    while (when := replies.get_timer()) is not None:
        sent += [(when, s) for s in replies.handle_timer(when)]
    assert [round(t, 6) for t, _ in sent] == [3.0, 6.0, 9.0, 10.0]
    kinds = [stun.parse(s.data).msg_class for _, s in sent]
    assert kinds == [stun.StunClass.INDICATION] * 3 + [stun.StunClass.SUCCESS]
    assert all(len(s.data) == 28 for _, s in sent[:3])  # header + FINGERPRINT
    assert all(stun.parse(s.data).transaction_id == tid(3) for _, s in sent)


def test_answers_come_out_in_time_order_whatever_the_arrival_order() -> None:
    replies: DelayedReplies[int] = DelayedReplies()
    delays = [5.0, 1.0, 3.0, 0.5, 4.0, 2.0]
    for n, d in enumerate(delays):
        assert replies.receive(delayed_binding_request(tid(n), d), ("192.0.2.1", n + 1), n, 0) == []
    order = []
    while (when := replies.get_timer()) is not None:
        order += [s.route for s in replies.handle_timer(when)]
    assert [delays[i] for i in order] == sorted(delays)


def error_of(out: list[SendTo[None]] | None) -> tuple[int, str]:
    assert out is not None
    assert len(out) == 1
    msg = stun.parse(out[0].data)
    assert msg.msg_class is stun.StunClass.ERROR
    assert msg.error_code is not None
    return msg.error_code


def test_bounds_are_refused_at_once_with_400_or_500() -> None:
    replies: DelayedReplies[None] = DelayedReplies(max_pending=3, max_per_source=2, max_delay=60)
    src = ("192.0.2.1", 1)
    assert (
        error_of(replies.receive(delayed_binding_request(tid(1), 60.001), src, None, 0))[0] == 400
    )
    too_often = delayed_binding_request(tid(2), 60.0, refresh=60 / MAX_KEEPALIVES - 0.01)
    assert error_of(replies.receive(too_often, src, None, 0))[0] == 400
    too_short = delayed_binding_request(tid(3), 1.0, refresh=0.1)
    assert error_of(replies.receive(too_short, src, None, 0))[0] == 400
    bad = stun.binding_request(tid(4), attributes=[(SIPALIVE_DELAY, b"\x00\x01")])
    assert error_of(replies.receive(bad, src, None, 0)) == (400, "SIPALIVE-DELAY of 2 bytes, not 4")
    bad = stun.binding_request(
        tid(5), attributes=[(SIPALIVE_DELAY, encode_ms(1)), (SIPALIVE_REFRESH, b"\x01")]
    )
    assert error_of(replies.receive(bad, src, None, 0))[0] == 400
    assert replies.receive(delayed_binding_request(tid(6), 9), src, None, 0) == []
    assert replies.receive(delayed_binding_request(tid(7), 9), (src[0], 2), None, 0) == []
    code, reason = error_of(replies.receive(delayed_binding_request(tid(8), 9), src, None, 0))
    assert (code, reason) == (500, "too many delayed answers for you")
    assert replies.receive(delayed_binding_request(tid(9), 9), ("192.0.2.2", 1), None, 0) == []
    code, reason = error_of(
        replies.receive(delayed_binding_request(tid(10), 9), ("192.0.2.3", 1), None, 0)
    )
    assert (code, reason) == (500, "too many delayed answers pending")
    assert len(replies) == 3
    assert replies.refused == 7
    replies.handle_timer(9.0)  # all sent: the per-source counts are released
    assert len(replies) == 0
    assert replies.receive(delayed_binding_request(tid(11), 9), src, None, 10) == []


def test_anything_else_is_left_to_the_responder() -> None:
    replies: DelayedReplies[None] = DelayedReplies()
    src = ("192.0.2.1", 1)
    plain = stun.binding_request(tid(1))
    sip = b"OPTIONS sip:a@b SIP/2.0\r\n\r\n" + b"\xc0\x5a" * 20
    indication = stun.encode(
        stun.StunClass.INDICATION, stun.BINDING, tid(2), [(SIPALIVE_DELAY, encode_ms(1))]
    )
    response = stun.binding_success(tid(3), src, attributes=[(SIPALIVE_DELAY, encode_ms(1))])
    # The attribute's bytes inside another attribute's value are not the attribute.
    smuggled = stun.binding_request(tid(4), software="\u0c5a" * 4)
    corrupt = bytearray(delayed_binding_request(tid(5), 1.0))
    corrupt[-1] ^= 1  # FINGERPRINT no longer matches
    for data in (b"", b"\r\n\r\n", plain, sip, indication, response, smuggled, bytes(corrupt)):
        assert replies.receive(data, src, None, 0.0) is None, data
    assert len(replies) == 0


def test_ms_attribute_codec() -> None:
    assert encode_ms(1.25) == (1250).to_bytes(4, "big")
    assert encode_ms(0.0004) == bytes(4)  # milliseconds: less rounds to nothing
    assert decode_ms(encode_ms(600), "x") == 600.0
    with pytest.raises(LocalProtocolError):
        encode_ms(-1)
    with pytest.raises(LocalProtocolError):
        encode_ms(5e6)
    with pytest.raises(ParseError):
        decode_ms(b"\x00", "SIPALIVE-DELAY")


# -- the simulated path ---------------------------------------------------------------------


@dataclass
class Binding:
    public_port: int
    expires: float


@dataclass
class World:
    """Client machine <-> NAT <-> server queue, in virtual time (seconds from 0)."""

    lifetime: float
    config: SearchConfig = field(default_factory=SearchConfig)
    one_way: float = 0.01  # NAT <-> server, each way
    loss: float = 0.0  # each datagram, each way
    inbound_refresh: bool = True
    keep_port: bool = True
    server_mode: str = "sipalive"  # or "plain" (ignores the attribute), "none" (silent)
    seed: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.now = 0.0
        self.client = NatLifetimeSearch(self.config, rand_bytes=counter_bytes())
        self.server: DelayedReplies[None] = DelayedReplies()
        self.queue: list[tuple[float, int, Callable[[], None]]] = []
        self.seq = itertools.count()
        self.local_port: dict[int, int] = {}  # open trial -> its local port
        self.bindings: dict[int, Binding] = {}  # local port -> binding
        self.ports = itertools.count(40000)
        self.result: NatLifetimeResult | None = None
        self.max_open = 0
        self.resolved: list[ProbeResolved] = []

    def later(self, delay: float, action: Callable[[], None]) -> None:
        heapq.heappush(self.queue, (self.now + delay, next(self.seq), action))

    def lost(self) -> bool:
        return self.loss > 0 and self.rng.random() < self.loss

    # client side
    def apply(self, events: list[SearchEvent]) -> None:
        for event in events:
            if isinstance(event, OpenTrial):
                self.local_port[event.trial_id] = next(self.ports)
                self.outbound(event.trial_id, event.data)
            elif isinstance(event, SendOnTrial):
                assert event.trial_id in self.local_port, "send on a closed trial"
                self.outbound(event.trial_id, event.data)
            elif isinstance(event, CloseTrial):
                del self.local_port[event.trial_id]
            elif isinstance(event, ProbeResolved):
                self.resolved.append(event)
            elif isinstance(event, SearchFinished):
                assert self.result is None, "finished twice"
                self.result = event.result
        self.max_open = max(self.max_open, len(self.local_port))

    # the NAT, at the client's side of the path
    def outbound(self, trial_id: int, data: bytes) -> None:
        port = self.local_port[trial_id]
        binding = self.bindings.get(port)
        if binding is None or self.now >= binding.expires:
            public = port if self.keep_port else 20000 + self.rng.randrange(20000)
            binding = self.bindings[port] = Binding(public, 0.0)
        binding.expires = self.now + self.lifetime
        if not self.lost():
            source = (PUBLIC_IP, binding.public_port)
            self.later(self.one_way, lambda: self.at_server(data, source))

    def inbound(self, public_port: int, data: bytes) -> None:
        for port, binding in self.bindings.items():
            if binding.public_port == public_port and self.now < binding.expires:
                if self.inbound_refresh:
                    binding.expires = self.now + self.lifetime
                trial = next((t for t, p in self.local_port.items() if p == port), None)
                if trial is not None:
                    self.apply(self.client.datagram_received(trial, data, self.now))
                return

    # the server
    def at_server(self, data: bytes, source: tuple[str, int]) -> None:
        if self.server_mode == "none":
            return
        if self.server_mode == "plain":
            msg = stun.parse(data)
            self.to_client(stun.binding_success(msg.transaction_id, source), source)
            return
        out = self.server.receive(data, source, None, self.now)
        assert out is not None
        for send in out:
            self.to_client(send.data, send.addr)

    def to_client(self, data: bytes, addr: tuple[str, int]) -> None:
        if not self.lost():
            self.later(self.one_way, lambda: self.inbound(addr[1], data))

    def run(self, until: float = 10_000.0) -> NatLifetimeResult:
        self.apply(self.client.start(self.now))
        while self.result is None:
            times = [
                t
                for t in (
                    self.queue[0][0] if self.queue else None,
                    self.client.get_timer(),
                    self.server.get_timer(),
                )
                if t is not None
            ]
            assert times, "nothing left to happen and no result"
            self.now = min(times)
            assert self.now <= until, "ran past the time allowed"
            if self.queue and self.queue[0][0] == self.now:
                heapq.heappop(self.queue)[2]()
            elif self.client.get_timer() == self.now:
                self.apply(self.client.handle_timer(self.now))
            else:
                for send in self.server.handle_timer(self.now):
                    self.to_client(send.data, send.addr)
        assert not self.local_port, "sockets left open after the result"
        assert self.client.phase is Phase.DONE
        return self.result


def measured(lifetime: float, **kw: object) -> NatLifetimeResult:
    return World(lifetime, **kw).run()  # type: ignore[arg-type]


# -- the search -----------------------------------------------------------------------------


@pytest.mark.parametrize("lifetime", [0.8, 3.0, 5.0, 12.0, 30.0, 77.7, 250.0])
def test_finds_the_lifetime_within_the_resolution(lifetime: float) -> None:
    world = World(lifetime)
    result = world.run()
    assert result.complete
    assert result.error is None
    assert result.reason == "measured"
    assert result.high_s is not None
    assert result.lifetime_s is not None
    # The server counts D from the request's arrival: the figure errs short by one round trip
    # between the NAT and the server, never long.
    assert result.low_s <= lifetime <= result.high_s + 2 * world.one_way
    # 0.5 s, or 2 % of the lifetime for long ones (one refining round fewer).
    width = world.config.resolution_at(result.high_s)
    assert result.high_s - result.low_s <= width
    assert abs(result.lifetime_s - lifetime) <= width / 2 + 2 * world.one_way
    assert result.search_s is not None
    print(
        f"lifetime {lifetime}: [{result.low_s}, {result.high_s}] in {result.search_s:.1f} s "
        f"(all reports {result.elapsed_s:.1f} s, {result.trials} trials, max open "
        f"{world.max_open})"
    )
    # The ladder reaches the lifetime's power of two at about 2 x lifetime at worst, and the
    # grid is already pending by then.
    assert result.search_s <= 2 * lifetime + 6
    assert result.recommended_keepalive_s == recommended_keepalive(result.low_s)
    assert result.mapped_port_kept is True
    assert result.inbound_refresh is True
    assert result.rtt_s == pytest.approx(2 * world.one_way)
    assert result.public_address is not None
    assert result.public_address[0] == PUBLIC_IP
    assert world.max_open <= world.config.max_trials


def test_the_test_lifetimes_well_under_a_minute() -> None:
    """What the real-NAT test needs (5 s and 12 s, +-1 s, < 60 s), here with no noise."""
    for lifetime in (5.0, 12.0):
        result = measured(lifetime)
        assert result.lifetime_s is not None
        assert abs(result.lifetime_s - lifetime) <= 1
        assert result.search_s is not None
        assert result.search_s < 25
        assert result.elapsed_s < 45


@pytest.mark.parametrize("lifetime", [5.0, 12.0])
def test_loss_does_not_fool_it(lifetime: float) -> None:
    """10 % loss each way: a trial fails 19 % of the time for nothing; two copies and two
    confirming expiries keep the answer within 1 s anyway."""
    errors = []
    for seed in range(60):
        world = World(lifetime, loss=0.10, seed=seed)
        result = world.run()
        assert result.error is None, (seed, result.error)
        assert result.lifetime_s is not None, (seed, result)
        errors.append(abs(result.lifetime_s - lifetime))
        assert result.low_s <= lifetime, seed  # an answer is never false
    wrong = [e for e in errors if e > 1.0]
    print(
        f"lifetime {lifetime}, 10 % loss: worst error {max(errors):.2f} s, "
        f"{len(wrong)}/60 runs off by more than 1 s"
    )
    assert len(wrong) <= 1


def test_more_copies_ride_out_heavy_loss() -> None:
    config = SearchConfig(copies=4, confirm=3, control_tries=8)
    for seed in range(20):
        result = measured(12.0, loss=0.25, seed=seed, config=config)
        assert result.lifetime_s is not None, seed
        assert abs(result.lifetime_s - 12.0) <= 1, seed


def test_longer_than_max_is_a_lower_bound() -> None:
    world = World(1000.0, config=SearchConfig(max_delay=20))
    result = world.run()
    assert not result.complete
    assert result.high_s is None
    assert result.lifetime_s is None
    assert result.low_s == 20
    assert result.reason == "longer than --max (20 s)"
    assert result.recommended_keepalive_s == 15.0  # the binding lasts at least 20 s
    assert result.search_s is not None
    assert 20 <= result.search_s < 21
    assert result.mapped_port_kept is None
    assert result.inbound_refresh is None


def test_time_limit_reports_what_is_known() -> None:
    result = measured(100.0, config=SearchConfig(max_delay=300, time_limit=50))
    assert not result.complete
    assert result.reason == "time limit reached"
    assert result.elapsed_s == pytest.approx(50)
    assert result.high_s is None
    assert 32 <= result.low_s <= 50
    assert all(p.outcome != "pending" for p in result.probes)


def test_a_lifetime_under_a_second() -> None:
    result = measured(0.3)
    assert result.complete
    assert result.low_s == 0
    assert result.high_s == 0.5
    assert result.recommended_keepalive_s is None


def test_inbound_refresh_and_port_changes_are_reported() -> None:
    result = measured(5.0, inbound_refresh=False, keep_port=False)
    assert result.complete
    assert result.inbound_refresh is False
    assert result.server_keepalives >= 1  # they arrived while the binding lived
    assert result.mapped_port_kept is False
    assert result.mapping_idle_s is not None
    assert result.mapping_idle_s > 5.0
    assert result.refresh_delay_s is not None
    assert result.refresh_delay_s > 5.0


def test_reports_can_be_skipped() -> None:
    world = World(5.0, config=SearchConfig(check_mapping=False, check_refresh=False))
    result = world.run()
    assert result.complete
    assert result.elapsed_s == result.search_s
    assert result.mapped_port_kept is None
    assert result.inbound_refresh is None


def test_a_plain_stun_server_is_told_apart() -> None:
    result = measured(5.0, server_mode="plain")
    assert result.error is not None
    assert "ignores SIPALIVE-DELAY" in result.error
    assert result.trials == 1
    assert result.elapsed_s < 0.1
    assert result.recommended_keepalive_s is None


def test_no_server_gives_up_after_the_retransmissions() -> None:
    result = measured(5.0, server_mode="none", config=SearchConfig(control_tries=4))
    assert result.error == "no answer to 4 STUN Binding requests"
    assert result.elapsed_s == pytest.approx(0.5 + 1 + 2 + 4)
    assert not result.complete
    assert result.lifetime_s is None


def test_an_early_answer_to_a_delayed_request_is_an_error() -> None:
    search = NatLifetimeSearch(rand_bytes=counter_bytes())
    (control,) = search.start(0.0)
    assert isinstance(control, OpenTrial)
    ok = stun.binding_success(
        stun.parse(control.data).transaction_id,
        (PUBLIC_IP, 1),
        attributes=[(SIPALIVE_DELAY, encode_ms(0))],
    )
    events = search.datagram_received(control.trial_id, ok, 0.001)
    opened = [e for e in events if isinstance(e, OpenTrial)]
    four = next(
        e for e in opened if decode_ms(stun.parse(e.data).get(SIPALIVE_DELAY) or b"", "") == 4.0
    )
    msg = stun.parse(four.data)
    early = stun.binding_success(
        msg.transaction_id, (PUBLIC_IP, 2), attributes=[(SIPALIVE_DELAY, encode_ms(4))]
    )
    events = search.datagram_received(four.trial_id, early, 1.0)
    assert isinstance(events[-1], SearchFinished)
    assert events[-1].result.error is not None
    assert "does not honour SIPALIVE-DELAY" in events[-1].result.error
    assert {e.trial_id for e in events if isinstance(e, CloseTrial)} == {e.trial_id for e in opened}


def test_an_error_response_or_icmp_error_ends_the_search() -> None:
    search = NatLifetimeSearch(rand_bytes=counter_bytes())
    (control,) = search.start(0.0)
    assert isinstance(control, OpenTrial)
    refusal = stun.binding_error(stun.parse(control.data).transaction_id, 500, "busy")
    events = search.datagram_received(control.trial_id, refusal, 0.01)
    assert isinstance(events[-1], SearchFinished)
    assert events[-1].result.error == "server refused the request: 500 busy"
    assert search.datagram_received(control.trial_id, refusal, 0.02) == []
    assert search.handle_timer(100.0) == []
    assert search.get_timer() is None

    search = NatLifetimeSearch(rand_bytes=counter_bytes())
    (control,) = search.start(0.0)
    assert isinstance(control, OpenTrial)
    events = search.transport_error(control.trial_id, "Connection refused", 0.01)
    assert isinstance(events[-1], SearchFinished)
    assert events[-1].result.error == "cannot reach the server: Connection refused"
    assert search.transport_error(99, "x", 1.0) == []


def test_strays_are_ignored() -> None:
    search = NatLifetimeSearch(rand_bytes=counter_bytes())
    (control,) = search.start(0.0)
    assert isinstance(control, OpenTrial)
    other = stun.binding_success(tid(999), (PUBLIC_IP, 1), attributes=[(SIPALIVE_DELAY, b"\0" * 4)])
    for data in (b"garbage", b"", other, stun.binding_request(tid(5))):
        assert search.datagram_received(control.trial_id, data, 0.01) == []
    assert search.datagram_received(12345, other, 0.01) == []
    assert search.phase is Phase.CONTROL


def test_the_machine_runs_once_and_checks_its_inputs() -> None:
    search = NatLifetimeSearch(rand_bytes=counter_bytes())
    assert search.get_timer() is None
    assert search.handle_timer(1.0) == []
    search.start(0.0)
    with pytest.raises(LocalProtocolError):
        search.start(1.0)
    short = NatLifetimeSearch(rand_bytes=lambda n: b"x")
    with pytest.raises(LocalProtocolError):
        short.start(0.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_delay": 0.5},
        {"max_delay": 601},
        {"resolution": 0},
        {"copies": 0},
        {"confirm": 9},
        {"max_trials": 7},
        {"time_limit": 0},
        {"min_grace": 0},
        {"control_tries": 0},
    ],
)
def test_config_bounds(kwargs: dict[str, float]) -> None:
    with pytest.raises(LocalProtocolError):
        SearchConfig(**kwargs)  # type: ignore[arg-type]


def test_config_default_time_limit() -> None:
    assert SearchConfig(max_delay=100).limit == 330
    assert SearchConfig(time_limit=42).limit == 42


# -- the advice -----------------------------------------------------------------------------


def test_recommended_keepalive() -> None:
    assert recommended_keepalive(30) == 23.0
    assert recommended_keepalive(12) == 8.0
    assert recommended_keepalive(4.5) == 2.0
    assert recommended_keepalive(3.0) == 1.4
    assert recommended_keepalive(1.4) is None
    assert recommended_keepalive(0) is None
    for low in (1.6, 2.2, 7.3, 29.9, 120, 599):
        value = recommended_keepalive(low)
        assert value is not None
        assert 0 < value <= 0.8 * low - 1


def test_conntrack_advice() -> None:
    advice = conntrack_advice(ConntrackTimeouts(30, 120, 432000))
    assert advice.udp_keepalive_s == 23.0
    assert advice.tcp_keepalive_s == 345599.0
    text = "\n".join(advice.notes)
    assert "nf_conntrack_udp_timeout = 30 s" in text
    assert "stream = 120 s" in text
    assert "23 s or less" in text
    assert "well below" in text
    low_stream = conntrack_advice(ConntrackTimeouts(60, 10, 100))
    assert low_stream.udp_keepalive_s == 7.0  # the shorter of the two governs
    assert low_stream.tcp_keepalive_s == 79.0
    assert "well below" not in "\n".join(low_stream.notes)
    assert conntrack_advice(ConntrackTimeouts(1, 1, None)).udp_keepalive_s is None
    gone = conntrack_advice(ConntrackTimeouts(None, None, None))
    assert gone.udp_keepalive_s is None
    assert "not loaded" in gone.notes[0]


# -- the asyncio client and the responder's side, on 127.0.0.1 (no NAT: nothing expires) ----


def test_measure_against_an_in_process_responder() -> None:
    async def main() -> tuple[NatLifetimeResult, Listener]:
        listener = Listener(StatelessResponder(), Admission())
        (transport,) = await start_listeners(listener, [ListenSpec("udp", "127.0.0.1", 0)])
        port = transport.get_extra_info("sockname")[1]
        seen: list[ProbeResolved] = []
        try:
            result = await measure(
                ("127.0.0.1", port), SearchConfig(max_delay=1.0), on_progress=seen.append
            )
        finally:
            transport.close()
            listener.delayed.close()
        assert [(e.delay, e.answered) for e in seen] == [(0.5, True), (1.0, True)]
        return result, listener

    result, listener = asyncio.run(main())
    assert result.reason == "longer than --max (1 s)"
    assert not result.complete
    assert result.low_s == 1.0
    assert result.high_s is None
    assert result.error is None
    assert result.public_address is not None
    assert result.public_address[0] == "127.0.0.1"
    assert result.rtt_s is not None
    assert result.rtt_s < 0.1
    assert 1.0 <= result.elapsed_s < 1.5
    # The control request and every copy of the 0.5 s, 1 s and 1.5 s probes (the last one
    # abandoned, but the server still held it) went through the delayed-answer path.
    assert listener.stats.stun == result.trials == 7
    assert listener.delayed.replies.refused == 0


def test_measure_gives_up_on_a_closed_port() -> None:
    port = free_port("udp")
    result = asyncio.run(measure(("127.0.0.1", port), SearchConfig(max_delay=1.0)))
    assert result.error is not None
    assert result.error.startswith("cannot reach the server")
    assert result.elapsed_s < 0.5


def test_the_command_against_respond() -> None:
    with respond(tcp=False) as server:
        done = sipalive(
            "nat-lifetime", "--server", f"127.0.0.1:{server.port}", "--max", "1", "--json"
        )
        text = sipalive("nat-lifetime", "--server", f"127.0.0.1:{server.port}", "--max", "1")
    assert done.returncode == 1, done.stderr  # a lower bound only: exit 1
    result = json.loads(done.stdout)
    for key in ("lifetime_s", "low_s", "high_s", "recommended_keepalive_s"):
        assert key in result
    assert (result["lifetime_s"], result["low_s"], result["high_s"]) == (None, 1.0, None)
    assert result["recommended_keepalive_s"] is None  # 0.8 x 1 s - 1 s: nothing sensible
    assert result["reason"] == "longer than --max (1 s)"
    assert result["server"] == f"127.0.0.1:{server.port}"
    assert result["trials"] == 7
    assert result["mapped_port_kept"] is None
    assert text.returncode == 1
    assert f"via 127.0.0.1:{server.port}: at least 1 s (longer than --max (1 s))" in text.stdout
    assert "14 STUN" in server.log()  # both runs: every request took the delayed path


def test_the_command_on_a_closed_port_exits_3() -> None:
    port = free_port("udp")
    done = sipalive("nat-lifetime", "--server", f"127.0.0.1:{port}", "--max", "1")
    assert done.returncode == 3
    assert "not measured: cannot reach the server" in done.stdout
    done = sipalive("nat-lifetime", "--server", f"127.0.0.1:{port}", "--max", "1", "--json")
    assert done.returncode == 3
    assert json.loads(done.stdout)["error"].startswith("cannot reach")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "one of the arguments --server --local is required"),
        (["--server", "127.0.0.1:1", "--local"], "not allowed with"),
        (["--server", "127.0.0.1:1", "--max", "700"], "max_delay must be within"),
        (["--server", "127.0.0.1:1", "--max", "soon"], "--max: expected a duration"),
        (["--server", "127.0.0.1:1", "--copies", "0"], "--copies: expected an integer >= 1"),
        (["--server", "127.0.0.1:1", "--parallel", "3"], "max_trials and max_outstanding"),
        (["--server", "sip:[::1"], "--server: expected HOST:PORT"),
        (["--server", "no-such-host.invalid:5060"], "cannot resolve"),
    ],
)
def test_the_command_usage_errors(args: list[str], message: str) -> None:
    done = sipalive("nat-lifetime", *args)
    assert done.returncode == 2
    assert message in done.stderr


def test_local_reads_the_conntrack_sysctls(tmp_path: Path) -> None:
    for name, value in (
        ("udp_timeout", 30),
        ("udp_timeout_stream", 120),
        ("tcp_timeout_established", 7440),
    ):
        (tmp_path / f"nf_conntrack_{name}").write_text(f"{value}\n")
    done = sipalive("nat-lifetime", "--local", "--json", "--sysctl-dir", str(tmp_path))
    assert done.returncode == 0
    local = json.loads(done.stdout)
    assert local["conntrack"] is True
    assert (local["udp_timeout_s"], local["udp_timeout_stream_s"]) == (30, 120)
    assert local["recommended_keepalive_s"] == 23.0
    assert local["recommended_tcp_keepalive_s"] == 5951.0
    text = sipalive("nat-lifetime", "--local", "--sysctl-dir", str(tmp_path)).stdout
    assert "nf_conntrack_udp_timeout = 30 s" in text
    assert "23 s or less" in text

    empty = tmp_path / "none"
    empty.mkdir()
    done = sipalive("nat-lifetime", "--local", "--json", "--sysctl-dir", str(empty))
    assert done.returncode == 0
    local = json.loads(done.stdout)
    assert local["conntrack"] is False
    assert local["recommended_keepalive_s"] is None
    assert "not loaded" in local["notes"][0]


def test_a_plain_stun_answer_on_a_udp_socket_is_not_mistaken(tmp_path: Path) -> None:
    """A STUN server that ignores SIPALIVE-DELAY (here: a socket answering at once)."""
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    port = server.getsockname()[1]

    async def main() -> NatLifetimeResult:
        loop = asyncio.get_running_loop()

        def answer() -> None:
            data, addr = server.recvfrom(2048)
            msg = stun.parse(data)
            server.sendto(stun.binding_success(msg.transaction_id, addr), addr)

        loop.add_reader(server.fileno(), answer)
        try:
            return await measure(("127.0.0.1", port), SearchConfig(max_delay=1.0))
        finally:
            loop.remove_reader(server.fileno())

    try:
        result = asyncio.run(main())
    finally:
        server.close()
    assert result.error is not None
    assert "ignores SIPALIVE-DELAY" in result.error
