"""Coverage-guided fuzzing of the response peek (sip/peek.py) against the full parser.

Invariant: ``peek_datagram`` returns None or exactly what ``parse_message`` gives (status,
reason, branch, CSeq method), and never raises; ``ResponseStream`` yields what
``StreamFramer(Role.CLIENT)`` yields, or raises the same ParseError.
Run: ``.venv/bin/python fuzz/fuzz_peek.py -max_total_time=60 tests/data/rfc4475``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from sipalive.sip.framing import Role, StreamFramer
    from sipalive.sip.message import Response, parse_message
    from sipalive.sip.peek import ResponseStream, peek_datagram

# the tests' comparison helper, imported after the instrumented modules it uses
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from framerevents import reader_events


def test_one_input(data: bytes) -> None:
    got = peek_datagram(data)
    if got is not None:
        message = parse_message(data)  # must not raise: the peek said it is well-formed
        assert isinstance(message, Response)
        assert got[:4] == (message.status, message.reason, message.branch, message.cseq.method)
    cut = len(data) // 3
    chunks = [data[:cut], data[cut:]]
    fast, slow = ResponseStream(2048), StreamFramer(Role.CLIENT, 2048)
    assert reader_events(chunks, fast) == reader_events(chunks, slow)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
