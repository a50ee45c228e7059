"""A blocking, one-target probe for ``sipalive check``: no asyncio, no event loop.

It drives the same pure ``ClientTransaction`` as the asyncio code, with a socket timeout as
its only timer. UDP uses a connected socket so that an ICMP port unreachable ends the
transaction at once as a transport error (RFC 3261 §8.1.3.1: 503), not after Timer F.
"""

from __future__ import annotations

import _socket  # not ``socket``: its enum conversions cost milliseconds of start-up
from posix import urandom  # not ``os``: importing it costs ~1 ms of a check's start-up

from sipalive import clock
from sipalive.errors import ParseError
from sipalive.sip.build import make_options
from sipalive.sip.message import Response, parse_message
from sipalive.sip.record import Record
from sipalive.sip.transaction import (
    Cause,
    ClientTransaction,
    Completed,
    Event,
    TimerConfig,
    TransactionResult,
    Transmit,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from sipalive.sip.framing import StreamFramer


class Destination(Record):
    """Where to probe: transport, IP literal, port, the name TLS verifies, the Request-URI."""

    __slots__ = ("address", "host", "port", "transport", "uri")
    transport: str
    address: str
    port: int
    host: str
    uri: str

    def __init__(self, transport: str, address: str, port: int, host: str, uri: str) -> None:
        self._set(transport=transport, address=address, port=port, host=host, uri=uri)


class OneShotResult(Record):
    __slots__ = ("destination", "local", "phases", "result")
    destination: Destination
    result: TransactionResult
    local: tuple[str, int] | None
    phases: dict[str, float]

    def __init__(
        self,
        destination: Destination,
        result: TransactionResult,
        local: tuple[str, int] | None = None,
        phases: dict[str, float] | None = None,
    ) -> None:
        self._set(destination=destination, result=result, local=local, phases=phases or {})


def new_ids() -> tuple[str, str, str]:
    """Branch, From tag and Call-ID from the OS random source."""
    raw = urandom(20).hex()
    return "z9hG4bK" + raw[:16], raw[16:26], raw[26:] + "@sipalive"


def probe(
    dest: Destination,
    timers: TimerConfig,
    *,
    from_uri: str | None = None,
    user_agent: str | None = None,
    ssl_context: object | None = None,
) -> OneShotResult:
    """Send one OPTIONS and wait for its final response, a timeout, or a transport error."""
    family = _socket.AF_INET6 if ":" in dest.address else _socket.AF_INET
    start = clock.monotonic()
    deadline = start + timers.give_up_after()
    phases: dict[str, float] = {}
    reliable = dest.transport != "udp"
    sock: _socket.socket
    if dest.transport == "tls":
        import socket  # ssl wraps only socket.socket objects

        sock = socket.socket(family, _socket.SOCK_STREAM)
    else:
        sock = _socket.socket(family, _socket.SOCK_STREAM if reliable else _socket.SOCK_DGRAM)
    try:
        try:
            if reliable:
                sock.settimeout(max(0.0, deadline - clock.monotonic()))
            sock.connect((dest.address, dest.port))
            if reliable:
                phases["connect"] = clock.monotonic() - start
            if dest.transport == "tls":
                import ssl

                assert isinstance(ssl_context, ssl.SSLContext)
                assert isinstance(sock, socket.socket)
                t0 = clock.monotonic()
                sock = ssl_context.wrap_socket(sock, server_hostname=dest.host)
                phases["tls"] = clock.monotonic() - t0
        except TimeoutError:
            now = clock.monotonic()
            return OneShotResult(
                dest, TransactionResult.failure(408, Cause.TIMEOUT, start, now, "connect timeout")
            )
        except OSError as exc:
            now = clock.monotonic()
            error = exc.strerror or str(exc)
            if "certificate" in str(exc).lower() or exc.__class__.__name__.startswith("SSL"):
                error = f"TLS: {exc}"
            return OneShotResult(
                dest,
                TransactionResult.failure(503, Cause.TRANSPORT_ERROR, start, now, error),
                phases=phases,
            )
        local = sock.getsockname()[:2]
        ua = user_agent or "sipalive/0.1"
        branch, tag, call_id = new_ids()
        request = make_options(
            dest.uri,
            transport=dest.transport,
            local=(local[0], local[1]),
            branch=branch,
            from_tag=tag,
            call_id=call_id,
            from_uri=from_uri,
            user_agent=ua,
        )
        txn = ClientTransaction(request, reliable=reliable, timers=timers)
        framer = None
        if reliable:  # imported before the clock starts: its import is not network time
            from sipalive.sip.framing import Role, StreamFramer

            framer = StreamFramer(Role.CLIENT)
        sent_at = clock.monotonic()
        result = _run(sock, txn, txn.start(sent_at), framer)
        if result.response is not None:
            phases["response"] = result.finished - sent_at
        return OneShotResult(dest, result, (local[0], local[1]), phases)
    finally:
        sock.close()


def _run(
    sock: _socket.socket, txn: ClientTransaction, events: list[Event], framer: StreamFramer | None
) -> TransactionResult:
    while True:
        for event in events:
            if isinstance(event, Transmit):
                try:
                    sock.sendall(event.data)
                except OSError as exc:
                    events = txn.transport_error(clock.monotonic(), exc.strerror or str(exc))
                    break
            elif isinstance(event, Completed):
                return event.result
        else:
            events = []
        if txn.result is not None:
            return txn.result
        if events:
            continue
        when = txn.get_timer()
        if when is None:  # cannot happen while TRYING/PROCEEDING; keep mypy and readers sure
            raise AssertionError("transaction without a timer")
        timeout = when - clock.monotonic()
        if timeout <= 0:
            events = txn.handle_timer(clock.monotonic())
            continue
        sock.settimeout(timeout)
        try:
            data = sock.recv(65536)
        except TimeoutError:
            events = txn.handle_timer(clock.monotonic())
            continue
        except OSError as exc:
            events = txn.transport_error(clock.monotonic(), _icmp_text(exc))
            continue
        now = clock.monotonic()
        if framer is not None:
            if not data:
                events = txn.transport_error(now, "connection closed by peer")
                continue
            try:
                stream_events = framer.receive(data)
            except ParseError as exc:
                events = txn.transport_error(now, f"malformed stream: {exc.reason}")
                continue
            from sipalive.sip.framing import MessageReceived

            for ev in stream_events:
                msg = ev.message if isinstance(ev, MessageReceived) else None
                if isinstance(msg, Response) and txn.matches(msg):
                    events.extend(txn.receive_response(msg, now))
            continue
        if not data or data[0] < 0x41:  # keep-alive, STUN: not for this transaction
            continue
        try:
            message = parse_message(data)
        except ParseError:
            continue  # a malformed response is dropped (RFC 3261 §18.1.2)
        if isinstance(message, Response) and txn.matches(message):
            events = txn.receive_response(message, now)


def _icmp_text(exc: OSError) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "ICMP port unreachable (connection refused)"
    return exc.strerror or str(exc)
