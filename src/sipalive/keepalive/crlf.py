"""CRLF keep-alives (RFC 5626 §4.4.1, §3.5.1), as pure, now-driven machines.

Over a stream (TCP, TLS) the client sends a double CRLF "ping" and the server answers with a
single CRLF "pong"; no pong within 10 seconds means the flow has failed. Over UDP the same
bytes only refresh the NAT binding and nothing answers them; RFC 5626 §4.4.2 uses STUN there
(:mod:`sipalive.keepalive.stun`), and a bare CRLF is only de-facto practice (pjsip, Linphone).

Each machine exposes ``get_timer()`` (the next deadline, or None) and ``handle_timer(now)``;
the caller reads incoming data before firing timers, so a pong that arrived by the deadline
is counted: RFC 5626 §4.4.1 has the client process what was received when the 10 seconds
run out before it declares the flow failed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from sipalive.errors import LocalProtocolError

PING = b"\r\n\r\n"
"""The CRLF keep-alive ping (RFC 5626 §3.5.1)."""

PONG_TIMEOUT = 10.0
"""RFC 5626 §4.4.1: a flow with no pong 10 seconds after a ping has failed."""


@dataclass(frozen=True, slots=True)
class SendPing:
    """Send ``data`` on the flow now."""

    data: bytes = PING


@dataclass(frozen=True, slots=True)
class PongReceived:
    """The pong for the outstanding ping arrived ``rtt`` seconds after the ping left."""

    rtt: float


@dataclass(frozen=True, slots=True)
class FlowFailed:
    """The flow is dead (RFC 5626 §4.4): the UA should open a new one and re-register."""

    reason: str
    at: float


CrlfEvent = SendPing | PongReceived | FlowFailed


class CrlfState(Enum):
    """Where a :class:`CrlfPinger` is. STOPPED before :meth:`CrlfPinger.start` as well."""

    IDLE = "idle"
    WAITING_PONG = "waiting_pong"
    FAILED = "failed"
    STOPPED = "stopped"


def jittered(interval: float, rand: Callable[[], float]) -> float:
    """A keep-alive delay between 80% and 100% of ``interval`` (RFC 5626 §4.4).

    The spread keeps many UAs restarted together (after a power cut, say) from pinging the
    edge proxy in lockstep. ``rand`` returns a number in [0, 1], like ``random.random``.
    """
    r = rand()
    if not 0.0 <= r <= 1.0:
        raise LocalProtocolError(f"rand() returned {r!r}, outside [0, 1]")
    return interval * (0.8 + 0.2 * r)


def check_interval(interval: float) -> float:
    """Reject a keep-alive interval that is not a positive, finite number of seconds."""
    if not (interval > 0.0 and math.isfinite(interval)):
        raise LocalProtocolError(f"keep-alive interval must be positive, got {interval!r}")
    return interval


class CrlfPinger:
    """Double-CRLF ping, single-CRLF pong over a stream flow (RFC 5626 §4.4.1).

    Pings are ``jittered(interval)`` apart, measured from ping to ping so that slow pongs do
    not stretch the cadence. While a ping is outstanding no other is sent: the next one goes
    out when both its time has come and the pong is in. A pong that arrives with no ping
    outstanding (a server may send CRLFs of its own accord) is ignored.

    ``interval`` may change at run time (:meth:`set_interval`) to follow a Flow-Timer header
    (RFC 5626 §4.4.1) or a Via ``keep`` value (RFC 6223).
    """

    def __init__(
        self,
        interval: float,
        pong_timeout: float = PONG_TIMEOUT,
        *,
        rand: Callable[[], float],
    ) -> None:
        if not pong_timeout > 0.0:
            raise LocalProtocolError(f"pong timeout must be positive, got {pong_timeout!r}")
        self._interval = check_interval(interval)
        self._pong_timeout = pong_timeout
        self._rand = rand
        self._state = CrlfState.STOPPED
        self._next_ping: float | None = None
        self._ping_sent_at = 0.0

    @property
    def state(self) -> CrlfState:
        return self._state

    @property
    def interval(self) -> float:
        return self._interval

    def start(self, now: float) -> None:
        """Begin (or begin again, on a new flow): the first ping goes out one jittered
        interval from ``now``, the connection having just carried traffic of its own."""
        self._state = CrlfState.IDLE
        self._next_ping = now + jittered(self._interval, self._rand)

    def stop(self) -> None:
        """Stop: no more timers, events or pings until :meth:`start` is called again."""
        self._state = CrlfState.STOPPED
        self._next_ping = None

    def set_interval(self, interval: float, now: float) -> None:
        """Adopt a new interval; the next ping is rescheduled from ``now``, since the value
        comes in a response that itself just refreshed the flow."""
        self._interval = check_interval(interval)
        if self._state in (CrlfState.IDLE, CrlfState.WAITING_PONG):
            self._next_ping = now + jittered(interval, self._rand)

    def get_timer(self) -> float | None:
        """The next instant :meth:`handle_timer` has something to do, or None."""
        if self._state is CrlfState.IDLE:
            return self._next_ping
        if self._state is CrlfState.WAITING_PONG:
            return self._ping_sent_at + self._pong_timeout
        return None

    def handle_timer(self, now: float) -> list[CrlfEvent]:
        """Send the due ping, or declare the flow failed if its pong is overdue."""
        deadline = self.get_timer()
        if deadline is None or now < deadline:
            return []
        if self._state is CrlfState.WAITING_PONG:
            self._state = CrlfState.FAILED
            self._next_ping = None
            reason = f"no CRLF pong within {self._pong_timeout:g} s of the ping"
            return [FlowFailed(reason, now)]
        self._state = CrlfState.WAITING_PONG
        self._ping_sent_at = now
        self._next_ping = now + jittered(self._interval, self._rand)
        return [SendPing()]

    def pong_received(self, now: float) -> list[CrlfEvent]:
        """The framer saw a lone CRLF. Counts only while a ping is outstanding."""
        if self._state is not CrlfState.WAITING_PONG:
            return []
        self._state = CrlfState.IDLE
        return [PongReceived(now - self._ping_sent_at)]


class UdpCrlfKeepalive:
    """CRLF keep-alives over UDP: a bare "\\r\\n\\r\\n" every jittered interval.

    No answer is expected, so this refreshes the NAT binding but detects nothing; use
    :class:`~sipalive.keepalive.stun.StunKeepalive` (RFC 5626 §4.4.2) to learn of failures.

    Like :class:`CrlfPinger`, STOPPED until :meth:`start`.
    """

    def __init__(self, interval: float, *, rand: Callable[[], float]) -> None:
        self._interval = check_interval(interval)
        self._rand = rand
        self._next_ping: float | None = None

    @property
    def interval(self) -> float:
        return self._interval

    @property
    def running(self) -> bool:
        return self._next_ping is not None

    def start(self, now: float) -> None:
        """Schedule the first keep-alive one jittered interval from ``now``."""
        self._next_ping = now + jittered(self._interval, self._rand)

    def stop(self) -> None:
        self._next_ping = None

    def set_interval(self, interval: float, now: float) -> None:
        """Adopt a new interval, rescheduling the next keep-alive from ``now``."""
        self._interval = check_interval(interval)
        if self._next_ping is not None:
            self._next_ping = now + jittered(interval, self._rand)

    def get_timer(self) -> float | None:
        return self._next_ping

    def handle_timer(self, now: float) -> list[SendPing]:
        if self._next_ping is None or now < self._next_ping:
            return []
        self._next_ping = now + jittered(self._interval, self._rand)
        return [SendPing()]
