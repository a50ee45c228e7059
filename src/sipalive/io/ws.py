"""SIP over WebSocket (RFC 7118): a client flow and the responder's listener.

Both sides drive the Sans-I/O state machines of ``websockets`` (``ClientProtocol``,
``ServerProtocol``) from an ``asyncio.Protocol``, as :class:`~sipalive.io.flows.StreamFlow`
drives the SIP framer: bytes in, events out, no task per connection and nothing that waits
to write (``send`` queues on the transport).

* Handshake: the client offers the subprotocol ``sip`` and the server must select it
  (RFC 7118 §4.1); a server that answers the upgrade without it fails the connection with an
  error that says so. The listener refuses a client that does not offer it (HTTP 400).
* Framing: one SIP message per WebSocket message (RFC 7118 §4.2): text when it is UTF-8,
  else binary. Fragmented messages are reassembled up to ``max_message`` octets (the library
  fails the connection with close code 1009 beyond that). Content-Length is optional.
* Via: the transport is ``WS`` or ``WSS`` (RFC 7118 §5.2). A WebSocket client is reachable
  only through its connection, so the client's sent-by is a random ``.invalid`` host, as
  browser UAs and the examples of RFC 7118 §8 use; the server adds ``received``/``rport``.
* Keep-alive: WebSocket Ping/Pong frames (RFC 7118 §6, RFC 6455 §5.5.2-§5.5.3). A pong
  acknowledges the ping it echoes and every earlier one (RFC 6455 lets a peer answer only
  the latest ping). Pings from the peer are answered by the library. The listener also
  answers a CRLFCRLF message with a CRLF message, as WebSocket UAs using RFC 5626 send it.
* Bounds: a message over ``max_message`` fails the connection (close code 1009); on the
  listener the upgrade request, a frame and a fragmented message are each held to the
  stream listener's ``message_timeout`` (slow-loris guard), and idle connections to its
  ``idle_timeout``.
* Connection loss, a Close frame from the peer or a WebSocket protocol error fails every
  transaction on the flow at once (503, RFC 3261 §8.1.3.1).

Errors raised to callers are :class:`~sipalive.errors.TransportError` with a sentence that
names the peer and the phase (connect, TLS, upgrade).
"""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from collections.abc import Callable
from typing import cast

from websockets.client import ClientProtocol
from websockets.exceptions import InvalidState, InvalidStatus, NegotiationError
from websockets.frames import Frame, Opcode
from websockets.http11 import Request as HttpRequest
from websockets.http11 import Response as HttpResponse
from websockets.protocol import Protocol as WsProtocol
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from sipalive import clock
from sipalive.errors import ParseError, TransportError
from sipalive.io.driver import TransactionDriver
from sipalive.io.flows import FlowStats, apply_sockopts
from sipalive.io.server import Listener, StreamServerProtocol
from sipalive.sip.build import format_host
from sipalive.sip.message import Request, Response, parse_message

SUBPROTOCOL = Subprotocol("sip")
"""The WebSocket subprotocol of SIP (RFC 7118 §4.1, IANA WebSocket Subprotocol Name)."""

MAX_PINGS = 64
"""Outstanding pings remembered per flow; older ones are forgotten (never answered)."""

_CRLF_PING = b"\r\n\r\n"
_CRLF_PONG = b"\r\n"


def _is_keepalive(message: bytes) -> bool:
    """A message of CRLFs only: the RFC 5626 ping (or pong) some WebSocket UAs send."""
    return not message.strip(b"\r\n")


def _queue_message(ws: WsProtocol, data: bytes) -> None:
    """RFC 7118 §4.2: a text message when the SIP message is UTF-8, else a binary one."""
    if data.isascii():
        ws.send_text(data)
        return
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        ws.send_binary(data)
    else:
        ws.send_text(data)


def _write_pending(ws: WsProtocol, transport: asyncio.Transport | None) -> None:
    """Hand what the state machine wants to send to the transport. End of stream closes it:
    half-closing TLS is not possible, and nothing is read after a close handshake anyway."""
    for chunk in ws.data_to_send():
        if transport is None or transport.is_closing():
            return
        if not chunk:  # websockets.protocol.SEND_EOF
            transport.close()
            return
        transport.write(chunk)


