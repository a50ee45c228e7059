"""Many non-INVITE client transactions sharing one TimerConfig, as ONE pure table.

Each transaction behaves exactly like ``ClientTransaction`` (RFC 3261 §17.1.2; the differential
test in tests/test_bulk.py drives both): Timer E from T1 doubling up to T2 (T2 once
Proceeding), Timer F or the ``retransmits`` cap (give up when the next transmission would be
due), Timer K (T4 on UDP, 0 on reliable transports), synthetic 408/503 (§8.1.3.1), matching by
top Via branch and CSeq method (§17.1.3).

Why a table rather than N machines on a heap: every transaction here has the same schedule, so
the due instants of the transactions waiting for their j-th retransmission are non-decreasing
in start order (each is ``max(previous + interval_j, now)``, both monotonic as long as ``now``
never goes back). One FIFO per retransmission stage therefore keeps them sorted: starting,
answering and timing out are O(1), with lazy deletion (an answered transaction stays in its
FIFO until it reaches the head and is dropped). Only Proceeding transactions (after a 1xx,
rare for OPTIONS) leave that order and sit in a small heap. A completed UDP transaction is
kept only as its key and Timer K expiry, to absorb retransmitted responses.

Time is an argument: ``now`` must never decrease between calls. The caller sends the first
transmission itself (``start``) and every retransmission ``handle_timer`` returns.

``lazy_timer_k``: Timer K is then not a timer the caller must run (``get_timer`` leaves it
out); a completed key is forgotten when the next ``start`` or ``handle_timer`` finds its
Timer K past, and a response after its Timer K is unmatched whether or not it was forgotten
yet. For a caller that keeps one loop timer per table (io/driver.py): with thousands of
transactions a second, every answer's Timer K would otherwise be a wake-up of its own.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

from sipalive.errors import LocalProtocolError
from sipalive.sip.message import Response
from sipalive.sip.transaction import Cause, TimerConfig, TransactionResult

T = TypeVar("T")

_PROCEEDING = -1  # ``stage`` of a transaction in the Proceeding heap
_DONE = -2  # ``stage`` of a finished transaction still sitting in a FIFO


class _Txn(Generic[T]):
    __slots__ = (
        "data",
        "deadline",
        "due",
        "key",
        "last_sent",
        "provisional_rtt",
        "retransmits",
        "stage",
        "started",
        "timer_e",
        "token",
    )

    def __init__(
        self, key: tuple[str, str], token: T, data: bytes, now: float, e: float, f: float
    ) -> None:
        self.key = key
        self.token = token
        self.data = data
        self.started = now
        self.last_sent = now
        self.retransmits = 0
        self.provisional_rtt: float | None = None
        self.timer_e = e  # next retransmission (inf on reliable transports)
        self.deadline = f  # Timer F, or the give-up instant of the retransmission cap
        self.due = e if e < f else f  # what get_timer() of a ClientTransaction would say
        self.stage = 0  # retransmissions done, while Trying


class ClientTable(Generic[T]):
    """Non-INVITE client transactions on one transport kind (``reliable``) and one TimerConfig.

    ``token`` is the caller's handle for a transaction (a target, a sequence number); it comes
    back with every retransmission and result."""

    def __init__(
        self,
        timers: TimerConfig,
        *,
        reliable: bool,
        lazy_timer_k: bool = False,
        keep: Callable[[T], object] | None = None,
    ) -> None:
        """``keep(token)``: what a completed UDP transaction keeps of its token for Timer K
        (what :meth:`kept` returns); the token itself by default."""
        self.timers = timers
        self.reliable = reliable
        self.lazy_timer_k = lazy_timer_k
        self._keep = keep
        self._active: dict[tuple[str, str], _Txn[T]] = {}
        self._stages: list[deque[_Txn[T]]] = [deque()]
        self._intervals = [timers.t1]  # Timer E interval after j retransmissions while Trying
        self._proceeding: list[tuple[float, int, _Txn[T]]] = []
        self._pushes = 0
        self._lifetime = timers.give_up_after() if reliable else timers.timer_f
        # key -> (Timer K expiry, what ``keep`` keeps of the token), UDP only
        self._completed: dict[tuple[str, str], tuple[float, object]] = {}
        self._timer_k: deque[tuple[float, tuple[str, str]]] = deque()
        self.unmatched = 0  # responses that matched no transaction
        self.absorbed = 0  # retransmitted responses absorbed in Completed

    def __len__(self) -> int:
        """Transactions in flight (Trying or Proceeding)."""
        return len(self._active)

    def start(self, branch: str, method: str, data: bytes, now: float, token: T) -> float:
        """A new transaction whose first transmission of ``data`` the caller makes at ``now``;
        ``branch`` and ``method`` are its top Via branch and CSeq method. Returns its first
        timer (what ``get_timer`` says for it)."""
        if method in ("INVITE", "ACK"):
            raise LocalProtocolError(f"{method} is not a non-INVITE transaction")
        if not branch:
            raise LocalProtocolError("request has no Via branch")
        key = (branch, method)
        if key in self._active:
            raise LocalProtocolError(f"transaction {branch} {method} already in flight")
        if self.lazy_timer_k:
            self._expire_timer_k(now)
        self._completed.pop(key, None)
        e = now + self.timers.t1 if not self.reliable else float("inf")
        txn = _Txn(key, token, data, now, e, now + self._lifetime)
        self._active[key] = txn
        self._stages[0].append(txn)
        return txn.due

    def receive(
        self,
        branch: str | None,
        method: str,
        status: int,
        reason: str,
        now: float,
        response: Response | None = None,
    ) -> tuple[T, TransactionResult] | None:
        """A response with this top Via branch and CSeq method. Returns the transaction's
        result if it was a final response to a transaction in flight, else None (a 1xx, a
        retransmission absorbed by Timer K, or no such transaction)."""
        key = (branch or "", method)
        txn = self._active.get(key)
        if txn is None:
            if self.kept(key[0], method, now) is not None:
                self.absorbed += 1
            else:
                self.unmatched += 1
            return None
        if status < 200:
            if txn.provisional_rtt is None:
                txn.provisional_rtt = now - txn.started
            if txn.stage != _PROCEEDING and not self.reliable:
                # §17.1.2.2: in Proceeding, retransmit every T2 (a reliable transport has no
                # Timer E, so a 1xx changes none of its timers)
                last = txn.last_sent + self.timers.t2
                txn.timer_e = last if last > now else now
                txn.due = txn.timer_e if txn.timer_e < txn.deadline else txn.deadline
                txn.stage = _PROCEEDING
                self._pushes += 1
                heapq.heappush(self._proceeding, (txn.due, self._pushes, txn))
            return None
        del self._active[key]
        stage = txn.stage
        txn.stage = _DONE
        if stage >= 0:
            # answers come mostly in start order: drop the answered ones at the head of the
            # FIFO now, so a transaction dies young (the collector never promotes it)
            queue = self._stages[stage]
            while queue and queue[0].stage != stage:
                queue.popleft()
        if not self.reliable:
            expiry = now + self.timers.t4
            keep = self._keep
            self._completed[key] = (expiry, txn.token if keep is None else keep(txn.token))
            self._timer_k.append((expiry, key))
        result = TransactionResult(
            status,
            reason,
            Cause.RESPONSE,
            response,
            txn.started,
            now,
            txn.retransmits,
            now - txn.started,
            now - txn.last_sent,
            txn.provisional_rtt,
        )
        return txn.token, result

    def token_of(self, branch: str, method: str) -> T | None:
        """The token of the transaction in flight with this key, or None."""
        txn = self._active.get((branch, method))
        return None if txn is None else txn.token

    def kept(self, branch: str, method: str, now: float) -> object | None:
        """What was kept of the token (``keep``) of a completed transaction whose Timer K has
        not fired by ``now`` (its retransmitted responses are absorbed), or None."""
        entry = self._completed.get((branch, method))
        if entry is None or (self.lazy_timer_k and entry[0] <= now):
            return None
        return entry[1]

    def in_flight(self) -> list[tuple[str, str, T]]:
        """(branch, method, token) of every transaction in flight."""
        return [(key[0], key[1], txn.token) for key, txn in self._active.items()]

    def fail(
        self, branch: str, method: str, now: float, detail: str
    ) -> tuple[T, TransactionResult] | None:
        """The transport failed for this one transaction (an ICMP error for its request, a
        send that raised): a 503 now (§8.1.3.1). None if it is not in flight."""
        txn = self._active.pop((branch, method), None)
        if txn is None:
            return None
        return self._fail(txn, now, 503, Cause.TRANSPORT_ERROR, detail)

    def transport_error(self, now: float, detail: str) -> list[tuple[T, TransactionResult]]:
        """RFC 3261 §17.1.4 / §8.1.3.1: the transport failed; every transaction in flight
        ends with a 503 now."""
        done = [
            self._fail(txn, now, 503, Cause.TRANSPORT_ERROR, detail)
            for txn in self._active.values()
        ]
        self._active.clear()
        return done

    def get_timer(self) -> float | None:
        """The next instant ``handle_timer`` has something to do, or None."""
        best: float | None = None
        for j, queue in enumerate(self._stages):
            while queue and queue[0].stage != j:
                queue.popleft()  # answered, or moved to Proceeding
            if queue and (best is None or queue[0].due < best):
                best = queue[0].due
        heap = self._proceeding
        while heap and heap[0][2].stage != _PROCEEDING:
            heapq.heappop(heap)
        if heap and (best is None or heap[0][0] < best):
            best = heap[0][0]
        if self.lazy_timer_k:
            return best
        timer_k = self._timer_k
        while timer_k and not self._is_current(timer_k[0]):
            timer_k.popleft()  # the key was started again
        if timer_k and (best is None or timer_k[0][0] < best):
            best = timer_k[0][0]
        return best

    def _is_current(self, entry: tuple[float, tuple[str, str]]) -> bool:
        completed = self._completed.get(entry[1])
        return completed is not None and completed[0] == entry[0]

    def _expire_timer_k(self, now: float) -> None:
        timer_k = self._timer_k
        while timer_k and timer_k[0][0] <= now:
            entry = timer_k.popleft()
            if self._is_current(entry):
                del self._completed[entry[1]]

    def handle_timer(
        self, now: float
    ) -> tuple[list[tuple[T, bytes]], list[tuple[T, TransactionResult]]]:
        """Run every timer due at ``now``: the retransmissions to send, and the transactions
        that gave up (408)."""
        sends: list[tuple[T, bytes]] = []
        done: list[tuple[T, TransactionResult]] = []
        stages = self._stages
        j = 0
        while j < len(stages):  # a retransmission may append the next stage
            queue = stages[j]
            while queue:
                txn = queue[0]
                if txn.stage != j:
                    queue.popleft()
                    continue
                if txn.due > now:
                    break
                queue.popleft()
                if self._expire(txn, now, done):
                    sends.append((txn.token, txn.data))
                    txn.stage = j + 1
                    if j + 1 == len(stages):
                        stages.append(deque())
                    stages[j + 1].append(txn)
            j += 1
        heap = self._proceeding
        while heap and heap[0][0] <= now:
            _, _, txn = heapq.heappop(heap)
            if txn.stage == _PROCEEDING and self._expire(txn, now, done):
                sends.append((txn.token, txn.data))
                self._pushes += 1
                heapq.heappush(heap, (txn.due, self._pushes, txn))
        self._expire_timer_k(now)
        return sends, done

    def _expire(self, txn: _Txn[T], now: float, done: list[tuple[T, TransactionResult]]) -> bool:
        """A due transaction: give up (False, result appended to ``done``) or retransmit
        (True, its timers moved on)."""
        cap = self.timers.retransmits
        if now >= txn.deadline or (cap is not None and txn.retransmits >= cap):
            del self._active[txn.key]
            txn.stage = _DONE
            done.append(self._fail(txn, now, 408, Cause.TIMEOUT, None))
            return False
        txn.retransmits += 1
        txn.last_sent = now
        if txn.stage == _PROCEEDING:
            interval = self.timers.t2
        else:
            intervals = self._intervals
            if txn.stage + 1 == len(intervals):
                intervals.append(min(2 * intervals[txn.stage], self.timers.t2))
            interval = intervals[txn.stage + 1]
        # anchor on the scheduled instant, not on a late ``now``, so lag does not drift
        e = txn.timer_e + interval
        txn.timer_e = e if e > now else now
        txn.due = txn.timer_e if txn.timer_e < txn.deadline else txn.deadline
        return True

    @staticmethod
    def _fail(
        txn: _Txn[T], now: float, status: int, cause: str, error: str | None
    ) -> tuple[T, TransactionResult]:
        txn.stage = _DONE
        result = TransactionResult.failure(
            status,
            cause,
            txn.started,
            now,
            error,
            retransmits=txn.retransmits,
            provisional_rtt=txn.provisional_rtt,
        )
        return txn.token, result
