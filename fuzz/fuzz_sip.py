"""Coverage-guided fuzzing of the SIP parser and the stream framer (atheris / libFuzzer).

Invariant (STYLE habit 5): any input parses, or raises our ParseError; nothing else, ever.
And the responder's OPTIONS fast path, whenever it answers, answers exactly as the full path.
Run: ``.venv/bin/python fuzz/fuzz_sip.py -max_total_time=60 tests/data/rfc4475``
(the RFC 4475 corpus seeds it; libFuzzer flags after the script name).
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from sipalive.errors import ParseError
    from sipalive.sip.framing import Role, StreamFramer
    from sipalive.sip.message import parse_message
    from sipalive.sip.responder import StatelessResponder

RESPONDER = StatelessResponder()


def test_one_input(data: bytes) -> None:
    try:
        parse_message(data, max_size=4096)
    except ParseError:
        pass
    # the responder must answer or drop, never raise
    full = RESPONDER.handle_datagram(data, ("192.0.2.1", 5060))
    fast = RESPONDER.fast.answer(data, ("192.0.2.1", 5060))
    if fast is not None:
        assert full is not None, data
        assert fast == (full.data, full.addr), (data, fast, full)
    for role in (Role.SERVER, Role.CLIENT):
        framer = StreamFramer(role, max_message=2048)
        half = len(data) // 2
        try:
            framer.receive(data[:half])
            framer.receive(data[half:])
        except ParseError:
            pass


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
