"""Small builders of SIP messages for unit tests."""

from __future__ import annotations

from sipalive.sip.build import make_options
from sipalive.sip.headers import Headers
from sipalive.sip.message import Request, Response


def options(branch: str = "z9hG4bKtest1", transport: str = "UDP", cseq: int = 1) -> Request:
    return make_options(
        "sip:ping@192.0.2.10:5060",
        transport=transport,
        local=("192.0.2.1", 5099),
        branch=branch,
        from_tag="ft1",
        call_id="cid-1@test",
        cseq=cseq,
    )


def response_to(request: Request, status: int = 200, reason: str = "OK") -> Response:
    fields = [(n, v) for n, v in request.headers if n in ("Via", "From", "To", "Call-ID", "CSeq")]
    fields = [(n, v + ";tag=uas" if n == "To" else v) for n, v in fields]
    fields.append(("Content-Length", "0"))
    return Response(status, reason, Headers(fields))
