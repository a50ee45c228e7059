"""The one exception tree of sipalive.

Every error says whose fault it is, and a remote protocol error says what to answer::

    SipaliveError
    ├── RemoteProtocolError      the peer sent something we cannot accept
    │   └── ParseError           malformed SIP/STUN; ``status`` is the SIP status to reply with
    ├── LocalProtocolError       the caller misused an API (a bug on our side, or bad arguments)
    ├── ConfigError              bad configuration or command-line value; names file, key, reason
    ├── ResolveError             RFC 3263 resolution found no usable target
    ├── TransportError           a socket-level failure (refused, unreachable, reset, TLS)
    └── DeliveryError            an event could not be delivered to a sink (webhook, exec)

Pure packages (``sip``, ``stun``, ``keepalive``, ``qualify``) raise only these.
"""

from __future__ import annotations


class SipaliveError(Exception):
    """Root of every exception sipalive raises on purpose."""


class RemoteProtocolError(SipaliveError):
    """The remote side broke the protocol."""


class ParseError(RemoteProtocolError):
    """Malformed input. ``status`` is the SIP response code a server should answer with.

    400 Bad Request, 413 Message Too Large, 416 Unsupported URI Scheme, 505 Version Not Supported.
    ``reason`` is a short human explanation, safe to put in a Warning header or a log line.
    """

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


class LocalProtocolError(SipaliveError):
    """The caller used an API in a way it does not allow."""


class ConfigError(SipaliveError):
    """A configuration or command-line value is wrong.

    ``where`` names the file and key path (or the CLI option); ``reason`` says what is wrong.
    """

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"{where}: {reason}" if where else reason)
        self.where = where
        self.reason = reason


class ResolveError(SipaliveError):
    """A SIP URI could not be resolved to any transport/address/port (RFC 3263)."""


class TransportError(SipaliveError):
    """A transport-level failure: connection refused, ICMP unreachable, reset, TLS failure."""


class DeliveryError(SipaliveError):
    """An event sink (webhook, exec hook) failed; the event stays in the outbox for a retry."""
