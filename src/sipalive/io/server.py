"""The responder's listeners: UDP, TCP, TLS and WebSocket (ws, wss: :mod:`sipalive.io.ws`),
around the pure StatelessResponder.

One line is logged per client error (malformed request, refused method), never per probe; a
source over its rate is dropped silently and counted. Stream connections are bounded by the
framer's maximum message size and an idle timeout swept by a single periodic timer.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast

from sipalive.errors import ParseError
from sipalive.io import mmsg
from sipalive.io.limits import Admission
from sipalive.io.natlife import DelayedStunServer
from sipalive.sip.framing import MessageReceived, PingReceived, Role, StreamFramer
from sipalive.sip.message import Request, Response
from sipalive.sip.responder import StatelessResponder


@dataclass(slots=True)
class ServerStats:
    requests: int = 0
    answered: int = 0
    client_errors: int = 0
    stun: int = 0
    pongs: int = 0
    dropped: int = 0
    connections: int = 0


def log_line(text: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    print(f"{stamp} {text}", file=sys.stderr, flush=True)


class ListenerHook(Protocol):
    """What takes messages off the listeners before the responder: the registrar
    (:mod:`sipalive.io.registrar`). ``on_datagram``/``on_message`` return True for a message
    they took; ``keeps`` says a connection must outlive the idle timeout."""

    def on_datagram(self, data: bytes, source: tuple[str, int], udp: UdpServerProtocol) -> bool: ...

    def on_message(self, message: Request | Response, conn: StreamServerProtocol) -> bool: ...

    def on_connection_lost(self, conn: StreamServerProtocol) -> None: ...

    def keeps(self, conn: StreamServerProtocol) -> bool: ...


class Listener:
    """Shared state of every listener of one ``respond`` process."""

    def __init__(
        self,
        responder: StatelessResponder,
        admission: Admission,
        log: Callable[[str], None] = log_line,
        idle_timeout: float = 300.0,
        message_timeout: float = 10.0,
    ) -> None:
        self.responder = responder
        self.admission = admission
        self.log = log
        self.idle_timeout = idle_timeout
        # a message started must be complete within this (slow-loris guard)
        self.message_timeout = message_timeout
        self.stats = ServerStats()
        self.connections: set[StreamServerProtocol] = set()
        self.hook: ListenerHook | None = None
        # late STUN answers for `sipalive nat-lifetime` (SIPALIVE-DELAY), on every UDP socket
        self.delayed = DelayedStunServer(software=responder.config.server)


class UdpServerProtocol(asyncio.DatagramProtocol):
    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # uvloop's are not subclasses

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        fast = self.answer(data, (str(addr[0]), int(str(addr[1]))))
        if fast is not None:
            assert self.transport is not None
            self.transport.sendto(*fast)

    def answer(self, data: bytes, source: tuple[str, int]) -> tuple[bytes, tuple[str, int]] | None:
        """Handle one datagram. A plain OPTIONS's 200 is returned for the caller to send (in a
        batch); anything else is answered (or not) through ``self.transport`` here."""
        lst = self.listener
        adm = lst.admission
        if (adm.allow or adm.rate is not None) and not adm.admit(source[0], time.monotonic()):
            lst.stats.dropped += 1
            return None
        if lst.hook is not None and lst.hook.on_datagram(data, source, self):
            return None
        lst.stats.requests += 1
        fast = lst.responder.fast.answer(data, source)
        if fast is not None:
            lst.stats.answered += 1
            return fast
        if (
            lst.responder.config.stun
            and self.transport is not None
            and lst.delayed.receive(data, source, self.transport)
        ):
            lst.stats.stun += 1  # a SIPALIVE-DELAY request: answered now or scheduled
            return None
        reply = lst.responder.handle_datagram(data, source)
        if reply is None:
            return None
        if reply.error is not None:
            lst.stats.client_errors += 1
            lst.log(f"udp {source[0]}:{source[1]}: {reply.status} ({reply.error})")
        elif reply.status is not None and reply.status >= 300:
            lst.stats.client_errors += 1
            lst.log(f"udp {source[0]}:{source[1]}: {reply.method} -> {reply.status}")
        elif reply.status is None:
            lst.stats.stun += 1
        assert self.transport is not None
        self.transport.sendto(reply.data, reply.addr)
        lst.stats.answered += 1
        return None

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP errors for our answers are the client's problem; nothing to fail here


class BatchedUdpTransport(asyncio.DatagramTransport):
    """A UDP listener's socket read and written in batches (:mod:`sipalive.io.mmsg`): one
    recvmmsg per readable event takes what is queued, the fast path's answers leave in one
    sendmmsg. It offers what the protocol and the registrar use of an asyncio datagram
    transport (``sendto``, ``is_closing``, ``close``, ``get_extra_info``, ``get_protocol``).

    On a wildcard address (0.0.0.0, ::) every answer leaves from the address its request was
    sent to (IP_PKTINFO: RFC 3261 §18.2.2, RFC 3581 §4), not from the kernel's choice."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, sock: socket.socket, protocol: UdpServerProtocol
    ) -> None:
        super().__init__()
        sock.setblocking(False)
        self._loop = loop
        self._sock = sock
        self._protocol = protocol
        wildcard = sock.getsockname()[0] in ("0.0.0.0", "::")
        self._batch = mmsg.MmsgSocket(
            sock,
            batch=64,
            max_size=protocol.listener.responder.config.max_message,
            pktinfo=wildcard,
        )
        self._local = b""  # where the datagram being handled was sent to (wildcard only)
        self._closing = False
        protocol.connection_made(self)
        loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        answer = self._protocol.answer
        batch = self._batch
        out: list[tuple[bytes, tuple[str, int]]] = []
        items = batch.recv()
        if not batch.pktinfo:
            for data, source in items:
                fast = answer(data, source)
                if fast is not None:
                    out.append(fast)
            if out and not self._closing:
                batch.send(out)  # what the kernel refuses is lost, as a datagram may be
            return
        out_locals: list[bytes] = []
        for (data, source), local in zip(items, batch.locals, strict=True):
            self._local = local
            fast = answer(data, source)
            if fast is not None:
                out.append(fast)
                out_locals.append(local)
        self._local = b""
        if out and not self._closing:
            batch.send(out, out_locals)

    def sendto(self, data: bytes | bytearray | memoryview, addr: Any = None) -> None:
        if self._closing:
            return
        try:
            if self._local:
                self._sock.sendmsg([data], [mmsg.pktinfo(self._local)], 0, addr)
            else:
                self._sock.sendto(data, addr)
        except OSError:
            pass  # full buffer or ICMP error: UDP delivers at most once anyway

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if not self._closing:
            self._closing = True
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "sockname":
            return self._sock.getsockname()
        if name == "socket":
            return self._sock
        return default

    def get_protocol(self) -> UdpServerProtocol:
        return self._protocol

    def abort(self) -> None:
        self.close()


