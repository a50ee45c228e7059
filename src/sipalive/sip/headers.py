"""Header fields: the ordered multi-map, compact forms, and the structured headers we rely on.

Names are case-insensitive and compact forms (RFC 3261 §7.3.3, §20) are folded to their long
name for look-up; the names as received are kept for serialisation.
"""

from __future__ import annotations

from sipalive.errors import ParseError
from sipalive.sip.grammar import (
    MAX_CSEQ,
    TOKEN_CHARS,
    WSP,
    format_params,
    is_digits,
    is_token,
    param_value,
    parse_params,
    scan_quoted,
    skip_ws,
    split_top_level,
)
from sipalive.sip.record import Record
from sipalive.sip.uri import parse_host_port

TYPE_CHECKING = False  # no ``typing`` import: this module is on sipalive check's start-up path
if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

# RFC 3261 §7.3.3 and the IANA SIP header registry's compact forms.
COMPACT_FORMS = {
    "a": "accept-contact",
    "b": "referred-by",
    "c": "content-type",
    "d": "request-disposition",
    "e": "content-encoding",
    "f": "from",
    "i": "call-id",
    "j": "reject-contact",
    "k": "supported",
    "l": "content-length",
    "m": "contact",
    "n": "identity-info",
    "o": "event",
    "r": "refer-to",
    "s": "subject",
    "t": "to",
    "u": "allow-events",
    "v": "via",
    "x": "session-expires",
    "y": "identity",
}

# Headers whose value is a comma-separated list that may also be split over several lines
# (RFC 3261 §7.3.1). Others (From, To, Call-ID, CSeq, dates, auth) must not be comma-split.
LIST_HEADERS = frozenset(
    {
        "via",
        "contact",
        "route",
        "record-route",
        "allow",
        "accept",
        "accept-encoding",
        "accept-language",
        "supported",
        "require",
        "proxy-require",
        "unsupported",
        "path",
        "allow-events",
    }
)
SINGLE_HEADERS = frozenset(
    {"call-id", "cseq", "from", "to", "max-forwards", "content-length", "content-type"}
)


_KEYS: dict[str, str] = {}
_WSP_SET = frozenset(" \t")
_BARE_URI_STOP = frozenset(' \t"')


def header_key(name: str) -> str:
    """The look-up key of a header name: lower case, compact forms expanded (memoised; the
    memo is bounded so that a peer inventing names cannot grow it without limit)."""
    key = _KEYS.get(name)
    if key is None:
        key = name.lower()
        key = COMPACT_FORMS.get(key, key)
        if len(_KEYS) < 4096:
            _KEYS[name] = key
    return key


