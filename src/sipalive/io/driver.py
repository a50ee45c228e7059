"""Runs many pure client transactions on an asyncio loop with ONE timer.

Transactions sit in a deadline heap with lazy deletion (STYLE habit 8): an entry whose
transaction has moved on is skipped when it surfaces. Responses are dispatched by
(branch, CSeq method) (RFC 3261 §17.1.3); a response that matches nothing is counted and
dropped, so spoofed or late answers change nothing.

A UDP transaction that got its final response stays COMPLETED for Timer K (T4, 5 s) only to
absorb retransmitted finals (§17.1.2.2), and nothing it holds is needed for that: the driver
then keeps only its key, its Timer K expiry and its flow (for the source check), not the
transaction, its result and the parsed response. At 100k targets that is ~8000 transactions
of a few kB each that the collector no longer walks.

Many transactions that share one TimerConfig (the monitor's UDP probes) may instead run in a
:class:`Table`: one :class:`~sipalive.sip.bulk.ClientTable` (no machine, event list, result
record or heap entry per transaction: a table entry and a FIFO slot) with one loop timer of
its own. The driver routes responses and errors to tables as to single transactions.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Container, Sequence
from typing import Any, Generic, Protocol, TypeVar, cast

from sipalive import clock
from sipalive.errors import TransportError
from sipalive.io.timers import TimerWheel
from sipalive.sip.bulk import ClientTable
from sipalive.sip.message import Response
from sipalive.sip.transaction import (
    ClientTransaction,
    Completed,
    Provisional,
    TimerConfig,
    TransactionResult,
    TransactionState,
    Transmit,
)

Key = tuple[str, str]
# a Table's token: a tuple whose first item is the transaction's Flow, the rest the caller's
K = TypeVar("K", bound=tuple[Any, ...])


class Flow(Protocol):
    """Something that can carry octets to the peer."""

    def send(self, data: bytes) -> None: ...


def _accepts(flow: Flow, source: tuple[str, int]) -> bool:
    """A flow on a shared socket says whether a response may come from ``source``; a
    connected socket or a stream only ever receives from its peer."""
    accepts = getattr(flow, "accepts", None)
    return True if accepts is None else bool(accepts(source))


class _Pending:
    __slots__ = ("flow", "needs", "on_done", "on_provisional", "txn")

    def __init__(
        self,
        txn: ClientTransaction,
        flow: Flow,
        on_done: Callable[[TransactionResult], None],
        on_provisional: Callable[[Response], None] | None,
        needs: Container[int] | None,
    ) -> None:
        self.txn = txn
        self.flow = flow
        self.on_done = on_done
        self.on_provisional = on_provisional
        self.needs = needs


def _kept(token: tuple[Any, ...]) -> object:
    """What a completed UDP transaction of a Table keeps for Timer K, to check the source of
    a retransmitted final: its peer's address when the flow has one (a tuple of a str and an
    int, which the collector stops tracking), else the flow. Keeping the token would keep a
    tracked object per answer for T4, and at thousands of answers a second those filled the
    oldest generation: a full collection every ~30 s, each holding the loop 50-90 ms."""
    flow = token[0]
    addr = getattr(flow, "addr", None)
    return addr if isinstance(addr, tuple) else flow


class Table(Generic[K]):
    """Transactions of one TimerConfig and one kind of transport in a ClientTable, on one
    loop timer; made by :meth:`TransactionDriver.table`, fed by :meth:`TransactionDriver.send`.

    A token is the caller's tuple ``(flow, ...)``: the flow carries the retransmissions and
    says whether a response may come from its source. ``on_done(token, result)`` is called
    once per transaction, from within the call that ends it, as for ``begin``."""

    __slots__ = ("_armed_for", "_handle", "driver", "needs", "on_done", "table")

    def __init__(
        self,
        driver: TransactionDriver,
        timers: TimerConfig,
        reliable: bool,
        on_done: Callable[[K, TransactionResult], None],
        needs: Container[int] | None,
    ) -> None:
        self.driver = driver
        self.table: ClientTable[K] = ClientTable(
            timers, reliable=reliable, lazy_timer_k=True, keep=_kept
        )
        self.on_done = on_done
        self.needs = needs
        self._handle: asyncio.TimerHandle | None = None
        self._armed_for: float | None = None

    def __len__(self) -> int:
        return len(self.table)

    def _arm(self) -> None:
        when = self.table.get_timer()
        if when is None:
            return
        if self._armed_for is not None:
            if self._armed_for <= when:
                return  # that timer comes first and re-arms
            assert self._handle is not None
            self._handle.cancel()
        self._armed_for = when
        self._handle = self.driver.loop.call_later(max(0.0, when - clock.monotonic()), self._fire)

    def _fire(self) -> None:
        self._handle = self._armed_for = None
        now = clock.monotonic()  # a timer a little early finds nothing due and re-arms
        sends, done = self.table.handle_timer(now)
        for token, data in sends:
            try:
                token[0].send(data)
            except (OSError, TransportError) as exc:
                self._send_failed(token, now, exc)
        for token, result in done:
            self.on_done(token, result)
        self._arm()

    def send(self, token: K, branch: str, method: str, data: bytes) -> None:
        """Start a transaction (``branch`` and ``method`` are those of the request ``data``)
        and send it on ``token[0]``; a send that raises ends it at once (503)."""
        now = clock.monotonic()
        due = self.table.start(branch, method, data, now, token)
        try:
            token[0].send(data)
        except (OSError, TransportError) as exc:
            self.fail(branch, method, clock.monotonic(), str(exc))
            return
        if self._armed_for is None or due < self._armed_for:
            self._arm()

    def absorbs(self, branch: str, method: str, source: tuple[str, int] | None, now: float) -> bool:
        """Whether a completed transaction (Timer K running) of this key absorbs a response
        from ``source`` (None: from its flow)."""
        kept = self.table.kept(branch, method, now)
        if kept is None:
            return False
        if source is None:
            return True
        if isinstance(kept, tuple):  # the peer's address (_kept)
            return kept == source
        return _accepts(cast(Flow, kept), source)

    def _send_failed(self, token: K, now: float, exc: Exception) -> None:
        """A retransmission could not be sent: that transaction fails now (rare: a scan)."""
        for branch, method, t in self.table.in_flight():
            if t is token:
                self.fail(branch, method, now, str(exc))
                return

    def fail(self, branch: str, method: str, now: float, detail: str) -> None:
        got = self.table.fail(branch, method, now, detail)
        if got is not None:
            self.on_done(*got)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = self._armed_for = None


class TransactionDriver:
    """Starts client transactions, routes responses and errors to them, and runs their
    timers on one TimerWheel (one loop timer for all of them)."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.loop = loop or asyncio.get_running_loop()
        self._pending: dict[Key, _Pending] = {}
        # COMPLETED UDP transactions (Timer K running): key -> (Timer K expiry, flow), and the
        # keys in the order they completed, to forget the expired ones as time passes
        self._completed: dict[Key, tuple[float, Flow]] = {}
        self._completed_order: deque[Key] = deque()
        self._wheel = TimerWheel(self.loop)
        self._tables: list[Table[Any]] = []
        self.unmatched = 0

    def __len__(self) -> int:
        return len(self._pending) + sum(len(t) for t in self._tables)

    def table(
        self,
        timers: TimerConfig,
        on_done: Callable[[K, TransactionResult], None],
        *,
        reliable: bool = False,
        needs_response: Container[int] | None = None,
    ) -> Table[K]:
        """A new :class:`Table` for transactions with these timers; ``needs_response`` as
        for :meth:`begin`. Tables live as long as the driver: make one per TimerConfig."""
        table: Table[K] = Table(self, timers, reliable, on_done, needs_response)
        self._tables.append(table)
        return table

    def _in_table(self, branch: str, method: str) -> tuple[Table[Any], Any] | None:
        """The table and token of the transaction in flight in a Table with this key."""
        for table in self._tables:
            token = table.table.token_of(branch, method)
            if token is not None:
                return table, token
        return None

    def start(
        self,
        txn: ClientTransaction,
        flow: Flow,
        on_provisional: Callable[[Response], None] | None = None,
    ) -> asyncio.Future[TransactionResult]:
        """Start ``txn`` on ``flow``; the future gets its result."""
        future: asyncio.Future[TransactionResult] = self.loop.create_future()

        def done(result: TransactionResult) -> None:
            if not future.done():
                future.set_result(result)

        self.begin(txn, flow, done, on_provisional)
        return future

    def begin(
        self,
        txn: ClientTransaction,
        flow: Flow,
        on_done: Callable[[TransactionResult], None],
        on_provisional: Callable[[Response], None] | None = None,
        needs_response: Container[int] | None = None,
    ) -> None:
        """:meth:`start` without a future, for the monitor's thousands of probes a second:
        ``on_done(result)`` is called once, from within the call that completes the
        transaction (a response, a timer, a transport error; even ``begin`` itself if the
        first send fails), so it must not expect to run after the caller of ``begin``.

        ``needs_response``: the final statuses whose parsed response the caller reads
        (``result.response``); for any other final status an endpoint that peeks
        (:meth:`on_peek`) may complete the transaction without parsing, and
        ``result.response`` is then None. None: every final is parsed."""
        pending = _Pending(txn, flow, on_done, on_provisional, needs_response)
        now = clock.monotonic()
        self._expire(now)
        key = txn.key()
        if self._completed.pop(key, None) is not None:
            self._completed_order.remove(key)  # a branch reused within T4: the new one wins
        self._pending[key] = pending
        events = txn.start(now)
        self._wheel.add(txn, lambda evs: self._apply(pending, evs, from_timer=True))
        self._apply(pending, events, from_timer=True)

    def on_response(self, response: Response, source: tuple[str, int] | None = None) -> bool:
        """Hand a parsed response to its transaction; False if none matches (wrong branch, or
        from another address than the request went to)."""
        key = (response.branch or "", response.cseq.method)
        pending = self._pending.get(key)
        now = clock.monotonic()
        if pending is None:
            found = self._in_table(*key)
            if found is not None:
                table, token = found
                if source is not None and not _accepts(token[0], source):
                    self.unmatched += 1
                    return False
                got = table.table.receive(*key, response.status, response.reason, now, response)
                if got is not None:
                    table.on_done(*got)
                return True
            if self._absorbs(key, source, now):
                return True  # a retransmitted final, absorbed in COMPLETED (§17.1.2.2)
            self.unmatched += 1
            return False
        if source is not None and not _accepts(pending.flow, source):
            self.unmatched += 1
            return False
        self._apply(pending, pending.txn.receive_response(response, now))
        return True

    def on_peek(
        self, branch: str, method: str, status: int, reason: str, source: tuple[str, int]
    ) -> bool | None:
        """A response seen through sip/peek.py (the values ``parse_message`` would give):
        what :meth:`on_response` would return, or None if the transaction wants the parsed
        response (a provisional, a status its caller reads): parse it and call that."""
        key = (branch, method)
        pending = self._pending.get(key)
        now = clock.monotonic()
        if pending is None:
            found = self._in_table(branch, method)
            if found is not None:
                table, token = found
                if not _accepts(token[0], source):
                    self.unmatched += 1
                    return False
                needs = table.needs
                if needs is None or status < 200 or status in needs:
                    return None
                got = table.table.receive(branch, method, status, reason, now)
                if got is not None:
                    table.on_done(*got)
                return True
            if self._absorbs(key, source, now):
                return True
            self.unmatched += 1
            return False
        if not _accepts(pending.flow, source):
            self.unmatched += 1
            return False
        needs = pending.needs
        if needs is None or status < 200 or status in needs:
            return None
        self._apply(pending, pending.txn.receive_final(status, reason, now))
        return True

    def _absorbs(self, key: Key, source: tuple[str, int] | None, now: float) -> bool:
        """Whether ``key`` names a COMPLETED transaction (Timer K not yet fired) whose flow
        accepts ``source``: what ``receive_response`` / ``transport_error`` would ignore."""
        entry = self._completed.get(key)
        if entry is None or entry[0] <= now:
            return any(table.absorbs(*key, source, now) for table in self._tables)
        return source is None or _accepts(entry[1], source)

    def _expire(self, now: float) -> None:
        """Timer K fired for the oldest COMPLETED keys: forget them (TERMINATED)."""
        completed = self._completed
        order = self._completed_order
        while order:
            entry = completed.get(order[0])
            if entry is not None and entry[0] > now:
                return
            key = order.popleft()
            if entry is not None:
                del completed[key]

    def on_transport_error(self, flow: Flow, detail: str) -> None:
        """Every transaction on ``flow`` fails now (503)."""
        now = clock.monotonic()
        for pending in [p for p in self._pending.values() if p.flow is flow]:
            self._apply(pending, pending.txn.transport_error(now, detail))
        for table in self._tables:
            for branch, method, token in table.table.in_flight():
                if token[0] is flow:
                    table.fail(branch, method, now, detail)

    def on_transport_error_for(
        self, branch: str, method: str, dest: tuple[str, int], detail: str
    ) -> bool:
        """An ICMP error for our datagram (``method`` with this ``branch``) sent to ``dest``."""
        pending = self._pending.get((branch, method))
        if pending is None:
            found = self._in_table(branch, method)
            if found is None:
                return self._absorbs((branch, method), dest, clock.monotonic())
            table, token = found
            if not _accepts(token[0], dest):
                return False
            table.fail(branch, method, clock.monotonic(), detail)
            return True
        if not _accepts(pending.flow, dest):
            return False
        self._apply(pending, pending.txn.transport_error(clock.monotonic(), detail))
        return True

    def cancel_all(self, detail: str = "cancelled") -> None:
        now = clock.monotonic()
        for pending in list(self._pending.values()):
            self._apply(pending, pending.txn.transport_error(now, detail))
        for table in self._tables:
            for token, result in table.table.transport_error(now, detail):
                table.on_done(token, result)
            table.close()

    def _apply(self, pending: _Pending, events: Sequence[object], from_timer: bool = False) -> None:
        txn = pending.txn
        for event in events:
            if isinstance(event, Transmit):
                try:
                    pending.flow.send(event.data)
                except (OSError, TransportError) as exc:
                    self._apply(pending, txn.transport_error(clock.monotonic(), str(exc)))
                    return
            elif isinstance(event, Completed):
                pending.on_done(event.result)
            elif isinstance(event, Provisional) and pending.on_provisional is not None:
                pending.on_provisional(event.response)
        timer = txn.get_timer()
        if timer is None or txn.state == TransactionState.COMPLETED:
            key = txn.key()
            if self._pending.get(key) is pending:
                del self._pending[key]
            self._wheel.remove(txn)
            if timer is not None:
                self._completed[key] = (timer, pending.flow)
                self._completed_order.append(key)
        elif not from_timer:
            self._wheel.touch(txn)  # a response or an error moved its deadline