class StreamServerProtocol(asyncio.Protocol):
    def __init__(self, listener: Listener, transport_name: str) -> None:
        self.listener = listener
        self.name = transport_name
        self.framer = StreamFramer(Role.SERVER, listener.responder.config.max_message)
        self.transport: asyncio.Transport | None = None
        self.peer: tuple[str, int] = ("", 0)
        self.last_activity = time.monotonic()
        self.partial_since: float | None = None  # when the unfinished message began

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        peer = transport.get_extra_info("peername")
        self.peer = (str(peer[0]), int(peer[1]))
        lst = self.listener
        if not lst.admission.allowed(self.peer[0]):
            lst.admission.denied += 1
            lst.stats.dropped += 1
            self.transport.abort()
            return
        lst.stats.connections += 1
        lst.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.listener.connections.discard(self)
        if self.listener.hook is not None:
            self.listener.hook.on_connection_lost(self)

    def data_received(self, data: bytes) -> None:
        lst = self.listener
        self.last_activity = now = time.monotonic()
        try:
            events = self.framer.receive(data)
        except ParseError as exc:
            lst.stats.client_errors += 1
            lst.log(
                f"{self.name} {self.peer[0]}:{self.peer[1]}: {exc.status} ({exc.reason}); closing"
            )
            reply = lst.responder.bad_request(data, exc, self.peer, self.name)
            if reply is not None and self.transport is not None:
                self.transport.write(reply.data)
            self._close()
            return
        if self.framer.buffered == 0:
            self.partial_since = None
        elif self.partial_since is None or events:
            self.partial_since = now
        assert self.transport is not None
        for event in events:
            if isinstance(event, PingReceived):
                lst.stats.pongs += 1
                self.transport.write(b"\r\n")  # RFC 5626 §4.4.1 pong
                continue
            if (
                isinstance(event, MessageReceived)
                and lst.hook is not None
                and lst.hook.on_message(event.message, self)
            ):
                continue
            if not isinstance(event, MessageReceived) or not isinstance(event.message, Request):
                continue  # a response on our server socket: nothing to do
            if not lst.admission.admit(self.peer[0], now):
                lst.stats.dropped += 1
                continue
            lst.stats.requests += 1
            reply = lst.responder.handle_request(event.message, self.peer, self.name)
            if reply is None:
                continue
            if reply.status is not None and reply.status >= 300:
                lst.stats.client_errors += 1
                lst.log(
                    f"{self.name} {self.peer[0]}:{self.peer[1]}: {reply.method} -> {reply.status}"
                )
            self.transport.write(reply.data)
            lst.stats.answered += 1

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()


