"""NAT binding lifetime over asyncio: both ends of :mod:`sipalive.keepalive.natlife`.

* :func:`measure` runs a :class:`~sipalive.keepalive.natlife.NatLifetimeSearch`: every trial
  is a fresh non-blocking UDP socket connected to the server (so a fresh NAT binding, and
  only the server's datagrams and ICMP errors reach it), watched with ``add_reader``; the
  machine's deadlines re-arm ONE loop timer.
* :class:`DelayedStunServer` is what ``sipalive respond``'s UDP listeners use to serve the
  delayed answers: one :class:`~sipalive.keepalive.natlife.DelayedReplies` heap for every
  UDP socket of the process, driven by one :class:`~sipalive.io.timers.TimerWheel` entry.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Sequence

from sipalive import clock
from sipalive.io.timers import TimerWheel
from sipalive.keepalive.natlife import (
    CloseTrial,
    DelayedReplies,
    NatLifetimeResult,
    NatLifetimeSearch,
    OpenTrial,
    ProbeResolved,
    SearchConfig,
    SearchEvent,
    SearchFinished,
    SendOnTrial,
    SendTo,
)
from sipalive.stun.codec import Address

MAX_DATAGRAM = 2048


class _Runner:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        server: Address,
        search: NatLifetimeSearch,
        on_progress: Callable[[ProbeResolved], None] | None,
    ) -> None:
        self.loop = loop
        self.server = server
        self.family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
        self.search = search
        self.on_progress = on_progress
        self.sockets: dict[int, socket.socket] = {}
        self.timer: asyncio.TimerHandle | None = None
        self.done: asyncio.Future[NatLifetimeResult] = loop.create_future()
        self.errors: list[tuple[int, str]] = []

    def apply(self, events: list[SearchEvent]) -> None:
        """Carry out the machine's events; socket errors are fed back to it, in turn."""
        while True:
            for event in events:
                if isinstance(event, OpenTrial):
                    self._open(event.trial_id, event.data)
                elif isinstance(event, SendOnTrial):
                    self._send(event.trial_id, event.data)
                elif isinstance(event, CloseTrial):
                    self._close(event.trial_id)
                elif isinstance(event, ProbeResolved):
                    if self.on_progress is not None:
                        self.on_progress(event)
                elif isinstance(event, SearchFinished) and not self.done.done():
                    self.done.set_result(event.result)
            if not self.errors:
                break
            trial_id, reason = self.errors.pop(0)
            events = self.search.transport_error(trial_id, reason, clock.monotonic())
        self._rearm()

    def _open(self, trial_id: int, data: bytes) -> None:
        sock = socket.socket(self.family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.connect(self.server)
            self.loop.add_reader(sock.fileno(), self._readable, trial_id)
        except OSError as exc:
            sock.close()
            self.errors.append((trial_id, exc.strerror or str(exc)))
            return
        self.sockets[trial_id] = sock
        self._send(trial_id, data)

    def _send(self, trial_id: int, data: bytes) -> None:
        sock = self.sockets.get(trial_id)
        if sock is None:
            return
        try:
            sock.send(data)
        except BlockingIOError:
            pass  # a full send buffer is a lost datagram, which the search allows for
        except OSError as exc:
            self.errors.append((trial_id, exc.strerror or str(exc)))

    def _close(self, trial_id: int) -> None:
        sock = self.sockets.pop(trial_id, None)
        if sock is not None:
            self.loop.remove_reader(sock.fileno())
            sock.close()

    def _readable(self, trial_id: int) -> None:
        while (sock := self.sockets.get(trial_id)) is not None:
            try:
                data = sock.recv(MAX_DATAGRAM)
            except BlockingIOError:
                return
            except OSError as exc:  # ICMP port/host unreachable for one of our requests
                reason = exc.strerror or str(exc)
                self.apply(self.search.transport_error(trial_id, reason, clock.monotonic()))
                return
            self.apply(self.search.datagram_received(trial_id, data, clock.monotonic()))

    def _on_timer(self) -> None:
        self.timer = None
        self.apply(self.search.handle_timer(clock.monotonic()))

    def _rearm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        when = self.search.get_timer()
        if when is not None and not self.done.done():
            self.timer = self.loop.call_later(max(0.0, when - clock.monotonic()), self._on_timer)

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        for trial_id in list(self.sockets):
            self._close(trial_id)


async def measure(
    server: Address,
    config: SearchConfig | None = None,
    *,
    on_progress: Callable[[ProbeResolved], None] | None = None,
    software: str | None = "sipalive/0.1",
    rand_bytes: Callable[[int], bytes] = os.urandom,
) -> NatLifetimeResult:
    """Measure the binding lifetime of the path to ``server`` (an IP literal and port, a
    cooperating ``sipalive respond``). Every socket is closed when it returns or is
    cancelled."""
    loop = asyncio.get_running_loop()
    search = NatLifetimeSearch(config, rand_bytes=rand_bytes, software=software)
    runner = _Runner(loop, server, search, on_progress)
    try:
        runner.apply(search.start(clock.monotonic()))
        return await runner.done
    finally:
        runner.close()


class DelayedStunServer:
    """SIPALIVE-DELAY requests on ``respond``'s UDP listeners (one instance per process).

    :meth:`receive` takes a datagram before the ordinary responder does and returns False
    for anything that is not such a request. The answer goes out of the socket the request
    came in on (the transport is kept with it), unless that listener has closed since.
    """

    def __init__(
        self,
        replies: DelayedReplies[asyncio.DatagramTransport] | None = None,
        *,
        software: str | None = None,
    ) -> None:
        self.replies: DelayedReplies[asyncio.DatagramTransport] = replies or DelayedReplies(
            software=software
        )
        self._wheel: TimerWheel | None = None

    def receive(self, data: bytes, source: Address, transport: asyncio.DatagramTransport) -> bool:
        before = self.replies.get_timer()
        out = self.replies.receive(data, source, transport, clock.monotonic())
        if out is None:
            return False
        self._send(out)
        when = self.replies.get_timer()
        if when is not None and when != before:
            if self._wheel is None:
                self._wheel = TimerWheel(asyncio.get_running_loop())
                self._wheel.add(self.replies, self._send)
            else:
                self._wheel.touch(self.replies)
        return True

    @staticmethod
    def _send(events: Sequence[object]) -> None:
        for event in events:
            if isinstance(event, SendTo) and not event.route.is_closing():
                event.route.sendto(event.data, event.addr)

    def close(self) -> None:
        if self._wheel is not None:
            self._wheel.close()
            self._wheel = None