class _Messages:
    """Reassembles fragmented WebSocket messages (RFC 6455 §5.4). The library bounds the
    size of a message in progress, so this never holds more than ``max_message`` octets."""

    __slots__ = ("_parts",)

    def __init__(self) -> None:
        self._parts: list[bytes] | None = None

    @property
    def pending(self) -> bool:
        """A fragmented message has begun and not ended."""
        return self._parts is not None

    def frame(self, frame: Frame) -> bytes | None:
        """The complete message this data frame ends, or None."""
        if frame.opcode is Opcode.CONT:
            if self._parts is None:
                return None  # the library has already failed the connection
            self._parts.append(bytes(frame.data))
        else:
            self._parts = [bytes(frame.data)]
        if not frame.fin:
            return None
        parts, self._parts = self._parts, None
        return parts[0] if len(parts) == 1 else b"".join(parts)


def _close_detail(ws: WsProtocol) -> str | None:
    """Why the WebSocket closed, from its Close frames or the protocol error it hit."""
    if ws.close_rcvd is not None:
        close = ws.close_rcvd
        reason = f" {close.reason}" if close.reason else ""
        return f"WebSocket closed by peer: code {close.code}{reason}"
    if ws.parser_exc is not None:
        return f"WebSocket protocol error: {ws.parser_exc}"
    return None


# -- client ---------------------------------------------------------------------------------


