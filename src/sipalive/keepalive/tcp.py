"""Operating-system TCP keep-alive settings, as pure data.

The field names echo Asterisk's ``tcp_keepalive_enable``, ``tcp_keepalive_idle_time``,
``tcp_keepalive_interval_time`` and ``tcp_keepalive_probe_count`` (pjsip.conf transports).
:meth:`TcpKeepaliveOptions.sockopts` returns socket options by *name*; the io layer turns
each into ``sock.setsockopt(getattr(socket, level), getattr(socket, option), value)`` and
skips names the platform lacks (macOS spells TCP_KEEPIDLE as TCP_KEEPALIVE, for one), so
this module stays free of the socket module.

Kernel keep-alives complement RFC 5626 CRLF pings rather than replace them: they keep NAT
and firewall state alive and notice a vanished host, but say nothing about whether the SIP
layer on the far side still answers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sipalive.errors import ConfigError

# Linux's ceilings (include/net/tcp.h: MAX_TCP_KEEPIDLE, MAX_TCP_KEEPINTVL, MAX_TCP_KEEPCNT);
# setsockopt refuses larger values with EINVAL, so refuse them here, where the field is known.
_MAX_IDLE = 32767
_MAX_INTERVAL = 32767
_MAX_PROBES = 127
_MAX_USER_TIMEOUT_MS = 2**31 - 1

SockOpt = tuple[str, str, int]
"""(level, option, value), the level and option named as in the ``socket`` module."""


@dataclass(frozen=True, slots=True)
class TcpKeepaliveOptions:
    """Kernel TCP keep-alive settings for one socket, validated on construction.

    ``idle_time``: seconds of silence before the first probe (TCP_KEEPIDLE).
    ``interval_time``: seconds between unanswered probes (TCP_KEEPINTVL).
    ``probe_count``: unanswered probes before the connection is dropped (TCP_KEEPCNT).
    ``user_timeout_ms``: TCP_USER_TIMEOUT (RFC 5482; Linux), the longest sent data may stay
    unacknowledged; None leaves it alone, 0 means the system default. Linux also lets it
    override ``probe_count`` when keep-alive probes go unanswered, see
    :meth:`detection_bound`.

    Every field is checked even when ``enable`` is false, so a typo fails at load time and
    not on the day someone turns keep-alives on. Bad values raise :class:`ConfigError`
    naming the field.
    """

    enable: bool
    idle_time: int
    interval_time: int
    probe_count: int
    user_timeout_ms: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.enable, bool):
            raise ConfigError("enable", f"must be true or false, got {self.enable!r}")
        _check_int("idle_time", self.idle_time, 1, _MAX_IDLE)
        _check_int("interval_time", self.interval_time, 1, _MAX_INTERVAL)
        _check_int("probe_count", self.probe_count, 1, _MAX_PROBES)
        if self.user_timeout_ms is not None:
            _check_int("user_timeout_ms", self.user_timeout_ms, 0, _MAX_USER_TIMEOUT_MS)

    def sockopts(self) -> list[SockOpt]:
        """The options to set, in order: SO_KEEPALIVE first, since some systems only honour
        the TCP_KEEP* values on a socket that already has keep-alives on."""
        opts: list[SockOpt] = [("SOL_SOCKET", "SO_KEEPALIVE", int(self.enable))]
        if self.enable:
            opts += [
                ("IPPROTO_TCP", "TCP_KEEPIDLE", self.idle_time),
                ("IPPROTO_TCP", "TCP_KEEPINTVL", self.interval_time),
                ("IPPROTO_TCP", "TCP_KEEPCNT", self.probe_count),
            ]
        if self.user_timeout_ms is not None:
            opts.append(("IPPROTO_TCP", "TCP_USER_TIMEOUT", self.user_timeout_ms))
        return opts

    def detection_bound(self) -> float:
        """Worst-case seconds, counted from the last segment received, before the kernel
        declares a silent peer of an idle connection dead; ``math.inf`` when keep-alives are
        off, since nothing is ever sent to find out.

        Probes go out at ``idle``, ``idle + interval``, ... and the connection is dropped at
        the first probe tick where ``probe_count`` probes are unanswered, so at
        ``idle + interval * probe_count``. With a nonzero TCP_USER_TIMEOUT, Linux
        (net/ipv4/tcp_timer.c, tcp_keepalive_timer) drops it instead at the first tick that
        is at least that long after the last segment and follows at least one probe, which
        may come sooner or later than the probe count alone would. Other kernels ignore
        TCP_USER_TIMEOUT for keep-alives, so treat that case as Linux-specific.
        """
        if not self.enable:
            return math.inf
        idle, interval = self.idle_time, self.interval_time
        if not self.user_timeout_ms:
            return float(idle + interval * self.probe_count)
        ticks = max(1, math.ceil((self.user_timeout_ms / 1000 - idle) / interval))
        return float(idle + interval * ticks)


def _check_int(name: str, value: object, low: int, high: int) -> None:
    # bool is an int subclass, and "idle_time = yes" is a mistake worth catching.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(name, f"must be an integer, got {value!r}")
    if not low <= value <= high:
        raise ConfigError(name, f"must be between {low} and {high}, got {value}")
