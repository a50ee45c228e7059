"""Random byte-level mutations of a seed message, for the hypothesis properties that feed
mutated real messages to the parser (tests/test_message.py) and to the fast path
(tests/test_fastpath.py)."""

from __future__ import annotations

from hypothesis import strategies as st

# octets that matter to SIP's grammar, plus NUL, a non-ASCII octet and a digit
GRAMMAR_OCTETS = b'\r\n :;,<>"\\=@\x00\xff9'


def mutate(
    seed: bytes, data: st.DataObject, max_ops: int, alphabet: bytes = GRAMMAR_OCTETS
) -> bytes:
    """``seed`` with 1 to ``max_ops`` octets flipped to, inserted from, or deleted, the octets
    drawn from ``alphabet``."""
    buf = bytearray(seed)
    for _ in range(data.draw(st.integers(1, max_ops))):
        pos = data.draw(st.integers(0, max(0, len(buf) - 1)))
        op = data.draw(st.sampled_from(["flip", "insert", "delete"]))
        byte = data.draw(st.sampled_from(list(alphabet)))
        if op == "flip" and buf:
            buf[pos] = byte
        elif op == "insert":
            buf.insert(pos, byte)
        elif buf:
            del buf[pos]
    return bytes(buf)
