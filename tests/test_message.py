"""SIP message codec: round trips, header forms, bounds, and the fuzz invariant."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mutate import mutate
from sipalive.errors import ParseError
from sipalive.sip.headers import Headers, parse_name_addr, parse_via_value
from sipalive.sip.message import Request, Response, parse_message
from sipalive.sip.uri import parse_uri

BASE = (
    b"OPTIONS sip:ping@example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1;rport\r\n"
    b"From: <sip:a@example.com>;tag=1\r\n"
    b"To: <sip:ping@example.com>\r\n"
    b"Call-ID: abc@192.0.2.1\r\n"
    b"CSeq: 7 OPTIONS\r\n"
    b"Content-Length: 0\r\n\r\n"
)


def test_basic_request() -> None:
    msg = parse_message(BASE)
    assert isinstance(msg, Request)
    assert (msg.method, msg.uri) == ("OPTIONS", "sip:ping@example.com")
    assert msg.branch == "z9hG4bK1"
    assert msg.vias[0].has_rport
    assert msg.vias[0].rport is None
    assert msg.call_id == "abc@192.0.2.1"
    assert (msg.cseq.seq, msg.cseq.method) == (7, "OPTIONS")
    assert msg.encode() == BASE


def test_compact_forms_and_case() -> None:
    data = (
        b"OPTIONS sip:x@example.com SIP/2.0\r\nv: SIP/2.0/TCP h;branch=z9hG4bK2\r\n"
        b"f: <sip:a@b>;tag=9\r\nt: sip:x@example.com\r\ni: cid\r\nCSEQ: 1 OPTIONS\r\nl: 0\r\n\r\n"
    )
    msg = parse_message(data)
    assert msg.headers.get("Call-ID") == "cid"
    assert msg.headers.get("content-length") == "0"
    assert msg.headers.get("VIA") == "SIP/2.0/TCP h;branch=z9hG4bK2"
    assert "From" in msg.headers
    assert msg.encode() == data  # names are kept as received


def test_multi_valued_via_and_folding() -> None:
    data = BASE.replace(
        b"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1;rport\r\n",
        b"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1;rport,\r\n"
        b"  SIP/2.0/TCP [2001:db8::1]:5070;branch=z9hG4bK0;received=192.0.2.9\r\n"
        b"Via: SIP / 2.0 / TLS proxy.example.com ; branch = z9hG4bKz\r\n",
    )
    msg = parse_message(data)
    assert [(v.transport, v.host, v.port) for v in msg.vias] == [
        ("UDP", "192.0.2.1", 5060),
        ("TCP", "2001:db8::1", 5070),
        ("TLS", "proxy.example.com", None),
    ]
    assert msg.vias[1].received == "192.0.2.9"
    assert msg.vias[2].branch == "z9hG4bKz"
    assert len(msg.headers.get_all("via")) == 3


def test_stream_of_leading_crlf_and_trailing_garbage() -> None:
    msg = parse_message(b"\r\n\r\n" + BASE + b"junk after the body")
    assert msg.body == b""


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (BASE.replace(b"SIP/2.0\r\n", b"SIP/3.0\r\n", 1), 505),
        (BASE.replace(b"CSeq: 7 OPTIONS", b"CSeq: 7 INVITE"), 400),
        (BASE.replace(b"CSeq: 7 OPTIONS", b"CSeq: 99999999999 OPTIONS"), 400),
        (BASE.replace(b"Content-Length: 0", b"Content-Length: 10"), 400),
        (BASE.replace(b"Content-Length: 0", b"Content-Length: 99999999999"), 413),
        (BASE.replace(b"Call-ID: abc@192.0.2.1\r\n", b""), 400),
        (BASE.replace(b"To: <sip:ping@example.com>", b'To: "open <sip:x@y>'), 400),
        (BASE.replace(b"\r\n\r\n", b"\r\n"), 400),
        (BASE.replace(b"OPTIONS sip:", b"OPTIONS  sip:", 1), 400),
        (BASE.replace(b"Via: SIP/2.0/UDP", b"Via: HTTP/2.0/UDP"), 400),
        (
            BASE.replace(b"Via: SIP/2.0/UDP 192.0.2.1:5060", b"Via: SIP/2.0/UDP 192.0.2.1:99999"),
            400,
        ),
        (BASE + b"x" * 70000, 413),
        (b"\x00\x01garbage", 400),
        (b"", 400),
    ],
)
def test_malformed_gets_its_status(data: bytes, status: int) -> None:
    with pytest.raises(ParseError) as info:
        parse_message(data)
    assert info.value.status == status


def test_max_size_is_a_parameter() -> None:
    with pytest.raises(ParseError) as info:
        parse_message(BASE, max_size=100)
    assert info.value.status == 413
    assert parse_message(BASE, max_size=len(BASE)).method == "OPTIONS"  # type: ignore[union-attr]


def test_huge_numbers_do_not_crash_int_conversion() -> None:
    # CPython refuses int() of strings over 4300 digits: the parser must bound them first
    big = b"9" * 5000
    for field in (
        b"CSeq: " + big + b" OPTIONS",
        b"Content-Length: " + big,
        b"Max-Forwards: " + big,
    ):
        data = (
            BASE.replace(b"Content-Length: 0", field)
            if b"CSeq" not in field
            else (BASE.replace(b"CSeq: 7 OPTIONS", field))
        )
        try:
            parse_message(data)
        except ParseError:
            pass


def test_name_addr_forms() -> None:
    a = parse_name_addr('"Alice \\"A\\"" <sip:alice@example.com;transport=tcp>;tag=x1;q=0.5')
    assert a.display == '"Alice \\"A\\""'
    assert a.uri == "sip:alice@example.com;transport=tcp"
    assert a.tag == "x1"
    b = parse_name_addr("sip:bob@example.com;tag=88")
    assert (b.uri, b.tag, b.bracketed) == ("sip:bob@example.com", "88", False)
    c = parse_name_addr("Bob <tel:+123>")
    assert (c.display, c.uri) == ("Bob", "tel:+123")


def test_uri_forms() -> None:
    u = parse_uri("sips:alice:pw@[2001:db8::2]:5071;transport=tcp;lr?subject=x")
    assert (u.scheme, u.user, u.password, u.host, u.port) == (
        "sips",
        "alice",
        "pw",
        "2001:db8::2",
        5071,
    )
    assert u.transport == "tcp"
    assert u.headers == "subject=x"
    assert str(u) == "sips:alice:pw@[2001:db8::2]:5071;transport=tcp;lr?subject=x"
    with pytest.raises(ParseError) as info:
        parse_uri("http://example.com/")
    assert info.value.status == 416


def test_via_received_ipv6_and_params() -> None:
    v = parse_via_value("SIP/2.0/UDP host:5060;received=2001:db8::9;rport=4000;branch=z9hG4bKq")
    assert (v.received, v.rport, v.branch) == ("2001:db8::9", 4000, "z9hG4bKq")


# -- properties ------------------------------------------------------------------------------

token = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~",
    min_size=1,
    max_size=12,
)
value_text = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters=',;"<>\\'),
    min_size=1,
    max_size=20,
)


@st.composite
def requests(draw: st.DrawFn) -> Request:
    method = draw(token)
    host = draw(st.sampled_from(["example.com", "192.0.2.7", "[2001:db8::1]", "h-1.example.org"]))
    port = draw(st.one_of(st.none(), st.integers(1, 65535)))
    hostport = host if port is None else f"{host}:{port}"
    branch = "z9hG4bK" + draw(token)
    extra = draw(st.lists(st.tuples(token.map(lambda t: "X-" + t), value_text), max_size=4))
    body = draw(st.binary(max_size=64))
    fields = [
        (
            "Via",
            f"SIP/2.0/{draw(st.sampled_from(['UDP', 'TCP', 'TLS']))} {hostport};branch={branch}",
        ),
        ("From", f"<sip:{draw(token)}@example.com>;tag={draw(token)}"),
        ("To", f"<sip:{draw(token)}@{hostport}>"),
        ("Call-ID", draw(value_text)),
        ("CSeq", f"{draw(st.integers(0, 2**32 - 1))} {method}"),
        ("Max-Forwards", str(draw(st.integers(0, 255)))),
        *extra,
        ("Content-Length", str(len(body))),
    ]
    return Request(method, f"sip:{draw(token)}@{hostport}", Headers(fields), body)


@given(requests())
def test_request_round_trip(req: Request) -> None:
    again = parse_message(req.encode())
    assert isinstance(again, Request)
    assert (again.method, again.uri, list(again.headers), again.body) == (
        req.method,
        req.uri,
        list(req.headers),
        req.body,
    )
    assert again.encode() == req.encode()
    assert again.vias == req.vias
    assert again.cseq == req.cseq


@given(requests(), st.integers(100, 699), st.text(alphabet="abc XYZ", max_size=10))
def test_response_round_trip(req: Request, status: int, reason: str) -> None:
    fields = [(n, v) for n, v in req.headers if n in ("Via", "From", "To", "Call-ID", "CSeq")]
    resp = Response(status, reason, Headers([*fields, ("Content-Length", "0")]))
    again = parse_message(resp.encode())
    assert isinstance(again, Response)
    assert (again.status, again.reason, list(again.headers)) == (status, reason, list(resp.headers))


CORPUS = [
    p.read_bytes() for p in sorted((Path(__file__).parent / "data" / "rfc4475").glob("*.dat"))
]


@settings(max_examples=400)
@given(st.binary(max_size=300))
def test_fuzz_random_bytes_parse_or_parse_error(data: bytes) -> None:
    try:
        parse_message(data)
    except ParseError:
        pass


@settings(max_examples=400)
@given(st.sampled_from(CORPUS), st.data())
def test_fuzz_mutated_corpus_parse_or_parse_error(seed: bytes, data: st.DataObject) -> None:
    mutated = mutate(seed, data, 8)
    try:
        parse_message(mutated)
    except ParseError:
        pass


def test_manifest_is_parseable_json() -> None:
    manifest = json.loads(
        (Path(__file__).parent / "data" / "rfc4475" / "manifest.json").read_text()
    )
    assert manifest["count"] == 49
