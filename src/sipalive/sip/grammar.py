"""Character classes and small scanners from the RFC 3261 §25 grammar.

Only what the parser needs to decide "well-formed or 400": token, quoted-string, generic
parameters with LWS around ``;`` and ``=``, and top-level comma splitting of header values.
"""

from __future__ import annotations

from sipalive.errors import ParseError

# RFC 3261 §25.1: token = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~")
# spelled out: ``string`` imports ``re``, a cost on sipalive check's start-up path
_ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
TOKEN_CHARS = frozenset(_ALNUM + "-.!%*_+`'~")
# RFC 3986 §3.1 scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )
SCHEME_CHARS = frozenset(_ALNUM + "+-.")
WSP = " \t"
DIGITS = frozenset("0123456789")

# RFC 3261 §8.1.1.5: a CSeq number MUST be expressible as a 32-bit unsigned integer.
MAX_CSEQ = 2**32 - 1


def is_token(text: str) -> bool:
    return bool(text) and TOKEN_CHARS.issuperset(text)


def is_digits(text: str) -> bool:
    return bool(text) and DIGITS.issuperset(text)


def skip_ws(text: str, pos: int) -> int:
    n = len(text)
    while pos < n and text[pos] in WSP:
        pos += 1
    return pos


def scan_quoted(text: str, pos: int) -> int:
    """Return the index just past the quoted-string starting at ``text[pos] == '"'``.

    RFC 3261 §25.1: quoted-pair = "\\" (%x00-09 / %x0B-0C / %x0E-7F).
    """
    n = len(text)
    i = pos + 1
    while i < n:
        c = text[i]
        if c == "\\":
            if i + 1 >= n or text[i + 1] in "\r\n":
                break
            i += 2
            continue
        if c == '"':
            return i + 1
        i += 1
    raise ParseError("unterminated quoted-string")


def split_top_level(value: str, sep: str = ",") -> list[str]:
    """Split on ``sep`` outside quoted strings and ``<...>``; parts are stripped.

    Empty parts are kept (callers that forbid them raise ParseError).
    """
    if sep not in value:
        return [value.strip()]
    parts: list[str] = []
    start = 0
    i = 0
    n = len(value)
    depth = 0
    while i < n:
        c = value[i]
        if c == '"':
            i = scan_quoted(value, i)
            continue
        if c == "<":
            depth += 1
        elif c == ">" and depth:
            depth -= 1
        elif c == sep and not depth:
            parts.append(value[start:i].strip())
            start = i + 1
        i += 1
    parts.append(value[start:].strip())
    return parts


def parse_params(text: str, what: str) -> tuple[tuple[str, str | None], ...]:
    """Parse ``*( SEMI generic-param )`` where ``text`` starts at the first ``;`` (or is empty).

    RFC 3261 §25.1: generic-param = token [ EQUAL gen-value ]; gen-value = token / host /
    quoted-string. LWS is allowed around ``;`` and ``=``. An empty parameter is malformed.
    """
    if '"' not in text:
        return _parse_plain_params(text, what)
    params: list[tuple[str, str | None]] = []
    n = len(text)
    pos = skip_ws(text, 0)
    while pos < n:
        if text[pos] != ";":
            raise ParseError(f"unexpected {text[pos]!r} in {what} parameters")
        pos = skip_ws(text, pos + 1)
        start = pos
        while pos < n and text[pos] in TOKEN_CHARS:
            pos += 1
        name = text[start:pos]
        if not name:
            raise ParseError(f"empty parameter in {what}")
        pos = skip_ws(text, pos)
        value: str | None = None
        if pos < n and text[pos] == "=":
            pos = skip_ws(text, pos + 1)
            if pos < n and text[pos] == '"':
                end = scan_quoted(text, pos)
                value = text[pos:end]
                pos = end
            else:
                start = pos
                # token / host (IPv6 reference allowed in Via received/maddr)
                while pos < n and text[pos] not in "; \t,":
                    pos += 1
                value = text[start:pos]
                if not value:
                    raise ParseError(f"empty value for parameter {name!r} in {what}")
            pos = skip_ws(text, pos)
        params.append((name, value))
    return tuple(params)


_PLAIN_VALUE_STOP = frozenset(" \t,")


def _parse_plain_params(text: str, what: str) -> tuple[tuple[str, str | None], ...]:
    """The common case, no quoted-string: split on ";" (C speed) and check each piece."""
    head, *parts = text.split(";")
    if head.strip(WSP):
        raise ParseError(f"unexpected {head.strip(WSP)[0]!r} in {what} parameters")
    params: list[tuple[str, str | None]] = []
    for part in parts:
        name, eq, value = part.partition("=")
        name = name.strip(WSP)
        if not name or not TOKEN_CHARS.issuperset(name):
            if not name:
                raise ParseError(f"empty parameter in {what}")
            raise ParseError(f"bad parameter name {name[:30]!r} in {what}")
        if eq:
            value = value.strip(WSP)
            if not value:
                raise ParseError(f"empty value for parameter {name!r} in {what}")
            if not _PLAIN_VALUE_STOP.isdisjoint(value):
                raise ParseError(f"bad value for parameter {name!r} in {what}")
            params.append((name, value))
        else:
            params.append((name, None))
    return tuple(params)


def param_value(params: tuple[tuple[str, str | None], ...], name: str) -> str | None:
    lname = name.lower()
    for key, value in params:
        if key.lower() == lname:
            return value
    return None


def has_param(params: tuple[tuple[str, str | None], ...], name: str) -> bool:
    lname = name.lower()
    return any(key.lower() == lname for key, _ in params)


def format_params(params: tuple[tuple[str, str | None], ...]) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params)
