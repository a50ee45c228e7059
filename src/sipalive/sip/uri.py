"""SIP and SIPS URIs (RFC 3261 §19.1).

``sip:user:password@host:port;uri-parameters?headers``. Other schemes (tel:, isbn:, ...) are
kept as opaque text by the header parsers; only ``parse_uri`` insists on sip/sips.
"""

from __future__ import annotations

from sipalive.errors import ParseError
from sipalive.sip.grammar import SCHEME_CHARS, format_params, param_value, parse_params
from sipalive.sip.record import Record

DEFAULT_PORTS = {"udp": 5060, "tcp": 5060, "tls": 5061, "ws": 80, "wss": 443}
TRANSPORTS = ("udp", "tcp", "tls", "ws", "wss")


def uri_scheme(text: str) -> str | None:
    """The scheme of an absolute URI, lower-cased, or None if ``text`` has none."""
    colon = text.find(":")
    if colon <= 0 or not text[0].isalpha():
        return None
    scheme = text[:colon]
    if not all(c in SCHEME_CHARS for c in scheme):
        return None
    return scheme.lower()


def _is_ip(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class SipUri(Record):
    __slots__ = ("headers", "host", "params", "password", "port", "scheme", "user")
    scheme: str  # "sip" or "sips"
    user: str | None
    password: str | None
    host: str  # without brackets for IPv6
    port: int | None
    params: tuple[tuple[str, str | None], ...]
    headers: str  # the raw text after "?", escaped as received

    def __init__(
        self,
        scheme: str,
        user: str | None,
        password: str | None,
        host: str,
        port: int | None,
        params: tuple[tuple[str, str | None], ...] = (),
        headers: str = "",
    ) -> None:
        self._set(
            scheme=scheme, user=user, password=password, host=host, port=port, params=params,
            headers=headers,
        )  # fmt: skip

    @property
    def host_is_ip(self) -> bool:
        return _is_ip(self.host)

    @property
    def transport(self) -> str | None:
        value = param_value(self.params, "transport")
        return value.lower() if value else None

    @property
    def host_port(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"

    def __str__(self) -> str:
        userinfo = ""
        if self.user is not None:
            userinfo = self.user
            if self.password is not None:
                userinfo += ":" + self.password
            userinfo += "@"
        text = f"{self.scheme}:{userinfo}{self.host_port}{format_params(self.params)}"
        return f"{text}?{self.headers}" if self.headers else text

    def with_transport(self, transport: str | None) -> SipUri:
        params = tuple(p for p in self.params if p[0].lower() != "transport")
        if transport:
            params += (("transport", transport),)
        return SipUri(
            self.scheme, self.user, self.password, self.host, self.port, params, self.headers
        )


def parse_host_port(text: str, what: str = "host") -> tuple[str, int | None]:
    """``host [":" port]`` where host is a name, IPv4 or ``[IPv6]``."""
    if not text:
        raise ParseError(f"empty {what}")
    port: int | None = None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ParseError(f"unterminated IPv6 reference in {what}")
        host = text[1:end]
        rest = text[end + 1 :]
        import ipaddress

        try:
            ipaddress.IPv6Address(host)
        except ValueError as exc:
            raise ParseError(f"bad IPv6 address in {what}: {host!r}") from exc
        if rest:
            if not rest.startswith(":"):
                raise ParseError(f"junk after IPv6 reference in {what}")
            port = _port(rest[1:], what)
        return host, port
    host, sep, port_text = text.partition(":")
    if sep:
        port = _port(port_text, what)
    if not host or not _HOST_CHARS.issuperset(host):
        raise ParseError(f"bad {what}: {text!r}")
    return host, port


_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._")


_URI_STOP = frozenset(' \t\r\n<>"')


def _port(text: str, what: str) -> int:
    if not text.isdigit() or not text.isascii() or len(text) > 5:
        raise ParseError(f"bad port in {what}: {text!r}")
    port = int(text)
    if not 0 < port < 65536:
        raise ParseError(f"port out of range in {what}: {port}")
    return port


def parse_uri(text: str) -> SipUri:
    """Parse a sip: or sips: URI. Raises ParseError (status 416 for another scheme)."""
    text = text.strip()
    scheme = uri_scheme(text)
    if scheme is None:
        raise ParseError(f"not a URI: {text!r}")
    if scheme not in ("sip", "sips"):
        raise ParseError(f"unsupported URI scheme {scheme!r}", status=416)
    rest = text[len(scheme) + 1 :]
    rest, _, headers = rest.partition("?")
    user: str | None = None
    password: str | None = None
    # RFC 3261 §25.1: neither parameters nor headers may hold an unescaped "@", so the only
    # "@" is the end of userinfo (which itself may hold ";" "?" "/" as in RFC 4475 semiuri).
    at = text.find("@", len(scheme) + 1)
    if at >= 0:
        userinfo = text[len(scheme) + 1 : at]
        rest = text[at + 1 :]
        rest, _, headers = rest.partition("?")
        user, sep, pw = userinfo.partition(":")
        password = pw if sep else None
        if not user:
            raise ParseError(f"empty user part in {text!r}")
    if not _URI_STOP.isdisjoint(rest):
        raise ParseError(f"bad character in URI {text!r}")
    hostport, _, param_text = rest.partition(";")
    host, port = parse_host_port(hostport, "URI host")
    params = parse_params(";" + param_text, "URI") if param_text or rest.endswith(";") else ()
    return SipUri(scheme, user, password, host, port, params, headers)
