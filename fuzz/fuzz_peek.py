"""Coverage-guided fuzzing of the response peek (sip/peek.py) against the full parser.

Invariant: ``peek_datagram`` returns None or exactly what ``parse_message`` gives (status,
reason, branch, CSeq method), and never raises; ``ResponseStream`` yields what
``StreamFramer(Role.CLIENT)`` yields, or raises the same ParseError.
Run: ``.venv/bin/python fuzz/fuzz_peek.py -max_total_time=60 tests/data/rfc4475``.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from sipalive.errors import ParseError
    from sipalive.sip.framing import MessageReceived, Role, StreamFramer
    from sipalive.sip.message import Response, parse_message
    from sipalive.sip.peek import ResponseStream, peek_datagram


def _stream(framer: ResponseStream | StreamFramer, chunks: list[bytes]) -> list[object]:
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
            else:
                out.append(type(ev).__name__)
    return out


def test_one_input(data: bytes) -> None:
    got = peek_datagram(data)
    if got is not None:
        message = parse_message(data)  # must not raise: the peek said it is well-formed
        assert isinstance(message, Response)
        assert got[:4] == (message.status, message.reason, message.branch, message.cseq.method)
    cut = len(data) // 3
    chunks = [data[:cut], data[cut:]]
    assert _stream(ResponseStream(2048), chunks) == _stream(StreamFramer(Role.CLIENT, 2048), chunks)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