@dataclass(frozen=True, slots=True)
class ListenSpec:
    transport: str  # udp | tcp | tls | ws | wss
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.transport}:{host}:{self.port}"


async def start_listeners(
    listener: Listener,
    specs: list[ListenSpec],
    tls_context: ssl.SSLContext | None = None,
    reuse_port: bool = False,
    rcvbuf: int | None = None,
    batched: bool = True,
) -> list[asyncio.BaseTransport | asyncio.Server]:
    loop = asyncio.get_running_loop()
    opened: list[asyncio.BaseTransport | asyncio.Server] = []
    for spec in specs:
        if spec.transport == "udp":
            family = socket.AF_INET6 if ":" in spec.host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_DGRAM)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if rcvbuf:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.bind((spec.host, spec.port))
            if batched and mmsg.available():
                opened.append(BatchedUdpTransport(loop, sock, UdpServerProtocol(listener)))
                continue
            transport, _ = await loop.create_datagram_endpoint(
                lambda: UdpServerProtocol(listener), sock=sock
            )
            opened.append(transport)
        else:
            ctx = tls_context if spec.transport in ("tls", "wss") else None
            name = spec.transport
            protocol: type[StreamServerProtocol] = StreamServerProtocol
            if name in ("ws", "wss"):
                from sipalive.io.ws import WsServerProtocol

                protocol = WsServerProtocol
            server = await loop.create_server(
                lambda name=name, protocol=protocol: protocol(listener, name),
                spec.host,
                spec.port,
                ssl=ctx,
                reuse_port=reuse_port or None,
                ssl_handshake_timeout=10.0 if ctx else None,
            )
            opened.append(server)
    return opened


async def sweep_idle(listener: Listener, period: float | None = None) -> None:
    """Close stream connections idle for longer than ``listener.idle_timeout``, and those
    whose unfinished message is older than ``listener.message_timeout`` (a slow-loris client
    trickling a header never gets to hold a connection by merely staying active)."""
    if period is None:
        period = max(0.05, min(5.0, listener.message_timeout / 4, listener.idle_timeout / 4))
    while True:
        await asyncio.sleep(period)
        now = time.monotonic()
        idle_cutoff = now - listener.idle_timeout
        partial_cutoff = now - listener.message_timeout
        for conn in list(listener.connections):
            if conn.last_activity < idle_cutoff:
                if listener.hook is not None and listener.hook.keeps(conn):
                    continue  # a registered contact is reached over it
                conn._close()
            elif conn.partial_since is not None and conn.partial_since < partial_cutoff:
                listener.stats.client_errors += 1
                where = f"{conn.name} {conn.peer[0]}:{conn.peer[1]}"
                listener.log(f"{where}: message not completed in time; closing")
                conn._close()
