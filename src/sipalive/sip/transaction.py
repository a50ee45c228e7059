"""Non-INVITE client transaction, RFC 3261 §17.1.2, as a pure machine driven by ``now``.

    start ──► TRYING ──1xx──► PROCEEDING
                │  \\            │
          final │   Timer F /   │ final
                ▼   give-up /   ▼
            COMPLETED  transport error ──► TERMINATED (synthetic 408 / 503, §8.1.3.1)
                │ Timer K (T4 on UDP, 0 on reliable transports)
                ▼
           TERMINATED

Timer E starts at T1 and doubles up to T2; in PROCEEDING it is T2 (§17.1.2.2). Timer F is
64*T1 unless ``timeout`` says otherwise. ``retransmits`` (sipsak's ``-D`` idea) caps the
retransmissions after the first transmission: the transaction gives up when the next one
would be due, so ``t1=0.1, retransmits=3`` sends at 0, 0.1, 0.3, 0.7 and gives up at 1.5.
A reliable transport retransmits nothing and gives up at that same deadline.
"""

from __future__ import annotations

from sipalive.errors import ConfigError, LocalProtocolError
from sipalive.sip.message import Request, Response
from sipalive.sip.record import Record


class TimerConfig(Record):
    """RFC 3261 §17.1.2.2 / Table 4 timers, in seconds, with the RFC defaults.

    ``timeout`` is Timer F (None: 64*T1); ``retransmits`` None retransmits until Timer F."""

    __slots__ = ("retransmits", "t1", "t2", "t4", "timeout")
    t1: float
    t2: float
    t4: float
    timeout: float | None
    retransmits: int | None

    def __init__(
        self,
        t1: float = 0.5,
        t2: float = 4.0,
        t4: float = 5.0,
        timeout: float | None = None,
        retransmits: int | None = None,
    ) -> None:
        self._set(t1=t1, t2=t2, t4=t4, timeout=timeout, retransmits=retransmits)
        for name in ("t1", "t2", "t4"):
            value = getattr(self, name)
            if not value > 0:
                raise ConfigError(name, f"must be > 0, got {value}")
        if self.t2 < self.t1:
            raise ConfigError("t2", f"must be >= t1 ({self.t1}), got {self.t2}")
        if self.timeout is not None and not self.timeout > 0:
            raise ConfigError("timeout", f"must be > 0, got {self.timeout}")
        if self.retransmits is not None and self.retransmits < 0:
            raise ConfigError("retransmits", f"must be >= 0, got {self.retransmits}")

    @property
    def timer_f(self) -> float:
        return 64 * self.t1 if self.timeout is None else self.timeout

    def send_offsets(self) -> list[float]:
        """When an unanswered UDP request is (re)transmitted, relative to the first send."""
        offsets = [0.0]
        at, interval = 0.0, self.t1
        while True:
            at += interval
            interval = min(2 * interval, self.t2)
            if at >= self.timer_f - 1e-9:
                return offsets
            if self.retransmits is not None and len(offsets) > self.retransmits:
                return offsets
            offsets.append(at)

    def give_up_after(self) -> float:
        """When an unanswered transaction ends, relative to the first send."""
        if self.retransmits is None:
            return self.timer_f
        at, interval = 0.0, self.t1
        for _ in range(self.retransmits):
            at += interval
            interval = min(2 * interval, self.t2)
        return min(self.timer_f, at + interval)


# States and causes are string constants, not Enums: ``enum`` (with functools and collections)
# costs more start-up time than a whole ``sipalive check`` may take (STYLE: fast paths stay
# lean). The strings are also what JSON output and logs show.


class TransactionState:
    INITIAL = "initial"
    TRYING = "trying"
    PROCEEDING = "proceeding"
    COMPLETED = "completed"
    TERMINATED = "terminated"


class Cause:
    RESPONSE = "response"
    TIMEOUT = "timeout"
    TRANSPORT_ERROR = "transport-error"


