"""``ping --flood``: COUNT OPTIONS transactions back to back, at most WINDOW in flight, on one
open flow (UDP, TCP or TLS), as fast as one core allows.

The general path (TransactionDriver: a ClientTransaction, a future and a full parse per probe)
costs ~115 us of CPU per transaction over UDP; this one ~22 us (UDP) and ~12 us (TCP) against
Kamailio (bench/flood_vs_sipp.sh). Every transaction lives in one ``ClientTable``
(sip/bulk.py, O(1) timers), a response is read with ``peek`` (sip/peek.py; the full parser
only when the peek declines), a request is one ``OptionsTemplate.fill``, and the next request
goes out from the callback that took the answer in: no task, no future, one loop timer. On a
stream, all requests started by one chunk of responses go out in one write.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

from sipalive import clock
from sipalive.errors import ParseError
from sipalive.sip.build import OptionsTemplate
from sipalive.sip.bulk import ClientTable
from sipalive.sip.framing import MessageReceived, PingReceived
from sipalive.sip.message import Response, parse_message
from sipalive.sip.peek import ResponseStream, peek_datagram
from sipalive.sip.transaction import TimerConfig, TransactionResult

_SLACK = 0.001  # a re-armed timer waits at least this long: Timer K expiries come in a stream


class FloodEngine:
    """Starts transactions until ``count`` have started, keeps ``window`` in flight, and hands
    each result to ``record``. A protocol below feeds it responses and calls ``flush``."""

    def __init__(
        self,
        template: OptionsTemplate,
        branch_prefix: str,
        call_id: str,
        timers: TimerConfig,
        *,
        reliable: bool,
        count: int,
        window: int,
        record: Callable[[TransactionResult], None],
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.table: ClientTable[None] = ClientTable(timers, reliable=reliable)
        self.reliable = reliable
        self.template = template
        self.prefix = branch_prefix
        self.call_id = "-" + call_id
        self.count = count
        self.window = window
        self.record = record
        self.started = 0
        self.finished = 0
        self.done: asyncio.Future[None] = self.loop.create_future()
        self.send: Callable[[bytes], None] = lambda data: None  # set by the protocol
        self._pending: list[bytes] = []  # requests started, not yet sent
        self._timer: asyncio.TimerHandle | None = None
        self._armed_for = float("inf")
        self._t4 = float("inf") if reliable else timers.t4

    async def run(self) -> None:
        """Launch the first window and wait until every transaction has ended. Cancelled (a
        signal), the transactions in flight end as 503 "interrupted"."""
        try:
            now = clock.monotonic()
            self.launch(min(self.window, self.count), now)
            self.flush()
            self._arm(now)
            await self.done
        finally:
            if self._timer is not None:
                self._timer.cancel()
            if not self.done.done():
                self.close("interrupted")

    def launch(self, n: int, now: float) -> None:
        """Start up to ``n`` more transactions (their requests go out at ``flush``)."""
        fill = self.template.fill
        for _ in range(min(n, self.count - self.started)):
            self.started += 1
            seq = self.started
            tag = f"{seq:x}"
            branch = self.prefix + tag
            data = fill(branch, tag + self.call_id, seq)
            self.table.start(branch, "OPTIONS", data, now, None)
            self._pending.append(data)

    def flush(self) -> None:
        """Send the requests started since the last flush: one write on a stream."""
        pending = self._pending
        if not pending:
            return
        self._pending = []
        if self.reliable:
            self.send(b"".join(pending))
        else:
            for data in pending:
                self.send(data)

    def on_response(
        self, status: int, reason: str, branch: str | None, method: str, now: float
    ) -> None:
        """A response (1xx or final, ours or not); a final one starts the next transaction."""
        got = self.table.receive(branch, method, status, reason, now)
        if got is None:
            return
        if now + self._t4 < self._armed_for:
            self._arm(now)  # Timer K of this transaction is the table's next deadline
        self.record(got[1])
        self.finished += 1
        self._next(1, now)

    def fail_all(self, detail: str) -> None:
        """The flow failed (ICMP error, connection lost): 503 for every transaction in flight;
        the flood goes on if the flow is still open."""
        now = clock.monotonic()
        failed = self.table.transport_error(now, detail)
        for _, result in failed:
            self.record(result)
        self.finished += len(failed)
        self._next(len(failed), now)

    def close(self, detail: str) -> None:
        """The flow is gone: what is in flight fails (503) and nothing more starts."""
        self.send = lambda data: None
        self.count = self.started
        self.fail_all(detail)

    def _next(self, n: int, now: float) -> None:
        if self.finished >= self.count:
            if not self.done.done():
                self.done.set_result(None)
        elif not self.done.done():
            self.launch(n, now)

    def _arm(self, now: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        when = self.table.get_timer()
        self._armed_for = float("inf") if when is None else when
        if when is not None:
            self._timer = self.loop.call_later(max(when - now, _SLACK), self._fire)

    def _fire(self) -> None:
        self._timer = None
        now = clock.monotonic()
        sends, failed = self.table.handle_timer(now)
        for _, data in sends:
            self.send(data)
        for _, result in failed:
            self.record(result)
        self.finished += len(failed)
        self._next(len(failed), now)
        self.flush()
        self._arm(now)


class FloodDatagrams(asyncio.DatagramProtocol):
    """The flood on a connected UDP socket: one response in, one request out."""

    def __init__(self, engine: FloodEngine, transport: asyncio.BaseTransport) -> None:
        self.engine = engine
        transport.set_protocol(self)
        engine.send = cast(asyncio.DatagramTransport, transport).sendto

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        now = clock.monotonic()
        engine = self.engine
        got = peek_datagram(data)
        if got is not None:
            engine.on_response(got[0], got[1], got[2], got[3], now)
        else:
            try:
                message = parse_message(data)
            except ParseError:
                return  # RFC 3261 §18.1.2: a malformed response is discarded
            if isinstance(message, Response):
                engine.on_response(
                    message.status, message.reason, message.branch, message.cseq.method, now
                )
        engine.flush()

    def error_received(self, exc: Exception) -> None:
        detail = "ICMP port unreachable" if isinstance(exc, ConnectionRefusedError) else str(exc)
        self.engine.fail_all(detail)
        self.engine.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.engine.close("flow closed")


class FloodStream(asyncio.Protocol):
    """The flood on a TCP or TLS connection: each chunk of responses is peeked through a
    ResponseStream, and the requests they start go out in one write."""

    def __init__(self, engine: FloodEngine, transport: asyncio.BaseTransport) -> None:
        self.engine = engine
        self.stream = ResponseStream()
        self.transport = cast(asyncio.Transport, transport)
        transport.set_protocol(self)
        engine.send = self.transport.write

    def data_received(self, data: bytes) -> None:
        now = clock.monotonic()
        engine = self.engine
        try:
            events = self.stream.receive(data)
        except ParseError as exc:
            self.transport.abort()
            engine.close(f"malformed stream from peer: {exc.reason}")
            return
        for event in events:
            if isinstance(event, tuple):
                engine.on_response(event[0], event[1], event[2], event[3], now)
            elif isinstance(event, MessageReceived):
                message = event.message
                if isinstance(message, Response):
                    engine.on_response(
                        message.status, message.reason, message.branch, message.cseq.method, now
                    )
            elif isinstance(event, PingReceived):
                self.transport.write(b"\r\n")
        engine.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.engine.close(f"connection lost: {exc}" if exc else "connection closed by peer")
