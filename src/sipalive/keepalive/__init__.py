"""Keep-alives, pure and now-driven: no sockets, no clock, randomness passed in.

* :mod:`~sipalive.keepalive.crlf`: RFC 5626 §4.4.1 CRLF ping/pong over TCP/TLS, and bare
  CRLF refreshes over UDP.
* :mod:`~sipalive.keepalive.stun`: RFC 5626 §4.4.2 STUN Binding keep-alives over UDP, with
  RFC 5389 retransmission and mapped-address change detection.
* :mod:`~sipalive.keepalive.tcp`: kernel TCP keep-alive socket options, by name.

Each machine has ``start(now)``, ``stop()``, ``set_interval(interval, now)``, ``get_timer()``
and ``handle_timer(now)``, and returns frozen-dataclass events for the io layer to act on.
"""

from sipalive.keepalive.crlf import (
    PING,
    PONG_TIMEOUT,
    CrlfEvent,
    CrlfPinger,
    CrlfState,
    FlowFailed,
    PongReceived,
    SendPing,
    UdpCrlfKeepalive,
    jittered,
)
from sipalive.keepalive.stun import (
    MappedAddress,
    MappedAddressChanged,
    SendStun,
    StunErrorResponse,
    StunKeepalive,
    StunKeepaliveEvent,
    StunKeepaliveState,
)
from sipalive.keepalive.tcp import SockOpt, TcpKeepaliveOptions

__all__ = [
    "PING",
    "PONG_TIMEOUT",
    "CrlfEvent",
    "CrlfPinger",
    "CrlfState",
    "FlowFailed",
    "MappedAddress",
    "MappedAddressChanged",
    "PongReceived",
    "SendPing",
    "SendStun",
    "SockOpt",
    "StunErrorResponse",
    "StunKeepalive",
    "StunKeepaliveEvent",
    "StunKeepaliveState",
    "TcpKeepaliveOptions",
    "UdpCrlfKeepalive",
    "jittered",
]
