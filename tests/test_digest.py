"""Digest authentication against published vectors (RFC 2617 §3.5, RFC 7616 §3.9.1)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sipalive.errors import LocalProtocolError, ParseError
from sipalive.sip.digest import Challenge, Credentials, authorization, parse_auth_params


def test_rfc2617_md5_vector() -> None:
    ch = Challenge.parse(
        'Digest realm="testrealm@host.com", qop="auth,auth-int", '
        'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41"'
    )
    name, value = authorization(
        ch, username="Mufasa", password="Circle Of Life", method="GET", uri="/dir/index.html",
        cnonce="0a4f113b", nc=1,
    )  # fmt: skip
    assert name == "Authorization"
    assert 'response="6629fae49393a05397450978507c4ef1"' in value
    assert "qop=auth, nc=00000001" in value
    assert 'opaque="5ccc069c403ebaf9f0171e9517f40e41"' in value


def test_rfc7616_sha256_vector() -> None:
    ch = Challenge.parse(
        'Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm=SHA-256, '
        'nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", '
        'opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"'
    )
    _, value = authorization(
        ch, username="Mufasa", password="Circle of Life", method="GET", uri="/dir/index.html",
        cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ", nc=1,
    )  # fmt: skip
    assert 'response="753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"' in value


def test_server_side_verify_round_trip() -> None:
    ch = Challenge("sipalive", "n0nce", "SHA-256", ("auth",))
    _, value = authorization(
        ch, username="alice", password="s3cret", method="REGISTER", uri="sip:example.com",
        cnonce="abc", nc=3,
    )  # fmt: skip
    creds = Credentials.parse(value)
    assert creds.username == "alice"
    assert creds.verify("s3cret", "REGISTER")
    assert not creds.verify("wrong", "REGISTER")
    assert not creds.verify("s3cret", "INVITE")


def test_no_qop_rfc2069_form_and_proxy() -> None:
    ch = Challenge.parse('Digest realm="r", nonce="n"', proxy=True)
    name, value = authorization(ch, username="u", password="p", method="OPTIONS",
                                uri="sip:x", cnonce="c")  # fmt: skip
    assert name == "Proxy-Authorization"
    assert "qop=" not in value
    assert Credentials.parse(value).verify("p", "OPTIONS")


def test_refusals() -> None:
    with pytest.raises(LocalProtocolError):
        authorization(Challenge("r", "n", "SHA-512-256"), username="u", password="p",
                      method="OPTIONS", uri="sip:x", cnonce="c")  # fmt: skip
    with pytest.raises(LocalProtocolError):
        authorization(Challenge("r", "n", "MD5", ("auth-int",)), username="u", password="p",
                      method="OPTIONS", uri="sip:x", cnonce="c")  # fmt: skip
    with pytest.raises(ParseError):
        Challenge.parse('Basic realm="x"')
    with pytest.raises(ParseError):
        Challenge.parse('Digest nonce="x"')


def test_quoted_escapes_and_header_round_trip() -> None:
    scheme, params = parse_auth_params('Digest realm="a \\"b\\", c", nonce=xyz, stale=TRUE')
    assert scheme == "Digest"
    assert params == {"realm": 'a "b", c', "nonce": "xyz", "stale": "TRUE"}
    ch = Challenge("example.com", "abc", "SHA-256", ("auth",), "op", True)
    assert Challenge.parse(ch.header()) == ch


@given(st.text(max_size=80))
def test_fuzz_parse_auth_params(text: str) -> None:
    try:
        parse_auth_params(text)
    except ParseError:
        pass