class Headers:
    """An ordered list of (name, value) fields with case-insensitive, compact-aware look-up."""

    __slots__ = ("_fields", "_index")

    def __init__(self, fields: Iterable[tuple[str, str]] = ()) -> None:
        self._fields: list[tuple[str, str, str]] = [
            (header_key(name), name, value) for name, value in fields
        ]
        self._index: dict[str, list[str]] | None = None

    def index(self) -> dict[str, list[str]]:
        """Key -> the values of its fields, in order (built once, dropped on change)."""
        idx = self._index
        if idx is None:
            idx = {}
            for key, _, value in self._fields:
                values = idx.get(key)
                if values is None:
                    idx[key] = [value]
                else:
                    values.append(value)
            self._index = idx
        return idx

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return ((name, value) for _, name, value in self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        return list(self) == list(other)

    def __repr__(self) -> str:
        return f"Headers({list(self)!r})"

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        return header_key(name) in self.index()

    def get(self, name: str) -> str | None:
        """The first field's value, or None."""
        values = self.index().get(header_key(name))
        return values[0] if values else None

    def get_fields(self, name: str) -> list[str]:
        """Every field line's value, not comma-split."""
        return list(self.index().get(header_key(name), ()))

    def get_all(self, name: str) -> list[str]:
        """Every value: fields in order, and for list headers each comma-separated value."""
        key = header_key(name)
        values = self.index().get(key, [])
        if key not in LIST_HEADERS:
            return values
        out: list[str] = []
        for value in values:
            out.extend(split_top_level(value))
        return out

    def add(self, name: str, value: str) -> None:
        self._fields.append((header_key(name), name, value))
        self._index = None

    def prepend(self, name: str, value: str) -> None:
        self._fields.insert(0, (header_key(name), name, value))
        self._index = None

    def set(self, name: str, value: str) -> None:
        """Replace every field of that name by one field (kept at the first one's place)."""
        key = header_key(name)
        self._index = None
        for i, (k, _, _) in enumerate(self._fields):
            if k == key:
                self._fields[i] = (key, name, value)
                self._fields = [f for j, f in enumerate(self._fields) if j <= i or f[0] != key]
                return
        self._fields.append((key, name, value))

    def remove(self, name: str) -> None:
        key = header_key(name)
        self._fields = [f for f in self._fields if f[0] != key]
        self._index = None

    def copy(self) -> Headers:
        new = Headers()
        new._fields = list(self._fields)
        return new


class Via(Record):
    """One Via value (RFC 3261 §20.42): ``SIP/2.0/UDP host:port;branch=...;rport``."""

    __slots__ = ("host", "params", "port", "transport")
    transport: str  # upper case as sent, e.g. "UDP"
    host: str
    port: int | None
    params: tuple[tuple[str, str | None], ...]

    def __init__(
        self,
        transport: str,
        host: str,
        port: int | None,
        params: tuple[tuple[str, str | None], ...] = (),
    ) -> None:
        self._set(transport=transport, host=host, port=port, params=params)

    @property
    def branch(self) -> str | None:
        return param_value(self.params, "branch")

    @property
    def has_rport(self) -> bool:
        return any(k.lower() == "rport" for k, _ in self.params)

    @property
    def rport(self) -> int | None:
        value = param_value(self.params, "rport")
        return int(value) if value and value.isdigit() else None

    @property
    def received(self) -> str | None:
        return param_value(self.params, "received")

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        sent_by = host if self.port is None else f"{host}:{self.port}"
        return f"SIP/2.0/{self.transport} {sent_by}{format_params(self.params)}"


def parse_via_value(value: str) -> Via:
    """Parse one Via value. LWS is allowed around the slashes (RFC 3261 §25.1, SLASH)."""
    n = len(value)
    fields: list[str] = []
    pos = 0
    for i in range(3):
        pos = skip_ws(value, pos)
        start = pos
        while pos < n and value[pos] in TOKEN_CHARS:
            pos += 1
        field = value[start:pos]
        if not field:
            raise ParseError(f"bad Via sent-protocol in {value!r}")
        fields.append(field)
        pos = skip_ws(value, pos)
        if i < 2:
            if pos >= n or value[pos] != "/":
                raise ParseError(f"bad Via sent-protocol in {value!r}")
            pos += 1
    name, version, transport = fields
    if name.upper() != "SIP":
        raise ParseError(f"Via protocol is not SIP: {value!r}")
    if version != "2.0":
        raise ParseError(f"Via version {version} not supported", status=505)
    start = pos
    while pos < n and value[pos] not in "; \t":
        pos += 1
    if pos == start:
        raise ParseError(f"Via without sent-by: {value!r}")
    host, port = parse_host_port(value[start:pos], "Via sent-by")
    params = parse_params(value[pos:], "Via")
    return Via(transport.upper(), host, port, params)


def parse_vias(values: Iterable[str]) -> list[Via]:
    vias: list[Via] = []
    for field in values:
        for part in split_top_level(field):
            if not part:
                raise ParseError("empty Via value")
            vias.append(parse_via_value(part))
    return vias


class CSeq(Record):
    __slots__ = ("method", "seq")
    seq: int
    method: str

    def __init__(self, seq: int, method: str) -> None:
        self._set(seq=seq, method=method)

    def __str__(self) -> str:
        return f"{self.seq} {self.method}"


def parse_cseq(value: str) -> CSeq:
    """RFC 3261 §20.16: ``1*DIGIT LWS Method``; the number fits 32 bits."""
    number, _, method = value.strip().partition(" ")
    if not method:
        number, _, method = value.strip().partition("\t")
    method = method.strip(WSP)
    if not is_digits(number) or not is_token(method):
        raise ParseError(f"bad CSeq: {value!r}")
    significant = number.lstrip("0") or "0"
    if len(significant) > 10 or int(significant) > MAX_CSEQ:
        raise ParseError("CSeq number exceeds 2**32-1")
    return CSeq(int(significant), method)


class NameAddr(Record):
    """From, To, Contact, Route values: ``[display-name] <uri> *(;param)`` or ``uri *(;param)``.

    ``uri`` is kept as text: To/From may use any scheme (RFC 4475 §3.3.3 unksm2).
    """

    __slots__ = ("bracketed", "display", "params", "uri")
    display: str | None
    uri: str
    params: tuple[tuple[str, str | None], ...]
    bracketed: bool

    def __init__(
        self,
        display: str | None,
        uri: str,
        params: tuple[tuple[str, str | None], ...] = (),
        bracketed: bool = True,
    ) -> None:
        self._set(display=display, uri=uri, params=params, bracketed=bracketed)

    @property
    def tag(self) -> str | None:
        return param_value(self.params, "tag")

    def __str__(self) -> str:
        if self.bracketed:
            head = f"{self.display} <{self.uri}>" if self.display else f"<{self.uri}>"
        else:
            head = self.uri
        return head + format_params(self.params)

    def with_param(self, name: str, value: str | None) -> NameAddr:
        return NameAddr(self.display, self.uri, (*self.params, (name, value)), self.bracketed)


def parse_name_addr(value: str, what: str = "name-addr") -> NameAddr:
    text = value.strip()
    n = len(text)
    if not text:
        raise ParseError(f"empty {what}")
    display: str | None = None
    pos = 0
    if text[0] == '"':
        pos = scan_quoted(text, 0)
        display = text[:pos]
        pos = skip_ws(text, pos)
        if pos >= n or text[pos] != "<":
            raise ParseError(f"quoted display name without <uri> in {what}")
    else:
        lt = text.find("<")
        if lt >= 0:
            # RFC 4475 §3.1.1.6 lwsdisp: a token display name may touch the "<".
            words = text[:lt].split()
            if any(not is_token(w) for w in words):
                raise ParseError(f"bad display name in {what}: {text[:lt]!r}")
            display = " ".join(words) or None
            pos = lt
    if pos < n and text[pos] == "<":
        end = text.find(">", pos)
        if end < 0:
            raise ParseError(f"unterminated <uri> in {what}")
        uri = text[pos + 1 : end].strip(WSP)
        if not uri or not _WSP_SET.isdisjoint(uri):
            raise ParseError(f"bad URI in {what}: {uri!r}")
        params = parse_params(text[end + 1 :], what)
        return NameAddr(display, uri, params, True)
    # addr-spec without brackets: parameters after ";" belong to the header (RFC 3261 §20.10)
    semi = text.find(";")
    uri = (text if semi < 0 else text[:semi]).strip(WSP)
    if not uri or not _BARE_URI_STOP.isdisjoint(uri) or ":" not in uri:
        raise ParseError(f"bad URI in {what}: {uri!r}")
    params = parse_params(text[semi:], what) if semi >= 0 else ()
    return NameAddr(None, uri, params, False)
