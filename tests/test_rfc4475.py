"""RFC 4475 torture messages: the manifest's parser verdict, and our responder's reply.

The responder is an OPTIONS-only endpoint (a UAS), so RFC 3261 §8.2 decides its answer in this
order: method (405 for a known method it does not serve, 501 for an unknown one, §8.2.1),
Request-URI scheme (416, §8.2.2.1), Require (420, §8.2.2.3). Where the manifest names a code
that depends on a later check (415 for invut, 406 for sdp01...), method inspection comes first
and the right answer of this element is 405; EXPECTED_REPLY says so message by message.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sipalive.errors import ParseError
from sipalive.sip.message import Request, Response, parse_message
from sipalive.sip.responder import ResponderConfig, StatelessResponder
from sipalive.sip.uri import parse_uri

DATA = Path(__file__).parent / "data" / "rfc4475"
MANIFEST = json.loads((DATA / "manifest.json").read_text())
MESSAGES = {m["file"]: m for m in MANIFEST["messages"]}

# status our responder sends for each message (None: nothing is sent)
EXPECTED_REPLY: dict[str, int | None] = {
    # accepted OPTIONS: the only method this UAS serves
    "lwsdisp.dat": 200,
    "semiuri.dat": 200,
    "transports.dat": 200,
    "badaspec.dat": 200,  # liberal: spaces inside <> ignored (RFC 4475 §3.1.2.15 allows it)
    "badbranch.dat": 200,  # stateless: the branch is only echoed (RFC 4475 §3.2.1)
    "zeromf.dat": 200,  # an endpoint answers OPTIONS with Max-Forwards 0 (§3.3.13, RFC 3261 §16.3)
    "unkscm.dat": 416,
    "novelsc.dat": 416,
    "bext01.dat": 420,
    # known methods this UAS does not serve: 405 (§8.2.1 comes before content checks)
    "wsinv.dat": 405,
    "esc01.dat": 405,
    "escnull.dat": 405,
    "longreq.dat": 405,
    "dblreq.dat": 405,
    "mpart01.dat": 405,
    "escruri.dat": 405,
    "baddate.dat": 405,
    "regbadct.dat": 405,
    "unksm2.dat": 405,
    "invut.dat": 405,
    "regaut01.dat": 405,
    "cparam01.dat": 405,
    "cparam02.dat": 405,
    "regescrt.dat": 405,
    "sdp01.dat": 405,
    "inv2543.dat": 405,
    # unknown methods
    "intmeth.dat": 501,
    "esc02.dat": 501,
    # rejected by the parser: its status, echoing the salvaged Via/From/To/Call-ID/CSeq
    "badinv01.dat": 400,
    "clerr.dat": 400,
    "ncl.dat": 400,
    "scalar02.dat": 400,
    "quotbal.dat": 400,
    "ltgtruri.dat": 400,
    "lwsruri.dat": 400,
    "lwsstart.dat": 400,
    "trws.dat": 400,
    "baddn.dat": 400,
    "badvers.dat": 505,
    "mismatch01.dat": 400,
    "mismatch02.dat": 400,
    "insuf.dat": 400,
    "multi01.dat": 400,
    "mcl01.dat": 400,
    # responses: never answered
    "unreason.dat": None,
    "noreason.dat": None,
    "bcast.dat": None,
    "scalarlg.dat": None,
    "bigcode.dat": None,
}


def load(name: str) -> bytes:
    return (DATA / name).read_bytes()


def test_corpus_is_complete() -> None:
    assert MANIFEST["count"] == len(MESSAGES) == 49
    assert set(EXPECTED_REPLY) == set(MESSAGES)
    for name, meta in MESSAGES.items():
        assert len(load(name)) == meta["size"], name


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_parser_verdict(name: str) -> None:
    meta = MESSAGES[name]
    verdict = meta["parser"]
    try:
        message = parse_message(load(name))
    except ParseError as exc:
        assert verdict != "must-accept", f"{name}: rejected: {exc.reason}"
        allowed = [c for c in meta["responses"] if c in (400, 413, 505)] or [400]
        if meta["message_type"] == "request":
            assert exc.status in allowed, f"{name}: {exc.status} not in {allowed}"
        return
    assert verdict != "should-reject", f"{name}: accepted"
    if meta["message_type"] == "request":
        assert isinstance(message, Request)
        assert message.method == meta["method"]
    else:
        assert isinstance(message, Response)
        assert str(message.status) == meta["status_code"]
    assert message.cseq.method == meta["cseq_method"]


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_responder_reply(name: str) -> None:
    responder = StatelessResponder(ResponderConfig(tag_key=b"k"))
    reply = responder.handle_datagram(load(name), ("192.0.2.99", 5062))
    expected = EXPECTED_REPLY[name]
    if expected is None:
        assert reply is None
        return
    assert reply is not None
    assert reply.status == expected
    assert reply.addr[0] == "192.0.2.99"
    try:
        parse_message(load(name))
    except ParseError:
        # RFC 3261 §8.2.6.2: the 400 copies Via, From, To, Call-ID and CSeq as they came, so
        # it is only as well-formed as they were
        assert reply.data.startswith(f"SIP/2.0 {expected} ".encode())
        assert reply.error
        return
    answer = parse_message(reply.data)
    assert isinstance(answer, Response)
    assert answer.status == expected
    assert answer.to.tag  # a final response from a UAS carries a To tag (§8.2.6.2)
    if expected != 200:
        assert (
            MESSAGES[name]["responses"] == []
            or expected in MESSAGES[name]["responses"]
            or (
                expected == 405  # §8.2.1 method inspection precedes the check the RFC names
            )
        )


def test_bad_request_echoes_the_malformed_via() -> None:
    responder = StatelessResponder()
    reply = responder.handle_datagram(load("badinv01.dat"), ("192.0.2.1", 5060))
    assert reply is not None
    assert reply.data.startswith(b"SIP/2.0 400 Bad Request\r\n")
    assert b"Via: SIP/2.0/UDP 192.0.2.15;;,;,,\r\n" in reply.data
    assert b'Warning: 399 sipalive "empty parameter in Via"' in reply.data


def test_wsinv_details() -> None:
    msg = parse_message(load("wsinv.dat"))
    assert isinstance(msg, Request)
    assert msg.to.tag == "1918181833n"
    assert msg.from_.tag == "98asjd8"
    assert msg.from_.display == '"J Rosenberg \\\\\\""'
    assert msg.max_forwards == 68
    assert (msg.cseq.seq, msg.cseq.method) == (9, "INVITE")
    assert [v.transport for v in msg.vias] == ["UDP", "TCP", "UDP"]
    assert [v.branch for v in msg.vias] == ["390skdjuw", "z9hG4bK9ikj8", "z9hG4bK30239"]
    assert msg.headers.get("NewFangledHeader") == "newfangled value continued newfangled value"
    assert msg.headers.get("subject") == ""
    assert len(msg.body) == 150


def test_semiuri_user_part() -> None:
    msg = parse_message(load("semiuri.dat"))
    assert isinstance(msg, Request)
    uri = parse_uri(msg.uri)
    assert uri.user == "user;par=u%40example.net"
    assert uri.host == "example.com"


def test_framing_details() -> None:
    mpart = parse_message(load("mpart01.dat"))
    assert len(mpart.body) == 553
    dbl = parse_message(load("dblreq.dat"))
    assert dbl.body == b""
    old = parse_message(load("inv2543.dat"))
    assert old.body.startswith(b"v=0")
    assert old.max_forwards is None


def test_transports_and_long_request() -> None:
    msg = parse_message(load("transports.dat"))
    assert [v.transport for v in msg.vias] == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]
    long = parse_message(load("longreq.dat"))
    assert len(long.vias) == 34


def test_reason_phrases() -> None:
    unreason = parse_message(load("unreason.dat"))
    assert isinstance(unreason, Response)
    assert unreason.status == 200
    assert "2" in unreason.reason
    noreason = parse_message(load("noreason.dat"))
    assert isinstance(noreason, Response)
    assert (noreason.status, noreason.reason) == (100, "")


def test_round_trip_of_accepted_corpus() -> None:
    for name, meta in MESSAGES.items():
        if meta["parser"] != "must-accept":
            continue
        msg = parse_message(load(name))
        again = parse_message(msg.encode())
        assert list(again.headers) == list(msg.headers), name
        assert again.body == msg.body, name