class TransactionResult(Record):
    """What the transaction user learns. ``status`` is 408 on timeout and 503 on a transport
    error (RFC 3261 §8.1.3.1), then ``response`` is None; it is None too when the caller
    matched the final response without parsing it (``receive_final``). ``rtt_first`` runs
    from the first transmission to the final response, ``rtt_last`` from the last one (Karn:
    ambiguous when ``retransmits`` > 0)."""

    __slots__ = (
        "cause",
        "error",
        "finished",
        "provisional_rtt",
        "reason",
        "response",
        "retransmits",
        "rtt_first",
        "rtt_last",
        "started",
        "status",
    )  # fmt: skip
    status: int
    reason: str
    cause: str  # a Cause constant
    response: Response | None
    started: float
    finished: float
    retransmits: int
    rtt_first: float | None
    rtt_last: float | None
    provisional_rtt: float | None
    error: str | None

    def __init__(
        self,
        status: int,
        reason: str,
        cause: str,
        response: Response | None,
        started: float,
        finished: float,
        retransmits: int,
        rtt_first: float | None,
        rtt_last: float | None,
        provisional_rtt: float | None = None,
        error: str | None = None,
    ) -> None:
        # one per probe (the monitor makes thousands a second): set directly, not by _set
        init = object.__setattr__
        init(self, "status", status)
        init(self, "reason", reason)
        init(self, "cause", cause)
        init(self, "response", response)
        init(self, "started", started)
        init(self, "finished", finished)
        init(self, "retransmits", retransmits)
        init(self, "rtt_first", rtt_first)
        init(self, "rtt_last", rtt_last)
        init(self, "provisional_rtt", provisional_rtt)
        init(self, "error", error)

    @classmethod
    def failure(
        cls,
        status: int,
        cause: str,
        started: float,
        finished: float,
        error: str | None,
        *,
        retransmits: int = 0,
        provisional_rtt: float | None = None,
    ) -> TransactionResult:
        """A synthetic end without a final response: 408 on a timeout, 503 on a transport
        error (RFC 3261 §8.1.3.1)."""
        reason = "Request Timeout" if status == 408 else "Service Unavailable"
        return cls(
            status, reason, cause, None, started, finished, retransmits, None, None,
            provisional_rtt, error,
        )  # fmt: skip

    @property
    def duration(self) -> float:
        return self.finished - self.started


class Transmit(Record):
    """Send ``data``; ``retransmission`` is 0 for the first transmission."""

    __slots__ = ("data", "retransmission")
    data: bytes
    retransmission: int

    def __init__(self, data: bytes, retransmission: int) -> None:
        self._set(data=data, retransmission=retransmission)


class Provisional(Record):
    __slots__ = ("response",)
    response: Response

    def __init__(self, response: Response) -> None:
        self._set(response=response)


class Completed(Record):
    __slots__ = ("result",)
    result: TransactionResult

    def __init__(self, result: TransactionResult) -> None:
        self._set(result=result)


class Terminated(Record):
    __slots__ = ()


Event = Transmit | Provisional | Completed | Terminated


