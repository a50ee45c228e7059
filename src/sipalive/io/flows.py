"""Client flows: a connected UDP socket, or a TCP/TLS connection, to one destination.

A flow parses what arrives and hands responses to the TransactionDriver. Over UDP an ICMP
error (seen as ``error_received`` on a connected socket) fails the flow's transactions at
once. Over streams the framer recognises the RFC 5626 CRLF pong.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

from sipalive.errors import ParseError, TransportError
from sipalive.io.driver import TransactionDriver
from sipalive.sip.framing import MessageReceived, PingReceived, PongReceived, Role, StreamFramer
from sipalive.sip.message import Response, parse_message


@dataclass(slots=True)
class FlowStats:
    received: int = 0
    malformed: int = 0
    pongs: int = 0
    phases: dict[str, float] = field(default_factory=dict)


class UdpFlow(asyncio.DatagramProtocol):
    def __init__(self, driver: TransactionDriver) -> None:
        self.driver = driver
        self.transport: asyncio.DatagramTransport | None = None
        self.local: tuple[str, int] = ("0.0.0.0", 0)
        self.stats = FlowStats()
        self.closed = False
        self.on_datagram: Callable[[bytes], None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # uvloop's are not subclasses
        sockname = transport.get_extra_info("sockname")
        self.local = (sockname[0], sockname[1])

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        self.stats.received += 1
        if not data or data[0] < 0x41:
            if self.on_datagram is not None:
                self.on_datagram(data)  # STUN or keep-alive traffic
            return
        try:
            message = parse_message(data)
        except ParseError:
            self.stats.malformed += 1
            return  # RFC 3261 §18.1.2: a malformed response is discarded
        if isinstance(message, Response):
            self.driver.on_response(message)

    def error_received(self, exc: Exception) -> None:
        detail = "ICMP port unreachable" if isinstance(exc, ConnectionRefusedError) else str(exc)
        self.driver.on_transport_error(self, detail)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True

    def send(self, data: bytes) -> None:
        if self.transport is None or self.closed:
            raise TransportError("flow closed")
        self.transport.sendto(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class StreamFlow(asyncio.Protocol):
    def __init__(self, driver: TransactionDriver, max_message: int = 65536) -> None:
        self.driver = driver
        self.framer = StreamFramer(Role.CLIENT, max_message)
        self.transport: asyncio.Transport | None = None
        self.local: tuple[str, int] = ("0.0.0.0", 0)
        self.stats = FlowStats()
        self.closed = False
        self.on_pong: Callable[[], None] | None = None
        # called with the error that ended the connection (None: closed cleanly by the peer)
        self.on_close: Callable[[Exception | None], None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        sockname = transport.get_extra_info("sockname")
        self.local = (sockname[0], sockname[1])

    def data_received(self, data: bytes) -> None:
        try:
            events = self.framer.receive(data)
        except ParseError as exc:
            self.stats.malformed += 1
            self._fail(f"malformed stream from peer: {exc.reason}")
            return
        for event in events:
            if isinstance(event, MessageReceived):
                self.stats.received += 1
                if isinstance(event.message, Response):
                    self.driver.on_response(event.message)
            elif isinstance(event, PongReceived):
                self.stats.pongs += 1
                if self.on_pong is not None:
                    self.on_pong()
            elif isinstance(event, PingReceived) and self.transport is not None:
                self.transport.write(b"\r\n")

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed:
            self.closed = True
            detail = f"connection lost: {exc}" if exc else "connection closed by peer"
            self.driver.on_transport_error(self, detail)
            if self.on_close is not None:
                self.on_close(exc)

    def _fail(self, detail: str) -> None:
        self.closed = True
        self.driver.on_transport_error(self, detail)
        if self.transport is not None:
            self.transport.abort()

    def send(self, data: bytes) -> None:
        if self.transport is None or self.closed:
            raise TransportError("connection closed")
        self.transport.write(data)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


UDP_RCVBUF = 4 * 1024 * 1024  # a flood's answers arrive in bursts; the default 208 KiB drops them


async def open_udp(
    driver: TransactionDriver, address: str, port: int, rcvbuf: int = UDP_RCVBUF
) -> UdpFlow:
    """A connected UDP socket (so that ICMP errors reach it), with a large receive buffer
    (capped by net.core.rmem_max)."""
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        sock.connect((address, port))
    except OSError:
        sock.close()
        raise
    _, flow = await loop.create_datagram_endpoint(lambda: UdpFlow(driver), sock=sock)
    return flow


async def open_stream(
    driver: TransactionDriver,
    address: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    timeout: float = 10.0,
    sockopts: list[tuple[str, str, int]] | None = None,
) -> StreamFlow:
    """Connect (and hand-shake TLS), timing each phase into ``flow.stats.phases``."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    try:
        async with asyncio.timeout(timeout):
            transport, flow = await loop.create_connection(
                lambda: StreamFlow(driver), address, port
            )
            flow.stats.phases["connect"] = loop.time() - t0
            if sockopts:
                apply_sockopts(transport.get_extra_info("socket"), sockopts)
            if ssl_context is not None:
                t1 = loop.time()
                tls_transport = await loop.start_tls(
                    transport, flow, ssl_context, server_hostname=server_hostname
                )
                if tls_transport is None:
                    raise TransportError("TLS handshake failed")
                flow.transport = tls_transport
                flow.stats.phases["tls"] = loop.time() - t1
    except TimeoutError as exc:
        raise TransportError(f"connect to {address}:{port} timed out after {timeout:g} s") from exc
    except ssl.SSLError as exc:
        raise TransportError(f"TLS with {address}:{port}: {exc.reason or exc}") from exc
    except OSError as exc:
        raise TransportError(f"connect to {address}:{port}: {exc.strerror or exc}") from exc
    return flow


def apply_sockopts(sock: socket.socket | None, options: list[tuple[str, str, int]]) -> None:
    """Apply symbolic (level, option, value) triples from ``keepalive.tcp``."""
    if sock is None:
        return
    for level, name, value in options:
        sock.setsockopt(getattr(socket, level), getattr(socket, name), value)
