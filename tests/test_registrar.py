"""The pure registrar stepped through virtual (wall-clock) time by hand: REGISTER in,
responses and binding events out. No sockets, no clock."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import pytest

from sipalive.errors import ConfigError, LocalProtocolError
from sipalive.sip.build import make_request
from sipalive.sip.digest import Challenge, authorization
from sipalive.sip.headers import parse_name_addr
from sipalive.sip.message import Request, Response, parse_message
from sipalive.sip.registrar import (
    ANSWER_CACHE,
    Binding,
    BindingAdded,
    BindingExpired,
    BindingRefreshed,
    BindingRemoved,
    Event,
    Flow,
    RegisterRejected,
    Registrar,
    RegistrarConfig,
    RemoveCause,
    SendResponse,
    Users,
    http_date,
)

T0 = 1_700_000_000.0
SECRET = b"0123456789abcdef-secret"
PASSWORD = "Pw:with#odd chars"
UA = ("198.51.100.7", 40123)  # the UA's public address (its NAT binding)
LOCAL = ("192.0.2.1", 5060)
UDP = Flow("udp", UA, LOCAL)
TCP = Flow("tcp", UA, LOCAL, connection=7)
REGISTRAR_URI = "sip:example.com"
AOR = "sip:alice@example.com"

_ids = itertools.count(1)


def tokens() -> Callable[[], str]:
    counter = itertools.count(1)
    return lambda: f"{next(counter):016x}"


def make_registrar(secret: bytes = SECRET, **overrides: object) -> Registrar:
    config = RegistrarConfig(realm="example.com", **overrides)  # type: ignore[arg-type]
    users = Users({"alice": PASSWORD, "bob": "bob-pw"})
    return Registrar(config, users, secret=secret, rand_token=tokens())


def register(
    *contacts: str,
    expires: int | None = None,
    call_id: str = "call-1",
    cseq: int = 1,
    user: str = "alice",
    auth: tuple[str, str] | None = None,
    branch: str | None = None,
    extra: Sequence[tuple[str, str]] = (),
    via_params: str = "",
    transport: str = "udp",
) -> Request:
    fields = [("Contact", c) for c in contacts]
    if expires is not None:
        fields.append(("Expires", str(expires)))
    if auth is not None:
        fields.append(auth)
    fields.extend(extra)
    request = make_request(
        "REGISTER",
        REGISTRAR_URI,
        transport=transport,
        local=("10.0.0.5", 5060),
        branch=branch or f"b{next(_ids)}",
        from_uri=f"sip:{user}@example.com",
        from_tag="ft",
        call_id=call_id,
        cseq=cseq,
        to_uri=f"sip:{user}@example.com",
        extra=fields,
    )
    if via_params:
        request.headers.set("Via", f"{request.headers.get('Via')}{via_params}")
        request = Request("REGISTER", request.uri, request.headers)
    return request


def response_of(events: Sequence[object]) -> Response:
    assert isinstance(events[0], SendResponse), events
    message = parse_message(events[0].data)
    assert isinstance(message, Response)
    assert message.status == events[0].status
    return message


def challenges(response: Response) -> list[Challenge]:
    return [Challenge.parse(v) for v in response.headers.get_fields("WWW-Authenticate")]


def credentials(
    registrar: Registrar,
    now: float,
    *,
    algorithm: str = "SHA-256",
    password: str = PASSWORD,
    user: str = "alice",
    nc: int = 1,
    uri: str = REGISTRAR_URI,
) -> tuple[str, str]:
    """An Authorization answering a fresh 401 of ``registrar`` at ``now``."""
    first = response_of(registrar.receive(register("<sip:x@10.0.0.5>", user=user), UDP, now))
    chosen = next(c for c in challenges(first) if c.algorithm == algorithm)
    return authorization(
        chosen, username=user, password=password, method="REGISTER", uri=uri,
        cnonce="cn0123", nc=nc,
    )  # fmt: skip


def registered(
    registrar: Registrar, now: float, *contacts: str, flow: Flow = UDP, **kw: object
) -> list[Event]:
    """REGISTER ``contacts`` with valid credentials; the events (the 200 first)."""
    user = str(kw.get("user", "alice"))
    auth = credentials(
        registrar, now, user=user, password=PASSWORD if user == "alice" else "bob-pw"
    )
    events = registrar.receive(register(*contacts, auth=auth, **kw), flow, now)  # type: ignore[arg-type]
    assert response_of(events).status == 200, response_of(events)
    return events


def bindings_of(events: Sequence[Event]) -> list[Binding]:
    return [e.binding for e in events if not isinstance(e, SendResponse | RegisterRejected)]


def contact_expires(response: Response) -> dict[str, int]:
    out = {}
    for value in response.headers.get_all("Contact"):
        addr = parse_name_addr(value)
        out[addr.uri] = int(dict(addr.params)["expires"] or -1)
    return out


# -- authentication ----------------------------------------------------------------------


def test_challenge_offers_sha256_then_md5_with_qop_auth() -> None:
    r = make_registrar()
    events = r.receive(register("<sip:alice@10.0.0.5>"), UDP, T0)
    response = response_of(events)
    assert response.status == 401
    offered = challenges(response)
    assert [c.algorithm for c in offered] == ["SHA-256", "MD5"]
    assert all(c.qop == ("auth",) and c.realm == "example.com" and not c.stale for c in offered)
    assert len(events) == 1  # a plain challenge is not worth a log line
    assert response.to.tag  # a final response outside a dialog carries a To tag
    assert (response.vias[0].received, response.vias[0].rport) == UA  # RFC 3581
    assert events[0].dest == UA  # type: ignore[union-attr]
    assert r.bindings() == []


@pytest.mark.parametrize("algorithm", ["SHA-256", "MD5"])
def test_both_algorithms_register(algorithm: str) -> None:
    r = make_registrar()
    auth = credentials(r, T0, algorithm=algorithm)
    events = r.receive(register("<sip:alice@10.0.0.5>", auth=auth), UDP, T0 + 1)
    assert response_of(events).status == 200
    (added,) = [e for e in events if isinstance(e, BindingAdded)]
    b = added.binding
    assert (b.aor, b.contact, b.flow, b.expires_at) == (
        AOR,
        "sip:alice@10.0.0.5",
        UDP,
        T0 + 1 + 3600,
    )


def test_algorithms_offered_follow_the_config() -> None:
    r = make_registrar(algorithms=("MD5",))
    response = response_of(r.receive(register("<sip:alice@h>"), UDP, T0))
    assert [c.algorithm for c in challenges(response)] == ["MD5"]
    sha = Challenge("example.com", r.nonce(T0), "SHA-256", ("auth",))
    auth = authorization(
        sha, username="alice", password=PASSWORD, method="REGISTER", uri=REGISTRAR_URI,
        cnonce="c", nc=1,
    )  # fmt: skip
    events = r.receive(register("<sip:alice@h>", auth=auth), UDP, T0)
    assert response_of(events).status == 401
    assert "not offered" in events[1].detail  # type: ignore[union-attr]


def test_wrong_password_and_unknown_user_are_challenged_again_and_reported() -> None:
    r = make_registrar()
    auth = credentials(r, T0, password="wrong")
    events = r.receive(register("<sip:alice@h>", auth=auth), UDP, T0)
    response = response_of(events)
    assert response.status == 401
    assert not any(c.stale for c in challenges(response))
    (rejected,) = events[1:]
    assert isinstance(rejected, RegisterRejected)
    assert (rejected.status, rejected.aor, rejected.source) == (401, AOR, UA)
    assert rejected.detail == "wrong password for user alice"
    assert PASSWORD not in repr(events)

    auth = credentials(r, T0, user="mallory", password="x")
    events = r.receive(register("<sip:mallory@h>", auth=auth, user="mallory"), UDP, T0)
    assert response_of(events).status == 401
    assert events[1].detail == "unknown user mallory"  # type: ignore[union-attr]


def test_expired_nonce_is_stale_when_the_password_is_right() -> None:
    r = make_registrar(nonce_ttl=300)
    auth = credentials(r, T0)
    events = r.receive(register("<sip:alice@h>", auth=auth), UDP, T0 + 301)
    response = response_of(events)
    assert response.status == 401
    assert all(c.stale for c in challenges(response))
    assert len(events) == 1  # stale is routine: no log line
    assert r.bindings() == []
    # within its lifetime the same nonce is good
    r2 = make_registrar(nonce_ttl=300)
    assert response_of(r2.receive(register("<sip:a@h>", auth=auth), UDP, T0 + 300)).status == 200


def test_nonce_of_another_secret_is_stale_and_garbage_nonce_too() -> None:
    auth = credentials(make_registrar(secret=b"x" * 32), T0)
    r = make_registrar()
    response = response_of(r.receive(register("<sip:a@h>", auth=auth), UDP, T0))
    assert response.status == 401
    assert all(c.stale for c in challenges(response))
    garbage = Challenge("example.com", "not-one-of-ours", "MD5", ("auth",))
    auth = authorization(
        garbage, username="alice", password=PASSWORD, method="REGISTER", uri=REGISTRAR_URI,
        cnonce="c", nc=1,
    )  # fmt: skip
    response = response_of(r.receive(register("<sip:a@h>", auth=auth), UDP, T0))
    assert response.status == 401
    assert all(c.stale for c in challenges(response))


def test_nonce_survives_a_restart_with_the_same_secret() -> None:
    auth = credentials(make_registrar(), T0)
    assert response_of(make_registrar().receive(register("<sip:a@h>", auth=auth), UDP, T0 + 5))


def test_replayed_nonce_count_is_stale_a_growing_one_is_fine() -> None:
    r = make_registrar()
    first = response_of(r.receive(register("<sip:x@h>"), UDP, T0))
    challenge = challenges(first)[0]

    def with_nc(nc: int) -> tuple[str, str]:
        return authorization(
            challenge, username="alice", password=PASSWORD, method="REGISTER",
            uri=REGISTRAR_URI, cnonce="cn", nc=nc,
        )  # fmt: skip

    assert (
        response_of(r.receive(register("<sip:a@h>", auth=with_nc(1), cseq=1), UDP, T0)).status
        == 200
    )
    assert (
        response_of(r.receive(register("<sip:a@h>", auth=with_nc(2), cseq=2), UDP, T0)).status
        == 200
    )
    replay = response_of(r.receive(register("<sip:a@h>", auth=with_nc(2), cseq=3), UDP, T0))
    assert replay.status == 401
    assert all(c.stale for c in challenges(replay))


def test_authorization_uri_must_be_the_request_uri() -> None:
    r = make_registrar()
    auth = credentials(r, T0, uri="sip:elsewhere.example")
    events = r.receive(register("<sip:a@h>", auth=auth), UDP, T0)
    assert response_of(events).status == 400
    assert "uri" in events[1].detail  # type: ignore[union-attr]


def test_authenticated_user_may_only_register_its_own_aor() -> None:
    r = make_registrar()
    auth = credentials(r, T0, user="bob", password="bob-pw")
    events = r.receive(register("<sip:a@h>", auth=auth, user="alice"), UDP, T0)
    assert response_of(events).status == 403
    assert events[1].detail == f"user bob may not register {AOR}"  # type: ignore[union-attr]


def test_to_without_user_is_404_before_any_challenge() -> None:
    r = make_registrar()
    request = make_request(
        "REGISTER", REGISTRAR_URI, transport="udp", local=("10.0.0.5", 5060), branch="b",
        from_uri="sip:example.com", from_tag="t", call_id="c", to_uri="sip:example.com",
        extra=[("Contact", "<sip:a@h>")],
    )  # fmt: skip
    assert response_of(r.receive(request, UDP, T0)).status == 404


def test_unsupported_require_is_420_outbound_is_fine() -> None:
    r = make_registrar()
    events = r.receive(register("<sip:a@h>", extra=[("Require", "100rel, foo")]), UDP, T0)
    response = response_of(events)
    assert response.status == 420
    assert response.headers.get("Unsupported") == "100rel, foo"
    outbound = r.receive(register("<sip:a@h>", extra=[("Require", "outbound")]), UDP, T0)
    assert response_of(outbound).status == 401


# -- contacts and expiry -----------------------------------------------------------------


def test_200_lists_every_contact_of_the_aor_with_its_remaining_expires() -> None:
    r = make_registrar()
    registered(r, T0, "<sip:alice@10.0.0.5>", expires=600, cseq=1)
    events = registered(r, T0 + 100, "<sip:alice@10.0.0.6>;expires=120", cseq=2)
    response = response_of(events)
    assert contact_expires(response) == {"sip:alice@10.0.0.5": 500, "sip:alice@10.0.0.6": 120}
    assert response.headers.get("Date") == http_date(T0 + 100)
    assert response.headers.get("Flow-Timer") is None
    assert http_date(0) == "Thu, 01 Jan 1970 00:00:00 GMT"


def test_a_query_without_contact_lists_and_changes_nothing() -> None:
    r = make_registrar()
    registered(r, T0, "<sip:alice@10.0.0.5>", expires=600, cseq=1)
    events = registered(r, T0 + 10, cseq=2)
    assert contact_expires(response_of(events)) == {"sip:alice@10.0.0.5": 590}
    assert len(events) == 1


def test_contact_expires_beats_the_header_which_beats_the_default() -> None:
    r = make_registrar(default_expires=900)
    registered(r, T0, "<sip:a@h1>;expires=100", "<sip:a@h2>", expires=200)
    registered(r, T0, "<sip:a@h3>", call_id="other")
    got = {b.contact: b.expires_at - T0 for b in r.bindings(AOR)}
    assert got == {"sip:a@h1": 100, "sip:a@h2": 200, "sip:a@h3": 900}


def test_too_brief_is_423_with_min_expires_and_changes_nothing() -> None:
    r = make_registrar(min_expires=60)
    auth = credentials(r, T0)
    events = r.receive(register("<sip:a@h1>", "<sip:a@h2>;expires=30", auth=auth), UDP, T0)
    response = response_of(events)
    assert response.status == 423
    assert response.headers.get("Min-Expires") == "60"
    assert r.bindings() == []
    assert isinstance(events[1], RegisterRejected)


def test_too_long_is_shortened_to_max_expires() -> None:
    r = make_registrar(max_expires=1800, default_expires=1800)
    events = registered(r, T0, "<sip:a@h>", expires=100_000_000_000)
    assert contact_expires(response_of(events)) == {"sip:a@h": 1800}


def test_refresh_unregister_and_expiry() -> None:
    r = make_registrar()
    (_, added) = registered(r, T0, "<sip:a@h>", expires=120, cseq=1)
    assert isinstance(added, BindingAdded)
    assert r.get_timer() == T0 + 120
    (_, refreshed) = registered(r, T0 + 60, "<sip:a@h>", expires=120, cseq=2)
    assert isinstance(refreshed, BindingRefreshed)
    assert refreshed.previous == added.binding
    assert refreshed.binding.registered_at == T0
    assert r.get_timer() == T0 + 180
    assert r.handle_timer(T0 + 179) == []
    (expired,) = r.handle_timer(T0 + 180)
    assert isinstance(expired, BindingExpired)
    assert expired.binding == refreshed.binding
    assert r.bindings() == []
    assert r.get_timer() is None

    registered(r, T0 + 200, "<sip:a@h>", expires=120, cseq=3)
    events = registered(r, T0 + 210, "<sip:a@h>", expires=0, cseq=4)
    assert contact_expires(response_of(events)) == {}
    (removed,) = events[1:]
    assert isinstance(removed, BindingRemoved)
    assert removed.cause == RemoveCause.UNREGISTERED
    assert r.get_timer() is None


def test_same_contact_with_other_parameters_is_the_same_binding() -> None:
    r = make_registrar()
    registered(r, T0, "<sip:a@h:5060;transport=udp>", cseq=1)
    (_, event) = registered(r, T0, "<sip:a@H;foo=bar>", cseq=2)
    assert isinstance(event, BindingRefreshed)
    (_, event) = registered(r, T0, "<sip:a@h;transport=tcp>", cseq=3)
    assert isinstance(event, BindingAdded)


def test_wildcard_with_expires_0_removes_every_binding() -> None:
    r = make_registrar()
    registered(r, T0, "<sip:a@h1>", "<sip:a@h2>", cseq=1)
    registered(r, T0, "<sip:bob@h3>", cseq=1, call_id="bob-call", user="bob")  # another AOR
    events = registered(r, T0 + 5, "*", expires=0, cseq=2)
    assert contact_expires(response_of(events)) == {}
    removed = events[1:]
    assert {b.contact for b in bindings_of(removed)} == {"sip:a@h1", "sip:a@h2"}
    assert all(isinstance(e, BindingRemoved) and e.cause == RemoveCause.WILDCARD for e in removed)
    assert [b.aor for b in r.bindings()] == ["sip:bob@example.com"]


@pytest.mark.parametrize(
    ("contacts", "expires"),
    [(("*",), None), (("*",), 60), (("*", "<sip:a@h>"), 0)],
)
def test_wildcard_needs_expires_0_and_nothing_else(
    contacts: tuple[str, ...], expires: int | None
) -> None:
    r = make_registrar()
    registered(r, T0, "<sip:a@h>", cseq=1)
    auth = credentials(r, T0)
    events = r.receive(register(*contacts, expires=expires, auth=auth, cseq=2), UDP, T0)
    assert response_of(events).status == 400
    assert len(r.bindings()) == 1


def test_cseq_ordering_per_call_id() -> None:
    r = make_registrar()
    registered(r, T0, "<sip:a@h>", expires=300, cseq=5)
    for cseq in (5, 4):  # not higher in the same Call-ID: refused, nothing changed
        auth = credentials(r, T0)
        events = r.receive(register("<sip:a@h>", expires=0, cseq=cseq, auth=auth), UDP, T0)
        assert response_of(events).status == 400
        assert "CSeq" in events[1].detail  # type: ignore[union-attr]
    auth = credentials(r, T0)
    events = r.receive(register("*", expires=0, cseq=5, auth=auth), UDP, T0)
    assert response_of(events).status == 400
    assert len(r.bindings()) == 1
    # another Call-ID (a rebooted UA) updates whatever its CSeq
    (_, event) = registered(r, T0 + 1, "<sip:a@h>", expires=600, cseq=1, call_id="new")
    assert isinstance(event, BindingRefreshed)
    assert event.binding.call_id == "new"
    assert event.binding.expires_at == T0 + 601


def test_malformed_contact_or_expires_is_400() -> None:
    r = make_registrar()
    auth = credentials(r, T0)
    assert response_of(r.receive(register("<sip:a@h>", expires=None, auth=auth,
                                          extra=[("Expires", "soon")]), UDP, T0)).status == 400  # fmt: skip
    auth = credentials(r, T0)
    assert response_of(r.receive(register("<tel:+123>", auth=auth), UDP, T0)).status == 400


def test_contact_limits() -> None:
    r = make_registrar(max_contacts=2)
    registered(r, T0, "<sip:a@h1>", "<sip:a@h2>", cseq=1)
    auth = credentials(r, T0)
    events = r.receive(register("<sip:a@h3>", cseq=2, auth=auth), UDP, T0)
    assert response_of(events).status == 403
    # replacing one by another in the same request stays within the limit
    registered(r, T0, "<sip:a@h3>", "<sip:a@h1>;expires=0", cseq=3)
    assert {b.contact for b in r.bindings()} == {"sip:a@h2", "sip:a@h3"}

    full = make_registrar(max_bindings=1)
    registered(full, T0, "<sip:a@h1>", cseq=1)
    auth = credentials(full, T0)
    response = response_of(full.receive(register("<sip:a@h2>", cseq=2, auth=auth), UDP, T0))
    assert response.status == 503
    assert response.headers.get("Retry-After") == "60"


# -- flows, outbound, Flow-Timer ----------------------------------------------------------


def test_binding_records_the_flow_and_connection_use_is_counted() -> None:
    r = make_registrar()
    (_, added) = registered(r, T0, "<sip:a@10.0.0.5;transport=tcp>", flow=TCP, transport="tcp")
    assert isinstance(added, BindingAdded)
    assert added.binding.flow == TCP
    assert r.uses_connection(7)
    assert not r.uses_connection(8)
    moved = Flow("tcp", ("198.51.100.7", 40999), LOCAL, connection=8)
    (_, refreshed) = registered(
        r, T0, "<sip:a@10.0.0.5;transport=tcp>", flow=moved, transport="tcp", cseq=2
    )
    assert isinstance(refreshed, BindingRefreshed)
    assert refreshed.binding.flow == moved
    assert not r.uses_connection(7)
    assert r.uses_connection(8)
    assert r.remove(AOR, refreshed.binding.key, RemoveCause.UNAVAILABLE) == [
        BindingRemoved(refreshed.binding, RemoveCause.UNAVAILABLE)
    ]
    assert not r.uses_connection(8)
    assert r.remove(AOR, refreshed.binding.key, "again") == []


def test_tcp_answer_goes_back_on_the_connection_with_rport() -> None:
    r = make_registrar()
    events = r.receive(register("<sip:a@h>", transport="tcp"), TCP, T0)
    response = response_of(events)
    assert events[0].dest == UA  # type: ignore[union-attr]
    assert response.vias[0].rport == UA[1]


OUTBOUND = '<sip:alice@10.0.0.5;ob>;+sip.instance="<urn:uuid:00000000-0000-1000-8000-000A95A0E128>";reg-id=1'


def test_outbound_binding_is_keyed_by_instance_and_reg_id_and_gets_flow_timer() -> None:
    r = make_registrar(flow_timer=25)
    supported = [("Supported", "outbound, path")]
    events = registered(r, T0, OUTBOUND, extra=supported, cseq=1)
    response = response_of(events)
    assert response.headers.get("Require") == "outbound"
    assert response.headers.get("Flow-Timer") == "25"
    (value,) = response.headers.get_all("Contact")
    assert '+sip.instance="<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"' in value
    assert "reg-id=1" in value
    moved = OUTBOUND.replace("10.0.0.5", "10.0.0.9")
    (_, event) = registered(r, T0, moved, extra=supported, cseq=2)
    assert isinstance(event, BindingRefreshed)  # same instance and reg-id: replaced
    assert [b.contact for b in r.bindings()] == ["sip:alice@10.0.0.9;ob"]
    two = OUTBOUND.replace("reg-id=1", "reg-id=2")
    auth = credentials(r, T0)
    both = r.receive(register(OUTBOUND, two, auth=auth, extra=supported, cseq=3), UDP, T0)
    assert response_of(both).status == 400  # RFC 5626 §6: one flow per REGISTER


def test_flow_timer_only_when_asked_unless_always() -> None:
    r = make_registrar(flow_timer=30)
    plain = response_of(registered(r, T0, "<sip:a@h>", cseq=1))
    assert plain.headers.get("Flow-Timer") is None
    keep = response_of(registered(r, T0, "<sip:a@h>", cseq=2, via_params=";keep"))
    assert keep.headers.get("Flow-Timer") == "30"
    ob = response_of(registered(r, T0, "<sip:a@h;ob>", cseq=3))
    assert ob.headers.get("Flow-Timer") == "30"
    always = make_registrar(flow_timer=30, flow_timer_always=True)
    assert response_of(registered(always, T0, "<sip:a@h>")).headers.get("Flow-Timer") == "30"


# -- retransmissions ----------------------------------------------------------------------


def test_udp_retransmission_gets_the_same_answer_and_changes_nothing() -> None:
    r = make_registrar()
    auth = credentials(r, T0)
    request = register("<sip:a@h>", auth=auth, branch="z9hG4bKsame")
    first = r.receive(request, UDP, T0)
    assert isinstance(first[1], BindingAdded)
    again = r.receive(request, UDP, T0 + 2)
    assert again == [first[0]]  # same octets (same To tag), no event
    later = r.receive(request, UDP, T0 + 40)  # after Timer J: a new request, a replay
    response = response_of(later)
    assert response.status == 401
    assert all(c.stale for c in challenges(response))
    assert len(r.bindings()) == 1


def test_no_answer_cache_on_streams_and_the_cache_is_bounded() -> None:
    r = make_registrar()
    request = register("<sip:a@h>", branch="z9hG4bKtcp", transport="tcp")
    r.receive(request, TCP, T0)
    assert r._answers == {}
    for i in range(ANSWER_CACHE + 10):
        r.receive(register("<sip:a@h>", branch=f"z9hG4bK{i}"), UDP, T0)
    assert len(r._answers) == ANSWER_CACHE


# -- restore and misuse -------------------------------------------------------------------


def test_restore_keeps_live_bindings_and_reports_expired_ones() -> None:
    r = make_registrar()
    events = registered(r, T0, "<sip:a@h1>;expires=100", "<sip:a@h2>;expires=1000")
    kept = bindings_of(events)
    fresh = make_registrar()
    out = fresh.restore(kept, T0 + 500)
    assert out == [BindingExpired(kept[0])]
    assert [b.contact for b in fresh.bindings()] == ["sip:a@h2"]
    assert fresh.get_timer() == T0 + 1000
    assert len(fresh) == 1


def test_misuse_and_bad_config() -> None:
    r = make_registrar()
    options = make_request(
        "OPTIONS", REGISTRAR_URI, transport="udp", local=LOCAL, branch="b", from_uri=AOR,
        from_tag="t", call_id="c",
    )  # fmt: skip
    with pytest.raises(LocalProtocolError):
        r.receive(options, UDP, T0)
    with pytest.raises(LocalProtocolError):
        make_registrar(secret=b"short")
    with pytest.raises(LocalProtocolError):
        Registrar(RegistrarConfig(), Users({}), secret=SECRET, rand_token=lambda: "xyz").nonce(T0)
    for bad in (
        {"min_expires": 0},
        {"min_expires": 100, "max_expires": 50},
        {"default_expires": 10},
        {"algorithms": ("SHA-512",)},
        {"algorithms": ()},
        {"flow_timer_always": True},
        {"realm": 'a"b'},
        {"max_contacts": 0},
    ):
        with pytest.raises(ConfigError):
            RegistrarConfig(**bad)


def test_binding_contact_value() -> None:
    b = Binding(AOR, "k", "sip:a@h", T0 + 10.2, "c", 1, UDP, q="0.5")
    assert b.remaining(T0) == 11
    assert b.contact_value(T0) == "<sip:a@h>;expires=11;q=0.5"
    assert b.remaining(T0 + 20) == 0


# -- the users file ----------------------------------------------------------------------


def test_users_file_format() -> None:
    users = Users.parse("# who\n\nalice:pa:ss #1\r\n  bob:x\n   # indented comment\n")
    assert users.password("alice") == "pa:ss #1"
    assert users.password("bob") == "x"
    assert "carol" not in users
    assert len(users) == 2
    assert "pa:ss" not in repr(users)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("alice", "users:1: expected user:password"),
        ("ok:1\nal ice:secret-one", "users:2: not a usable SIP user name"),
        (":secret-one", "users:1: not a usable SIP user name"),
        ("alice:", "users:1: empty password for alice"),
        ("alice:secret-one\nalice:secret-two", "users:2: user alice is listed twice"),
    ],
)
def test_users_file_errors_name_the_line_never_the_secret(text: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        Users.parse(text)
    assert str(info.value) == reason
    assert "secret" not in str(info.value)
