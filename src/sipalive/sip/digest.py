"""HTTP Digest authentication for SIP (RFC 3261 §22.4, RFC 7616, RFC 8760: MD5 and SHA-256).

Pure: the client nonce (``cnonce``) and the server nonce come from the caller. Supports
``qop=auth`` and the RFC 2069 form without qop; ``auth-int`` and the ``-sess`` variants are
refused with a clear error rather than computed wrong.
"""

from __future__ import annotations

import hashlib
import hmac

from sipalive.errors import LocalProtocolError, ParseError
from sipalive.sip.grammar import TOKEN_CHARS, WSP, scan_quoted
from sipalive.sip.record import Record

ALGORITHMS = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}


def _h(algorithm: str, text: str) -> str:
    return ALGORITHMS[algorithm](text.encode("utf-8")).hexdigest()


def parse_auth_params(value: str) -> tuple[str, dict[str, str]]:
    """``Digest realm="x", nonce="y", qop="auth,auth-int"`` -> ("Digest", {...}).

    Parameter names are lower-cased; quoted values are unquoted (RFC 7616 §3.3)."""
    text = value.strip()
    scheme, _, rest = text.partition(" ")
    if not scheme or not TOKEN_CHARS.issuperset(scheme):
        raise ParseError(f"bad auth scheme in {value[:40]!r}")
    params: dict[str, str] = {}
    pos, n = 0, len(rest)
    while pos < n:
        while pos < n and rest[pos] in WSP + ",":
            pos += 1
        if pos >= n:
            break
        eq = rest.find("=", pos)
        if eq < 0:
            raise ParseError(f"auth parameter without '=' in {value[:60]!r}")
        name = rest[pos:eq].strip().lower()
        if not name or not TOKEN_CHARS.issuperset(name):
            raise ParseError(f"bad auth parameter name {name[:30]!r}")
        pos = eq + 1
        while pos < n and rest[pos] in WSP:
            pos += 1
        if pos < n and rest[pos] == '"':
            end = scan_quoted(rest, pos)
            raw = rest[pos + 1 : end - 1]
            out, i = [], 0
            while i < len(raw):
                if raw[i] == "\\" and i + 1 < len(raw):
                    i += 1
                out.append(raw[i])
                i += 1
            params[name] = "".join(out)
            pos = end
        else:
            end = pos
            while end < n and rest[end] not in ", \t":
                end += 1
            params[name] = rest[pos:end]
            pos = end
    return scheme, params


class Challenge(Record):
    """A WWW-Authenticate (401) or Proxy-Authenticate (407) Digest challenge."""

    __slots__ = ("algorithm", "nonce", "opaque", "proxy", "qop", "realm", "stale")
    realm: str
    nonce: str
    algorithm: str
    qop: tuple[str, ...]
    opaque: str | None
    stale: bool
    proxy: bool

    def __init__(
        self,
        realm: str,
        nonce: str,
        algorithm: str = "MD5",
        qop: tuple[str, ...] = (),
        opaque: str | None = None,
        stale: bool = False,
        proxy: bool = False,
    ) -> None:
        self._set(
            realm=realm, nonce=nonce, algorithm=algorithm, qop=qop, opaque=opaque, stale=stale,
            proxy=proxy,
        )  # fmt: skip

    @classmethod
    def parse(cls, value: str, proxy: bool = False) -> Challenge:
        scheme, p = parse_auth_params(value)
        if scheme.lower() != "digest":
            raise ParseError(f"unsupported auth scheme {scheme!r}")
        if "realm" not in p or "nonce" not in p:
            raise ParseError("Digest challenge without realm or nonce")
        algorithm = p.get("algorithm", "MD5").upper()
        qop = tuple(q.strip() for q in p.get("qop", "").split(",") if q.strip())
        return cls(
            p["realm"], p["nonce"], algorithm, qop, p.get("opaque"),
            p.get("stale", "").lower() == "true", proxy,
        )  # fmt: skip

    def header(self) -> str:
        parts = [f'realm="{self.realm}"', f'nonce="{self.nonce}"', f"algorithm={self.algorithm}"]
        if self.qop:
            parts.append(f'qop="{",".join(self.qop)}"')
        if self.opaque is not None:
            parts.append(f'opaque="{self.opaque}"')
        if self.stale:
            parts.append("stale=true")
        return "Digest " + ", ".join(parts)


