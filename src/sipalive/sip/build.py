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