class WsFlow(asyncio.Protocol):
    """One WebSocket connection to a SIP WebSocket server, used like a StreamFlow.

    ``local`` is the sent-by to put in Via (a random ``.invalid`` host and the local port);
    ``sockname`` is the socket's real address. ``on_pong`` is called for each acknowledged
    ping (``send_ping``), ``on_close`` with the error that ended the connection (None when
    the peer closed it cleanly, with a Close frame of code 1000 or 1001, or a bare FIN).
    """

    def __init__(
        self,
        driver: TransactionDriver,
        url: str,
        *,
        max_message: int = 65536,
        via_host: str | None = None,
    ) -> None:
        self.driver = driver
        self.url = url
        self.max_message = max_message
        self.ws = ClientProtocol(parse_uri(url), subprotocols=[SUBPROTOCOL], max_size=max_message)
        self.transport: asyncio.Transport | None = None
        self.via_host = via_host or os.urandom(6).hex() + ".invalid"
        self.local: tuple[str, int] = (self.via_host, 0)
        self.sockname: tuple[str, int] = ("0.0.0.0", 0)
        self.stats = FlowStats()
        self.closed = False
        self.upgraded = False  # the opening handshake succeeded, with "sip"
        self.subprotocol: str | None = None
        self.last_ping_rtt: float | None = None
        self.on_pong: Callable[[], None] | None = None
        self.on_close: Callable[[Exception | None], None] | None = None
        self._messages = _Messages()
        self._opened: asyncio.Future[None] | None = None
        self._gone = asyncio.Event()
        self._pings: dict[bytes, tuple[float, asyncio.Future[float] | None]] = {}
        self._ping_seq = 0

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        sockname = transport.get_extra_info("sockname")
        self.sockname = (sockname[0], sockname[1])
        self.local = (self.via_host, sockname[1])

    def data_received(self, data: bytes) -> None:
        ws = self.ws
        ws.receive_data(data)
        _write_pending(ws, self.transport)
        for event in ws.events_received():
            if isinstance(event, Frame):
                self._frame(event)
            elif isinstance(event, HttpResponse):
                self._upgraded()
        if self._opened is not None and not self._opened.done() and ws.handshake_exc:
            self._opened.set_exception(self._handshake_error(ws.handshake_exc))
        elif self.upgraded and ws.state is not State.OPEN and not self.closed:
            self._lost(_close_detail(ws) or "WebSocket closed", self._close_error())
            if self.transport is not None:
                self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._opened is not None and not self._opened.done():
            self._opened.set_exception(
                TransportError(f"{self.url}: connection closed during the WebSocket upgrade")
            )
        if not self.closed:
            detail = _close_detail(self.ws)
            if detail is None:
                detail = f"connection lost: {exc}" if exc else "connection closed by peer"
            self._lost(detail, exc if exc is not None else self._close_error())
        self._fail_pings(TransportError("WebSocket connection closed"))
        self._gone.set()

    # -- Flow -----------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Send one SIP message as one WebSocket message."""
        if self.transport is None or self.closed:
            raise TransportError("WebSocket connection closed")
        try:
            _queue_message(self.ws, data)
        except InvalidState as exc:
            raise TransportError(f"WebSocket connection closed: {exc}") from exc
        _write_pending(self.ws, self.transport)

    def send_ping(self) -> None:
        """Send a WebSocket Ping now; ``on_pong`` is called when it is acknowledged."""
        self._ping(None)

    async def ping(self, timeout: float = 10.0) -> float:
        """The round-trip time of one WebSocket Ping/Pong, in seconds."""
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._ping(future)
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError as exc:
            raise TransportError(f"no WebSocket pong within {timeout:g} s") from exc

    def close(self) -> None:
        """Close with a Close frame (1000); transactions still running are not failed."""
        self.closed = True
        if self.ws.state is State.OPEN:
            self.ws.send_close(1000)
            _write_pending(self.ws, self.transport)
        if self.transport is not None:
            self.transport.close()

    async def wait_closed(self) -> None:
        """Until the connection is gone: after ``close()`` a TLS connection still exchanges
        its close_notify alerts."""
        await self._gone.wait()

    # -- internals ------------------------------------------------------------------------

    async def upgrade(self) -> None:
        """Send the opening handshake and wait for the server's 101 (RFC 6455 §4.1)."""
        if self.transport is None or self.closed or self.transport.is_closing():
            raise TransportError(f"{self.url}: connection closed before the WebSocket upgrade")
        self._opened = asyncio.get_running_loop().create_future()
        self.ws.send_request(self.ws.connect())
        _write_pending(self.ws, self.transport)
        await self._opened

    def _upgraded(self) -> None:
        if self._opened is None or self._opened.done() or self.ws.handshake_exc is not None:
            return
        self.subprotocol = self.ws.subprotocol
        if self.subprotocol != SUBPROTOCOL:
            self.closed = True
            self.ws.fail(1002, "the sip subprotocol is required (RFC 7118)")
            _write_pending(self.ws, self.transport)
            if self.transport is not None:
                self.transport.close()
            self._opened.set_exception(
                TransportError(
                    f"{self.url}: the server accepted the WebSocket upgrade without the "
                    f"subprotocol 'sip' (RFC 7118 §4.1): it selected "
                    f"{self.subprotocol or 'none'}"
                )
            )
            return
        self.upgraded = True
        self._opened.set_result(None)

    def _handshake_error(self, exc: Exception) -> TransportError:
        if isinstance(exc, InvalidStatus):
            response = exc.response
            body = bytes(response.body).decode("utf-8", "replace").strip().splitlines()
            why = f": {body[0][:120]}" if body else ""
            text = f"WebSocket upgrade refused: HTTP {response.status_code} "
            text += f"{response.reason_phrase}{why}"
        elif isinstance(exc, NegotiationError):
            text = f"WebSocket upgrade failed: {exc} (RFC 7118 §4.1 needs 'sip')"
        else:
            text = f"WebSocket upgrade failed: {exc}"
        return TransportError(f"{self.url}: {text}")

    def _frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode is Opcode.PONG:
            self._pong(bytes(frame.data))
        elif opcode in (Opcode.TEXT, Opcode.BINARY, Opcode.CONT):
            message = self._messages.frame(frame)
            if message is not None:
                self._message(message)

    def _message(self, data: bytes) -> None:
        if _is_keepalive(data):
            return
        self.stats.received += 1
        try:
            message = parse_message(data, self.max_message)
        except ParseError:
            self.stats.malformed += 1
            return  # RFC 3261 §18.1.2; the next message is still framed, so keep the flow
        if isinstance(message, Response):
            self.driver.on_response(message)

    def _ping(self, future: asyncio.Future[float] | None) -> None:
        if self.transport is None or self.closed:
            raise TransportError("WebSocket connection closed")
        self._ping_seq += 1
        payload = b"sipalive-%d" % self._ping_seq
        if len(self._pings) >= MAX_PINGS:
            oldest = next(iter(self._pings))
            _, stale = self._pings.pop(oldest)
            if stale is not None and not stale.done():
                stale.set_exception(TransportError("WebSocket ping forgotten (too many)"))
        try:
            self.ws.send_ping(payload)
        except InvalidState as exc:
            raise TransportError(f"WebSocket connection closed: {exc}") from exc
        self._pings[payload] = (clock.monotonic(), future)
        _write_pending(self.ws, self.transport)

    def _pong(self, payload: bytes) -> None:
        if payload not in self._pings:
            return  # RFC 6455 §5.5.3: an unsolicited pong needs no answer
        now = clock.monotonic()
        while self._pings:
            key = next(iter(self._pings))
            sent, future = self._pings.pop(key)
            rtt = now - sent
            if future is not None and not future.done():
                future.set_result(rtt)
            if key == payload:
                self.last_ping_rtt = rtt
                break
        self.stats.pongs += 1
        if self.on_pong is not None:
            self.on_pong()

    def _fail_pings(self, exc: Exception) -> None:
        for _, future in self._pings.values():
            if future is not None and not future.done():
                future.set_exception(exc)
        self._pings.clear()

    def _close_error(self) -> Exception | None:
        close = self.ws.close_rcvd
        if close is not None and close.code in (1000, 1001):
            return None  # normal closure, or the server going away: reconnect next time
        detail = _close_detail(self.ws)
        return TransportError(detail) if detail else None

    def _lost(self, detail: str, exc: Exception | None) -> None:
        self.closed = True
        self._fail_pings(TransportError(detail))
        self.driver.on_transport_error(self, detail)
        if self.on_close is not None:
            self.on_close(exc)


