"""Runs many pure client transactions on an asyncio loop with ONE timer.

Transactions sit in a deadline heap with lazy deletion (STYLE habit 8): an entry whose
transaction has moved on is skipped when it surfaces. Responses are dispatched by
(branch, CSeq method) (RFC 3261 §17.1.3); a response that matches nothing is counted and
dropped, so spoofed or late answers change nothing.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from typing import Protocol

from sipalive import clock
from sipalive.errors import TransportError
from sipalive.sip.message import Response
from sipalive.sip.transaction import (
    ClientTransaction,
    Completed,
    Event,
    Provisional,
    TransactionResult,
    Transmit,
)


class Flow(Protocol):
    """Something that can carry octets to the peer."""

    def send(self, data: bytes) -> None: ...


def _accepts(flow: Flow, source: tuple[str, int]) -> bool:
    """A flow on a shared socket says whether a response may come from ``source``; a
    connected socket or a stream only ever receives from its peer."""
    accepts = getattr(flow, "accepts", None)
    return True if accepts is None else bool(accepts(source))


class _Pending:
    __slots__ = ("flow", "future", "on_provisional", "txn")

    def __init__(
        self,
        txn: ClientTransaction,
        flow: Flow,
        future: asyncio.Future[TransactionResult],
        on_provisional: Callable[[Response], None] | None,
    ) -> None:
        self.txn = txn
        self.flow = flow
        self.future = future
        self.on_provisional = on_provisional


class TransactionDriver:
    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.loop = loop or asyncio.get_running_loop()
        self._pending: dict[tuple[str, str], _Pending] = {}
        self._heap: list[tuple[float, int, tuple[str, str]]] = []
        self._seq = itertools.count()
        self._handle: asyncio.TimerHandle | None = None
        self._armed_for: float | None = None
        self.unmatched = 0

    def __len__(self) -> int:
        return len(self._pending)

    def start(
        self,
        txn: ClientTransaction,
        flow: Flow,
        on_provisional: Callable[[Response], None] | None = None,
    ) -> asyncio.Future[TransactionResult]:
        future: asyncio.Future[TransactionResult] = self.loop.create_future()
        pending = _Pending(txn, flow, future, on_provisional)
        self._pending[txn.key()] = pending
        self._apply(pending, txn.start(clock.monotonic()))
        return future

    def on_response(self, response: Response, source: tuple[str, int] | None = None) -> bool:
        """Hand a parsed response to its transaction; False if none matches (wrong branch, or
        from another address than the request went to)."""
        branch = response.branch
        pending = self._pending.get((branch or "", response.cseq.method))
        if pending is None or (source is not None and not _accepts(pending.flow, source)):
            self.unmatched += 1
            return False
        self._apply(pending, pending.txn.receive_response(response, clock.monotonic()))
        return True

    def on_transport_error(self, flow: Flow, detail: str) -> None:
        """Every transaction on ``flow`` fails now (503)."""
        now = clock.monotonic()
        for pending in [p for p in self._pending.values() if p.flow is flow]:
            self._apply(pending, pending.txn.transport_error(now, detail))

    def on_transport_error_for(
        self, branch: str, method: str, dest: tuple[str, int], detail: str
    ) -> bool:
        """An ICMP error for our datagram (``method`` with this ``branch``) sent to ``dest``."""
        pending = self._pending.get((branch, method))
        if pending is None or not _accepts(pending.flow, dest):
            return False
        self._apply(pending, pending.txn.transport_error(clock.monotonic(), detail))
        return True

    def cancel_all(self, detail: str = "cancelled") -> None:
        now = clock.monotonic()
        for pending in list(self._pending.values()):
            self._apply(pending, pending.txn.transport_error(now, detail))

    def _apply(self, pending: _Pending, events: list[Event]) -> None:
        txn = pending.txn
        for event in events:
            if isinstance(event, Transmit):
                try:
                    pending.flow.send(event.data)
                except (OSError, TransportError) as exc:
                    self._apply(pending, txn.transport_error(clock.monotonic(), str(exc)))
                    return
            elif isinstance(event, Completed):
                if not pending.future.done():
                    pending.future.set_result(event.result)
            elif isinstance(event, Provisional) and pending.on_provisional is not None:
                pending.on_provisional(event.response)
        when = txn.get_timer()
        key = txn.key()
        if when is None:
            if self._pending.get(key) is pending:
                del self._pending[key]
            return
        heapq.heappush(self._heap, (when, next(self._seq), key))
        if self._armed_for is None or when < self._armed_for:
            self._arm(when)

    def _arm(self, when: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._armed_for = when
        # uvloop's loop.time() ticks in whole milliseconds: schedule from our own clock
        self._handle = self.loop.call_later(max(0.0, when - clock.monotonic()), self._on_timer)

    def _on_timer(self) -> None:
        self._handle = None
        self._armed_for = None
        now = clock.monotonic()
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, key = heapq.heappop(heap)
            pending = self._pending.get(key)
            if pending is None:
                continue
            current = pending.txn.get_timer()
            if current is None or current > now:
                continue  # stale entry; the live one is further down the heap
            self._apply(pending, pending.txn.handle_timer(now))
        while heap and self._pending.get(heap[0][2]) is None:
            heapq.heappop(heap)
        if heap:
            self._arm(heap[0][0])
