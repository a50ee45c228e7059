"""STUN keep-alives over UDP (RFC 5626 §4.4.2), as a pure, now-driven machine.

Every jittered interval the client sends a STUN Binding request on the SIP flow and
retransmits it as RFC 5389 §7.2.1 says: RTO, then doubling waits, ``Rc`` requests in all,
then ``Rm`` times the initial RTO for the last one. With the defaults (RTO 0.5 s, Rc 7,
Rm 16) requests leave at 0, 0.5, 1.5, 3.5, 7.5, 15.5 and 31.5 s and the transaction fails at
39.5 s. No response at all means the flow has failed; so does a response whose
XOR-MAPPED-ADDRESS differs from the previous one, since the NAT binding (or the route) has
changed under the registration (RFC 5626 §4.4.2).

For UDP only: over TCP, RFC 5389 §7.2.2 leaves retransmission to TCP itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from sipalive.errors import LocalProtocolError, ParseError
from sipalive.keepalive.crlf import FlowFailed, check_interval, jittered
from sipalive.stun.codec import (
    BINDING,
    TRANSACTION_ID_SIZE,
    Address,
    StunClass,
    StunMessage,
    binding_request,
    parse,
)

RTO = 0.5
"""RFC 5389 §7.2.1: the initial retransmission timeout, in seconds."""

RC = 7
"""RFC 5389 §7.2.1: how many requests a transaction sends in all."""

RM = 16
"""RFC 5389 §7.2.1: how many initial RTOs to wait after the last request."""


@dataclass(frozen=True, slots=True)
class SendStun:
    """Send ``data`` (a Binding request, first copy or retransmission) on the flow now."""

    data: bytes
    transaction_id: bytes


@dataclass(frozen=True, slots=True)
class MappedAddress:
    """A Binding success response: the server saw the flow come from ``addr``.

    ``rtt`` is None when the request had been retransmitted: the same transaction ID was
    sent more than once, so which copy was answered cannot be told (Karn's rule).
    """

    addr: Address
    rtt: float | None


@dataclass(frozen=True, slots=True)
class MappedAddressChanged:
    """The mapped address differs from the last one: the NAT rebound the flow. A
    :class:`FlowFailed` follows it (RFC 5626 §4.4.2)."""

    old: Address
    new: Address


@dataclass(frozen=True, slots=True)
class StunErrorResponse:
    """The server answered with a Binding error response (RFC 5389 §7.3.4).

    The path is alive and the binding refreshed, but the server did not say where it saw
    the flow from; the machine carries on and leaves it to the caller to judge.
    """

    code: int
    reason: str


StunKeepaliveEvent = (
    SendStun | MappedAddress | MappedAddressChanged | StunErrorResponse | FlowFailed
)


class StunKeepaliveState(Enum):
    """Where a :class:`StunKeepalive` is. STOPPED before :meth:`StunKeepalive.start` too."""

    IDLE = "idle"
    WAITING_RESPONSE = "waiting_response"
    FAILED = "failed"
    STOPPED = "stopped"


class StunKeepalive:
    """One STUN Binding transaction per jittered interval over a UDP flow (RFC 5626 §4.4.2).

    ``rand`` returns a number in [0, 1] for the 80-100% jitter (RFC 5626 §4.4);
    ``rand_bytes(12)`` supplies transaction IDs, which RFC 5389 §6 wants cryptographically
    random. ``rto_cap`` bounds the doubled RTO, for callers that want the transaction (and so
    failure detection) to end sooner than RFC 5389's 39.5 s. Only one transaction is in
    flight at a time: if it outlives the interval, the next request goes out as soon as it
    ends. ``timeout`` bounds a whole transaction (the flow fails that long after the first
    request if nothing answered): a keep-alive must notice a cut far sooner than RFC 5389's
    39.5 s, or a short cut heals unseen while the registrar has already dropped the binding.
    ``interval`` may change at run time (:meth:`set_interval`), to follow a Flow-Timer
    header (RFC 5626 §4.4.1) or a Via ``keep`` value (RFC 6223).
    """

    def __init__(
        self,
        interval: float,
        *,
        rand: Callable[[], float],
        rand_bytes: Callable[[int], bytes],
        rto: float = RTO,
        max_transmissions: int = RC,
        rto_cap: float | None = None,
        rm: int = RM,
        software: str | None = None,
        timeout: float | None = None,
    ) -> None:
        if not rto > 0.0:
            raise LocalProtocolError(f"RTO must be positive, got {rto!r}")
        if max_transmissions < 1:
            raise LocalProtocolError(
                f"max_transmissions must be at least 1, got {max_transmissions}"
            )
        if rto_cap is not None and not rto_cap >= rto:
            raise LocalProtocolError(f"rto_cap {rto_cap!r} is below the RTO {rto!r}")
        if rm < 1:
            raise LocalProtocolError(f"rm must be at least 1, got {rm}")
        if timeout is not None and not timeout > 0.0:
            raise LocalProtocolError(f"timeout must be positive, got {timeout!r}")
        self._timeout = timeout
        self._interval = check_interval(interval)
        self._rand = rand
        self._rand_bytes = rand_bytes
        self._rto = rto
        self._max_transmissions = max_transmissions
        self._rto_cap = rto_cap
        self._rm = rm
        self._software = software
        self._state = StunKeepaliveState.STOPPED
        self._next_request: float | None = None
        self._transaction_id = b""
        self._request = b""
        self._transmissions = 0
        self._first_sent_at = 0.0
        self._deadline = 0.0
        self._mapped: Address | None = None

    @property
    def state(self) -> StunKeepaliveState:
        return self._state

    @property
    def interval(self) -> float:
        return self._interval

    @property
    def mapped_address(self) -> Address | None:
        """The address the server last reported, or None before the first answer."""
        return self._mapped

    def start(self, now: float) -> None:
        """Begin (or begin again, on a new flow, forgetting the old mapping). The first
        request is due at once, to learn the mapping that later ones are compared with."""
        self._state = StunKeepaliveState.IDLE
        self._next_request = now
        self._mapped = None

    def stop(self) -> None:
        """Stop: no more timers, events or requests, and late responses are ignored, until
        :meth:`start` is called again."""
        self._state = StunKeepaliveState.STOPPED
        self._next_request = None

    def set_interval(self, interval: float, now: float) -> None:
        """Adopt a new interval; the next request is rescheduled from ``now``, since the value
        comes in a response that itself just refreshed the binding."""
        self._interval = check_interval(interval)
        if self._state in (StunKeepaliveState.IDLE, StunKeepaliveState.WAITING_RESPONSE):
            self._next_request = now + jittered(interval, self._rand)

    def get_timer(self) -> float | None:
        """The next instant :meth:`handle_timer` has something to do, or None."""
        if self._state is StunKeepaliveState.IDLE:
            return self._next_request
        if self._state is StunKeepaliveState.WAITING_RESPONSE:
            if self._timeout is not None:
                return min(self._deadline, self._first_sent_at + self._timeout)
            return self._deadline
        return None

    def handle_timer(self, now: float) -> list[StunKeepaliveEvent]:
        """Start a transaction, retransmit, or give up, whichever is due."""
        deadline = self.get_timer()
        if deadline is None or now < deadline:
            return []
        if self._state is StunKeepaliveState.IDLE:
            return [self._begin_transaction(now)]
        timed_out = self._timeout is not None and now >= self._first_sent_at + self._timeout
        if not timed_out and self._transmissions < self._max_transmissions:
            self._transmissions += 1
            self._deadline = now + self._wait_after(self._transmissions)
            return [SendStun(self._request, self._transaction_id)]
        self._state = StunKeepaliveState.FAILED
        self._next_request = None
        reason = f"no STUN response to {self._transmissions} Binding requests"
        if timed_out:
            reason += f" within {self._timeout:g} s"
        return [FlowFailed(reason, now)]

    def response_received(self, data: bytes | StunMessage, now: float) -> list[StunKeepaliveEvent]:
        """Feed a STUN datagram (or an already parsed message) that arrived on the flow.

        Anything but a well-formed Binding response to the outstanding transaction is
        discarded (RFC 5389 §7.3): stale or stray transactions, malformed datagrams, and
        success responses that name no address.
        """
        if self._state is not StunKeepaliveState.WAITING_RESPONSE:
            return []
        if isinstance(data, StunMessage):
            message = data
        else:
            try:
                message = parse(data)
            except ParseError:
                return []
        if (
            message.transaction_id != self._transaction_id
            or message.method != BINDING
            or message.msg_class not in (StunClass.SUCCESS, StunClass.ERROR)
        ):
            return []
        if message.msg_class is StunClass.ERROR:
            return self._error_response(message)
        # Servers that predate RFC 5389 answer with MAPPED-ADDRESS alone.
        addr = message.xor_mapped_address or message.mapped_address
        if addr is None:
            return []
        rtt = now - self._first_sent_at if self._transmissions == 1 else None
        self._state = StunKeepaliveState.IDLE
        events: list[StunKeepaliveEvent] = [MappedAddress(addr, rtt)]
        old, self._mapped = self._mapped, addr
        if old is not None and old != addr:
            self._state = StunKeepaliveState.FAILED
            self._next_request = None
            events.append(MappedAddressChanged(old, addr))
            events.append(FlowFailed(f"mapped address changed from {old} to {addr}", now))
        return events

    def _begin_transaction(self, now: float) -> SendStun:
        self._transaction_id = self._rand_bytes(TRANSACTION_ID_SIZE)
        self._request = binding_request(self._transaction_id, software=self._software)
        self._state = StunKeepaliveState.WAITING_RESPONSE
        self._transmissions = 1
        self._first_sent_at = now
        self._deadline = now + self._wait_after(1)
        self._next_request = now + jittered(self._interval, self._rand)
        return SendStun(self._request, self._transaction_id)

    def _wait_after(self, transmissions: int) -> float:
        # RFC 5389 §7.2.1: RTO doubles after each request; the last gets Rm initial RTOs.
        if transmissions >= self._max_transmissions:
            return self._rm * self._rto
        wait = self._rto * 2.0 ** (transmissions - 1)
        return wait if self._rto_cap is None else min(wait, self._rto_cap)

    def _error_response(self, message: StunMessage) -> list[StunKeepaliveEvent]:
        error = message.error_code
        if error is None:
            return []
        self._state = StunKeepaliveState.IDLE
        return [StunErrorResponse(*error)]
