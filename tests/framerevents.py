"""What a reader of a client stream sees, for comparing ``ResponseStream`` (the peek in front of
the framer) with ``StreamFramer`` itself: shared by tests/test_peek.py and fuzz/fuzz_peek.py."""

from __future__ import annotations

from sipalive.errors import ParseError
from sipalive.sip.framing import MessageReceived, StreamFramer
from sipalive.sip.message import Response
from sipalive.sip.peek import ResponseStream


def reader_events(chunks: list[bytes], framer: ResponseStream | StreamFramer) -> list[object]:
    """What a reader sees: responses as (status, reason, branch, method), other events by
    type, a ParseError as its status; nothing after an error."""
    out: list[object] = []
    for chunk in chunks:
        try:
            events = framer.receive(chunk)
        except ParseError as exc:
            return [*out, ("error", exc.status)]
        for ev in events:
            if isinstance(ev, tuple):
                out.append(ev[:4])
            elif isinstance(ev, MessageReceived) and isinstance(ev.message, Response):
                m = ev.message
                out.append((m.status, m.reason, m.branch, m.cseq.method))
            elif isinstance(ev, MessageReceived):
                out.append(("request", ev.message.cseq.method))
            else:
                out.append(type(ev).__name__)
    return out
