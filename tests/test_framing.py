"""Stream framing: Content-Length, keep-alive ping/pong, split input, bounds."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sipalive.errors import LocalProtocolError, ParseError
from sipalive.sip.framing import MessageReceived, PingReceived, PongReceived, Role, StreamFramer
from sipalive.sip.message import Request, Response
from sipfactory import options, response_to

REQ = options("z9hG4bKs1", "TCP").encode()
RESP = response_to(options("z9hG4bKs1", "TCP")).encode()


def test_messages_back_to_back_with_body() -> None:
    body = b"hello\r\n\r\nworld"
    req = options("z9hG4bKbody", "TCP")
    req.headers.set("Content-Length", str(len(body)))
    data = req.encode() + body
    framer = StreamFramer()
    events = framer.receive(REQ + data + REQ)
    msgs = [e.message for e in events if isinstance(e, MessageReceived)]
    assert len(msgs) == 3
    assert msgs[1].body == body
    assert framer.buffered == 0


def test_ping_and_pong_server_role() -> None:
    framer = StreamFramer(Role.SERVER)
    assert framer.receive(b"\r\n\r\n") == [PingReceived()]
    assert framer.receive(b"\r\n") == []  # a lone CRLF may still become a ping
    assert framer.receive(b"\r\n") == [PingReceived()]
    events = framer.receive(b"\r\n" + REQ)  # leading CRLF before a message is ignored
    assert [type(e) for e in events] == [MessageReceived]


def test_pong_client_role() -> None:
    framer = StreamFramer(Role.CLIENT)
    assert framer.receive(b"\r\n") == [PongReceived()]
    events = framer.receive(b"\r\n" + RESP)
    assert [type(e) for e in events] == [PongReceived, MessageReceived]
    assert isinstance(events[1], MessageReceived)
    assert isinstance(events[1].message, Response)


@given(st.lists(st.integers(1, 50), min_size=1, max_size=40))
def test_any_split_gives_the_same_events(cuts: list[int]) -> None:
    stream = b"\r\n\r\n" + REQ + REQ + b"\r\n\r\n" + REQ
    framer = StreamFramer(Role.SERVER)
    events = []
    pos = 0
    for cut in cuts:
        events += framer.receive(stream[pos : pos + cut])
        pos += cut
    events += framer.receive(stream[pos:])
    kinds = [type(e).__name__ for e in events]
    assert kinds == [
        "PingReceived",
        "MessageReceived",
        "MessageReceived",
        "PingReceived",
        "MessageReceived",
    ]
    assert all(isinstance(e.message, Request) for e in events if isinstance(e, MessageReceived))


def test_oversized_header_section_is_cut_off() -> None:
    framer = StreamFramer(max_message=1024)
    with pytest.raises(ParseError) as info:
        framer.receive(b"OPTIONS sip:x SIP/2.0\r\nX: " + b"a" * 2000)
    assert info.value.status == 413
    with pytest.raises(LocalProtocolError):
        framer.receive(b"more")


def test_oversized_body_is_refused_before_it_arrives() -> None:
    framer = StreamFramer(max_message=4096)
    head = REQ.replace(b"Content-Length: 0", b"Content-Length: 100000")
    with pytest.raises(ParseError) as info:
        framer.receive(head)
    assert info.value.status == 413


def test_malformed_head_on_stream() -> None:
    with pytest.raises(ParseError):
        StreamFramer().receive(b"HELLO\r\n\r\n")
    with pytest.raises(ParseError):
        StreamFramer().receive(b"\rX")


def test_missing_content_length_on_stream_means_no_body() -> None:
    req = REQ.replace(b"Content-Length: 0\r\n", b"")
    events = StreamFramer().receive(req + REQ)
    assert len([e for e in events if isinstance(e, MessageReceived)]) == 2


@given(st.binary(max_size=400))
def test_fuzz_framer(data: bytes) -> None:
    framer = StreamFramer(max_message=256)
    try:
        framer.receive(data)
        framer.receive(data)
    except ParseError:
        pass