class ClientTransaction:
    """A non-INVITE client transaction. Feed it time, responses and transport errors."""

    def __init__(self, request: Request, *, reliable: bool, timers: TimerConfig) -> None:
        self._setup(request.encode(), request.branch or "", request.method, reliable, timers)

    @classmethod
    def from_bytes(
        cls, data: bytes, *, branch: str, method: str, reliable: bool, timers: TimerConfig
    ) -> ClientTransaction:
        """For a request the caller encoded itself (a template filled per probe): ``branch``
        and ``method`` must be those of ``data``'s top Via and CSeq."""
        txn = cls.__new__(cls)
        txn._setup(data, branch, method, reliable, timers)
        return txn

    def _setup(
        self, data: bytes, branch: str, method: str, reliable: bool, timers: TimerConfig
    ) -> None:
        if method in ("INVITE", "ACK"):
            raise LocalProtocolError(f"{method} is not a non-INVITE transaction")
        if not branch:
            raise LocalProtocolError("request has no Via branch")
        self.data = data
        self.branch = branch
        self.method = method
        self.reliable = reliable
        self.timers = timers
        self.state: str = TransactionState.INITIAL
        self.result: TransactionResult | None = None
        self.retransmits = 0
        self._started = 0.0
        self._last_sent = 0.0
        self._provisional_rtt: float | None = None
        self._timer_e: float | None = None
        self._interval = timers.t1
        self._deadline = 0.0
        self._timer_k: float | None = None

    def key(self) -> tuple[str, str]:
        return (self.branch, self.method)

    def matches(self, response: Response) -> bool:
        """RFC 3261 §17.1.3: top Via branch and CSeq method."""
        return response.branch == self.branch and response.cseq.method == self.method

    def start(self, now: float) -> list[Event]:
        if self.state != TransactionState.INITIAL:
            raise LocalProtocolError("transaction already started")
        self.state = TransactionState.TRYING
        self._started = self._last_sent = now
        if self.reliable:
            self._deadline = now + self.timers.give_up_after()
        else:
            self._deadline = now + self.timers.timer_f
            self._timer_e = now + self.timers.t1
        return [Transmit(self.data, 0)]

    def get_timer(self) -> float | None:
        if self.state in (TransactionState.TRYING, TransactionState.PROCEEDING):
            if self._timer_e is not None and self._timer_e < self._deadline:
                return self._timer_e
            return self._deadline
        if self.state == TransactionState.COMPLETED:
            return self._timer_k
        return None

    def handle_timer(self, now: float) -> list[Event]:
        events: list[Event] = []
        if self.state in (TransactionState.TRYING, TransactionState.PROCEEDING):
            if now >= self._deadline:
                return self._fail(now, 408, Cause.TIMEOUT, None)
            if self._timer_e is not None and now >= self._timer_e:
                cap = self.timers.retransmits
                if cap is not None and self.retransmits >= cap:
                    # the next transmission would be due now: give up (sipsak -D semantics)
                    return self._fail(now, 408, Cause.TIMEOUT, None)
                self.retransmits += 1
                self._last_sent = now
                if self.state == TransactionState.PROCEEDING:
                    self._interval = self.timers.t2
                else:
                    self._interval = min(2 * self._interval, self.timers.t2)
                # anchor on the scheduled instant, not on a late ``now``, so lag does not drift
                self._timer_e = max(self._timer_e + self._interval, now)
                events.append(Transmit(self.data, self.retransmits))
        elif (
            self.state == TransactionState.COMPLETED
            and self._timer_k is not None
            and now >= self._timer_k
        ):
            self.state = TransactionState.TERMINATED
            events.append(Terminated())
        return events

    def receive_response(self, response: Response, now: float) -> list[Event]:
        if not self.matches(response):
            raise LocalProtocolError("response does not match this transaction")
        if self.state not in (TransactionState.TRYING, TransactionState.PROCEEDING):
            return []  # COMPLETED absorbs retransmitted finals (§17.1.2.2)
        if response.status < 200:
            if self._provisional_rtt is None:
                self._provisional_rtt = now - self._started
            if self.state == TransactionState.TRYING:
                self.state = TransactionState.PROCEEDING
                if self._timer_e is not None:
                    # §17.1.2.2: in Proceeding, retransmit every T2
                    self._timer_e = max(self._last_sent + self.timers.t2, now)
            return [Provisional(response)]
        return self._final(response.status, response.reason, response, now)

    def receive_final(self, status: int, reason: str, now: float) -> list[Event]:
        """``receive_response`` for a final response (200-699) the caller matched to this
        transaction and did not parse (sip/peek.py): the same events, but the result's
        ``response`` is None."""
        if not 200 <= status <= 699:
            raise LocalProtocolError(f"not a final status: {status}")
        if self.state not in (TransactionState.TRYING, TransactionState.PROCEEDING):
            return []  # COMPLETED absorbs retransmitted finals (§17.1.2.2)
        return self._final(status, reason, None, now)

    def _final(
        self, status: int, reason: str, response: Response | None, now: float
    ) -> list[Event]:
        self.result = TransactionResult(
            status=status,
            reason=reason,
            cause=Cause.RESPONSE,
            response=response,
            started=self._started,
            finished=now,
            retransmits=self.retransmits,
            rtt_first=now - self._started,
            rtt_last=now - self._last_sent,
            provisional_rtt=self._provisional_rtt,
        )
        events: list[Event] = [Completed(self.result)]
        if self.reliable:
            self.state = TransactionState.TERMINATED
            events.append(Terminated())
        else:
            self.state = TransactionState.COMPLETED
            self._timer_k = now + self.timers.t4
        return events

    def transport_error(self, now: float, detail: str) -> list[Event]:
        """RFC 3261 §17.1.4 / §8.1.3.1: a transport failure is a 503 at once."""
        if self.state not in (TransactionState.TRYING, TransactionState.PROCEEDING):
            return []
        return self._fail(now, 503, Cause.TRANSPORT_ERROR, detail)

    def _fail(self, now: float, status: int, cause: str, error: str | None) -> list[Event]:
        self.result = TransactionResult.failure(
            status,
            cause,
            self._started,
            now,
            error,
            retransmits=self.retransmits,
            provisional_rtt=self._provisional_rtt,
        )
        self.state = TransactionState.TERMINATED
        return [Completed(self.result), Terminated()]
