"""SIP messages: parse from a datagram or a framed stream chunk, and serialise (RFC 3261 §7).

A message is validated when it is built, whether parsed or made by our own code, so every
``Request``/``Response`` in the program has a parseable Via list, CSeq, Call-ID, From and To.
Malformed input raises ``ParseError`` with the status to answer: 400, 413 (too large), 505
(version). Nothing else escapes the parser: that is the fuzz invariant.
"""

from __future__ import annotations

from sipalive.errors import ParseError
from sipalive.sip.grammar import is_digits, is_token
from sipalive.sip.headers import (
    SINGLE_HEADERS,
    CSeq,
    Headers,
    NameAddr,
    Via,
    header_key,
    parse_cseq,
    parse_name_addr,
    parse_vias,
)
from sipalive.sip.uri import uri_scheme

SIP_VERSION = "SIP/2.0"
_REQUIRED = ("Via", "From", "To", "Call-ID", "CSeq")
_URI_STOP = frozenset(" \t\r\n")
DEFAULT_MAX_MESSAGE = 65536
CRLF = b"\r\n"
_ENCODING = "utf-8"
# Header text is UTF-8 (RFC 3261 §7.3.1 TEXT-UTF8); surrogateescape keeps any octet so that a
# message we relay or echo goes out byte for byte.
_ERRORS = "surrogateescape"


class Message:
    """What requests and responses share: the header fields, the body, and their parsed views."""

    __slots__ = ("body", "call_id", "cseq", "from_", "headers", "max_forwards", "to", "vias")

    headers: Headers
    body: bytes
    vias: list[Via]
    cseq: CSeq
    call_id: str
    from_: NameAddr
    to: NameAddr
    max_forwards: int | None

    def _validate(self) -> None:
        idx = self.headers.index()
        for key in SINGLE_HEADERS:
            values = idx.get(key)
            if values is not None and len(values) > 1:
                raise ParseError(f"more than one {key} header")
        missing = [name for name in _REQUIRED if name.lower() not in idx]
        if missing:
            raise ParseError("missing " + ", ".join(missing))
        self.vias = parse_vias(idx["via"])
        self.cseq = parse_cseq(idx["cseq"][0])
        call_id = idx["call-id"][0].strip()
        if not call_id or " " in call_id or "\t" in call_id:
            raise ParseError(f"bad Call-ID: {call_id!r}")
        self.call_id = call_id
        self.from_ = parse_name_addr(idx["from"][0], "From")
        self.to = parse_name_addr(idx["to"][0], "To")
        mf_values = idx.get("max-forwards")
        if mf_values is None:
            self.max_forwards = None
        else:
            mf = mf_values[0]
            mf = mf.strip()
            if not is_digits(mf):
                raise ParseError(f"bad Max-Forwards: {mf!r}")
            # RFC 4475 §3.1.2.5: an overlarge value is not an error; cap it
            self.max_forwards = min(int(mf[-6:]), 999999) if len(mf) <= 6 else 999999
        cl = idx.get("content-length")
        if cl is not None:
            _content_length(cl[0])

    @property
    def branch(self) -> str | None:
        return self.vias[0].branch if self.vias else None

    def _encode(self, start_line: str) -> bytes:
        lines = [start_line]
        lines.extend(f"{name}: {value}" for name, value in self.headers)
        lines.append("")
        lines.append("")
        return "\r\n".join(lines).encode(_ENCODING, _ERRORS) + self.body


class Request(Message):
    __slots__ = ("method", "uri")

    def __init__(
        self, method: str, uri: str, headers: Headers, body: bytes = b"", *, checked: bool = False
    ) -> None:
        """``checked``: the parser has already validated the method and Request-URI."""
        if not checked:
            if not is_token(method):
                raise ParseError(f"bad method {method!r}")
            if uri_scheme(uri) is None or not _URI_STOP.isdisjoint(uri):
                raise ParseError(f"bad Request-URI {uri!r}")
        self.method = method
        self.uri = uri
        self.headers = headers
        self.body = body
        self._validate()
        if self.cseq.method != method:
            raise ParseError(f"CSeq method {self.cseq.method} differs from {method}")

    def encode(self) -> bytes:
        return self._encode(f"{self.method} {self.uri} {SIP_VERSION}")

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.uri} cseq={self.cseq} call-id={self.call_id}>"


class Response(Message):
    __slots__ = ("reason", "status")

    def __init__(self, status: int, reason: str, headers: Headers, body: bytes = b"") -> None:
        if not 100 <= status <= 699:
            raise ParseError(f"status code {status} out of range")
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body
        self._validate()

    def encode(self) -> bytes:
        return self._encode(f"{SIP_VERSION} {self.status} {self.reason}")

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason} cseq={self.cseq} call-id={self.call_id}>"


def _content_length(value: str) -> int:
    value = value.strip()
    if not is_digits(value):
        raise ParseError(f"bad Content-Length: {value!r}")
    significant = value.lstrip("0") or "0"
    if len(significant) > 9:
        raise ParseError("Content-Length too large", status=413)
    return int(significant)