def response_value(
    *,
    algorithm: str,
    username: str,
    realm: str,
    password: str,
    method: str,
    uri: str,
    nonce: str,
    qop: str | None,
    nc: str,
    cnonce: str,
) -> str:
    """RFC 7616 §3.4.1 (and RFC 2617 §3.2.2.1 without qop)."""
    if algorithm not in ALGORITHMS:
        raise LocalProtocolError(f"unsupported digest algorithm {algorithm!r}")
    ha1 = _h(algorithm, f"{username}:{realm}:{password}")
    ha2 = _h(algorithm, f"{method}:{uri}")
    if qop:
        return _h(algorithm, f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")
    return _h(algorithm, f"{ha1}:{nonce}:{ha2}")


def authorization(
    challenge: Challenge,
    *,
    username: str,
    password: str,
    method: str,
    uri: str,
    cnonce: str,
    nc: int = 1,
) -> tuple[str, str]:
    """The (header name, value) answering ``challenge`` for a request ``method uri``."""
    if challenge.algorithm not in ALGORITHMS:
        raise LocalProtocolError(
            f"digest algorithm {challenge.algorithm} not supported (MD5, SHA-256)"
        )
    qop = None
    if challenge.qop:
        if "auth" not in challenge.qop:
            raise LocalProtocolError(f"only qop=auth is supported, offered {challenge.qop}")
        qop = "auth"
    nc_text = f"{nc:08x}"
    value = response_value(
        algorithm=challenge.algorithm, username=username, realm=challenge.realm,
        password=password, method=method, uri=uri, nonce=challenge.nonce, qop=qop,
        nc=nc_text, cnonce=cnonce,
    )  # fmt: skip
    parts = [
        f'username="{username}"', f'realm="{challenge.realm}"', f'nonce="{challenge.nonce}"',
        f'uri="{uri}"', f'response="{value}"', f"algorithm={challenge.algorithm}",
    ]  # fmt: skip
    if qop:
        parts += [f"qop={qop}", f"nc={nc_text}", f'cnonce="{cnonce}"']
    if challenge.opaque is not None:
        parts.append(f'opaque="{challenge.opaque}"')
    name = "Proxy-Authorization" if challenge.proxy else "Authorization"
    return name, "Digest " + ", ".join(parts)


class Credentials(Record):
    """What a client sent in Authorization, parsed for a server to verify."""

    __slots__ = (
        "algorithm",
        "cnonce",
        "nc",
        "nonce",
        "opaque",
        "qop",
        "realm",
        "response",
        "uri",
        "username",
    )  # fmt: skip
    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str
    qop: str | None
    nc: str
    cnonce: str
    opaque: str | None

    def __init__(self, params: dict[str, str]) -> None:
        for key in ("username", "realm", "nonce", "uri", "response"):
            if key not in params:
                raise ParseError(f"Digest credentials without {key}")
        self._set(
            username=params["username"], realm=params["realm"], nonce=params["nonce"],
            uri=params["uri"], response=params["response"].lower(),
            algorithm=params.get("algorithm", "MD5").upper(), qop=params.get("qop"),
            nc=params.get("nc", ""), cnonce=params.get("cnonce", ""), opaque=params.get("opaque"),
        )  # fmt: skip

    @classmethod
    def parse(cls, value: str) -> Credentials:
        scheme, params = parse_auth_params(value)
        if scheme.lower() != "digest":
            raise ParseError(f"unsupported auth scheme {scheme!r}")
        return cls(params)

    def verify(self, password: str, method: str) -> bool:
        """Constant-time check of ``response`` for this password and request method."""
        if self.algorithm not in ALGORITHMS or (self.qop not in (None, "auth")):
            return False
        expected = response_value(
            algorithm=self.algorithm, username=self.username, realm=self.realm,
            password=password, method=method, uri=self.uri, nonce=self.nonce, qop=self.qop,
            nc=self.nc, cnonce=self.cnonce,
        )  # fmt: skip
        return hmac.compare_digest(expected, self.response)
