"""Runs many pure client transactions on an asyncio loop with ONE timer.

Transactions sit in a deadline heap with lazy deletion (STYLE habit 8): an entry whose
transaction has moved on is skipped when it surfaces. Responses are dispatched by
(branch, CSeq method) (RFC 3261 §17.1.3); a response that matches nothing is counted and
dropped, so spoofed or late answers change nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Protocol

from sipalive import clock
from sipalive.errors import TransportError
from sipalive.io.timers import TimerWheel
from sipalive.sip.message import Response
from sipalive.sip.transaction import (
    ClientTransaction,
    Completed,
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
    """Starts client transactions, routes responses and errors to them, and runs their
    timers on one TimerWheel (one loop timer for all of them)."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.loop = loop or asyncio.get_running_loop()
        self._pending: dict[tuple[str, str], _Pending] = {}
        self._wheel = TimerWheel(self.loop)
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
        events = txn.start(clock.monotonic())
        self._wheel.add(txn, lambda evs: self._apply(pending, evs, from_timer=True))
        self._apply(pending, events, from_timer=True)
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
                if not pending.future.done():
                    pending.future.set_result(event.result)
            elif isinstance(event, Provisional) and pending.on_provisional is not None:
                pending.on_provisional(event.response)
        if txn.get_timer() is None:
            key = txn.key()
            if self._pending.get(key) is pending:
                del self._pending[key]
            self._wheel.remove(txn)
        elif not from_timer:
            self._wheel.touch(txn)  # a response or an error moved its deadline
