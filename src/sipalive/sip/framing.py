"""Stream framing for SIP over TCP/TLS/WebSocket-less streams (RFC 3261 §18.3, RFC 5626 §3.5.1).

Bytes in, events out. Between messages, a CRLFCRLF is a keep-alive ping and a lone CRLF its
pong (RFC 5626 §4.4.1); any other CRLF before a start line is ignored (RFC 3261 §7.5). Every
buffer is bounded: a header section or a body beyond ``max_message`` raises ParseError(413),
after which the connection must be closed (there is no way to find the next message).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from sipalive.errors import LocalProtocolError, ParseError
from sipalive.sip.message import DEFAULT_MAX_MESSAGE, Head, Request, Response, parse_head


class Role(Enum):
    """Who reads the stream: it decides what a lone CRLF at a message boundary means."""

    CLIENT = "client"  # we send pings, so a lone CRLF is a pong
    SERVER = "server"  # we answer pings; a lone CRLF is leading noise, wait for more


@dataclass(frozen=True, slots=True)
class MessageReceived:
    message: Request | Response
    size: int


@dataclass(frozen=True, slots=True)
class PingReceived:
    """A CRLFCRLF keep-alive: answer it with a CRLF pong."""


@dataclass(frozen=True, slots=True)
class PongReceived:
    """A lone CRLF after our ping."""


StreamEvent = MessageReceived | PingReceived | PongReceived


class StreamFramer:
    def __init__(self, role: Role = Role.SERVER, max_message: int = DEFAULT_MAX_MESSAGE) -> None:
        self.role = role
        self.max_message = max_message
        self._buf = bytearray()
        self._head: Head | None = None
        self._head_size = 0
        self._failed = False

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def receive(self, data: bytes) -> list[StreamEvent]:
        """Feed octets; return every complete event. Raises ParseError on malformed input."""
        if self._failed:
            raise LocalProtocolError("framer already failed; close the connection")
        self._buf += data
        events: list[StreamEvent] = []
        try:
            while self._step(events):
                pass
        except ParseError:
            self._failed = True
            self._buf.clear()
            raise
        return events

    def _step(self, events: list[StreamEvent]) -> bool:
        buf = self._buf
        if self._head is None:
            if not buf:
                return False
            if buf[0] == 0x0D:
                return self._crlf(events)
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > self.max_message:
                    raise ParseError("header section too large", status=413)
                return False
            if end + 4 > self.max_message:
                raise ParseError("header section too large", status=413)
            self._head = parse_head(bytes(buf[:end]))
            self._head_size = end + 4
            del buf[: end + 4]
            if self._head.content_length is not None and (
                self._head_size + self._head.content_length > self.max_message
            ):
                raise ParseError("message too large", status=413)
        head = self._head
        # RFC 3261 §18.3 makes Content-Length mandatory on streams; a message without one has
        # no body (what Kamailio's tcp_accept_no_cl accepts too).
        length = head.content_length or 0
        if len(buf) < length:
            return False
        body = bytes(buf[:length])
        del buf[:length]
        self._head = None
        events.append(MessageReceived(head.build(body), self._head_size + length))
        return True

    def _crlf(self, events: list[StreamEvent]) -> bool:
        buf = self._buf
        if buf.startswith(b"\r\n\r\n"):
            del buf[:4]
            events.append(PingReceived())
            return True
        if len(buf) < 2:
            return False
        if buf[1] != 0x0A:
            raise ParseError("CR not followed by LF between messages")
        if len(buf) == 2 or (len(buf) == 3 and buf[2] == 0x0D):
            if self.role is Role.CLIENT and len(buf) == 2:
                del buf[:2]
                events.append(PongReceived())
                return True
            return False  # could still become a CRLFCRLF ping
        del buf[:2]
        if self.role is Role.CLIENT:
            events.append(PongReceived())
        return True
