"""A fast look at a response: status, reason, top Via branch, CSeq method, Content-Length.

``parse_message`` builds every header and costs ~20 us; a flood needs five fields. ``peek``
accepts only a strict, common shape that the full parser is sure to accept, and returns exactly
the values ``parse_message`` would give; for anything else (a request, compact or odd-case
names, folding, tabs, quoted strings, several Vias, IPv6, non-ASCII, a missing or valueless
branch...) it returns None and the caller falls back to ``parse_message``. The differential
tests (tests/test_peek.py: RFC 4475 corpus, test messages, a hypothesis property) hold it to
that.

The shape: ``SIP/2.0 DDD reason`` then ``Name: value`` lines of printable ASCII, no space
before or after a value; Via, From, To, Call-ID and CSeq once each, in their canonical
spelling and plain form (``SIP/2.0/X host[:port];p=v``, ``[tokens ]<uri>;p=v``,
``1*9DIGIT SP method``); Content-Length and Content-Type at most once.
"""

from __future__ import annotations

import re

from sipalive.sip.framing import Role, StreamEvent, StreamFramer
from sipalive.sip.message import DEFAULT_MAX_MESSAGE

_TOKEN = rb"[A-Za-z0-9\-.!%*_+`'~]+"
# printable ASCII (non-ASCII octets are the full parser's: it decodes with surrogateescape)
# but for ; , " (a parameter value) and < > " (a URI in brackets)
_PARAMS = rb"(?:;" + _TOKEN + rb"(?:=[!#-+\--:<-~]+)?)*"
_VALUE = rb"(?: [!-~](?:[ -~]*[!-~])?)?"  # empty, or starts and ends with a visible character
_NAME_ADDR = rb"(?:" + _TOKEN + rb"(?: " + _TOKEN + rb")* )?<[!#-;=?-~]+>" + _PARAMS
# any other header: its name must not be one the parser checks, in any case or compact form
_OTHER = (
    rb"(?!(?i:via|v|from|f|to|t|call-id|i|cseq|content-length|l|max-forwards|content-type|c):)"
    + _TOKEN
    + rb":"
    + _VALUE
)
_HEAD = re.compile(
    rb"SIP/2\.0 ([1-6][0-9][0-9]) ([ -~]*)(?>\r\n(?:"
    rb"Via: SIP/2\.0/" + _TOKEN + rb" [A-Za-z0-9._\-]+(?::(?P<port>[0-9]{1,5}))?(?P<vp>" + _PARAMS
    + rb")|From: " + _NAME_ADDR
    + rb"|To: " + _NAME_ADDR
    + rb"|Call-ID: [!-~]+"
    + rb"|CSeq: [0-9]{1,9} (?P<method>" + _TOKEN
    + rb")|Content-Length: (?P<length>[0-9]{1,9})"
    + rb"|Content-Type:" + _VALUE
    + rb"|" + _OTHER
    + rb"))*"
)  # fmt: skip
_BRANCH = re.compile(rb";(?i:branch)(?:=([^;]*))?(?=;|\Z)")

Peek = tuple[int, str, str, str, int | None]


def peek_head(head: bytes) -> Peek | None:
    """``(status, reason, branch, cseq_method, content_length)`` of a response's start line
    and header section (without the empty line), or None: parse it fully instead."""
    return _peek(head, 0, len(head))


def _peek(data: bytes, start: int, end: int) -> Peek | None:
    """``peek_head(data[start:end])`` without the copy."""
    m = _HEAD.fullmatch(data, start, end)
    if (
        m is None
        or data.count(b"\r\nVia: ", start, end) != 1  # one Via line (several: the full parser)
        or data.count(b"\r\nFrom: ", start, end) != 1
        or data.count(b"\r\nTo: ", start, end) != 1
        or data.count(b"\r\nCall-ID: ", start, end) != 1
        or data.count(b"\r\nCSeq: ", start, end) != 1
        or data.count(b"\r\nContent-Length: ", start, end) > 1
        or data.count(b"\r\nContent-Type:", start, end) > 1
    ):
        return None
    port = m.group("port")
    if port is not None and not 0 < int(port) < 65536:
        return None
    b = _BRANCH.search(m.group("vp"))
    if b is None or not b.group(1):
        return None
    length = m.group("length")
    return (
        int(m.group(1)),
        m.group(2).decode(),
        b.group(1).decode(),
        m.group("method").decode(),
        None if length is None else int(length),
    )


def peek_datagram(data: bytes) -> Peek | None:
    """``peek_head`` for a whole datagram, or None where ``parse_message`` would do more (or
    raise): the body's length is checked against Content-Length as the parser does."""
    if len(data) > DEFAULT_MAX_MESSAGE or not data.startswith(b"SIP/2.0 "):
        return None
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    got = _peek(data, 0, end)
    if got is not None and got[4] is not None and end + 4 + got[4] > len(data):
        return None
    return got


class ResponseStream:
    """``StreamFramer(Role.CLIENT)`` with the peek in front, for a stream that carries
    responses to us: a response of the strict shape at a message boundary comes out as a
    ``Peek``; from the first other thing on (a CRLF, a request, an odd response, a size
    limit) a real StreamFramer takes the rest of the stream, so it yields the same events and
    raises the same ParseError it would have on its own."""

    def __init__(self, max_message: int = DEFAULT_MAX_MESSAGE) -> None:
        self.max_message = max_message
        self._buf = b""
        self._framer: StreamFramer | None = None

    def receive(self, data: bytes) -> list[Peek | StreamEvent]:
        if self._framer is not None:
            return list(self._framer.receive(data))
        buf = self._buf + data if self._buf else data
        events: list[Peek | StreamEvent] = []
        pos = 0
        n = len(buf)
        while pos < n:
            if not buf.startswith(b"SIP/2.0 ", pos):
                if n - pos < 8 and b"SIP/2.0 ".startswith(buf[pos:]):
                    break  # the start of one
                return events + self._hand_over(buf[pos:])
            end = buf.find(b"\r\n\r\n", pos)
            if end < 0:
                if n - pos > self.max_message:
                    return events + self._hand_over(buf[pos:])
                break
            got = _peek(buf, pos, end)
            if got is None:
                return events + self._hand_over(buf[pos:])
            stop = end + 4 + (got[4] or 0)
            if stop - pos > self.max_message:
                return events + self._hand_over(buf[pos:])
            if stop > n:
                break  # the body is still coming
            events.append(got)
            pos = stop
        self._buf = buf[pos:]
        return events

    def _hand_over(self, rest: bytes) -> list[Peek | StreamEvent]:
        self._buf = b""
        self._framer = StreamFramer(Role.CLIENT, self.max_message)
        return list(self._framer.receive(rest))
