"""The registration machine stepped through virtual time by hand: no sockets, no clock."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import pytest

from sipalive.errors import ConfigError, LocalProtocolError
from sipalive.sip.digest import Credentials
from sipalive.sip.headers import Headers, parse_name_addr
from sipalive.sip.message import Request, Response, parse_message
from sipalive.sip.registration import (
    FlowFailed,
    FlowRecovered,
    KeepaliveAnswered,
    KeepaliveFailed,
    KeepaliveInterval,
    NewFlowNeeded,
    OptionsKeepalive,
    PublicAddressChanged,
    Refreshed,
    Registered,
    Registration,
    RegistrationConfig,
    RegistrationExpired,
    RegistrationFailed,
    RegistrationState,
    SendRequest,
    Unregistered,
    answer,
)
from sipalive.sip.transaction import TimerConfig

LOCAL = ("192.0.2.10", 5060)
PUBLIC = ("203.0.113.7", 40001)
PASSWORD = "s3cret-pw"
REGISTRAR = "sip:example.com"
AOR = "sip:alice@example.com"


def tokens() -> Callable[[], str]:
    counter = itertools.count(1)
    return lambda: f"tok{next(counter)}"


def make(
    rand: float = 0.5, transport: str = "udp", **overrides: object
) -> tuple[Registration, RegistrationConfig]:
    fields: dict[str, object] = {
        "registrar_uri": REGISTRAR,
        "aor": AOR,
        "user": "alice",
        "transport": transport,
        "password": PASSWORD,
        "expires": 600,
    }
    fields.update(overrides)
    config = RegistrationConfig(**fields)  # type: ignore[arg-type]
    return Registration(config, rand=lambda: rand, rand_token=tokens()), config


def sent(events: Sequence[object]) -> Request:
    """The single request among ``events``."""
    sends = [e for e in events if isinstance(e, SendRequest)]
    assert len(sends) == 1, events
    message = parse_message(sends[0].data)
    assert isinstance(message, Request)
    return message


def reply(
    request: Request,
    status: int,
    reason: str = "OK",
    *,
    received: str | None = None,
    rport: int | None = None,
    via_params: str = "",
    headers: Sequence[tuple[str, str]] = (),
    echo_contacts: bool = True,
) -> Response:
    """What a registrar answers: the top Via with received/rport, the To tag, and on a 2xx
    every Contact bound (those with expires=0 removed), each with its expires."""
    via = request.headers.get_fields("Via")[0]
    top = request.vias[0]
    dropped = ("rport", "keep") if "keep=" in via_params else ("rport",)
    params = ";".join(f"{k}={v}" if v else k for k, v in top.params if k not in dropped)
    host = f"{top.host}:{top.port}" if top.port else top.host
    via = f"SIP/2.0/{top.transport} {host};{params}"
    if received:
        via += f";received={received}"
    if top.has_rport:
        via += f";rport={rport or top.port}"
    via += via_params
    fields = [
        ("Via", via),
        ("From", str(request.from_)),
        ("To", f"{request.to};tag=reg1"),
        ("Call-ID", request.call_id),
        ("CSeq", str(request.cseq)),
    ]
    if 200 <= status < 300 and echo_contacts:
        default = request.headers.get("Expires") or "3600"
        for value in request.headers.get_all("Contact"):
            addr = parse_name_addr(value)
            expires = next((v for k, v in addr.params if k == "expires"), default)
            if expires != "0":
                kept = tuple(p for p in addr.params if p[0] != "expires")
                fields.append(
                    (
                        "Contact",
                        f"<{addr.uri}>{''.join(f';{k}={v}' if v else f';{k}' for k, v in kept)};expires={expires}",
                    )
                )
    fields += list(headers)
    fields.append(("Content-Length", "0"))
    return Response(status, reason, Headers(fields))


def challenge(request: Request, *values: str, status: int = 401) -> Response:
    name = "WWW-Authenticate" if status == 401 else "Proxy-Authenticate"
    return reply(request, status, "Unauthorized", headers=[(name, v) for v in values])


def md5_challenge(nonce: str = "n1", stale: bool = False) -> str:
    return f'Digest realm="example.com", nonce="{nonce}", qop="auth", algorithm=MD5' + (
        ", stale=true" if stale else ""
    )


def credentials(request: Request) -> Credentials:
    value = request.headers.get("Authorization")
    assert value is not None, "no Authorization header"
    return Credentials.parse(value)


def contacts(request: Request) -> list[str]:
    return request.headers.get_all("Contact")


def register(reg: Registration, now: float = 0.0) -> Request:
    """Start and get through the digest challenge to a 200; returns the REGISTER that won."""
    first = sent(reg.start(now, LOCAL))
    second = sent(reg.receive_response(challenge(first, md5_challenge()), now + 0.01))
    events = reg.receive_response(reply(second, 200), now + 0.02)
    assert any(isinstance(e, Registered) for e in events), events
    return second


# -- the REGISTER itself ---------------------------------------------------------------------


def test_first_register_carries_contact_expires_rport_and_keep() -> None:
    reg, _ = make()
    request = sent(reg.start(0.0, LOCAL))
    assert request.method == "REGISTER"
    assert request.uri == REGISTRAR
    assert request.to.uri == AOR
    assert request.from_.uri == AOR
    assert request.from_.tag
    assert request.to.tag is None
    assert request.cseq.seq == 1
    assert contacts(request) == ["<sip:alice@192.0.2.10:5060>"]
    assert request.headers.get("Expires") == "600"
    via = request.vias[0]
    assert (via.host, via.port, via.transport) == ("192.0.2.10", 5060, "UDP")
    assert via.has_rport  # RFC 3581
    assert any(k == "keep" for k, _ in via.params)  # RFC 6223
    assert "Authorization" not in request.headers
    assert reg.state is RegistrationState.REGISTERING


def test_contact_names_the_transport_and_keep_can_be_left_out() -> None:
    reg, _ = make(transport="tls", keep=False)
    request = sent(reg.start(0.0, ("192.0.2.10", 40123)))
    assert contacts(request) == ["<sip:alice@192.0.2.10:40123;transport=tls>"]
    assert request.vias[0].transport == "TLS"
    assert not any(k == "keep" for k, _ in request.vias[0].params)


def test_outbound_contact_has_instance_reg_id_and_ob() -> None:
    reg, _ = make(instance_id="urn:uuid:00000000-0000-0000-0000-000000000001")
    request = sent(reg.start(0.0, LOCAL))
    (contact,) = contacts(request)
    assert contact.startswith("<sip:alice@192.0.2.10:5060;ob>")
    assert ";reg-id=1" in contact
    assert '+sip.instance="<urn:uuid:00000000-0000-0000-0000-000000000001>"' in contact
    assert request.headers.get("Supported") == "outbound, path"


def test_without_local_address_a_flow_is_asked_for_first() -> None:
    reg, _ = make(transport="tcp")
    assert reg.start(0.0) == [NewFlowNeeded("start")]
    assert reg.get_timer() is None
    request = sent(reg.flow_ready(("192.0.2.10", 40000), 0.1))
    assert contacts(request) == ["<sip:alice@192.0.2.10:40000;transport=tcp>"]


def test_config_is_checked_and_hides_the_password() -> None:
    _, config = make()
    assert PASSWORD not in repr(config)
    with pytest.raises(ConfigError, match="transport"):
        make(transport="sctp")
    with pytest.raises(ConfigError, match="expires"):
        make(expires=0)
    with pytest.raises(ConfigError, match="registrar"):
        make(registrar_uri="http://example.com")
    with pytest.raises(ConfigError, match="backoff_max"):
        make(backoff_base=10.0, backoff_max=5.0)
    reg, _ = make()
    reg.start(0.0, LOCAL)
    with pytest.raises(LocalProtocolError):
        reg.start(0.0, LOCAL)


# -- digest authentication -------------------------------------------------------------------


def test_md5_digest_qop_auth_then_registered() -> None:
    reg, _ = make()
    first = sent(reg.start(0.0, LOCAL))
    events = reg.receive_response(challenge(first, md5_challenge()), 0.05)
    second = sent(events)
    assert second.call_id == first.call_id  # RFC 3261 §10.2.4: one Call-ID throughout
    assert second.cseq.seq == 2
    assert second.branch != first.branch
    creds = credentials(second)
    assert (creds.username, creds.realm, creds.uri, creds.algorithm) == (
        "alice",
        "example.com",
        REGISTRAR,
        "MD5",
    )
    assert (creds.qop, creds.nc) == ("auth", "00000001")
    assert creds.verify(PASSWORD, "REGISTER")
    assert not creds.verify("wrong", "REGISTER")
    events = reg.receive_response(reply(second, 200), 0.1)
    assert events == [Registered(600, "sip:alice@192.0.2.10:5060", LOCAL, 300.0)]
    assert reg.state is RegistrationState.REGISTERED
    assert all(PASSWORD not in repr(e) for e in events)


def test_sha256_is_taken_when_offered_first_and_proxy_auth_works() -> None:
    reg, _ = make()
    first = sent(reg.start(0.0, LOCAL))
    sha = 'Digest realm="example.com", nonce="n2", qop="auth", algorithm=SHA-256'
    second = sent(reg.receive_response(challenge(first, sha, md5_challenge()), 0.05))
    creds = credentials(second)
    assert creds.algorithm == "SHA-256"
    assert creds.verify(PASSWORD, "REGISTER")
    third = sent(reg.receive_response(challenge(second, sha.replace("n2", "n3"), status=407), 0.1))
    assert third.headers.get("Proxy-Authorization") is not None
    assert Credentials.parse(third.headers.get("Proxy-Authorization") or "").verify(
        PASSWORD, "REGISTER"
    )


def test_challenge_without_qop_is_answered_rfc2069_style() -> None:
    reg, _ = make()
    first = sent(reg.start(0.0, LOCAL))
    plain = 'Digest realm="example.com", nonce="abc"'
    creds = credentials(sent(reg.receive_response(challenge(first, plain), 0.05)))
    assert creds.qop is None
    assert creds.verify(PASSWORD, "REGISTER")


def test_wrong_password_before_any_success_is_fatal() -> None:
    reg, _ = make()
    first = sent(reg.start(0.0, LOCAL))
    second = sent(reg.receive_response(challenge(first, md5_challenge("n1")), 0.05))
    events = reg.receive_response(challenge(second, md5_challenge("n2")), 0.1)
    assert events == [
        RegistrationFailed(
            401,
            "authentication failed: the registrar rejected the credentials",
            None,
            fatal=True,
        )
    ]
    assert reg.state is RegistrationState.FAILED
    assert reg.get_timer() is None
    assert reg.stop(0.2) == []


def test_no_password_or_unsupported_algorithm_is_a_clear_fatal_failure() -> None:
    reg, _ = make(password=None)
    first = sent(reg.start(0.0, LOCAL))
    (event,) = reg.receive_response(challenge(first, md5_challenge()), 0.05)
    assert isinstance(event, RegistrationFailed)
    assert event.fatal
    assert "no password" in event.reason
    reg, _ = make()
    first = sent(reg.start(0.0, LOCAL))
    odd = 'Digest realm="x", nonce="y", algorithm=SHA-512-256'
    (event,) = reg.receive_response(challenge(first, odd), 0.05)
    assert isinstance(event, RegistrationFailed)
    assert event.fatal
    assert "SHA-512-256" in event.reason


def test_refresh_at_half_the_granted_time_with_preemptive_credentials() -> None:
    reg, _ = make()
    won = register(reg, now=0.0)
    assert reg.get_timer() == pytest.approx(300.02)
    assert reg.handle_timer(300.0) == []
    refresh = sent(reg.handle_timer(300.02))
    assert refresh.call_id == won.call_id
    assert refresh.cseq.seq == won.cseq.seq + 1
    creds = credentials(refresh)
    assert creds.nonce == "n1"
    assert creds.nc == "00000002"
    assert creds.verify(PASSWORD, "REGISTER")
    events = reg.receive_response(reply(refresh, 200), 300.1)
    assert events == [Refreshed(600, "sip:alice@192.0.2.10:5060", 300.0)]
    assert reg.get_timer() == pytest.approx(600.1)


def test_granted_expires_comes_from_our_contact_then_the_expires_header() -> None:
    reg, _ = make(password=None)
    request = sent(reg.start(0.0, LOCAL))
    others = [("Contact", "<sip:alice@198.51.100.1:5060>;expires=3000")]
    response = reply(request, 200, echo_contacts=False, headers=[*others, ("Expires", "120")])
    (event,) = reg.receive_response(response, 1.0)
    assert isinstance(event, Registered)
    assert event.expires == 120
    refresh = sent(reg.handle_timer(61.0))
    response = reply(refresh, 200, headers=[("Expires", "999")])  # the Contact's own wins
    (event,) = reg.receive_response(response, 62.0)
    assert isinstance(event, Refreshed)
    assert event.expires == 600


def test_stale_nonce_on_refresh_is_answered_again() -> None:
    reg, _ = make()
    register(reg)
    refresh = sent(reg.handle_timer(reg.get_timer() or 0))
    again = sent(reg.receive_response(challenge(refresh, md5_challenge("n9", stale=True)), 301))
    assert credentials(again).nonce == "n9"
    assert credentials(again).nc == "00000001"
    assert isinstance(reg.receive_response(reply(again, 200), 301.1)[0], Refreshed)


def test_new_nonce_for_preemptive_credentials_is_not_a_failure() -> None:
    """A registrar may refuse a reused nonce without saying stale: answering the fresh
    challenge is still the right thing, only a second refusal means a bad password."""
    reg, _ = make()
    register(reg)
    refresh = sent(reg.handle_timer(reg.get_timer() or 0))
    again = sent(reg.receive_response(challenge(refresh, md5_challenge("n5")), 301))
    assert credentials(again).nonce == "n5"
    (event,) = reg.receive_response(challenge(again, md5_challenge("n6")), 301.1)
    assert isinstance(event, RegistrationFailed)
    assert not event.fatal  # it worked before: retry with back-off, do not die
    assert event.retry_in is not None


def test_interval_too_brief_takes_min_expires() -> None:
    reg, _ = make(password=None, expires=30)
    request = sent(reg.start(0.0, LOCAL))
    again = sent(
        reg.receive_response(
            reply(request, 423, "Interval Too Brief", headers=[("Min-Expires", "60")]), 0.1
        )
    )
    assert again.headers.get("Expires") == "60"
    (event,) = reg.receive_response(reply(again, 200), 0.2)
    assert isinstance(event, Registered)
    assert event.expires == 60


def test_foreign_responses_are_ignored() -> None:
    reg, _ = make()
    request = sent(reg.start(0.0, LOCAL))
    headers = Headers(
        [
            ("Via", "SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKother;rport=5060"),
            ("From", str(request.from_)),
            ("To", str(request.to)),
            ("Call-ID", request.call_id),
            ("CSeq", str(request.cseq)),
        ]
    )
    assert reg.receive_response(Response(200, "OK", headers), 0.1) == []
    spoofed = reply(request, 200)
    spoofed.headers.set("Call-ID", "other@elsewhere")
    assert reg.receive_response(Response(200, "OK", spoofed.headers), 0.1) == []
    assert reg.state is RegistrationState.REGISTERING


# -- NAT: received/rport, Flow-Timer, keep -----------------------------------------------------


def test_received_rport_rewrites_the_contact_and_removes_the_old_one() -> None:
    reg, _ = make(password=None)
    first = sent(reg.start(0.0, LOCAL))
    events = reg.receive_response(reply(first, 200, received=PUBLIC[0], rport=PUBLIC[1]), 0.1)
    assert events[0] == PublicAddressChanged(LOCAL, PUBLIC)
    second = sent(events)
    assert second.call_id == first.call_id
    assert second.cseq.seq == 2
    assert contacts(second) == [
        "<sip:alice@203.0.113.7:40001>",
        "<sip:alice@192.0.2.10:5060>;expires=0",
    ]
    assert second.vias[0].host == LOCAL[0]  # Via still names the socket, RFC 3581 fills in
    events = reg.receive_response(reply(second, 200, received=PUBLIC[0], rport=PUBLIC[1]), 0.2)
    assert events == [Registered(600, "sip:alice@203.0.113.7:40001", PUBLIC, 300.0)]
    # the NAT rebinds: the next refresh learns a new port and registers it
    refresh = sent(reg.handle_timer(300.2))
    assert contacts(refresh) == ["<sip:alice@203.0.113.7:40001>"]
    events = reg.receive_response(reply(refresh, 200, received=PUBLIC[0], rport=40777), 300.3)
    assert events[0] == PublicAddressChanged(PUBLIC, (PUBLIC[0], 40777))
    assert contacts(sent(events)) == [
        "<sip:alice@203.0.113.7:40777>",
        "<sip:alice@203.0.113.7:40001>;expires=0",
    ]


def test_same_address_in_via_changes_nothing_and_rewriting_can_be_off() -> None:
    reg, _ = make(password=None)
    first = sent(reg.start(0.0, LOCAL))
    (event,) = reg.receive_response(reply(first, 200), 0.1)  # rport = our port, no received
    assert isinstance(event, Registered)
    assert event.public_addr == LOCAL
    reg, _ = make(password=None, rewrite_contact=False)
    first = sent(reg.start(0.0, LOCAL))
    (event,) = reg.receive_response(reply(first, 200, received=PUBLIC[0], rport=PUBLIC[1]), 0.1)
    assert isinstance(event, Registered)
    assert event.contact == "sip:alice@192.0.2.10:5060"
    assert event.public_addr == PUBLIC


def test_a_registrar_reporting_a_new_address_every_time_does_not_loop() -> None:
    reg, _ = make(password=None)
    request = sent(reg.start(0.0, LOCAL))
    rewrites = 0
    for port in range(41000, 41010):
        events = reg.receive_response(reply(request, 200, received=PUBLIC[0], rport=port), 0.1)
        if not any(isinstance(e, PublicAddressChanged) for e in events):
            assert isinstance(events[-1], Registered)
            break
        rewrites += 1
        request = sent(events)
    assert rewrites == 3


def test_outbound_rewrite_relies_on_instance_and_reg_id() -> None:
    reg, _ = make(password=None, instance_id="urn:uuid:1")
    first = sent(reg.start(0.0, LOCAL))
    events = reg.receive_response(reply(first, 200, received=PUBLIC[0], rport=PUBLIC[1]), 0.1)
    (contact,) = contacts(sent(events))  # the registrar replaces the flow's binding itself
    assert contact.startswith("<sip:alice@203.0.113.7:40001;ob>")


def test_flow_timer_and_via_keep_set_the_keepalive_interval() -> None:
    reg, _ = make(password=None)
    first = sent(reg.start(0.0, LOCAL))
    events = reg.receive_response(reply(first, 200, headers=[("Flow-Timer", "20")]), 0.1)
    assert events[0] == KeepaliveInterval(20.0, "Flow-Timer")
    assert reg.advised_interval == 20.0
    refresh = sent(reg.handle_timer(reg.get_timer() or 0))
    events = reg.receive_response(reply(refresh, 200, headers=[("Flow-Timer", "20")]), 301)
    assert [type(e) for e in events] == [Refreshed]  # unchanged: no event
    refresh = sent(reg.handle_timer(reg.get_timer() or 0))
    events = reg.receive_response(reply(refresh, 200, via_params=";keep=15"), 602)
    assert events[0] == KeepaliveInterval(15.0, "keep")  # RFC 6223 §4.4


def test_register_keepalive_refreshes_every_jittered_interval_and_follows_flow_timer() -> None:
    reg, _ = make(password=None, refresh_every=25.0, rand=0.5)
    first = sent(reg.start(0.0, LOCAL))
    (event,) = reg.receive_response(reply(first, 200), 0.0)
    assert isinstance(event, Registered)
    assert event.refresh_in == pytest.approx(22.5)
    refresh = sent(reg.handle_timer(22.5))
    events = reg.receive_response(reply(refresh, 200, headers=[("Flow-Timer", "10")]), 22.5)
    assert events[0] == KeepaliveInterval(10.0, "Flow-Timer")
    assert isinstance(events[1], Refreshed)
    assert events[1].refresh_in == pytest.approx(9.0)


# -- flow failure and RFC 5626 §4.5 back-off ------------------------------------------------


@pytest.mark.parametrize(("rand", "share"), [(0.0, 0.5), (1.0, 1.0), (0.5, 0.75)])
def test_flow_failure_backoff_doubles_within_bounds_and_is_capped(
    rand: float, share: float
) -> None:
    reg, _ = make(password=None, rand=rand, backoff_base=2.0, backoff_max=20.0)
    first = sent(reg.start(0.0, LOCAL))
    reg.receive_response(reply(first, 200), 0.0)
    # the flow fails under a live registration: a new flow at once (no wait)
    assert reg.flow_failed("no CRLF pong within 10 s", 10.0) == [
        FlowFailed("no CRLF pong within 10 s", 0.0),
        NewFlowNeeded("no CRLF pong within 10 s"),
    ]
    assert reg.state is RegistrationState.CONNECTING
    now = 10.0
    waits = []
    for _ in range(6):
        (event,) = reg.flow_failed("connect refused", now)  # forming the new flow fails
        assert isinstance(event, FlowFailed)
        waits.append(event.retry_in)
        assert reg.get_timer() == pytest.approx(now + event.retry_in)
        now += event.retry_in
        assert reg.handle_timer(now) == [NewFlowNeeded("registration retry")]
    # min(max, base * 2^failures) * 50..100%: 4, 8, 16, then capped at 20
    assert waits == pytest.approx([share * w for w in (4, 8, 16, 20, 20, 20)])
    assert reg.consecutive_failures == 6
    request = sent(reg.flow_ready(("192.0.2.10", 5060), now))
    (event,) = reg.receive_response(reply(request, 200), now + 0.1)
    assert isinstance(event, FlowRecovered)
    assert event.down_for == pytest.approx(now + 0.1 - 10.0)
    assert reg.consecutive_failures == 0


def test_registrar_timeout_over_udp_retransmits_then_fails_the_flow() -> None:
    reg, _ = make(password=None, backoff_base=5.0, timers=TimerConfig(t1=0.5))
    first = sent(reg.start(0.0, LOCAL))
    reg.receive_response(reply(first, 200), 0.0)
    refresh_at = reg.get_timer() or 0.0
    request = sent(reg.handle_timer(refresh_at))
    now, retransmissions, failed = refresh_at, 0, None
    while failed is None:
        now = reg.get_timer() or 0.0
        for event in reg.handle_timer(now):
            if isinstance(event, SendRequest):
                assert parse_message(event.data).branch == request.branch
                retransmissions += 1
            elif isinstance(event, FlowFailed):
                failed = event
    assert now == pytest.approx(refresh_at + 32.0)  # Timer F = 64*T1
    assert retransmissions == 10
    assert failed == FlowFailed("REGISTER timed out", 0.0)


def test_initial_failure_waits_and_is_not_fatal_when_the_registrar_is_down() -> None:
    reg, _ = make(password=None, rand=1.0, backoff_base=3.0, transport="tcp")
    assert reg.start(0.0) == [NewFlowNeeded("start")]
    (event,) = reg.flow_failed("connect to 192.0.2.1:5060: Connection refused", 0.0)
    assert event == FlowFailed("connect to 192.0.2.1:5060: Connection refused", 6.0)
    assert reg.handle_timer(6.0) == [NewFlowNeeded("registration retry")]
    request = sent(reg.flow_ready(("192.0.2.10", 40000), 6.1))
    (event,) = reg.receive_response(reply(request, 200), 6.2)
    assert isinstance(event, Registered)  # never registered before: Registered, not Recovered


def test_server_error_backs_off_honouring_retry_after() -> None:
    reg, _ = make(password=None, rand=0.0, backoff_base=2.0)
    first = sent(reg.start(0.0, LOCAL))
    (event,) = reg.receive_response(
        reply(first, 503, "Service Unavailable", headers=[("Retry-After", "50")]), 0.1
    )
    assert event == RegistrationFailed(503, "Service Unavailable", 50.0)
    again = sent(reg.handle_timer(50.1))  # the flow is fine: no new flow needed
    (event,) = reg.receive_response(reply(again, 200), 50.2)
    assert isinstance(event, Registered)


def test_forbidden_is_fatal_only_before_the_first_success() -> None:
    reg, _ = make(password=None)
    first = sent(reg.start(0.0, LOCAL))
    (event,) = reg.receive_response(reply(first, 403, "Forbidden"), 0.1)
    assert event == RegistrationFailed(403, "Forbidden", None, fatal=True)
    reg, _ = make(password=None, rand=0.0, backoff_base=4.0)
    first = sent(reg.start(0.0, LOCAL))
    reg.receive_response(reply(first, 200), 0.1)
    refresh = sent(reg.handle_timer(reg.get_timer() or 0))
    (event,) = reg.receive_response(reply(refresh, 403, "Forbidden"), 301)
    assert event == RegistrationFailed(403, "Forbidden", 4.0)


def test_binding_expiry_is_reported_when_refreshes_keep_failing() -> None:
    reg, _ = make(password=None, expires=60, rand=1.0, backoff_base=100.0)
    first = sent(reg.start(0.0, LOCAL))
    reg.receive_response(reply(first, 200), 0.0)
    refresh = sent(reg.handle_timer(30.0))
    (event,) = reg.receive_response(reply(refresh, 500, "Server Error"), 30.0)
    assert isinstance(event, RegistrationFailed)
    assert event.retry_in == 200.0
    assert reg.get_timer() == 60.0
    assert reg.handle_timer(60.0) == [RegistrationExpired("sip:alice@192.0.2.10:5060")]
    assert not reg.bound
    retry = sent(reg.handle_timer(230.0))
    (event,) = reg.receive_response(reply(retry, 200), 230.1)
    assert isinstance(event, Registered)


def test_new_flow_with_another_local_port_moves_the_contact() -> None:
    reg, _ = make(password=None, transport="tcp")
    reg.start(0.0)
    first = sent(reg.flow_ready(("192.0.2.10", 40000), 0.0))
    reg.receive_response(reply(first, 200), 0.1)
    reg.flow_failed("connection closed by peer", 5.0)
    request = sent(reg.flow_ready(("192.0.2.10", 40002), 5.1))
    assert request.vias[0].port == 40002
    assert contacts(request) == [
        "<sip:alice@192.0.2.10:40002;transport=tcp>",
        "<sip:alice@192.0.2.10:40000;transport=tcp>;expires=0",
    ]


# -- un-register -------------------------------------------------------------------------------


def test_stop_unregisters_only_our_contact_with_expires_zero() -> None:
    reg, _ = make()
    won = register(reg)
    request = sent(reg.stop(10.0))
    assert request.call_id == won.call_id
    assert request.cseq.seq == won.cseq.seq + 1
    assert request.headers.get("Expires") == "0"
    assert contacts(request) == ["<sip:alice@192.0.2.10:5060>"]  # never "*"
    assert credentials(request).verify(PASSWORD, "REGISTER")
    assert reg.state is RegistrationState.UNREGISTERING
    assert reg.receive_response(reply(request, 200), 10.1) == [Unregistered(200, "OK")]
    assert reg.state is RegistrationState.STOPPED
    assert reg.get_timer() is None
    assert reg.stop(11.0) == []


def test_stop_answers_a_fresh_challenge_and_reports_a_timeout() -> None:
    reg, _ = make(transport="tcp", timers=TimerConfig(t1=0.1))
    reg.start(0.0)
    first = sent(reg.flow_ready(("192.0.2.10", 40000), 0.0))
    reg.receive_response(reply(first, 200), 0.1)
    request = sent(reg.stop(1.0))
    again = sent(reg.receive_response(challenge(request, md5_challenge("n7")), 1.1))
    assert credentials(again).nonce == "n7"
    assert reg.handle_timer(reg.get_timer() or 0) == [Unregistered(408, "Request Timeout")]


def test_stop_without_binding_sends_nothing_and_with_a_dead_flow_asks_for_one() -> None:
    reg, _ = make()
    assert reg.stop(0.0) == [Unregistered(None, "no binding to remove")]
    reg, _ = make(password=None, transport="tcp")
    reg.start(0.0)
    first = sent(reg.flow_ready(("192.0.2.10", 40000), 0.0))
    reg.receive_response(reply(first, 200), 0.1)
    reg.flow_failed("connection reset", 2.0)
    assert reg.stop(2.5) == [NewFlowNeeded("un-register")]
    request = sent(reg.flow_ready(("192.0.2.10", 40004), 2.6))
    assert contacts(request) == ["<sip:alice@192.0.2.10:40000;transport=tcp>"]
    assert request.headers.get("Expires") == "0"


def test_stop_while_the_first_register_is_in_flight_still_unregisters() -> None:
    reg, _ = make(password=None)
    sent(reg.start(0.0, LOCAL))
    request = sent(reg.stop(0.1))
    assert request.headers.get("Expires") == "0"
    assert contacts(request) == ["<sip:alice@192.0.2.10:5060>"]


# -- OPTIONS keep-alive ------------------------------------------------------------------------


def test_options_keepalive_pings_jittered_and_fails_on_timeout() -> None:
    ka = OptionsKeepalive(
        REGISTRAR,
        transport="tcp",
        from_uri=AOR,
        interval=25.0,
        timers=TimerConfig(t1=0.5, timeout=4.0),
        rand=lambda: 0.0,
        rand_token=tokens(),
    )
    assert ka.get_timer() is None
    ka.start(0.0, ("192.0.2.10", 40000))
    assert ka.get_timer() == 20.0  # 80% of 25 s
    options = sent(ka.handle_timer(20.0))
    assert options.method == "OPTIONS"
    assert options.uri == REGISTRAR
    response = reply(options, 404, "Not Found")
    (event,) = ka.receive_response(response, 20.05)
    assert isinstance(event, KeepaliveAnswered)
    assert event.status == 404
    assert event.rtt == pytest.approx(0.05)
    assert ka.get_timer() == 40.0
    ka.set_interval(10.0, 30.0)
    assert ka.get_timer() == 38.0
    second = sent(ka.handle_timer(38.0))
    assert second.call_id != options.call_id
    assert ka.handle_timer(42.0) == [KeepaliveFailed("OPTIONS keep-alive timed out")]
    assert ka.get_timer() is None
    assert not ka.running


# -- answers to inbound requests ---------------------------------------------------------------


def test_answer_invite_with_received_rport_and_a_stable_tag() -> None:
    raw = (
        b"INVITE sip:alice@192.0.2.10:5060 SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 198.51.100.1:5060;branch=z9hG4bKproxy;rport\r\n"
        b"Via: SIP/2.0/UDP 10.0.0.9:5062;branch=z9hG4bKcaller\r\n"
        b"From: <sip:bob@example.com>;tag=b1\r\nTo: <sip:alice@example.com>\r\n"
        b"Call-ID: c1\r\nCSeq: 7 INVITE\r\nContent-Length: 0\r\n\r\n"
    )
    request = parse_message(raw)
    assert isinstance(request, Request)
    data, dest = answer(
        request, 480, "Temporarily Unavailable", source=("198.51.100.1", 5999), transport="udp"
    )
    response = parse_message(data)
    assert isinstance(response, Response)
    assert (response.status, response.reason) == (480, "Temporarily Unavailable")
    assert dest == ("198.51.100.1", 5999)
    top = response.vias[0]
    assert (top.received, top.rport, top.branch) == ("198.51.100.1", 5999, "z9hG4bKproxy")
    assert response.vias[1].branch == "z9hG4bKcaller"
    assert response.cseq.seq == 7
    assert response.call_id == "c1"
    again, _ = answer(request, 480, "Temporarily Unavailable", source=dest, transport="udp")
    assert parse_message(again).to.tag == response.to.tag
    ack = parse_message(raw.replace(b"INVITE", b"ACK"))
    assert isinstance(ack, Request)
    with pytest.raises(LocalProtocolError):
        answer(ack, 200, "OK", source=dest, transport="udp")