class Head:
    """A parsed start line and header section, before the body is attached."""

    __slots__ = ("content_length", "fields", "start")

    def __init__(self, start: list[str], fields: list[tuple[str, str]], cl: int | None) -> None:
        self.start = start
        self.fields = fields
        self.content_length = cl

    @property
    def is_request(self) -> bool:
        return len(self.start) == 3 and not self.start[0].upper().startswith("SIP/")

    def build(self, body: bytes) -> Request | Response:
        headers = Headers(self.fields)
        if self.start[0].upper().startswith("SIP/"):
            return Response(int(self.start[1]), self.start[2], headers, body)
        return Request(self.start[0], self.start[1], headers, body, checked=True)


def parse_head(head: bytes) -> Head:
    """Parse the octets of a start line and header fields (no trailing empty line).

    RFC 3261 §7.3.1: header folding (a line starting with SP/HTAB continues the previous one),
    LWS before the colon, case-insensitive names. §7.1/§7.2: the start lines.
    """
    text = head.decode(_ENCODING, _ERRORS)
    lines = text.split("\r\n")
    first = lines[0]
    start = _parse_start_line(first)
    fields: list[tuple[str, str]] = []
    for line in lines[1:]:
        if "\r" in line or "\n" in line:
            raise ParseError("bare CR or LF in the header section")
        if line[:1] in (" ", "\t"):
            if not fields:
                raise ParseError("continuation line before any header")
            name, value = fields[-1]
            fields[-1] = (name, (value + " " + line.strip(" \t")).strip(" \t"))
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise ParseError(f"header line without colon: {line[:40]!r}")
        name = name.rstrip(" \t")
        if not is_token(name):
            raise ParseError(f"bad header name {name[:40]!r}")
        fields.append((name, value.strip(" \t")))
    cl: int | None = None
    for name, value in fields:
        if header_key(name) == "content-length":
            length = _content_length(value)
            if cl is not None and length != cl:
                raise ParseError("conflicting Content-Length values")
            cl = length
    return Head(start, fields, cl)


def _parse_start_line(line: str) -> list[str]:
    if line[:4].upper() == "SIP/":
        parts = line.split(" ", 2)
        if len(parts) == 2:
            parts.append("")
        if len(parts) != 3:
            raise ParseError(f"bad Status-Line {line[:60]!r}")
        _check_version(parts[0], "Status-Line")
        code = parts[1]
        if len(code) != 3 or not is_digits(code) or not 100 <= int(code) <= 699:
            raise ParseError(f"bad status code {code[:20]!r}")
        if "\r" in parts[2] or "\n" in parts[2]:
            raise ParseError("bad reason phrase")
        return parts
    parts = line.split(" ")
    if len(parts) != 3:
        raise ParseError(f"bad Request-Line {line[:60]!r}")
    method, uri, version = parts
    if not is_token(method):
        raise ParseError(f"bad method {method[:40]!r}")
    if uri_scheme(uri) is None or not _URI_STOP.isdisjoint(uri):
        raise ParseError(f"bad Request-URI {uri[:60]!r}")
    _check_version(version, "Request-Line")
    return parts


def _check_version(version: str, where: str) -> None:
    if version.upper() == SIP_VERSION:
        return
    name, _, number = version.partition("/")
    major, dot, minor = number.partition(".")
    if name.upper() == "SIP" and dot and is_digits(major) and is_digits(minor):
        raise ParseError(f"{version} not supported", status=505)
    raise ParseError(f"bad SIP-Version in {where}: {version[:20]!r}")


def _split_head(data: bytes, max_size: int) -> tuple[int, int]:
    """Index of the start line and of the CRLFCRLF ending the header section."""
    start = 0
    while data.startswith(CRLF, start):
        start += 2
    end = data.find(b"\r\n\r\n", start)
    if end < 0:
        if len(data) - start > max_size:
            raise ParseError("header section too large", status=413)
        raise ParseError("header section not terminated by an empty line")
    return start, end


def parse_message(data: bytes, max_size: int = DEFAULT_MAX_MESSAGE) -> Request | Response:
    """Parse one SIP message from a datagram (RFC 3261 §18.3).

    Leading CRLFs are skipped. With a Content-Length, octets beyond it are ignored (RFC 4475
    §3.1.1.8 dblreq) and fewer octets than announced are an error (§3.1.2.2 clerr). Without
    one, the body is the rest of the datagram (RFC 4475 §3.4.1 inv2543).
    """
    if len(data) > max_size:
        raise ParseError(f"message of {len(data)} octets exceeds {max_size}", status=413)
    start, end = _split_head(data, max_size)
    head = parse_head(data[start:end])
    body_start = end + 4
    if head.content_length is None:
        body = data[body_start:]
    else:
        if body_start + head.content_length > len(data):
            raise ParseError(
                f"Content-Length {head.content_length} exceeds the "
                f"{len(data) - body_start} octets present"
            )
        body = data[body_start : body_start + head.content_length]
    return head.build(body)


def encode(message: Request | Response) -> bytes:
    return message.encode()
