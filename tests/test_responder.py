"""The stateless responder core: answers, routing (RFC 3261 §18.2.2, RFC 3581), STUN, CRLF."""

from __future__ import annotations

from sipalive.sip.message import Response, parse_message
from sipalive.sip.responder import ReplyKind, ResponderConfig, StatelessResponder
from sipalive.stun import codec as stun
from sipfactory import options

SRC = ("198.51.100.7", 40000)


def answer(data: bytes, config: ResponderConfig | None = None) -> Response:
    reply = StatelessResponder(config).handle_datagram(data, SRC)
    assert reply is not None
    msg = parse_message(reply.data)
    assert isinstance(msg, Response)
    return msg


def test_options_gets_200_with_capabilities() -> None:
    req = options()
    resp = answer(req.encode(), ResponderConfig(reason="Alive", supported=("path",)))
    assert (resp.status, resp.reason) == (200, "Alive")
    assert resp.headers.get("Allow") == "OPTIONS"
    assert resp.headers.get("Accept") == "application/sdp"
    assert resp.headers.get("Supported") == "path"
    assert resp.call_id == req.call_id
    assert resp.cseq == req.cseq
    assert resp.from_.tag == req.from_.tag
    assert resp.to.tag  # added
    assert resp.branch == req.branch


def test_to_tag_is_stable_for_retransmissions() -> None:
    data = options().encode()
    cfg = ResponderConfig(tag_key=b"secret")
    assert answer(data, cfg).to.tag == answer(data, cfg).to.tag


def test_rport_routes_to_source_and_adds_received() -> None:
    req = options()  # Via: SIP/2.0/UDP 192.0.2.1:5099;branch=...;rport
    reply = StatelessResponder().handle_datagram(req.encode(), SRC)
    assert reply is not None
    assert reply.addr == SRC
    via = parse_message(reply.data).vias[0]
    assert (via.received, via.rport, via.host, via.port) == (SRC[0], SRC[1], "192.0.2.1", 5099)


def test_without_rport_answer_goes_to_the_via_port() -> None:
    data = options().encode().replace(b";rport", b"")
    reply = StatelessResponder().handle_datagram(data, SRC)
    assert reply is not None
    assert reply.addr == (SRC[0], 5099)  # §18.2.2: received IP, sent-by port
    via = parse_message(reply.data).vias[0]
    assert via.received == SRC[0]
    assert via.rport is None


def test_other_methods() -> None:
    invite = options().encode().replace(b"OPTIONS", b"INVITE")
    resp = answer(invite)
    assert resp.status == 405
    assert resp.headers.get("Allow") == "OPTIONS"
    assert answer(options().encode().replace(b"OPTIONS", b"FOO")).status == 501
    ack = options().encode().replace(b"OPTIONS", b"ACK")
    assert StatelessResponder().handle_datagram(ack, SRC) is None


def test_require_and_scheme() -> None:
    data = options().encode().replace(b"Accept:", b"Require: foo, bar\r\nAccept:")
    resp = answer(data)
    assert resp.status == 420
    assert resp.headers.get("Unsupported") == "foo, bar"
    tel = options().encode().replace(b"OPTIONS sip:ping@192.0.2.10:5060", b"OPTIONS urn:x:y")
    assert answer(tel).status == 416


def test_max_forwards_zero_is_answered() -> None:
    data = options().encode().replace(b"Max-Forwards: 70", b"Max-Forwards: 0")
    assert answer(data).status == 200


def test_malformed_request_gets_400_and_response_is_dropped() -> None:
    bad = options().encode().replace(b"CSeq: 1 OPTIONS", b"CSeq: x OPTIONS")
    reply = StatelessResponder().handle_datagram(bad, SRC)
    assert reply is not None
    assert reply.status == 400
    assert reply.error is not None
    assert b"Call-ID: cid-1@test\r\n" in reply.data
    resp = answer(options().encode())
    assert StatelessResponder().handle_datagram(resp.encode(), SRC) is None
    assert StatelessResponder().handle_datagram(b"SIP/2.0 garbage\r\n\r\n", SRC) is None
    assert StatelessResponder().handle_datagram(b"no via at all\r\n\r\n", SRC) is None


def test_crlf_keepalive_over_udp_gets_nothing() -> None:
    r = StatelessResponder()
    assert r.handle_datagram(b"\r\n\r\n", SRC) is None
    assert r.handle_datagram(b"\r\n", SRC) is None
    assert r.handle_datagram(b"", SRC) is None


def test_stun_binding_request_gets_xor_mapped_address() -> None:
    txid = bytes(range(12))
    reply = StatelessResponder().handle_datagram(stun.binding_request(txid), SRC)
    assert reply is not None
    assert reply.kind is ReplyKind.STUN
    msg = stun.parse(reply.data)
    assert msg.msg_class is stun.StunClass.SUCCESS
    assert msg.transaction_id == txid
    assert msg.xor_mapped_address == SRC
    assert (
        StatelessResponder(ResponderConfig(stun=False)).handle_datagram(
            stun.binding_request(txid), SRC
        )
        is None
    )
    # a STUN response or garbage starting like STUN is not answered
    assert StatelessResponder().handle_datagram(reply.data, SRC) is None
    assert StatelessResponder().handle_datagram(b"\x00\x01\x00\x00junk", SRC) is None


def test_tcp_request_without_rport_keeps_via() -> None:
    req = options("z9hG4bKt", "TCP")
    data = req.encode().replace(b";rport", b"")
    msg = parse_message(data)
    from sipalive.sip.message import Request

    assert isinstance(msg, Request)
    reply = StatelessResponder().handle_request(msg, ("192.0.2.1", 5099), "tcp")
    assert reply is not None
    resp = parse_message(reply.data)
    assert resp.headers.get("Via") == req.headers.get(
        "Via",
    ).replace(";rport", "")  # type: ignore[union-attr]


def test_fuzz_regressions_get_answered_or_dropped() -> None:
    """Inputs the atheris target once crashed on (tests/data/fuzz-regressions)."""
    from pathlib import Path

    folder = Path(__file__).parent / "data" / "fuzz-regressions"
    cases = sorted(folder.glob("*.bin"))
    assert cases
    for case in cases:
        reply = StatelessResponder().handle_datagram(case.read_bytes(), SRC)
        assert reply is None or reply.data.startswith(b"SIP/2.0 ")


def test_malformed_require_is_a_400() -> None:
    data = options().encode().replace(b"Accept:", b'Require: a, "open\r\nAccept:')
    reply = StatelessResponder().handle_datagram(data, SRC)
    assert reply is not None
    assert reply.status == 400
    assert reply.error == "unterminated quoted-string"
    assert parse_message(reply.data).to.tag