async def open_ws(
    driver: TransactionDriver,
    address: str,
    port: int,
    *,
    secure: bool,
    host: str | None = None,
    path: str = "/",
    ssl_context: ssl.SSLContext | None = None,
    timeout: float = 10.0,
    max_message: int = 65536,
    sockopts: list[tuple[str, str, int]] | None = None,
    via_host: str | None = None,
) -> WsFlow:
    """Connect to ``address:port``, hand-shake TLS (``secure``) and upgrade to WebSocket with
    the ``sip`` subprotocol; each phase is timed into ``flow.stats.phases`` (connect, tls,
    upgrade). ``host`` names the server in the URL (Host header), SNI and certificate check
    (RFC 5922 §4); it defaults to ``address``. Without ``ssl_context`` a wss connection
    verifies the server against the system's trust store."""
    loop = asyncio.get_running_loop()
    name = host or address
    scheme = "wss" if secure else "ws"
    url = f"{scheme}://{format_host(name)}:{port}{path if path.startswith('/') else '/' + path}"
    where = f"{format_host(address)}:{port}"
    flow: WsFlow | None = None
    phase = "connect"
    t0 = loop.time()
    try:
        async with asyncio.timeout(timeout):
            transport, flow = await loop.create_connection(
                lambda: WsFlow(driver, url, max_message=max_message, via_host=via_host),
                address,
                port,
            )
            flow.stats.phases["connect"] = loop.time() - t0
            if sockopts:
                apply_sockopts(transport.get_extra_info("socket"), sockopts)
            if secure:
                phase = "TLS handshake"
                t1 = loop.time()
                ctx = ssl_context or ssl.create_default_context()
                tls_transport = await loop.start_tls(transport, flow, ctx, server_hostname=name)
                if tls_transport is None:
                    raise TransportError(f"TLS with {where} failed")
                flow.transport = tls_transport
                flow.stats.phases["tls"] = loop.time() - t1
            phase = "WebSocket upgrade"
            t2 = loop.time()
            await flow.upgrade()
            flow.stats.phases["upgrade"] = loop.time() - t2
    except TimeoutError as exc:
        _abort(flow)
        raise TransportError(f"{url} ({where}): {phase} timed out after {timeout:g} s") from exc
    except ssl.SSLError as exc:
        _abort(flow)
        detail = getattr(exc, "verify_message", None) or exc.reason or str(exc)
        raise TransportError(f"TLS with {where}: {detail}") from exc
    except OSError as exc:
        _abort(flow)
        raise TransportError(f"connect to {where}: {exc.strerror or exc}") from exc
    except TransportError:
        _abort(flow)
        raise
    return flow


