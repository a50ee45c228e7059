"""OptionsTemplate (shared skeleton + per-target URI and tag) against make_options: the same
octets for every URI, address, From and User-Agent, including the RFC 4475 Request-URIs."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipalive.errors import ParseError
from sipalive.sip.build import OptionsTemplate, make_options
from sipalive.sip.message import Request, parse_message

DATA = Path(__file__).parent / "data" / "rfc4475"


def corpus_uris() -> list[str]:
    uris = []
    for path in sorted(DATA.glob("*.dat")):
        try:
            message = parse_message(path.read_bytes())
        except ParseError:
            continue
        if isinstance(message, Request):
            uris.append(message.uri)
    return uris


def both(uri: str, **kw: object) -> tuple[bytes | None, bytes | None]:
    """The template's probe and make_options's, or None where either refuses the URI."""
    ids = {"branch": "z9hG4bKabc123", "call_id": "77-ff@sipalive", "cseq": 42}
    try:
        expected: bytes | None = make_options(uri, **ids, **kw).encode()  # type: ignore[arg-type]
    except ParseError:
        expected = None
    try:
        template = OptionsTemplate(uri, **kw)  # type: ignore[arg-type]
    except ParseError:
        return expected, None
    return expected, template.fill("z9hG4bKabc123", "77-ff@sipalive", 42)


KW: dict[str, object] = {"transport": "udp", "local": ("192.0.2.1", 5060), "from_tag": "t1"}


@pytest.mark.parametrize("uri", corpus_uris())
def test_rfc4475_request_uris(uri: str) -> None:
    expected, got = both(uri, **KW)
    assert got == expected


@pytest.mark.parametrize(
    "kw",
    [
        {"transport": "tcp", "local": ("2001:db8::1", 5070), "from_tag": "x"},
        {"transport": "tls", "local": ("10.0.0.1", 1), "from_tag": "a", "user_agent": None},
        {"transport": "ws", "local": ("127.0.0.1", 9), "from_tag": "b", "from_uri": "sip:m@x"},
    ],
)
def test_transports_addresses_and_headers(kw: dict[str, object]) -> None:
    expected, got = both("sip:alice@example.com;transport=tcp", **kw)
    assert expected is not None
    assert got == expected


uri_parts = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="<>\"'"),
    min_size=1,
    max_size=20,
)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["sip", "sips", "tel", "SIP"]),
    uri_parts,
    st.text(min_size=1, max_size=8, alphabet="abcdef0123456789-"),
    st.sampled_from(["udp", "tcp", "tls"]),
    st.integers(1, 65535),
)
def test_same_octets_as_make_options(
    scheme: str, rest: str, tag: str, transport: str, port: int
) -> None:
    kw = {"transport": transport, "local": ("198.51.100.7", port), "from_tag": tag}
    expected, got = both(f"{scheme}:{rest}", **kw)
    assert got == expected


def test_targets_from_one_address_share_the_skeleton() -> None:
    a = OptionsTemplate("sip:a@example.com", **KW)  # type: ignore[arg-type]
    b = OptionsTemplate("sip:b@example.com", **KW)  # type: ignore[arg-type]
    assert a._skeleton is b._skeleton
