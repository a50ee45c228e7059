"""A stateless UAS core: answers OPTIONS, refuses the rest, never answers a response.

Pure: ``handle_datagram`` / ``handle_request`` take octets or a parsed request and the source
address, and return what to send and where. The checks follow RFC 3261 §8.2 in its order:
method (405/501, §8.2.1), Request-URI scheme (416, §8.2.2.1), Require (420, §8.2.2.3).
Responses are routed per §18.2.2 with RFC 3581 ``rport``. On a UDP port, a STUN Binding
Request (RFC 5389) is answered too, demultiplexed on the first octet (RFC 7983). A CRLFCRLF
over UDP gets nothing: no amplification (RFC 5626 §4.4.1 defines the pong for streams only).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from enum import Enum

from sipalive.errors import ParseError
from sipalive.sip.fastpath import OptionsFastPath
from sipalive.sip.grammar import format_params, split_top_level
from sipalive.sip.headers import header_key
from sipalive.sip.message import DEFAULT_MAX_MESSAGE, Request, Response, parse_message
from sipalive.sip.uri import uri_scheme
from sipalive.stun import codec as stun

# Methods RFC 3261 and its extensions define: refusing them is 405, anything else is 501.
KNOWN_METHODS = frozenset(
    {
        "INVITE",
        "ACK",
        "BYE",
        "CANCEL",
        "REGISTER",
        "OPTIONS",
        "INFO",
        "PRACK",
        "SUBSCRIBE",
        "NOTIFY",
        "UPDATE",
        "MESSAGE",
        "REFER",
        "PUBLISH",
    }
)
SUPPORTED_SCHEMES = frozenset({"sip", "sips", "tel"})
REASONS = {
    200: "OK",
    400: "Bad Request",
    405: "Method Not Allowed",
    413: "Request Entity Too Large",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    501: "Not Implemented",
    505: "Version Not Supported",
}


class ReplyKind(Enum):
    SIP = "sip"
    STUN = "stun"
    PONG = "pong"


@dataclass(frozen=True, slots=True)
class Reply:
    data: bytes
    addr: tuple[str, int]  # where to send it on UDP; on a stream, the connection's peer
    kind: ReplyKind
    status: int | None = None
    method: str | None = None
    error: str | None = None  # set when the client sent something wrong (log it)


@dataclass(frozen=True)
class ResponderConfig:
    reason: str = "OK"
    allow: tuple[str, ...] = ("OPTIONS",)
    accept: str = "application/sdp"
    supported: tuple[str, ...] = ()
    server: str | None = "sipalive/0.1"
    tag_key: bytes = b""
    max_message: int = DEFAULT_MAX_MESSAGE
    stun: bool = True
    extra_200: tuple[tuple[str, str], ...] = field(default=())


class StatelessResponder:
    def __init__(self, config: ResponderConfig | None = None) -> None:
        self.config = config or ResponderConfig()
        allow = ", ".join(dict.fromkeys((*self.config.allow, "OPTIONS")))
        self._allow = allow
        self._allowed = frozenset(m.upper() for m in self.config.allow) | {"OPTIONS"}
        self._tag_hash = hashlib.blake2s(digest_size=6, key=self.config.tag_key[:32])
        server = f"Server: {self.config.server}\r\n" if self.config.server else ""
        self._trailer = f"{server}Content-Length: 0\r\n\r\n"
        tail = "\r\n".join([*(f"{n}: {v}" for n, v in self._extra_200()), self._trailer])
        self.fast = OptionsFastPath(
            f"SIP/2.0 200 {self.config.reason or REASONS[200]}".encode("utf-8", "surrogateescape"),
            tail.encode("utf-8", "surrogateescape"),
            self.tag,
            self.config.max_message,
        )

    # -- entry points ---------------------------------------------------------------------

    def handle_datagram(self, data: bytes, source: tuple[str, int]) -> Reply | None:
        """One UDP datagram from ``source``: a reply to send, or None. A caller that only needs
        the octets tries ``self.fast.answer`` first (the same answer to a plain OPTIONS)."""
        if not data:
            return None
        first = data[0]
        if first < 0x04:  # RFC 7983: 0..3 is STUN; SIP starts with a letter or CR
            return self._stun(data, source) if self.config.stun else None
        if first in (0x0D, 0x0A) and not data.strip(b"\r\n"):
            return None  # CRLF keep-alive over UDP: no answer, no amplification
        try:
            message = parse_message(data, self.config.max_message)
        except ParseError as exc:
            return self.bad_request(data, exc, source, "udp")
        if isinstance(message, Response):
            return None  # RFC 3261 §18.2.1 / §8.2: a stray response is dropped
        return self.handle_request(message, source, "udp")

    def handle_request(self, req: Request, source: tuple[str, int], transport: str) -> Reply | None:
        method = req.method
        if method == "ACK":
            return None  # §17.2.1 / §8.2: never answer an ACK
        if method not in self._allowed:
            if method in KNOWN_METHODS:
                return self._reply(req, 405, source, transport, [("Allow", self._allow)])
            return self._reply(req, 501, source, transport, [("Allow", self._allow)])
        scheme = uri_scheme(req.uri)
        if scheme not in SUPPORTED_SCHEMES:
            return self._reply(req, 416, source, transport, [])
        try:  # list headers are split only now: a malformed one is still the client's 400
            required = [
                opt
                for value in req.headers.get_all("require")
                if (opt := value.strip()) and opt not in self.config.supported
            ]
        except ParseError as exc:
            warning = exc.reason.replace('"', "'")[:120]
            reply = self._reply(req, 400, source, transport, [("Warning", f'399 - "{warning}"')])
            return Reply(reply.data, reply.addr, reply.kind, 400, req.method, exc.reason)
        if required:
            return self._reply(req, 420, source, transport, [("Unsupported", ", ".join(required))])
        return self._reply(req, 200, source, transport, self._extra_200(), self.config.reason)

    def _extra_200(self) -> list[tuple[str, str]]:
        extra: list[tuple[str, str]] = [("Allow", self._allow)]
        if self.config.accept:
            extra.append(("Accept", self.config.accept))
        if self.config.supported:
            extra.append(("Supported", ", ".join(self.config.supported)))
        extra.extend(self.config.extra_200)
        return extra

    def bad_request(
        self, data: bytes, exc: ParseError, source: tuple[str, int], transport: str
    ) -> Reply | None:
        """Answer a malformed request with ``exc.status``, copying what can be salvaged.

        A response is never answered. Without a Via there is no way to route an answer the
        client could match, so nothing is sent (the caller logs the error)."""
        salvaged = _salvage(data)
        if salvaged is None:
            return None
        fields = salvaged
        status = exc.status
        head = [f"SIP/2.0 {status} {REASONS.get(status, 'Bad Request')}"]
        head.extend(f"{name}: {value}" for name, value in fields)
        warning = exc.reason.replace('"', "'").replace("\\", "/")[:120]
        head.append(f'Warning: 399 sipalive "{warning}"')
        if self.config.server:
            head.append(f"Server: {self.config.server}")
        head.append("Content-Length: 0")
        out = ("\r\n".join(head) + "\r\n\r\n").encode("utf-8", "surrogateescape")
        return Reply(out, source, ReplyKind.SIP, status=status, error=exc.reason)

    # -- helpers --------------------------------------------------------------------------

    def _stun(self, data: bytes, source: tuple[str, int]) -> Reply | None:
        if not stun.is_stun(data):
            return None
        try:
            msg = stun.parse(data)
        except ParseError:
            return None  # RFC 5389 §7.3: silently discard malformed STUN
        if msg.msg_class is not stun.StunClass.REQUEST or msg.method != stun.BINDING:
            return None
        out = stun.binding_success(msg.transaction_id, source, software=self.config.server)
        return Reply(out, source, ReplyKind.STUN)

    def tag(self, call_id: bytes, from_tag: bytes) -> bytes:
        """The To-tag of an answer (§8.2.6.2): a stateless UAS derives it from the request,
        so a retransmission gets the same tag (no state kept, nothing random)."""
        h = self._tag_hash.copy()
        h.update(call_id)
        h.update(from_tag)
        return h.hexdigest().encode("ascii")

    def _to_tag(self, req: Request) -> str:
        return self.tag(
            req.call_id.encode("utf-8", "surrogateescape"),
            (req.from_.tag or "").encode("utf-8", "surrogateescape"),
        ).decode("ascii")

    def _reply(
        self,
        req: Request,
        status: int,
        source: tuple[str, int],
        transport: str,
        extra: list[tuple[str, str]],
        reason: str | None = None,
    ) -> Reply:
        # Built as text, not as a Response: every piece is either copied from a request that
        # parsed or made here, so validating it again would only cost time (tests parse it).
        lines = [f"SIP/2.0 {status} {reason or REASONS.get(status, '')}"]
        via_fields = req.headers.get_fields("via")
        addr = source
        top = req.vias[0]
        params = top.params
        if transport == "udp" or top.has_rport or top.host != source[0]:
            # §18.2.1 received, RFC 3581 §4 rport (with rport, received is always added)
            new = [(k, v) for k, v in params if k.lower() not in ("received", "rport")]
            new.append(("received", source[0]))
            if top.has_rport:
                new.append(("rport", str(source[1])))
            elif transport == "udp":
                # §18.2.2: no rport, so the answer goes to the received IP and the sent-by port
                addr = (source[0], top.port or 5060)
            host = f"[{top.host}]" if ":" in top.host else top.host
            sent_by = host if top.port is None else f"{host}:{top.port}"
            first = f"SIP/2.0/{top.transport} {sent_by}{format_params(tuple(new))}"
            rest = split_top_level(via_fields[0])[1:] if "," in via_fields[0] else ()
            lines.append("Via: " + ", ".join([first, *rest]))
            lines.extend("Via: " + v for v in via_fields[1:])
        else:
            lines.extend("Via: " + v for v in via_fields)
        for name, value in req.headers:
            key = header_key(name)
            if key in _COPIED:
                lines.append(f"{name}: {value}")
            elif key == "to":
                if req.to.tag is None and status > 100:
                    value = f"{value};tag={self._to_tag(req)}"
                lines.append(f"{name}: {value}")
        lines.extend(f"{name}: {value}" for name, value in extra)
        lines.append(self._trailer)
        data = "\r\n".join(lines).encode("utf-8", "surrogateescape")
        return Reply(data, addr, ReplyKind.SIP, status=status, method=req.method)


_SALVAGE = ("via", "from", "to", "call-id", "cseq")
_COPIED = frozenset(("from", "call-id", "cseq"))


def _salvage(data: bytes) -> list[tuple[str, str]] | None:
    """The Via, From, To, Call-ID and CSeq lines of a malformed request, or None if it is a
    response or has no Via."""
    start = 0
    while data.startswith(b"\r\n", start):
        start += 2
    if data[start : start + 4].upper() == b"SIP/":
        return None
    end = data.find(b"\r\n\r\n", start)
    head = data[start : end if end >= 0 else min(len(data), DEFAULT_MAX_MESSAGE)]
    lines = head.decode("utf-8", "surrogateescape").split("\r\n")[1:]
    fields: list[tuple[str, str]] = []
    for line in lines:
        if line[:1] in (" ", "\t") and fields:
            name, value = fields[-1]
            fields[-1] = (name, (value + " " + line.strip()).strip())
            continue
        name, sep, value = line.partition(":")
        if not sep or any(c in name for c in "\r\n"):
            continue
        fields.append((name.strip(), value.strip()))
    kept = [
        (n, v) for n, v in fields if header_key(n) in _SALVAGE and "\r" not in v and "\n" not in v
    ]
    if not any(header_key(n) == "via" for n, _ in kept):
        return None
    return kept
