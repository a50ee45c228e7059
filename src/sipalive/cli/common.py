"""What the commands share: durations, targets, retransmission options. Stdlib-light on
purpose: ``check`` imports this on its fast path."""

from __future__ import annotations

from sipalive.errors import ConfigError, ParseError
from sipalive.sip.transaction import TimerConfig
from sipalive.sip.uri import SipUri, parse_host_port, parse_uri

_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
TRANSPORT_NAMES = ("udp", "tcp", "tls", "ws", "wss")


class UsageError(Exception):
    """Bad command-line use: the command prints usage and exits (2, or 3 for a plugin)."""


def parse_duration(text: str, option: str) -> float:
    """Seconds from ``0.15``, ``150ms``, ``2s``, ``1m``, ``500us``."""
    raw = text.strip().lower()
    number = raw.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = raw[len(number) :]
    scale = _UNITS.get(unit or "s")
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if scale is None or not 0 <= value < float("inf"):
        raise UsageError(f"{option}: expected a duration like 0.15, 150ms or 2s, got {text!r}")
    return value * scale


def parse_count(text: str, option: str, minimum: int = 0) -> int:
    try:
        value = int(text)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise UsageError(f"{option}: expected an integer >= {minimum}, got {text!r}")
    return value


def parse_transport(text: str) -> str:
    value = text.strip().lower()
    if value not in TRANSPORT_NAMES:
        raise UsageError(f"-T: expected one of {', '.join(TRANSPORT_NAMES)}, got {text!r}")
    return value


def parse_target(text: str) -> SipUri:
    """A sip:/sips: URI, or ``host[:port]`` taken as ``sip:host[:port]``."""
    text = text.strip()
    try:
        if text.lower().startswith(("sip:", "sips:")):
            return parse_uri(text)
        host, port = parse_host_port(text, "target")
    except ParseError as exc:
        raise UsageError(f"bad target {text!r}: {exc.reason}") from exc
    return SipUri("sip", None, None, host, port)


def effective_transport(uri: SipUri, option: str | None) -> str | None:
    """-T wins; else the URI's ;transport=; else None (RFC 3263 decides)."""
    from_uri = uri.transport
    if option is not None and from_uri is not None and option != from_uri:
        raise UsageError(f"-T {option} contradicts ;transport={from_uri} in {uri}")
    transport = option or from_uri
    if transport is not None and transport not in TRANSPORT_NAMES:
        raise UsageError(f"unsupported transport {transport!r}")
    return transport


def timer_config(
    t1: float | None, t2: float | None, retransmits: int | None, timeout: float | None
) -> TimerConfig:
    try:
        return TimerConfig(
            t1=0.5 if t1 is None else t1,
            t2=max(4.0, t1 or 0.0) if t2 is None else t2,
            timeout=timeout,
            retransmits=retransmits,
        )
    except ConfigError as exc:
        raise UsageError(f"--{exc.where}: {exc.reason}") from exc
