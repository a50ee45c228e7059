"""The common OPTIONS over UDP, answered without building a ``Request``.

:meth:`OptionsFastPath.answer` takes a datagram and its source and returns the exact octets
``StatelessResponder.handle_datagram`` (:mod:`sipalive.sip.responder`) would send, and where,
or None when the datagram is anything but a plain, well-formed OPTIONS: then the caller runs
the full path, which decides (200, 400, 416, 420...). It accepts a narrow subset of the
RFC 3261 §25 grammar and validates ALL of it, so that whatever it answers, the full parser
would have accepted and answered identically (``tests/test_fastpath.py`` checks this, byte for
byte, on the RFC 4475 corpus, real clients' requests and random mutations):

* printable ASCII and CRLF only: no folding, no tab, no UTF-8, no bare CR or LF;
* ``OPTIONS sip:...|sips:... SIP/2.0``, nothing before it, one SP between the parts;
* ``Name: value`` lines with a token name; the headers the full path parses (Via, From, To,
  Call-ID, CSeq, Max-Forwards, Content-Length) in their plain forms: one Via per line, no
  comma, no IPv6 sent-by, no quoted parameter, no space inside a parameter list;
* no Require (the full path's 420 check) and a Content-Length, if any, the datagram satisfies.

Pure: bytes in, bytes out.
"""

from __future__ import annotations

import re

from sipalive.sip.grammar import MAX_CSEQ, TOKEN_CHARS

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

_TOKEN = "".join(sorted(TOKEN_CHARS)).encode("ascii")
_T = re.escape(_TOKEN)
# printable, no SP: [!-~]; a parameter value: that without ; , " (and < in a bare addr-spec,
# where the full path would take a later < for the start of a name-addr)
_VALUE = rb"[!#-+\--:<-~]+"
_BARE_VALUE = rb"[!#-+\--:=-~]+"
_PARAMS = rb"(?:;[" + _T + rb"]+(?:=" + _VALUE + rb")?)*"
# 1-65535 without leading zeros (the full path writes the port back as a number)
_PORT = rb"[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]"
_VIA = re.compile(
    rb"SIP/2\.0/([A-Za-z0-9]+) ([A-Za-z0-9._-]+(?::(" + _PORT + rb"))?)(" + _PARAMS + rb")"
)
_NAME_ADDR = re.compile(
    rb'(?:"[ !#-\[\]-~]*" *|[' + _T + rb" ]*)<[!-=?-~]+>(" + _PARAMS + rb")"
    rb"|[!#-:=-~]*:[!#-:=-~]*((?:;[" + _T + rb"]+(?:=" + _BARE_VALUE + rb")?)*)"
)
_TAG = re.compile(rb";[tT][aA][gG](?:=([^;]*))?(?=;|\Z)")
_ROUTING = re.compile(
    rb";(?:[rR][pP][oO][rR][tT]|[rR][eE][cC][eE][iI][vV][eE][dD])(?:=[^;]*)?(?=;|\Z)"
)
_RPORT = re.compile(rb";[rR][pP][oO][rR][tT](?:=[^;]*)?(?=;|\Z)")
_VISIBLE = re.compile(rb"[!-~]+")
_CSEQ_RE = re.compile(rb"[0-9]{1,10} OPTIONS")
_NAME = re.compile(rb"[" + _T + rb"]+")
_FIELD = re.compile(rb"([" + _T + rb"]+) *: *([ -~]*?) *")

# what the fast path does with a header; an unlisted token name is ignored, as the full path
# ignores it. Compact forms: RFC 3261 §7.3.3.
_IGNORED, _VIA_K, _FROM, _TO, _CALL_ID, _CSEQ, _MAX_FORWARDS, _CONTENT_LENGTH, _CONTENT_TYPE = (
    range(9)
)
_KINDS = {
    b"via": _VIA_K,
    b"v": _VIA_K,
    b"from": _FROM,
    b"f": _FROM,
    b"to": _TO,
    b"t": _TO,
    b"call-id": _CALL_ID,
    b"i": _CALL_ID,
    b"cseq": _CSEQ,
    b"max-forwards": _MAX_FORWARDS,
    b"content-length": _CONTENT_LENGTH,
    b"l": _CONTENT_LENGTH,
    b"content-type": _CONTENT_TYPE,
    b"c": _CONTENT_TYPE,
    b"require": None,  # the 420 check belongs to the full path
}
_VARYING = (_VIA_K, _FROM, _CALL_ID)  # differ from request to request: not remembered
_LINES_MAX = 4096  # remembered header lines
_NAMES_MAX = 256  # remembered spellings of the three varying names
_STARTS_MAX = 256  # remembered Request-Lines

# a header line, classified: (kind, the line as the answer copies it, a number: the
# Content-Length's value; for a To, 1 if it has a tag)
_Field = tuple[int, bytes, int]


