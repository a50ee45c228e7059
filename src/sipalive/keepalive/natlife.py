"""How long do the NATs on a path keep an idle UDP binding? Both ends of the measurement, pure.

The idea is RFC 5780 §4.6 (binding lifetime discovery): open a binding, stay silent, and
find the longest silence after which the server can still reach us through it. RFC 5780
does it with a second socket and RESPONSE-PORT; here the server is asked to answer *late*
instead, so every trial is a single datagram out and a single one back, and the trials of a
search run in parallel, each on its own socket (a fresh binding).

The cooperating protocol (``sipalive respond`` on any UDP port serves it)
-------------------------------------------------------------------------

A STUN Binding Request (RFC 5389) carrying two private, comprehension-optional attributes
(§15: the range 0x8000-0xFFFF, which a server that does not know them ignores)::

    SIPALIVE-DELAY    0xC05A  u32, milliseconds: answer after this long, not at once
    SIPALIVE-REFRESH  0xC05B  u32, milliseconds (optional): until then, send a Binding
                              Indication to me every this long (server-side keep-alives)

* The server answers with an ordinary Binding Success Response whose XOR-MAPPED-ADDRESS is
  the source it saw the request come from (the NAT's mapping) and which echoes
  SIPALIVE-DELAY: a STUN server that ignored the attribute answers at once *without* it, so
  the client can tell it is not talking to a cooperating server. The answer goes to that
  address D after the request arrived; a delay of 0 is answered at once (the capability
  check, and the immediate Binding of the mapping check below).
* With SIPALIVE-REFRESH = K, the server sends a 28-byte Binding Indication (same
  transaction ID, FINGERPRINT only) to that address every K until the answer is due. It
  tests RFC 4787 REQ-6: if the late answer still arrives when D is longer than the binding
  lifetime, packets *from* the outside refresh the binding ("inbound refresh").
* Bounds, answered at once with a Binding Error Response: D above 600 s, K below 0.2 s or
  below D / 64 (at most 64 keep-alives per request), a malformed attribute: 400. More than
  10 000 delayed answers pending, more than 1024 for one source IP (every trial of a client
  behind one NAT shares its public IP), or more than 16 with keep-alives for one source IP:
  500, the RFC 5389 "try again later". A spoofed request thus cannot turn the server into a
  packet source for anyone: per victim address, at most 1024 answers and 16 x 64 keep-alives
  in 10 minutes. The server holds an answer until it is due even if the client gave up on
  it, so the client budgets those too (``max_outstanding``).

Only the request leaves the client before the answer, so the NAT entry of a trial sees one
packet out, then nothing: on Linux it is [UNREPLIED] and ``nf_conntrack_udp_timeout``
governs it, not ``..._udp_timeout_stream`` (which a flow gets only once traffic went both
ways and it is older than 2 s). The measured lifetime is what a binding has after its last
outbound packet when the server stays silent, the case a keep-alive must cover. The server
counts D from the request's arrival and its answer takes one more trip back, so the figure
errs short by the round trip between the NAT and the server: the safe side.

The search (:class:`NatLifetimeSearch`)
---------------------------------------

1. Capability check: a Binding with SIPALIVE-DELAY = 0 on a control socket (retransmitted
   as RFC 5389 §7.2.1 says); its round trip sets the *grace*, how long past D a trial waits
   for its answer before it counts as expired.
2. A ladder of delays 1, 2, 4, 8, ... below ``max_delay``, and ``max_delay``, all at once.
   Each probe of delay D is ``copies`` trials (sockets) with their own transaction IDs, so
   one lost datagram does not look like an expired binding: a probe is answered if any copy
   is, expired if none is by D + grace.
3. Octaves are filled one ahead: once ``low`` (the longest delay answered; an answer is
   never false) reaches a quarter of a ladder probe ``b``, the octave below ``b`` gets a grid
   of probes as fine as the resolution (or as the socket budget allows), plus one probe just
   above ``b``. If the lifetime is in that octave, its grid is already running when the
   ladder shows it. Probes at or below ``low`` are abandoned: they can only repeat what is
   known. The resolution is 0.5 s, or 2 % of the lifetime for long ones (``resolution_at``).
4. An expired probe can be a loss, so the upper bound ``high`` (the shortest expired delay
   above ``low``) is believed only once ``confirm`` expired probes lie in
   [high, high + max(2 x resolution, 10 % of high)]; a probe is added there when none is
   pending (it may go one step past ``max_delay``, never past 600 s). An answer above an
   expired delay simply moves ``low`` past it. Between ``low`` and ``high``, every gap wider
   than the resolution is filled again (another round, when the budget made the first one
   coarse).
5. On a path that has shown loss (a copy of an answered probe missing, an expiry below an
   answered delay, a retransmitted control request) the decisive trial is repeated: the
   expiry at ``high`` must happen twice. A clean path pays nothing for this.
6. Done when ``high`` is confirmed (and repeated if need be), ``high - low`` is within the
   resolution and no probe pending at or below ``high`` plus the resolution could still
   change that; or when every delay up to ``max_delay`` was answered (the lifetime is
   longer); or at ``time_limit``.

Two reports ride along:

* **Inbound refresh** (RFC 4787 REQ-6): with each octave filled, a refresh check: ``copies``
  trials with D = b + max(2 s, 5 %) and SIPALIVE-REFRESH = low / 2 (shorter than the
  lifetime, since low is). Once ``high`` is known, the decisive check is the one longer
  than ``high`` (the binding is surely gone by then without refresh) that concludes first;
  one just past ``high`` is added if none would conclude sooner. Its late answer arriving
  means server-side keep-alives keep the binding alive.
* **Mapped port kept**: the socket of the first answered probe (its answer brought the
  mapping M1) stays idle for longer than ``high`` and then sends an immediate Binding: the
  mapping M2 it is given is compared with M1. A NAT that gives a socket its old public port
  back after expiry makes the contact a registrar holds good again with the UA's next
  packet; one that does not needs a new REGISTER (RFC 5626 §4.4.2 treats a changed mapping
  as a failed flow).

The keep-alive interval to use is :func:`recommended_keepalive` of ``low``: 80 % of it less
a 1 s margin. RFC 5626 §4.4.1 sends each keep-alive between 80 % and 100 % of the interval,
so the interval itself is the longest gap there will be and must stay under the lifetime;
the margin and the 20 % absorb a late keep-alive and the measurement's own error.

Pure and now-driven (STYLE habit 2): ``start(now)``, ``datagram_received(trial, data, now)``,
``transport_error(trial, reason, now)``, ``get_timer()``, ``handle_timer(now)``; the events
say which socket to open, what to send on it and when to close it. Transaction IDs come from
the injected ``rand_bytes``. :class:`DelayedReplies` is the server's half, same shape.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Generic, TypeVar

from sipalive.errors import LocalProtocolError, ParseError
from sipalive.stun.codec import (
    BINDING,
    TRANSACTION_ID_SIZE,
    Address,
    StunClass,
    StunMessage,
    binding_error,
    binding_request,
    binding_success,
    encode,
    is_stun,
    parse,
)

SIPALIVE_DELAY = 0xC05A
"""Private STUN attribute (comprehension-optional range, RFC 5389 §18.2): u32 milliseconds
after which the server is to answer, to the address it saw the request come from."""

SIPALIVE_REFRESH = 0xC05B
"""Private STUN attribute: u32 milliseconds between the server's Binding Indications to the
client until the delayed answer (server-side keep-alives, RFC 4787 REQ-6)."""

MAX_DELAY = 600.0
"""Longest delay a server accepts, seconds."""

MAX_PENDING = 10_000
"""Delayed answers a server holds at once."""

MAX_PENDING_PER_SOURCE = 1024
"""Delayed answers a server holds for one source IP address."""

MAX_REFRESHING_PER_SOURCE = 16
"""Requests with server keep-alives a server holds for one source IP address."""

MIN_REFRESH = 0.2
"""Shortest server keep-alive interval, seconds."""

MAX_KEEPALIVES = 64
"""Server keep-alives one request may ask for (the interval must be at least D / 64)."""

KEEPALIVE_SHARE = 0.8
KEEPALIVE_MARGIN = 1.0

_DELAY_BYTES = SIPALIVE_DELAY.to_bytes(2, "big")

R = TypeVar("R")


def encode_ms(seconds: float) -> bytes:
    """A duration as the attributes carry it: u32 milliseconds."""
    ms = round(seconds * 1000)
    if not 0 <= ms <= 0xFFFFFFFF:
        raise LocalProtocolError(f"{seconds!r} s does not fit a u32 of milliseconds")
    return ms.to_bytes(4, "big")


def decode_ms(value: bytes, name: str) -> float:
    """Seconds from a u32-milliseconds attribute; :class:`ParseError` if it is not 4 bytes."""
    if len(value) != 4:
        raise ParseError(f"{name} of {len(value)} bytes, not 4")
    return int.from_bytes(value, "big") / 1000


def delayed_binding_request(
    transaction_id: bytes, delay: float, refresh: float | None = None, software: str | None = None
) -> bytes:
    """A Binding Request asking to be answered after ``delay`` seconds (0: at once), with a
    server keep-alive every ``refresh`` seconds until then if given."""
    attrs = [(SIPALIVE_DELAY, encode_ms(delay))]
    if refresh is not None:
        attrs.append((SIPALIVE_REFRESH, encode_ms(refresh)))
    return binding_request(transaction_id, software=software, attributes=attrs)


def recommended_keepalive(low: float) -> float | None:
    """The keep-alive interval for a binding known to survive ``low`` seconds of silence.

    80 % of ``low`` less 1 s (see the module docstring), rounded down to whole seconds from
    2 s up and to tenths below. None when that leaves less than 0.2 s: no keep-alive can
    hold such a binding sensibly.
    """
    value = KEEPALIVE_SHARE * low - KEEPALIVE_MARGIN
    if value < 0.2:
        return None
    if value >= 2.0:
        return float(math.floor(value))
    return math.floor(value * 10) / 10


# -- the server's half ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendTo(Generic[R]):
    """Send ``data`` to ``addr`` through ``route`` (the listener socket the request came on)."""

    data: bytes
    addr: Address
    route: R


@dataclass(slots=True)
class _Delayed(Generic[R]):
    due: float
    next_at: float
    refresh: float | None
    source: Address
    route: R
    answer: bytes
    keepalive: bytes


class DelayedReplies(Generic[R]):
    """The server side: SIPALIVE-DELAY requests in, answers and keep-alives out, on time.

    ``receive`` returns None for anything that is not a Binding Request carrying
    SIPALIVE-DELAY (the caller's ordinary STUN/SIP handling takes it), else what to send at
    once: nothing when the answer was scheduled, the answer itself for a delay of 0, or an
    error response when a bound is hit. One heap holds every pending answer and keep-alive;
    ``get_timer`` / ``handle_timer`` drive it.
    """

    def __init__(
        self,
        *,
        max_pending: int = MAX_PENDING,
        max_per_source: int = MAX_PENDING_PER_SOURCE,
        max_delay: float = MAX_DELAY,
        software: str | None = None,
    ) -> None:
        if max_pending < 1 or max_per_source < 1:
            raise LocalProtocolError("max_pending and max_per_source must be at least 1")
        if not 0 < max_delay <= 0xFFFFFFFF / 1000:
            raise LocalProtocolError(f"max_delay {max_delay!r} s is out of range")
        self.max_pending = max_pending
        self.max_per_source = max_per_source
        self.max_delay = max_delay
        self.software = software
        self._heap: list[tuple[float, int, _Delayed[R]]] = []
        self._seq = itertools.count()
        self._per_source: dict[str, int] = {}
        self._refreshing: dict[str, int] = {}
        self._pending = 0
        self.refused = 0

    def __len__(self) -> int:
        """Delayed answers still to send."""
        return self._pending

    def receive(self, data: bytes, source: Address, route: R, now: float) -> list[SendTo[R]] | None:
        # Cheap tests first: this sees every datagram of a SIP port (RFC 7983: STUN starts
        # with 0-3, SIP with a letter or CR).
        if not data or data[0] > 3 or data.find(_DELAY_BYTES, 20) < 0 or not is_stun(data):
            return None
        try:
            msg = parse(data)
        except ParseError:
            return None
        raw_delay = msg.get(SIPALIVE_DELAY)
        if raw_delay is None or msg.msg_class is not StunClass.REQUEST or msg.method != BINDING:
            return None
        try:
            delay = decode_ms(raw_delay, "SIPALIVE-DELAY")
            raw_refresh = msg.get(SIPALIVE_REFRESH)
            refresh = None if raw_refresh is None else decode_ms(raw_refresh, "SIPALIVE-REFRESH")
        except ParseError as exc:
            return self._refuse(msg, source, route, 400, exc.reason)
        answer = binding_success(
            msg.transaction_id,
            source,
            software=self.software,
            attributes=[(SIPALIVE_DELAY, raw_delay)],
        )
        if delay == 0:
            return [SendTo(answer, source, route)]
        if delay > self.max_delay:
            return self._refuse(msg, source, route, 400, f"delay above {self.max_delay:g} s")
        if refresh is not None and (refresh < MIN_REFRESH or refresh * MAX_KEEPALIVES < delay):
            reason = f"keep-alive interval below {MIN_REFRESH} s or below delay/{MAX_KEEPALIVES}"
            return self._refuse(msg, source, route, 400, reason)
        if self._pending >= self.max_pending:
            return self._refuse(msg, source, route, 500, "too many delayed answers pending")
        if self._per_source.get(source[0], 0) >= self.max_per_source:
            return self._refuse(msg, source, route, 500, "too many delayed answers for you")
        if refresh is not None and self._refreshing.get(source[0], 0) >= MAX_REFRESHING_PER_SOURCE:
            return self._refuse(msg, source, route, 500, "too many keep-alive requests for you")
        due = now + delay
        keepalive = b""
        if refresh is not None and refresh < delay:
            keepalive = encode(StunClass.INDICATION, BINDING, msg.transaction_id, fingerprint=True)
        else:
            refresh = None
        first = min(due, now + refresh) if refresh else due
        item = _Delayed(due, first, refresh, source, route, answer, keepalive)
        heapq.heappush(self._heap, (item.next_at, next(self._seq), item))
        self._pending += 1
        _count(self._per_source, source[0], +1)
        if refresh is not None:
            _count(self._refreshing, source[0], +1)
        return []

    def get_timer(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def handle_timer(self, now: float) -> list[SendTo[R]]:
        out: list[SendTo[R]] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, item = heapq.heappop(heap)
            if item.next_at < item.due and item.refresh is not None:
                out.append(SendTo(item.keepalive, item.source, item.route))
                item.next_at = min(item.due, item.next_at + item.refresh)
                heapq.heappush(heap, (item.next_at, next(self._seq), item))
                continue
            out.append(SendTo(item.answer, item.source, item.route))
            self._pending -= 1
            _count(self._per_source, item.source[0], -1)
            if item.refresh is not None:
                _count(self._refreshing, item.source[0], -1)
        return out

    def _refuse(
        self, msg: StunMessage, source: Address, route: R, code: int, reason: str
    ) -> list[SendTo[R]]:
        self.refused += 1
        data = binding_error(msg.transaction_id, code, reason, software=self.software)
        return [SendTo(data, source, route)]


def _count(counts: dict[str, int], key: str, change: int) -> None:
    value = counts.get(key, 0) + change
    if value:
        counts[key] = value
    else:
        del counts[key]


# -- the client's half ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SearchConfig:
    """Knobs of :class:`NatLifetimeSearch`; seconds unless said otherwise.

    ``time_limit`` None means 3 x ``max_delay`` + 30 s, enough for the ladder and two
    refining rounds at the longest lifetime looked for.
    """

    max_delay: float = 300.0
    resolution: float = 0.5
    relative_resolution: float = 0.02
    copies: int = 2
    confirm: int = 2
    max_trials: int = 256
    max_outstanding: int = 768
    time_limit: float | None = None
    min_grace: float = 0.5
    check_mapping: bool = True
    check_refresh: bool = True
    control_rto: float = 0.5
    control_tries: int = 5

    def __post_init__(self) -> None:
        if not 1.0 <= self.max_delay <= MAX_DELAY:
            raise LocalProtocolError(f"max_delay must be within 1-{MAX_DELAY:g} s")
        if not 0.01 <= self.resolution <= self.max_delay:
            raise LocalProtocolError("resolution must be within 0.01 s and max_delay")
        if not 0 <= self.relative_resolution <= 0.5:
            raise LocalProtocolError("relative_resolution must be within 0 and 0.5")
        if not 1 <= self.copies <= 8 or not 1 <= self.confirm <= 8:
            raise LocalProtocolError("copies and confirm must be within 1-8")
        if min(self.max_trials, self.max_outstanding) < 4 * self.copies:
            raise LocalProtocolError(
                f"max_trials and max_outstanding must be at least 4 x copies ({4 * self.copies})"
            )
        if self.time_limit is not None and not self.time_limit > 0:
            raise LocalProtocolError("time_limit must be positive")
        if not self.min_grace > 0 or not self.control_rto > 0 or self.control_tries < 1:
            raise LocalProtocolError("min_grace and control_rto must be positive, tries >= 1")

    @property
    def limit(self) -> float:
        return 3 * self.max_delay + 30 if self.time_limit is None else self.time_limit

    def resolution_at(self, delay: float) -> float:
        """The interval width that is good enough around ``delay``: ``resolution``, or
        ``relative_resolution`` of it for long lifetimes (2 % of 300 s is 6 s)."""
        return max(self.resolution, self.relative_resolution * delay)


@dataclass(frozen=True, slots=True)
class OpenTrial:
    """Open a fresh UDP socket (a fresh NAT binding) towards the server and send ``data``."""

    trial_id: int
    data: bytes


@dataclass(frozen=True, slots=True)
class SendOnTrial:
    """Send ``data`` on the trial's socket (a retransmission, or the mapping re-check)."""

    trial_id: int
    data: bytes


@dataclass(frozen=True, slots=True)
class CloseTrial:
    """Close the trial's socket: nothing more is expected on it."""

    trial_id: int


@dataclass(frozen=True, slots=True)
class ProbeResolved:
    """A probe of ``delay`` s ended: answered (the binding lived) or expired; for logs."""

    delay: float
    answered: bool
    elapsed: float


@dataclass(frozen=True, slots=True)
class ProbeRecord:
    delay: float
    outcome: str  # "answered", "expired" or "abandoned" (no longer needed, or out of time)


@dataclass(frozen=True, slots=True)
class NatLifetimeResult:
    """What a search found. ``high_s`` is set only when confirmed; ``complete`` when the
    interval is within the resolution. ``error`` says why nothing could be measured."""

    low_s: float
    high_s: float | None
    complete: bool
    reason: str
    error: str | None = None
    recommended_keepalive_s: float | None = None
    mapped_port_kept: bool | None = None
    mapping_idle_s: float | None = None
    inbound_refresh: bool | None = None
    refresh_delay_s: float | None = None
    server_keepalives: int = 0
    public_address: Address | None = None
    rtt_s: float | None = None
    trials: int = 0
    search_s: float | None = None
    elapsed_s: float = 0.0
    probes: tuple[ProbeRecord, ...] = field(default=())

    @property
    def lifetime_s(self) -> float | None:
        """The middle of [low, high]: the best single figure, within half the interval."""
        return None if self.high_s is None else (self.low_s + self.high_s) / 2


@dataclass(frozen=True, slots=True)
class SearchFinished:
    result: NatLifetimeResult


SearchEvent = OpenTrial | SendOnTrial | CloseTrial | ProbeResolved | SearchFinished


class Phase(Enum):
    IDLE = "idle"
    CONTROL = "control"
    SEARCH = "search"
    EXTRAS = "extras"  # lifetime known; the refresh and mapping reports still running
    DONE = "done"


class ProbeState(Enum):
    PENDING = "pending"
    ANSWERED = "answered"
    EXPIRED = "expired"
    ABANDONED = "abandoned"


class TrialKind(Enum):
    CONTROL = "control"
    PROBE = "probe"
    REFRESH = "refresh"


@dataclass(slots=True)
class _Probe:
    delay: float
    started: float
    trial_ids: list[int]
    ladder: bool = False
    state: ProbeState = ProbeState.PENDING
    answers: int = 0  # copies answered; the others stay open until the deadline, to count
    settled: bool = False


@dataclass(slots=True)
class _Trial:
    kind: TrialKind
    transaction_id: bytes
    sent_at: float
    probe: _Probe | None = None
    refresh: _Refresh | None = None


@dataclass(slots=True)
class _Control:
    trial_id: int
    request: bytes
    transaction_id: bytes
    first_sent: float
    last_sent: float
    tries: int
    deadline: float


@dataclass(slots=True)
class _Mapping:
    trial_id: int
    first: Address
    idle_from: float
    due: float | None = None
    transaction_id: bytes = b""
    request: bytes = b""
    sent_at: float = 0.0
    tries: int = 0
    deadline: float = 0.0
    kept: bool | None = None
    finished: bool = False


@dataclass(slots=True)
class _Refresh:
    delay: float
    deadline: float
    trial_ids: list[int] = field(default_factory=list)
    keepalives: int = 0
    answered: bool | None = None
    abandoned: bool = False


MAPPING_TRIES = 3
MAPPING_MARGIN = 1.0
REFRESH_MARGIN = 2.0


class NatLifetimeSearch:
    """The client: a parallel search for the binding lifetime (see the module docstring).

    Trials are numbered by the machine; the io layer maps each number to a socket. Every
    datagram that arrives on a trial's socket is fed to :meth:`datagram_received`; anything
    that is not the expected STUN message is ignored. :class:`SearchFinished` comes once,
    after a :class:`CloseTrial` for every socket still open.
    """

    def __init__(
        self,
        config: SearchConfig | None = None,
        *,
        rand_bytes: Callable[[int], bytes],
        software: str | None = None,
    ) -> None:
        self.config = config or SearchConfig()
        self._rand_bytes = rand_bytes
        self._software = software
        self._phase = Phase.IDLE
        self._ids = itertools.count(1)
        self._t0 = 0.0
        self._trials: dict[int, _Trial] = {}
        self._probes: list[_Probe] = []
        self._control: _Control | None = None
        self._grace = self.config.min_grace
        self._rtt: float | None = None
        self._control_retransmitted = False
        self._copies_lost = False
        self._public: Address | None = None
        self._mapping: _Mapping | None = None
        self._refreshes: list[_Refresh] = []
        self._refresh_due: list[float] = []  # as _server_due, for requests with keep-alives
        self._refresh_impossible = False
        self._refresh_fallback = False
        self._search_s: float | None = None
        self._opened = 0
        self._now = 0.0
        # When the server will be done with each delayed request sent: it holds the answers
        # of abandoned probes too, and refuses a source with too many (500).
        self._server_due: list[float] = []
        self._filled: set[float] = set()  # ladder probes whose octave below has been filled
        self._result: NatLifetimeResult | None = None

    # -- state ----------------------------------------------------------------------------

    @property
    def phase(self) -> Phase:
        return self._phase

    @property
    def result(self) -> NatLifetimeResult | None:
        return self._result

    @property
    def low(self) -> float:
        """The longest delay answered so far (0 before any answer)."""
        return max((p.delay for p in self._probes if p.state is ProbeState.ANSWERED), default=0.0)

    def _expired_above(self, low: float) -> list[float]:
        return sorted(
            p.delay for p in self._probes if p.state is ProbeState.EXPIRED and p.delay > low
        )

    def _span(self, high: float) -> float:
        return max(2 * self.config.resolution_at(high), 0.1 * high)

    def _high(self, low: float) -> tuple[float | None, bool]:
        """The upper bound candidate (shortest expired delay above low) and whether enough
        expired probes near it confirm it."""
        expired = self._expired_above(low)
        if not expired:
            return None, False
        high = expired[0]
        near = sum(1 for d in expired if d <= high + self._span(high))
        return high, near >= self.config.confirm

    def _pending(self) -> list[_Probe]:
        return [p for p in self._probes if p.state is ProbeState.PENDING]

    def _lossy(self, low: float) -> bool:
        """The path has lost datagrams: the control request needed a retransmission, or a
        probe expired although a longer one was answered."""
        return (
            self._control_retransmitted
            or self._copies_lost
            or any(p.state is ProbeState.EXPIRED and p.delay < low for p in self._probes)
        )

    def _verified(self, low: float, high: float) -> bool:
        """On a lossy path the expiry at ``high`` must have happened twice: its copies all
        lost at once would otherwise pass for the binding's end."""
        if not self._lossy(low):
            return True
        return sum(p.state is ProbeState.EXPIRED and p.delay == high for p in self._probes) >= 2

    # -- inputs ---------------------------------------------------------------------------

    def start(self, now: float) -> list[SearchEvent]:
        """Begin with the capability check on a control socket."""
        self._now = now
        if self._phase is not Phase.IDLE:
            raise LocalProtocolError("a NatLifetimeSearch runs once")
        self._phase = Phase.CONTROL
        self._t0 = now
        tid = self._new_transaction_id()
        request = delayed_binding_request(tid, 0.0, software=self._software)
        trial_id = self._open(TrialKind.CONTROL, tid, now)
        deadline = now + self.config.control_rto
        self._control = _Control(trial_id, request, tid, now, now, 1, deadline)
        return [OpenTrial(trial_id, request)]

    def get_timer(self) -> float | None:
        """The next instant :meth:`handle_timer` has something to do, or None when done."""
        if self._phase in (Phase.IDLE, Phase.DONE):
            return None
        times = [self._t0 + self.config.limit]
        if self._control is not None:
            times.append(self._control.deadline)
        times.extend(p.started + p.delay + self._grace for p in self._probes if not p.settled)
        times.extend(r.deadline for r in self._live_refreshes())
        mapping = self._mapping
        if mapping is not None and not mapping.finished:
            if mapping.tries:
                times.append(mapping.deadline)
            elif mapping.due is not None:
                times.append(mapping.due)
        return min(times)

    def handle_timer(self, now: float) -> list[SearchEvent]:
        self._now = now
        if self._phase in (Phase.IDLE, Phase.DONE):
            return []
        events: list[SearchEvent] = []
        if now >= self._t0 + self.config.limit:
            if self._phase is Phase.EXTRAS:
                return self._finish(now, "measured; the time limit cut the reports short", events)
            return self._finish(now, "time limit reached", events)
        control = self._control
        if control is not None:
            if now < control.deadline:
                return []
            if control.tries >= self.config.control_tries:
                error = f"no answer to {control.tries} STUN Binding requests"
                return self._finish(now, error, events, error=error)
            control.tries += 1
            control.last_sent = now
            wait = self.config.control_rto * 2 ** (control.tries - 1)
            control.deadline = now + wait
            return [SendOnTrial(control.trial_id, control.request)]
        for probe in self._probes:
            if probe.settled or now < probe.started + probe.delay + self._grace:
                continue
            probe.settled = True
            if probe.state is ProbeState.PENDING:
                probe.state = ProbeState.EXPIRED
                events.append(ProbeResolved(probe.delay, False, now - self._t0))
            elif probe.state is ProbeState.ANSWERED and probe.answers < len(probe.trial_ids):
                self._copies_lost = True
            self._close_probe(probe, events)
        for refresh in self._live_refreshes():
            if now >= refresh.deadline:
                refresh.answered = False
                self._close_ids(refresh.trial_ids, events)
        self._mapping_timer(now, events)
        return self._advance(now, events)

    def datagram_received(self, trial_id: int, data: bytes, now: float) -> list[SearchEvent]:
        self._now = now
        trial = self._trials.get(trial_id)
        if trial is None or self._phase in (Phase.IDLE, Phase.DONE):
            return []
        try:
            msg = parse(data)
        except ParseError:
            return []
        if msg.method != BINDING:
            return []
        mapping = self._mapping
        if mapping is not None and trial_id == mapping.trial_id and mapping.tries:
            return self._mapping_answer(msg, now)
        if msg.transaction_id != trial.transaction_id:
            return []
        if msg.msg_class is StunClass.ERROR:
            code, reason = msg.error_code or (0, "")
            error = f"server refused the request: {code} {reason}".rstrip()
            return self._finish(now, error, [], error=error)
        if trial.refresh is not None and msg.msg_class is StunClass.INDICATION:
            trial.refresh.keepalives += 1
            return []
        if msg.msg_class is not StunClass.SUCCESS:
            return []
        mapped = msg.xor_mapped_address or msg.mapped_address
        echoed = msg.get(SIPALIVE_DELAY)
        if trial.kind is TrialKind.CONTROL:
            return self._control_answer(mapped, echoed, now)
        elapsed = now - trial.sent_at
        asked = self._asked_delay(trial)
        if echoed is None or elapsed < 0.9 * asked - 0.05:
            error = (
                f"the server answered a {asked:g} s delayed request after {elapsed:.2f} s: "
                "it does not honour SIPALIVE-DELAY"
            )
            return self._finish(now, error, [], error=error)
        events: list[SearchEvent] = []
        if trial.refresh is not None:
            trial.refresh.answered = True
            self._close_ids(trial.refresh.trial_ids, events)
            return self._advance(now, events)
        probe = trial.probe
        assert probe is not None
        probe.answers += 1
        if self._mapping is None and self.config.check_mapping and mapped is not None:
            self._mapping = _Mapping(trial_id, mapped, now)
        if self._mapping is None or self._mapping.trial_id != trial_id:
            self._close_ids([trial_id], events)
        if probe.state is ProbeState.PENDING:
            probe.state = ProbeState.ANSWERED
            events.append(ProbeResolved(probe.delay, True, now - self._t0))
            low = probe.delay
            for other in self._pending():
                if other.delay <= low:
                    self._abandon(other, events)
        return self._advance(now, events)

    def transport_error(self, trial_id: int, reason: str, now: float) -> list[SearchEvent]:
        """The socket of a trial failed (ICMP port unreachable, no route): the server or the
        path is gone, and nothing this run measures would mean anything."""
        self._now = now
        if trial_id not in self._trials or self._phase in (Phase.IDLE, Phase.DONE):
            return []
        error = f"cannot reach the server: {reason}"
        return self._finish(now, error, [], error=error)

    # -- the steps ------------------------------------------------------------------------

    def _control_answer(
        self, mapped: Address | None, echoed: bytes | None, now: float
    ) -> list[SearchEvent]:
        control = self._control
        if control is None:
            return []
        if echoed is None:
            error = (
                "the server answers STUN but ignores SIPALIVE-DELAY: it is not a "
                "'sipalive respond' (or too old to measure NAT lifetimes)"
            )
            return self._finish(now, error, [], error=error)
        # Karn: after a retransmission the answer may be to either copy; the time since the
        # last one is then a lower bound, which min_grace covers.
        self._rtt = now - (control.first_sent if control.tries == 1 else control.last_sent)
        self._control_retransmitted = control.tries > 1
        self._grace = max(self.config.min_grace, 4 * self._rtt)
        self._public = mapped
        self._control = None
        events: list[SearchEvent] = [CloseTrial(control.trial_id)]
        del self._trials[control.trial_id]
        self._phase = Phase.SEARCH
        delay = 1.0
        ladder: list[float] = []
        while delay < self.config.max_delay:
            ladder.append(delay)
            delay *= 2
        ladder.append(self.config.max_delay)
        for d in ladder:
            if self._free_probes() < 1:
                break
            self._launch(d, now, events, ladder=True)
        return self._advance(now, events)

    def _advance(self, now: float, events: list[SearchEvent]) -> list[SearchEvent]:
        """After any change: refine, confirm, start the reports, and end when it is time."""
        cfg = self.config
        low = self.low
        high, confirmed = self._high(low)
        if self._phase is Phase.SEARCH:
            if low >= cfg.max_delay:
                self._end_search(now, events)
                return self._finish(now, f"longer than --max ({cfg.max_delay:g} s)", events)
            if (
                confirmed
                and high is not None
                and high - low <= cfg.resolution_at(high)
                and not any(p.delay <= high + cfg.resolution_at(high) for p in self._pending())
                and self._verified(low, high)
            ):
                self._end_search(now, events)
            else:
                self._refine(low, high, confirmed, now, events)
        if confirmed and high is not None:
            self._start_reports(low, high, now, events)
        if self._phase is Phase.EXTRAS and self._reports_done():
            return self._finish(now, "measured", events)
        return events

    def _refine(
        self,
        low: float,
        high: float | None,
        confirmed: bool,
        now: float,
        events: list[SearchEvent],
    ) -> None:
        """Put probes where they can narrow the interval.

        Below a known ``high``, every gap wider than the resolution between ``low`` and the
        probes pending is filled: the lifetime is in one of them. Without one, whole ladder
        octaves are filled, one ahead: the octave below ladder probe ``b`` once ``low`` is
        ``b / 4`` or more, plus a probe just above ``b`` so that its expiry is confirmed at
        once. Gaps inside a filled octave are left alone until ``high`` is known: refining
        just above ``low`` pays only if the lifetime happens to be there.
        """
        cfg = self.config
        if high is None:
            ladder = sorted(p.delay for p in self._pending() if p.ladder and p.delay > low)
            below = [low, *ladder]
            for a, b in itertools.pairwise(below):
                if b > 4 * low + 2 * cfg.resolution:
                    break
                if b in self._filled or b - a <= cfg.resolution_at(b):
                    continue
                self._filled.add(b)
                step = self._fill(a, b, now, events)
                if step < b - a:
                    self._launch_unless_covered(min(b + step, MAX_DELAY), step / 2, now, events)
                self._launch_refresh(b, low, now, events, speculative=True)
            return
        inside = sorted({p.delay for p in self._pending() if low < p.delay < high})
        for a, b in itertools.pairwise([low, *inside, high]):
            if b - a > cfg.resolution_at(b):
                self._fill(a, b, now, events)
        if (
            confirmed
            and not self._verified(low, high)
            and self._free_probes() > 0
            and not any(p.delay == high for p in self._pending())
        ):
            self._launch(high, now, events)  # repeat the decisive trial
        if not confirmed:
            span = self._span(high)
            if not any(high < p.delay <= high + span for p in self._pending()):
                again = min(high + cfg.resolution_at(high), MAX_DELAY)
                if self._free_probes() > 0 and not (
                    again == high and any(p.delay == high for p in self._pending())
                ):
                    self._launch(again, now, events)

    def _fill(self, a: float, b: float, now: float, events: list[SearchEvent]) -> float:
        """Probes on a grid strictly inside (a, b), as fine as the resolution or as the free
        slots allow; returns the grid step."""
        wanted = math.ceil((b - a) / self.config.resolution_at(a) - 1e-9)
        intervals = min(wanted, self._free_probes() + 1)
        step = (b - a) / intervals
        for k in range(1, intervals):
            self._launch_unless_covered(a + k * step, step / 2, now, events)
        return step

    def _end_search(self, now: float, events: list[SearchEvent]) -> None:
        self._phase = Phase.EXTRAS
        self._search_s = now - self._t0
        for probe in self._pending():
            self._abandon(probe, events)
        high, _ = self._high(self.low)
        best = self._best_refresh(high)
        for refresh in self._live_refreshes():
            if refresh is not best:
                refresh.abandoned = True
                self._close_ids(refresh.trial_ids, events)

    def _start_reports(
        self, low: float, high: float, now: float, events: list[SearchEvent]
    ) -> None:
        if self.config.check_refresh and not self._refresh_fallback:
            # A check just past high concludes by then; one already pending may come sooner.
            self._refresh_fallback = True
            best = self._best_refresh(high)
            by = now + high + max(REFRESH_MARGIN, 0.05 * high) + self._grace
            if (best is None or best.deadline > by) and not self._launch_refresh(
                high, low, now, events, speculative=False
            ):
                self._refresh_impossible = best is None
        mapping = self._mapping
        if mapping is not None and mapping.due is None:
            mapping.due = mapping.idle_from + high + self._grace + MAPPING_MARGIN
            self._mapping_timer(now, events)

    def _mapping_timer(self, now: float, events: list[SearchEvent]) -> None:
        mapping = self._mapping
        if mapping is None or mapping.finished or mapping.due is None:
            return
        if mapping.tries == 0:
            if now < mapping.due:
                return
            mapping.transaction_id = self._new_transaction_id()
            mapping.request = delayed_binding_request(
                mapping.transaction_id, 0.0, software=self._software
            )
            mapping.sent_at = now
        elif now < mapping.deadline:
            return
        elif mapping.tries >= MAPPING_TRIES:
            mapping.finished = True
            self._close_ids([mapping.trial_id], events)
            return
        mapping.tries += 1
        mapping.deadline = now + self.config.control_rto * 2 ** (mapping.tries - 1)
        events.append(SendOnTrial(mapping.trial_id, mapping.request))

    def _mapping_answer(self, msg: StunMessage, now: float) -> list[SearchEvent]:
        mapping = self._mapping
        assert mapping is not None
        if msg.transaction_id != mapping.transaction_id or msg.msg_class is not StunClass.SUCCESS:
            return []
        second = msg.xor_mapped_address or msg.mapped_address
        if second is None:
            return []
        mapping.kept = second == mapping.first
        mapping.finished = True
        events: list[SearchEvent] = []
        self._close_ids([mapping.trial_id], events)
        return self._advance(now, events)

    def _reports_done(self) -> bool:
        if self.config.check_refresh and not self._refresh_impossible:
            best = self._best_refresh(self._high(self.low)[0])
            if best is None or best.answered is None:
                return False
        return self._mapping is None or self._mapping.finished

    def _launch_refresh(
        self, above: float, low: float, now: float, events: list[SearchEvent], speculative: bool
    ) -> bool:
        """A refresh check whose delay clears ``above`` (a ladder probe, or the confirmed
        high) by a margin, with server keep-alives every ``low / 2``. Speculative ones, one
        per octave filled, leave room at the server for the one that may still be needed
        once ``high`` is known. False if it cannot be made."""
        cfg = self.config
        left = self._t0 + cfg.limit - now - 2 * self._grace
        delay = min(round(above + max(REFRESH_MARGIN, 0.05 * above), 3), MAX_DELAY, left)
        interval = max(low / 2, delay / MAX_KEEPALIVES, MIN_REFRESH)
        if not cfg.check_refresh or interval >= low or delay <= above:
            return False
        copies = min(cfg.copies, MAX_REFRESHING_PER_SOURCE // 2)
        due = self._refresh_due
        while due and due[0] <= now:
            heapq.heappop(due)
        room = MAX_REFRESHING_PER_SOURCE - (copies if speculative else 0)
        if len(due) + copies > room or (speculative and self._free_probes() < 1):
            return False
        tid = self._new_transaction_id()
        request = delayed_binding_request(tid, delay, interval, self._software)
        refresh = _Refresh(delay, now + delay + self._grace)
        for _ in range(copies):
            heapq.heappush(due, now + delay + self._grace)
            heapq.heappush(self._server_due, now + delay + self._grace)
            trial_id = self._open(TrialKind.REFRESH, tid, now, refresh=refresh)
            refresh.trial_ids.append(trial_id)
            events.append(OpenTrial(trial_id, request))
        self._refreshes.append(refresh)
        return True

    def _live_refreshes(self) -> list[_Refresh]:
        return [r for r in self._refreshes if r.answered is None and not r.abandoned]

    def _best_refresh(self, high: float | None) -> _Refresh | None:
        """The refresh check that decides: of those longer than ``high`` (the binding is
        surely gone by then without refresh), the one that concludes first."""
        if high is None:
            return None
        valid = [r for r in self._refreshes if r.delay > high and not r.abandoned]
        return min(valid, key=lambda r: r.deadline, default=None)

    # -- helpers --------------------------------------------------------------------------

    def _new_transaction_id(self) -> bytes:
        tid = self._rand_bytes(TRANSACTION_ID_SIZE)
        if len(tid) != TRANSACTION_ID_SIZE:
            raise LocalProtocolError(f"rand_bytes returned {len(tid)} bytes, not 12")
        return tid

    def _open(
        self,
        kind: TrialKind,
        tid: bytes,
        now: float,
        probe: _Probe | None = None,
        refresh: _Refresh | None = None,
    ) -> int:
        trial_id = next(self._ids)
        self._trials[trial_id] = _Trial(kind, tid, now, probe, refresh)
        self._opened += 1
        return trial_id

    def _free_probes(self) -> int:
        cfg = self.config
        due = self._server_due
        while due and due[0] <= self._now:
            heapq.heappop(due)
        free = min(cfg.max_trials - len(self._trials), cfg.max_outstanding - len(due))
        return free // cfg.copies

    def _launch(
        self, delay: float, now: float, events: list[SearchEvent], ladder: bool = False
    ) -> None:
        delay = round(delay, 3)
        probe = _Probe(delay, now, [], ladder)
        # One transaction ID per copy: an answer names its socket's trial, nothing else.
        for _ in range(self.config.copies):
            heapq.heappush(self._server_due, now + delay + self._grace)
            tid = self._new_transaction_id()
            trial_id = self._open(TrialKind.PROBE, tid, now, probe)
            probe.trial_ids.append(trial_id)
            request = delayed_binding_request(tid, delay, software=self._software)
            events.append(OpenTrial(trial_id, request))
        self._probes.append(probe)

    def _launch_unless_covered(
        self, delay: float, tolerance: float, now: float, events: list[SearchEvent]
    ) -> None:
        if self._free_probes() < 1:
            return
        if any(abs(p.delay - delay) < tolerance for p in self._pending()):
            return
        self._launch(delay, now, events)

    @staticmethod
    def _asked_delay(trial: _Trial) -> float:
        if trial.probe is not None:
            return trial.probe.delay
        return trial.refresh.delay if trial.refresh is not None else 0.0

    def _abandon(self, probe: _Probe, events: list[SearchEvent]) -> None:
        probe.state = ProbeState.ABANDONED
        probe.settled = True
        self._close_probe(probe, events)

    def _close_probe(self, probe: _Probe, events: list[SearchEvent]) -> None:
        keep = None if self._mapping is None else self._mapping.trial_id
        self._close_ids([t for t in probe.trial_ids if t != keep], events)

    def _close_ids(self, ids: list[int], events: list[SearchEvent]) -> None:
        for trial_id in ids:
            if self._trials.pop(trial_id, None) is not None:
                events.append(CloseTrial(trial_id))

    def _finish(
        self, now: float, reason: str, events: list[SearchEvent], error: str | None = None
    ) -> list[SearchEvent]:
        if self._phase is Phase.SEARCH and error is None:
            self._search_s = now - self._t0
        for trial_id in list(self._trials):
            events.append(CloseTrial(trial_id))
        self._trials.clear()
        for probe in self._pending():
            probe.state = ProbeState.ABANDONED
        self._phase = Phase.DONE
        low = self.low
        high, confirmed = self._high(low)
        if not confirmed:
            high = None
        complete = (
            error is None and high is not None and high - low <= self.config.resolution_at(high)
        )
        refresh = self._best_refresh(high)
        inbound = None if refresh is None else refresh.answered
        mapping = self._mapping
        kept: bool | None = None
        idle: float | None = None
        if mapping is not None and mapping.kept is not None:
            idle = mapping.sent_at - mapping.idle_from
            if high is not None and idle > high:
                kept = mapping.kept
        records = tuple(
            ProbeRecord(p.delay, p.state.value)
            for p in sorted(self._probes, key=lambda p: (p.delay, p.started))
        )
        self._result = NatLifetimeResult(
            low_s=low,
            high_s=high,
            complete=complete,
            reason=reason,
            error=error,
            recommended_keepalive_s=recommended_keepalive(low) if error is None else None,
            mapped_port_kept=kept,
            mapping_idle_s=idle if kept is not None else None,
            inbound_refresh=inbound,
            refresh_delay_s=refresh.delay if inbound is not None and refresh else None,
            server_keepalives=refresh.keepalives if inbound is not None and refresh else 0,
            public_address=self._public,
            rtt_s=self._rtt,
            trials=self._opened,
            search_s=self._search_s,
            elapsed_s=now - self._t0,
            probes=records,
        )
        events.append(SearchFinished(self._result))
        return events


# -- this host's own conntrack ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConntrackTimeouts:
    """This host's conntrack timeouts in seconds (None: the sysctl is not there)."""

    udp: int | None
    udp_stream: int | None
    tcp_established: int | None

    @property
    def loaded(self) -> bool:
        return self.udp is not None or self.tcp_established is not None


@dataclass(frozen=True, slots=True)
class ConntrackAdvice:
    """What the timeouts mean for keep-alives: intervals to use and why, line by line."""

    udp_keepalive_s: float | None
    tcp_keepalive_s: float | None
    notes: tuple[str, ...]


def conntrack_advice(t: ConntrackTimeouts) -> ConntrackAdvice:
    """Explain a Linux box's conntrack timeouts for SIP keep-alives.

    On current kernels a UDP entry gets ``udp_timeout`` after each packet until traffic has
    gone both ways *and* the flow is older than 2 s; from then on every packet re-arms
    ``udp_timeout_stream``. A REGISTER and its 200 OK come well within 2 s, so the first
    keep-alive must come within ``udp_timeout``; later ones within the stream timeout.
    """
    if not t.loaded:
        return ConntrackAdvice(None, None, (
            "conntrack is not loaded on this host (no nf_conntrack sysctls): this host "
            "neither NATs nor tracks flows, so it sets no binding lifetime; the NATs and "
            "firewalls on the path still do (measure them with --server)",
        ))  # fmt: skip
    notes: list[str] = []
    udp_keepalive: float | None = None
    if t.udp is not None:
        notes.append(
            f"nf_conntrack_udp_timeout = {t.udp} s: a UDP binding that has only sent, or got "
            f"its answers within its first 2 s (a REGISTER and its 200 OK), is forgotten "
            f"{t.udp} s after its last packet"
        )
    if t.udp_stream is not None:
        notes.append(
            f"nf_conntrack_udp_timeout_stream = {t.udp_stream} s: once traffic went both ways "
            f"and the flow is older than 2 s, every packet, either way, re-arms this instead"
        )
    shortest = min((v for v in (t.udp, t.udp_stream) if v is not None), default=None)
    if shortest is not None:
        udp_keepalive = recommended_keepalive(float(shortest))
        if udp_keepalive is None:
            notes.append(f"a UDP binding lasts only {shortest} s: too short to keep alive")
        else:
            notes.append(
                f"SIP over UDP (CRLF, STUN or OPTIONS keep-alives, RFC 5626): an interval of "
                f"{udp_keepalive:g} s or less keeps the binding (80 % of {shortest} s less 1 s; "
                f"the first keep-alive after a REGISTER faces the {shortest} s timeout)"
            )
    tcp_keepalive: float | None = None
    if t.tcp_established is not None:
        tcp_keepalive = recommended_keepalive(float(t.tcp_established))
        # RFC 5626 §4.4.1: 120 s is the default upper bound for connection-oriented flows.
        below = (
            " (RFC 5626's 120 s for connections is well below)" if t.tcp_established > 150 else ""
        )
        notes.append(
            f"nf_conntrack_tcp_timeout_established = {_duration(t.tcp_established)}: an idle "
            f"SIP connection over TCP/TLS is forgotten after that; keep-alives (CRLF ping or "
            f"TCP_KEEPIDLE) every {_duration(tcp_keepalive or 0)} or less keep it{below}"
        )
    return ConntrackAdvice(udp_keepalive, tcp_keepalive, tuple(notes))


def _duration(seconds: float) -> str:
    if seconds >= 2 * 86400:
        return f"{seconds:g} s ({seconds / 86400:.1f} days)"
    if seconds >= 2 * 3600:
        return f"{seconds:g} s ({seconds / 3600:.1f} h)"
    return f"{seconds:g} s"