def _abort(flow: WsFlow | None) -> None:
    if flow is not None:
        flow.closed = True
        if flow.transport is not None:
            flow.transport.abort()


# -- server ---------------------------------------------------------------------------------


class WsServerProtocol(StreamServerProtocol):
    """A ``ws`` or ``wss`` connection of ``sipalive respond``: the opening handshake (``sip``
    required), then each SIP request in a message is answered in a message. Admission, the
    connection set and the idle sweep are the stream listener's; a WebSocket message keeps
    its framing, so a malformed one gets its 400 and the connection stays open."""

    def __init__(self, listener: Listener, transport_name: str) -> None:
        super().__init__(listener, transport_name)
        self.ws = ServerProtocol(
            subprotocols=[SUBPROTOCOL], max_size=listener.responder.config.max_message
        )
        self._messages = _Messages()

    def data_received(self, data: bytes) -> None:
        self.last_activity = now = time.monotonic()
        ws = self.ws
        ws.receive_data(data)
        progress = False
        for event in ws.events_received():
            if isinstance(event, Frame):
                if event.opcode is Opcode.PING:
                    self.listener.stats.pongs += 1  # the library queued the pong
                elif event.opcode in (Opcode.TEXT, Opcode.BINARY, Opcode.CONT):
                    message = self._messages.frame(event)
                    if message is not None:
                        progress = True
                        self._message(message, now)
            elif isinstance(event, HttpRequest):
                progress = True
                self._handshake(event)
        _write_pending(ws, self.transport)
        # The listener's slow-loris guard: the upgrade request, a frame (what the library
        # holds in its reader) or a fragmented message must each be completed in time.
        if not (ws.state is State.CONNECTING or ws.reader.buffer or self._messages.pending):
            self.partial_since = None
        elif self.partial_since is None or progress:
            self.partial_since = now

    def _handshake(self, request: HttpRequest) -> None:
        ws = self.ws
        response = ws.accept(request)
        ws.send_response(response)
        if response.status_code != 101:
            lst = self.listener
            lst.stats.client_errors += 1
            lst.log(
                f"{self.name} {self.peer[0]}:{self.peer[1]}: WebSocket upgrade refused, HTTP "
                f"{response.status_code} ({ws.handshake_exc})"
            )

    def _message(self, data: bytes, now: float) -> None:
        lst = self.listener
        ws = self.ws
        if ws.state is not State.OPEN:
            return  # a Close frame came in the same read: nothing may be sent any more
        if _is_keepalive(data):
            if data == _CRLF_PING:
                lst.stats.pongs += 1
                ws.send_text(_CRLF_PONG)  # RFC 5626 §4.4.1, as WebSocket UAs send it
            return
        if not lst.admission.admit(self.peer[0], now):
            lst.stats.dropped += 1
            return
        lst.stats.requests += 1
        try:
            message = parse_message(data, lst.responder.config.max_message)
        except ParseError as exc:
            lst.stats.client_errors += 1
            lst.log(f"{self.name} {self.peer[0]}:{self.peer[1]}: {exc.status} ({exc.reason})")
            bad = lst.responder.bad_request(data, exc, self.peer, self.name)
            if bad is not None:
                _queue_message(ws, bad.data)
                lst.stats.answered += 1
            return
        if not isinstance(message, Request):
            return  # a response on our server connection: nothing to do
        reply = lst.responder.handle_request(message, self.peer, self.name)
        if reply is None:
            return
        if reply.status is not None and reply.status >= 300:
            lst.stats.client_errors += 1
            lst.log(f"{self.name} {self.peer[0]}:{self.peer[1]}: {reply.method} -> {reply.status}")
        _queue_message(ws, reply.data)
        lst.stats.answered += 1

    def _close(self) -> None:
        if self.ws.state is State.OPEN:
            self.ws.send_close(1001, "idle")
            _write_pending(self.ws, self.transport)
        super()._close()