class OptionsFastPath:
    """Answers a plain OPTIONS over UDP exactly as the full responder would.

    ``status_line`` is the reply's first line; ``tail`` everything after the copied headers
    (Allow, Accept, ..., Server, Content-Length, the empty line); ``to_tag`` the full path's
    tag function of (Call-ID, From tag), so both derive the same tag from the same octets.
    Lines that repeat from request to request (the Request-Line, To, CSeq, User-Agent...)
    are validated once and remembered, in tables of bounded size.
    """

    def __init__(
        self,
        status_line: bytes,
        tail: bytes,
        to_tag: Callable[[bytes, bytes], bytes],
        max_message: int,
    ) -> None:
        self._status_line = status_line
        self._tail = tail
        self._to_tag = to_tag
        self._max_message = max_message
        self._ignored: set[bytes] = set()
        self._lines: dict[bytes, _Field] = {}
        self._names: dict[bytes, tuple[int, bytes]] = {}
        self._starts: set[bytes] = set()

    def _field(self, line: bytes) -> _Field | None:
        """Classify and validate a header line not seen before; None: not for the fast path.

        A line that repeats (any but Via, From, Call-ID) is remembered whole; for those
        three, only the name is, with the answer's spelling of it."""
        field = _FIELD.fullmatch(line)
        if field is None:
            return None  # not printable ASCII, no colon, folded, not a token name
        name, value = field.groups()
        kind = _KINDS.get(name.lower(), _IGNORED)
        if kind is None:
            return None
        number = 0
        if kind in _VARYING:
            if len(self._names) >= _NAMES_MAX:
                return None
            self._names[line.partition(b":")[0]] = (kind, name + b": ")
        elif kind == _TO:
            name_addr = _NAME_ADDR.fullmatch(value)
            if name_addr is None:
                return None
            tag = _TAG.search(name_addr[1] if name_addr[1] is not None else name_addr[2])
            number = tag is not None and tag[1] is not None
        elif kind == _CSEQ:
            if not _CSEQ_RE.fullmatch(value) or int(value[:-8]) > MAX_CSEQ:
                return None
        elif kind == _MAX_FORWARDS:
            if not value.isdigit():
                return None
        elif kind == _CONTENT_LENGTH:
            if not value.isdigit() or len(value) > 9:
                return None
            number = int(value)
        result = (kind, name + b": " + value, number)
        if kind == _IGNORED:
            if len(self._ignored) < _LINES_MAX:
                self._ignored.add(line)
        elif kind not in _VARYING and len(self._lines) < _LINES_MAX:
            self._lines[line] = result
        return result

    def _start_ok(self, line: bytes) -> bool:
        start = line.split(b" ")
        ok = (
            len(start) == 3
            and start[2] == b"SIP/2.0"
            and (start[1].startswith(b"sip:") or start[1].startswith(b"sips:"))
            and _VISIBLE.fullmatch(start[1]) is not None
        )
        if ok and len(self._starts) < _STARTS_MAX:
            self._starts.add(line)
        return ok

    def answer(self, data: bytes, source: tuple[str, int]) -> tuple[bytes, tuple[str, int]] | None:
        """The reply octets and where to send them, or None: run the full path."""
        if not data.startswith(b"OPTIONS ") or len(data) > self._max_message:
            return None
        end = data.find(b"\r\n\r\n")
        if end < 0:
            return None
        lines = data[:end].split(b"\r\n")
        if lines[0] not in self._starts and not self._start_ok(lines[0]):
            return None
        vias: list[re.Match[bytes]] = []
        copied: list[bytes] = []
        call_id = from_tag = None
        to_at = -1
        to_tagged = 0
        seen = 0
        ignored = self._ignored
        memo = self._lines
        names = self._names
        for line in lines[1:]:
            if line in ignored:
                continue
            field = memo.get(line)
            if field is None:
                name, _, value = line.partition(b":")
                varying = names.get(name)
                if varying is None:
                    field = self._field(line)
                    if field is None:
                        return None
                    varying = names.get(name) if field[0] in _VARYING else None
                if varying is not None:
                    kind, prefix = varying
                    value = value.strip(b" ")
                    if kind == _VIA_K:
                        via = _VIA.fullmatch(value)
                        if via is None:
                            return None
                        vias.append(via)
                        continue
                    bit = 1 << kind
                    if seen & bit:
                        return None  # RFC 3261 §7.3.1: a single header twice: the full path's 400
                    seen |= bit
                    if kind == _CALL_ID:
                        if not _VISIBLE.fullmatch(value):
                            return None
                        call_id = value
                    else:
                        name_addr = _NAME_ADDR.fullmatch(value)
                        if name_addr is None:
                            return None
                        tag = _TAG.search(
                            name_addr[1] if name_addr[1] is not None else name_addr[2]
                        )
                        from_tag = tag[1] if tag is not None else None
                    copied.append(prefix + value)
                    continue
                assert field is not None  # _field returned it
                if field[0] == _IGNORED:
                    continue
            kind, copy, number = field
            bit = 1 << kind
            if seen & bit:
                return None
            seen |= bit
            if kind == _TO:
                to_at = len(copied)
                to_tagged = number
                copied.append(copy)
            elif kind == _CSEQ:
                copied.append(copy)
            elif kind == _CONTENT_LENGTH and number > len(data) - end - 4:
                return None
        if not vias or call_id is None or seen & _REQUIRED != _REQUIRED:
            return None
        if not to_tagged:
            copied[to_at] += b";tag=" + self._to_tag(call_id, from_tag or b"")
        top = vias[0]
        params, rport = top[4], False
        if params.endswith(b";rport") and not _ROUTING.search(params, 0, len(params) - 6):
            params, rport = params[:-6], True  # SIPp's Via: one rport, last
        elif b";" in params:
            params, n = _ROUTING.subn(b"", params)
            rport = n > 0 and _RPORT.search(top[4]) is not None
        if rport:
            params += (
                b";received=" + source[0].encode("ascii") + b";rport=" + str(source[1]).encode()
            )
            addr = source
        else:
            params += b";received=" + source[0].encode("ascii")
            addr = (source[0], int(top[3]) if top[3] is not None else 5060)
        out = [self._status_line, b"Via: SIP/2.0/" + top[1].upper() + b" " + top[2] + params]
        if len(vias) > 1:
            out.extend(b"Via: " + via[0] for via in vias[1:])
        out.extend(copied)
        out.append(self._tail)
        return b"\r\n".join(out), addr


_REQUIRED = (1 << _FROM) | (1 << _TO) | (1 << _CALL_ID) | (1 << _CSEQ)
