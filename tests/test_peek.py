"""sip/peek.py against the full parser: peek returns exactly what parse_message gives, or None.

Corpus: the RFC 4475 torture messages as they are and with their start line turned into a
Status-Line, our responder's answers to them, real peers' answers, and a hypothesis property
over generated responses with mutations aimed at the peek's shape checks."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from framerevents import reader_events
from sipalive.errors import ParseError
from sipalive.sip.framing import Role, StreamFramer
from sipalive.sip.message import Response, parse_message
from sipalive.sip.peek import ResponseStream, peek_datagram, peek_head
from sipalive.sip.responder import ResponderConfig, StatelessResponder

DATA = Path(__file__).parent / "data" / "rfc4475"
CORPUS = sorted(p.name for p in DATA.glob("*.dat"))

KAMAILIO = (
    b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:53114;branch=z9hG4bKabc1;rport=53114;"
    b"received=127.0.0.1\r\nFrom: <sip:sipalive@127.0.0.1>;tag=ftag1\r\nTo: <sip:ping@127.0.0.1"
    b":9346>;tag=935161d762eb880c21f30adede54737c.f88ccc1e\r\nCall-ID: 1-cid@sipalive\r\n"
    b"CSeq: 1 OPTIONS\r\nAllow: INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER\r\n"
    b"Server: sipalive-test-kamailio\r\nContent-Length: 0\r\n\r\n"
)
SIPP = (
    b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:40000;branch=z9hG4bK-1;rport\r\n"
    b"From: sipp <sip:sipp@127.0.0.1:5060>;tag=1\r\nTo: <sip:x@127.0.0.1>;tag=2\r\n"
    b"Call-ID: 1-2@127.0.0.1\r\nCSeq: 7 OPTIONS\r\nContact: <sip:127.0.0.1:5062;transport=UDP>\r\n"
    b"Content-Length: 0\r\n\r\n"
)


def full(data: bytes) -> tuple[int, str, str | None, str] | None:
    try:
        message = parse_message(data)
    except ParseError:
        return None
    if not isinstance(message, Response):
        return None
    return message.status, message.reason, message.branch, message.cseq.method


def check(data: bytes) -> bool:
    """peek agrees with the full parser; True if it took the fast path."""
    got = peek_datagram(data)
    if got is None:
        return False
    assert full(data) == got[:4], data
    end = data.index(b"\r\n\r\n")
    assert peek_head(data[:end]) == got
    cl = got[4]
    message = parse_message(data)
    assert message.body == (data[end + 4 :] if cl is None else data[end + 4 : end + 4 + cl])
    return True


def as_response(data: bytes) -> bytes:
    line_end = data.find(b"\r\n")
    return b"SIP/2.0 200 OK" + data[line_end:]


def test_real_peers_take_the_fast_path() -> None:
    assert check(KAMAILIO)
    assert check(SIPP)
    assert peek_datagram(KAMAILIO) == (200, "OK", "z9hG4bKabc1", "OPTIONS", 0)


@pytest.mark.parametrize("name", CORPUS)
def test_rfc4475_corpus(name: str) -> None:
    data = (DATA / name).read_bytes()
    check(data)
    check(as_response(data))
    reply = StatelessResponder(ResponderConfig(tag_key=b"k")).handle_datagram(
        data, ("192.0.2.9", 5060)
    )
    if reply is not None:
        check(reply.data)


def test_fast_path_shapes() -> None:
    base = b"\r\n".join([b"SIP/2.0 200 OK"] + [n + b": " + v for n, v in BASE]) + b"\r\n\r\n"
    assert check(base)
    assert check(base.replace(b"From: <", b"From: sipp 2 <"))
    assert not check(base.replace(b"From: <", b'From: "q" <'))  # quoted: the full parser
    assert not check(base.replace(b"Via:", b"v:"))  # a compact form: the full parser
    assert not check(base.replace(b"Via: ", b"Via:\t"))  # a tab: the full parser


# per header: its name spellings and values (valid ones first, then what the parser rejects
# or the peek leaves to it)
KINDS: dict[bytes, tuple[list[bytes], list[bytes]]] = {
    b"Via": (
        [b"Via", b"via", b"v", b"VIA"],
        [b"SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1", b"SIP/2.0/TCP h.example;Branch=B2;rport",
         b"SIP/2.0/UDP h:65535;rport;branch=z;branch=w", b"SIP/2.0/UDP h:0;branch=x",
         b"SIP/2.0/UDP h:70000;branch=x", b"SIP/2.0/UDP h;branch", b"SIP/2.0/UDP h;branch=",
         b"SIP/2.0/UDP h;xbranch=1", b"SIP/2.0/UDP [::1]:5060;branch=x",
         b"SIP/2.0/UDP a;branch=1, SIP/2.0/UDP b", b"SIP/3.0/UDP h;branch=x",
         b"sip/2.0/udp h;branch=x", b"SIP/2.0/UDP h;branch=\"q\"", b"SIP/2.0/UDP h;branch=z\xff",
         b"SIP/2.0/UDP h;received=\xc3\xa9;branch=z", b"SIP/2.0/UDP h:5x;branch=1"],
    ),
    b"From": (
        [b"From", b"from", b"f"],
        [b"<sip:a@b>;tag=1", b"<sip:a@b>", b"A b <sip:a@b>;tag=2", b"\"A\" <sip:a@b>;tag=2",
         b"sip:a@b;tag=3", b"<sip:a b>", b"<sip:a@b>;tag=\"q\"", b"<sip:a@b>;tag",
         b"<sip:a@b>;=x", b"<sip:a@b>;tag=", b"<sip:\xc3\xa9@b>", b"<sip:a@b>;tag=\xff", b"<>", b"a@b <sip:a@b>", b"<sip:a@b> ;tag=1"],
    ),
    b"To": ([b"To", b"to", b"t", b"tO"], []),
    b"Call-ID": (
        [b"Call-ID", b"call-id", b"i", b"Call-Id"],
        [b"call@id", b"x", b"a b", b"", b"caf\xc3\xa9"],
    ),
    b"CSeq": (
        [b"CSeq", b"cseq", b"CSEQ"],
        [b"1 OPTIONS", b"123456789 INFO", b"0001 OPTIONS", b"4294967296 OPTIONS",
         b"4294967295 OPTIONS", b"1  OPTIONS", b"x OPTIONS", b"1 OPT IONS", b"1"],
    ),
    b"Content-Length": (
        [b"Content-Length", b"content-length", b"l"],
        [b"0", b"5", b"00012", b"999999999", b"1234567890", b"abc", b"-1", b""],
    ),
    b"Max-Forwards": ([b"Max-Forwards", b"max-forwards"], [b"70", b"x", b"1234567"]),
    b"Content-Type": ([b"Content-Type", b"c"], [b"application/sdp", b""]),
    b"Server": ([b"Server", b"Allow", b"X-Y", b"Bad Name", b"", b"X\x01"],
                [b"sipalive", b"", b"a  b", b"tab\there", b"caf\xc3\xa9", b"x\rbad"]),
}  # fmt: skip
KINDS[b"To"] = (KINDS[b"To"][0], KINDS[b"From"][1])
STATUS = st.sampled_from(
    [b"SIP/2.0 200 OK", b"SIP/2.0 100 Trying", b"SIP/2.0 699 ", b"SIP/2.0 099 X",
     b"SIP/2.0 700 X", b"SIP/2.0 200", b"sip/2.0 200 OK", b"SIP/2.1 200 OK",
     b"SIP/2.0 2000 OK", b"SIP/2.0 200 Gr\xc3\xbc\xc3\x9fe", b"OPTIONS sip:a@b SIP/2.0"]
)  # fmt: skip
BASE = [
    (b"Via", b"SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKq;rport=5060"),
    (b"From", b"<sip:a@b>;tag=1"),
    (b"To", b"<sip:c@d>;tag=2"),
    (b"Call-ID", b"cid-1@h"),
    (b"CSeq", b"1 OPTIONS"),
    (b"Content-Length", b"0"),
]


@st.composite
def responses(draw: st.DrawFn) -> bytes:
    fields = list(BASE)
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(sorted(KINDS)))
        names, values = KINDS[kind]
        value = draw(st.sampled_from(values)) if values else b"x"
        action = draw(st.sampled_from(["value", "value", "name", "insert", "delete"]))
        where = [i for i, (n, _) in enumerate(fields) if n == kind]
        if action == "insert" or not where:
            fields.insert(draw(st.integers(0, len(fields))), (kind, value))
        elif action == "delete":
            del fields[where[0]]
        elif action == "value":
            fields[where[0]] = (kind, value)
        else:
            fields[where[0]] = (draw(st.sampled_from(names)), fields[where[0]][1])
    sep = draw(st.sampled_from([b": "] * 8 + [b":", b" : ", b":\t", b": \r\n "]))
    status = draw(st.one_of(st.just(b"SIP/2.0 200 OK"), STATUS))
    lines = [status] + [n + sep + v for n, v in fields]
    body = draw(st.sampled_from([b"", b"", b"hello", b"\r\n"]))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


@settings(max_examples=1500)
@given(responses())
@example(KAMAILIO)
@example(SIPP)
def test_peek_agrees_with_the_full_parser(data: bytes) -> None:
    check(data)


@given(st.binary(max_size=300))
def test_peek_never_raises(data: bytes) -> None:
    got = peek_datagram(data)
    assert got is None or full(data) == got[:4]


STREAM_PARTS = st.one_of(
    responses(),
    st.sampled_from(
        [KAMAILIO, SIPP, b"\r\n", b"\r\n\r\n", b"\r\nX", (DATA / "mpart01.dat").read_bytes()]
    ),
)


@settings(max_examples=500)
@given(
    parts=st.lists(STREAM_PARTS, max_size=8),
    cuts=st.lists(st.integers(0, 4000), max_size=6),
    max_message=st.sampled_from([65536, 300]),
)
def test_response_stream_is_the_stream_framer(
    parts: list[bytes], cuts: list[int], max_message: int
) -> None:
    data = b"".join(parts)
    bounds = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    chunks = [data[a:b] for a, b in pairwise(bounds)]
    fast = reader_events(chunks, ResponseStream(max_message))
    slow = reader_events(chunks, StreamFramer(Role.CLIENT, max_message))
    assert fast == slow


def test_response_stream_peeks_a_run_of_responses() -> None:
    stream = ResponseStream()
    data = KAMAILIO * 3
    events = stream.receive(data[:500]) + stream.receive(data[500:])
    assert events == [peek_datagram(KAMAILIO)] * 3


@pytest.mark.parametrize("cut", [10, 200, 362, 366, 368, 371])
def test_response_stream_waits_for_head_and_body(cut: int) -> None:
    data = KAMAILIO.replace(b"Content-Length: 0", b"Content-Length: 5") + b"hello" + SIPP
    chunks = [data[:cut], data[cut:]]
    assert reader_events(chunks, ResponseStream()) == reader_events(
        chunks, StreamFramer(Role.CLIENT)
    )
    assert len(reader_events(chunks, ResponseStream())) == 2


def test_response_stream_bounds_an_unterminated_head() -> None:
    chunks = [KAMAILIO[:200], KAMAILIO[200:-4]]
    assert reader_events(chunks, ResponseStream(250)) == [("error", 413)]
