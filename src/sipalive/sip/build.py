"""Building outgoing requests. Identifiers (branch, tag, Call-ID) come from the caller, who owns
randomness; this module stays pure."""

from __future__ import annotations

from sipalive.sip.headers import Headers
from sipalive.sip.message import Request

BRANCH_MAGIC = "z9hG4bK"  # RFC 3261 §8.1.1.7
USER_AGENT = "sipalive/0.1"


def format_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def make_request(
    method: str,
    uri: str,
    *,
    transport: str,
    local: tuple[str, int],
    branch: str,
    from_uri: str,
    from_tag: str,
    call_id: str,
    cseq: int = 1,
    to_uri: str | None = None,
    max_forwards: int = 70,
    user_agent: str | None = USER_AGENT,
    extra: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    rport: bool = True,
) -> Request:
    """A request with the headers RFC 3261 §8.1.1 requires, in the usual order."""
    if not branch.startswith(BRANCH_MAGIC):
        branch = BRANCH_MAGIC + branch
    via = f"SIP/2.0/{transport.upper()} {format_host(local[0])}:{local[1]};branch={branch}"
    if rport:
        via += ";rport"  # RFC 3581: ask for the response at our source port (NAT)
    fields: list[tuple[str, str]] = [
        ("Via", via),
        ("Max-Forwards", str(max_forwards)),
        ("From", f"<{from_uri}>;tag={from_tag}"),
        ("To", f"<{to_uri or uri}>"),
        ("Call-ID", call_id),
        ("CSeq", f"{cseq} {method}"),
    ]
    if user_agent:
        fields.append(("User-Agent", user_agent))
    if extra:
        fields.extend(extra)
    fields.append(("Content-Length", str(len(body))))
    return Request(method, uri, Headers(fields), body)


def make_options(
    uri: str,
    *,
    transport: str,
    local: tuple[str, int],
    branch: str,
    from_tag: str,
    call_id: str,
    cseq: int = 1,
    from_uri: str | None = None,
    user_agent: str | None = USER_AGENT,
) -> Request:
    """An OPTIONS probe (RFC 3261 §11.1) that asks for nothing but a final response."""
    return make_request(
        "OPTIONS",
        uri,
        transport=transport,
        local=local,
        branch=branch,
        from_uri=from_uri or f"sip:sipalive@{format_host(local[0])}",
        from_tag=from_tag,
        call_id=call_id,
        cseq=cseq,
        user_agent=user_agent,
        extra=[("Accept", "application/sdp")],
    )


_BRANCH_MARK = "z9hG4bK-sipalive-branch-mark"
_CALL_ID_MARK = "sipalive-call-id-mark"
_CSEQ_MARK = 3141592653


class OptionsTemplate:
    """An OPTIONS probe as octet strings around its branch, Call-ID and CSeq number.

    Built and validated once by ``make_options``; each probe is then one ``join``. Each probe
    is its own request outside any dialog with a new Call-ID, as Asterisk's qualify and sipsak
    send them: a peer such as SIPp ignores a second request in an ended "call".
    """

    __slots__ = ("_parts",)

    def __init__(
        self,
        uri: str,
        *,
        transport: str,
        local: tuple[str, int],
        from_tag: str,
        from_uri: str | None = None,
        user_agent: str | None = USER_AGENT,
    ) -> None:
        sample = make_options(
            uri,
            transport=transport,
            local=local,
            branch=_BRANCH_MARK,
            from_tag=from_tag,
            call_id=_CALL_ID_MARK,
            cseq=_CSEQ_MARK,
            from_uri=from_uri,
            user_agent=user_agent,
        ).encode()
        head, rest = sample.split(_BRANCH_MARK.encode(), 1)
        middle, rest = rest.split(_CALL_ID_MARK.encode(), 1)
        middle2, tail = rest.split(b"CSeq: %d " % _CSEQ_MARK, 1)
        self._parts = (head, middle, middle2 + b"CSeq: ", b" " + tail)

    def fill(self, branch: str, call_id: str, cseq: int) -> bytes:
        head, middle, middle2, tail = self._parts
        return b"".join(
            (head, branch.encode(), middle, call_id.encode(), middle2, b"%d" % cseq, tail)
        )
