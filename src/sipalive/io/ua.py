"""The asyncio user agent behind ``sipalive register``: one flow to the registrar, the pure
:class:`~sipalive.sip.registration.Registration`, one keep-alive machine, and stateless
answers to the requests the registrar relays to us.

The flow is a UDP socket (bound to ``--listen`` or an ephemeral port, not connected, so that
requests relayed by the registrar, or sent straight to the Contact, arrive on the very socket
the REGISTER left from) or a TCP/TLS connection, over which the registrar also sends us
requests (RFC 5626 §5.3; Kamailio reuses the connection the REGISTER came on). Every machine
runs on one :class:`~sipalive.io.timers.TimerWheel`: one loop timer in all.

What happens is reported, as frozen dataclasses, to the ``report`` callable: the
registration's own events and the UA's (flow up, inbound request, keep-alive traffic).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

from sipalive import clock
from sipalive.errors import ConfigError, ParseError
from sipalive.io.flows import apply_sockopts
from sipalive.io.resolver import Target
from sipalive.io.timers import TimerWheel
from sipalive.keepalive.crlf import (
    CrlfPinger,
    CrlfState,
    PongReceived,
    SendPing,
    UdpCrlfKeepalive,
)
from sipalive.keepalive.crlf import FlowFailed as KeepaliveFlowFailed
from sipalive.keepalive.stun import (
    MappedAddress,
    MappedAddressChanged,
    SendStun,
    StunErrorResponse,
    StunKeepalive,
    StunKeepaliveState,
)
from sipalive.keepalive.tcp import TcpKeepaliveOptions
from sipalive.sip.build import USER_AGENT
from sipalive.sip.framing import MessageReceived, PingReceived, Role, StreamFramer
from sipalive.sip.framing import PongReceived as FramerPong
from sipalive.sip.message import Request, Response, parse_message
from sipalive.sip.registration import (
    FlowFailed,
    FlowRecovered,
    KeepaliveAnswered,
    KeepaliveFailed,
    KeepaliveInterval,
    NewFlowNeeded,
    OptionsKeepalive,
    Refreshed,
    Registered,
    Registration,
    RegistrationFailed,
    SendRequest,
    Unregistered,
    answer,
)
from sipalive.sip.responder import ResponderConfig, StatelessResponder
from sipalive.stun import codec as stun

Address = tuple[str, int]
KEEPALIVE_MODES = ("crlf", "stun", "options", "register", "none")
ALLOW = ("INVITE", "ACK", "CANCEL", "BYE", "OPTIONS")


@dataclass(frozen=True, slots=True)
class UaConfig:
    """How the UA reaches the registrar and keeps the flow alive.

    ``keepalive``: one of :data:`KEEPALIVE_MODES` (``stun`` is for UDP only, RFC 5626
    §4.4.2; ``register`` is done by the Registration's ``refresh_every``). ``tcp_keepalive``
    is applied to every TCP/TLS connection. ``invite_status``/``invite_reason`` answer every
    inbound INVITE.
    """

    target: Target
    keepalive: str = "crlf"
    keepalive_interval: float = 25.0
    pong_timeout: float = 10.0
    listen: Address | None = None
    tcp_keepalive: TcpKeepaliveOptions | None = None
    ssl_context: ssl.SSLContext | None = None
    server_hostname: str | None = None
    invite_status: int = 480
    invite_reason: str = "Temporarily Unavailable"
    connect_timeout: float = 10.0
    stop_timeout: float = 5.0
    user_agent: str = USER_AGENT


# -- what the UA itself reports ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FlowUp:
    transport: str
    local: Address
    remote: Address


@dataclass(frozen=True, slots=True)
class InboundRequest:
    """A request reached us; ``status`` is what we answered (None: nothing, e.g. ACK)."""

    method: str
    from_uri: str
    source: Address
    transport: str
    status: int | None


@dataclass(frozen=True, slots=True)
class KeepaliveTraffic:
    """Keep-alive bytes: ``direction`` "sent" or "received"; ``kind`` "crlf", "pong",
    "stun", "options", "ping" (a registrar's own: nathelper's 4 bytes, a CRLFCRLF)."""

    direction: str
    kind: str
    peer: Address
    size: int
    rtt: float | None = None
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class UaProblem:
    """Something went wrong that is not a registration event (a malformed inbound message,
    an un-register with no answer in time). ``fatal``: the UA stops."""

    message: str
    fatal: bool = False


Keepalive = UdpCrlfKeepalive | CrlfPinger | StunKeepalive | OptionsKeepalive


# -- flows ---------------------------------------------------------------------------------


class _UdpFlow(asyncio.DatagramProtocol):
    def __init__(self, ua: UserAgent) -> None:
        self.ua = ua
        self.transport: asyncio.DatagramTransport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        self.ua._on_datagram(data, (str(addr[0]), cast(int, addr[1])))

    def error_received(self, exc: Exception) -> None:
        self.ua.report(UaProblem(f"UDP error: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True

    def sendto(self, data: bytes, addr: Address) -> None:
        if self.transport is not None and not self.closed:
            self.transport.sendto(data, addr)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class _StreamFlow(asyncio.Protocol):
    def __init__(self, ua: UserAgent, transport_name: str) -> None:
        self.ua = ua
        self.name = transport_name
        self.framer = StreamFramer(Role.CLIENT)
        self.transport: asyncio.Transport | None = None
        self.peer: Address = ("", 0)
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer = (str(peer[0]), int(peer[1])) if peer else ("", 0)

    def data_received(self, data: bytes) -> None:
        try:
            events = self.framer.receive(data)
        except ParseError as exc:
            self.ua.report(UaProblem(f"malformed stream from {self.peer}: {exc.reason}"))
            self._lost(f"malformed stream: {exc.reason}")
            return
        for event in events:
            if self.closed:
                return
            if isinstance(event, MessageReceived):
                self.ua._on_message(event.message, self.peer, self.name, self)
            elif isinstance(event, FramerPong):
                self.ua._on_pong(self)
            elif isinstance(event, PingReceived):
                self.send(b"\r\n")
                self.ua.report(KeepaliveTraffic("received", "ping", self.peer, 4))

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost(f"connection lost: {exc}" if exc else "connection closed by the registrar")

    def _lost(self, detail: str) -> None:
        if self.closed:
            return
        self.closed = True
        if self.transport is not None:
            self.transport.abort()
        self.ua._on_flow_lost(self, detail)

    def send(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


# -- the user agent ------------------------------------------------------------------------


class UserAgent:
    """Runs one :class:`Registration` until stopped. ``rand`` returns a float in [0, 1],
    ``rand_bytes(n)`` n random octets (STUN transaction IDs, the To-tag key)."""

    def __init__(
        self,
        registration: Registration,
        config: UaConfig,
        report: Callable[[object], None],
        *,
        rand: Callable[[], float],
        rand_bytes: Callable[[int], bytes],
        rand_token: Callable[[], str],
    ) -> None:
        if config.keepalive not in KEEPALIVE_MODES:
            raise ConfigError(
                "keepalive", f"expected one of {KEEPALIVE_MODES}, got {config.keepalive!r}"
            )
        self.registration = registration
        self.config = config
        self.report = report
        self.target = config.target
        self.remote: Address = (config.target.address, config.target.port)
        self.udp = config.target.transport == "udp"
        self._rand = rand
        self._rand_bytes = rand_bytes
        self._rand_token = rand_token
        self._tag_key = rand_bytes(16)
        self.responder = StatelessResponder(
            ResponderConfig(allow=ALLOW, server=config.user_agent, tag_key=self._tag_key)
        )
        self.loop = asyncio.get_running_loop()
        self.wheel = TimerWheel(self.loop)
        self._udp: _UdpFlow | None = None
        self._stream: _StreamFlow | None = None
        self._local: Address = ("0.0.0.0", 0)
        self._connecting: asyncio.Task[None] | None = None
        self._done = asyncio.Event()
        self._ever_registered = False
        self.exit_code = 0
        self._keepalive = self._make_keepalive()

    # -- running ---------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, force: asyncio.Event | None = None) -> int:
        """Register and keep the registration until ``stop`` is set, then un-register (at
        most ``stop_timeout`` seconds, or until ``force``). Returns the exit status."""
        self.wheel.add(self.registration, self._on_registration)
        if self._keepalive is not None:
            self.wheel.add(self._keepalive, self._on_keepalive)
        self._on_registration(self.registration.start(clock.monotonic()))
        stopping = asyncio.ensure_future(stop.wait())
        done = asyncio.ensure_future(self._done.wait())
        try:
            await asyncio.wait({stopping, done}, return_when=asyncio.FIRST_COMPLETED)
            if not self._done.is_set():
                await self._unregister(force)
        finally:
            stopping.cancel()
            done.cancel()
            self.close()
        return self.exit_code

    async def _unregister(self, force: asyncio.Event | None) -> None:
        self._stop_keepalive()
        self._on_registration(self.registration.stop(clock.monotonic()))
        waiters = {asyncio.ensure_future(self._done.wait())}
        if force is not None:
            waiters.add(asyncio.ensure_future(force.wait()))
        try:
            finished, _ = await asyncio.wait(
                waiters, timeout=self.config.stop_timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for waiter in waiters:
                waiter.cancel()
        if not self._done.is_set():
            why = "interrupted" if finished else f"no answer within {self.config.stop_timeout:g} s"
            self.report(UaProblem(f"un-register: {why}"))
            self.exit_code = 1

    def close(self) -> None:
        self.wheel.close()
        if self._connecting is not None:
            self._connecting.cancel()
        if self._stream is not None:
            self._stream.close()
        if self._udp is not None:
            self._udp.close()

    # -- registration events ---------------------------------------------------------------

    def _feed(self, events: Sequence[object]) -> None:
        """Events from a call into the registration made outside its timer."""
        self._on_registration(events)
        self.wheel.touch(self.registration)

    def _on_registration(self, events: Sequence[object]) -> None:
        for event in events:
            if isinstance(event, SendRequest):
                self._send(event.data)
                continue
            if isinstance(event, NewFlowNeeded):
                self._open_flow()
                continue
            self.report(event)
            if isinstance(event, Registered | Refreshed | FlowRecovered):
                self._ever_registered = True
                self._start_keepalive()
            elif isinstance(event, FlowFailed):
                self._stop_keepalive()
                if self._stream is not None:
                    self._stream.close()
                    self._stream = None
            elif isinstance(event, RegistrationFailed):
                self._stop_keepalive()
                if event.fatal:
                    self.exit_code = 1
                    self._done.set()
            elif isinstance(event, KeepaliveInterval):
                self._set_interval(min(self.config.keepalive_interval, event.interval))
            elif isinstance(event, Unregistered):
                ok = event.status is None or 200 <= event.status < 300
                self.exit_code = 0 if ok else 1
                self._done.set()

    # -- flows -----------------------------------------------------------------------------

    def _open_flow(self) -> None:
        if self._connecting is not None and not self._connecting.done():
            return
        if self.udp and self._udp is not None and not self._udp.closed:
            # one socket for the UA's life: a new "flow" over UDP re-uses it, so the NAT
            # sees the same 5-tuple and requests keep reaching the bound port
            self.loop.call_soon(self._flow_ready)
            return
        self._connecting = self.loop.create_task(self._connect())

    def _flow_ready(self) -> None:
        self._feed(self.registration.flow_ready(self._local, clock.monotonic()))

    async def _connect(self) -> None:
        target = self.target
        try:
            async with asyncio.timeout(self.config.connect_timeout):
                if self.udp:
                    await self._open_udp()
                else:
                    await self._open_stream()
        except (OSError, TimeoutError) as exc:
            detail = _describe(exc, self.config.connect_timeout)
            where = f"{target.transport}:{target.address}:{target.port}"
            reason = f"connect to {where}: {detail}"
            if isinstance(exc, ssl.SSLCertVerificationError) and not self._ever_registered:
                self.report(UaProblem(reason + " (see --ca, --insecure)", fatal=True))
                self.exit_code = 1
                self._done.set()
                return
            self._feed(self.registration.flow_failed(reason, clock.monotonic()))
            return
        self.report(FlowUp(target.transport, self._local, self.remote))
        self._flow_ready()

    async def _open_udp(self) -> None:
        family = socket.AF_INET6 if ":" in self.target.address else socket.AF_INET
        listen = self.config.listen or (("::" if family == socket.AF_INET6 else "0.0.0.0"), 0)
        _, flow = await self.loop.create_datagram_endpoint(
            lambda: _UdpFlow(self), local_addr=listen, family=family
        )
        assert flow.transport is not None
        bound = flow.transport.get_extra_info("sockname")
        self._udp = flow
        host = listen[0]
        if host in ("0.0.0.0", "::", ""):
            host = _route_source(family, self.remote)
        self._local = (host, int(bound[1]))

    async def _open_stream(self) -> None:
        target = self.target
        name = target.transport
        transport, flow = await self.loop.create_connection(
            lambda: _StreamFlow(self, name),
            target.address,
            target.port,
            ssl=self.config.ssl_context if name == "tls" else None,
            server_hostname=self.config.server_hostname if name == "tls" else None,
            local_addr=self.config.listen,
        )
        if self.config.tcp_keepalive is not None:
            apply_sockopts(transport.get_extra_info("socket"), self.config.tcp_keepalive.sockopts())
        sockname = transport.get_extra_info("sockname")
        self._local = (str(sockname[0]), int(sockname[1]))
        self._stream = flow

    def _on_flow_lost(self, flow: _StreamFlow, detail: str) -> None:
        if flow is not self._stream:
            return
        self._stream = None
        self._stop_keepalive()
        self._feed(self.registration.flow_failed(detail, clock.monotonic()))

    def _send(self, data: bytes) -> None:
        if self.udp:
            if self._udp is not None:
                self._udp.sendto(data, self.remote)
            return
        if self._stream is None or self._stream.closed:
            self.loop.call_soon(self._flow_gone)
            return
        self._stream.send(data)

    def _flow_gone(self) -> None:
        if self._stream is None:
            self._feed(self.registration.flow_failed("no connection", clock.monotonic()))

    # -- what arrives ----------------------------------------------------------------------

    def _on_datagram(self, data: bytes, source: Address) -> None:
        if not data:
            return
        if stun.is_stun(data):
            self._on_stun(data, source)
            return
        if not data.strip(b"\r\n\x00"):
            # a CRLF or nathelper's zero bytes: the registrar keeping the binding open
            self.report(KeepaliveTraffic("received", "ping", source, len(data)))
            return
        try:
            message = parse_message(data)
        except ParseError as exc:
            reply = self.responder.bad_request(data, exc, source, "udp")
            if reply is not None and self._udp is not None:
                self._udp.sendto(reply.data, reply.addr)
            self.report(UaProblem(f"malformed message from {source}: {exc.reason}"))
            return
        self._on_message(message, source, "udp", None)

    def _on_stun(self, data: bytes, source: Address) -> None:
        try:
            message = stun.parse(data)
        except ParseError:
            return
        if message.msg_class is stun.StunClass.REQUEST:
            reply = self.responder.handle_datagram(data, source)
            if reply is not None and self._udp is not None:
                self._udp.sendto(reply.data, reply.addr)
            return
        if isinstance(self._keepalive, StunKeepalive) and source == self.remote:
            self._on_keepalive(self._keepalive.response_received(message, clock.monotonic()))
            self.wheel.touch(self._keepalive)

    def _on_message(
        self,
        message: Request | Response,
        source: Address,
        transport: str,
        stream: _StreamFlow | None,
    ) -> None:
        if isinstance(message, Request):
            self._on_request(message, source, transport, stream)
            return
        if self.udp and source != self.remote:
            return  # only the registrar answers our requests
        now = clock.monotonic()
        if message.cseq.method == "REGISTER":
            self._feed(self.registration.receive_response(message, now))
        elif isinstance(self._keepalive, OptionsKeepalive):
            self._on_keepalive(self._keepalive.receive_response(message, now))
            self.wheel.touch(self._keepalive)

    def _on_request(
        self, request: Request, source: Address, transport: str, stream: _StreamFlow | None
    ) -> None:
        method = request.method
        status: int | None = None
        data: bytes | None = None
        dest = source
        if method == "INVITE":
            status = self.config.invite_status
            data, dest = answer(
                request,
                status,
                self.config.invite_reason,
                source=source,
                transport=transport,
                tag_key=self._tag_key,
            )
        elif method in ("BYE", "CANCEL"):
            # no dialog, and the INVITE was answered at once: nothing to end (RFC 3261 §9.2)
            status = 481
            data, dest = answer(
                request,
                status,
                "Call/Transaction Does Not Exist",
                source=source,
                transport=transport,
                tag_key=self._tag_key,
            )
        else:
            reply = self.responder.handle_request(request, source, transport)
            if reply is not None:
                data, dest, status = reply.data, reply.addr, reply.status
        if data is not None:
            if stream is not None:
                stream.send(data)
            elif self._udp is not None:
                self._udp.sendto(data, dest)
        self.report(InboundRequest(method, request.from_.uri, source, transport, status))

    def _on_pong(self, flow: _StreamFlow) -> None:
        if isinstance(self._keepalive, CrlfPinger) and flow is self._stream:
            self._on_keepalive(self._keepalive.pong_received(clock.monotonic()))
            self.wheel.touch(self._keepalive)

    # -- keep-alives -----------------------------------------------------------------------

    def _make_keepalive(self) -> Keepalive | None:
        mode, interval = self.config.keepalive, self.config.keepalive_interval
        if mode == "crlf":
            if self.udp:
                return UdpCrlfKeepalive(interval, rand=self._rand)
            return CrlfPinger(interval, self.config.pong_timeout, rand=self._rand)
        if mode == "stun":
            if not self.udp:
                raise ConfigError("keepalive", "STUN keep-alives are for UDP (RFC 5626 §4.4.2)")
            return StunKeepalive(
                interval,
                rand=self._rand,
                rand_bytes=self._rand_bytes,
                software=self.config.user_agent,
                timeout=self.config.pong_timeout,  # a cut must be seen before it heals
            )
        if mode == "options":
            reg = self.registration.config
            return OptionsKeepalive(
                reg.registrar_uri,
                transport=reg.transport,
                from_uri=reg.aor,
                interval=interval,
                timers=reg.timers,
                rand=self._rand,
                rand_token=self._rand_token,
                user_agent=self.config.user_agent,
            )
        return None  # "register" is the registration's own refresh_every; "none" is none

    def _keepalive_running(self) -> bool:
        ka = self._keepalive
        if isinstance(ka, CrlfPinger):
            return ka.state in (CrlfState.IDLE, CrlfState.WAITING_PONG)
        if isinstance(ka, StunKeepalive):
            return ka.state in (StunKeepaliveState.IDLE, StunKeepaliveState.WAITING_RESPONSE)
        if isinstance(ka, UdpCrlfKeepalive | OptionsKeepalive):
            return ka.running
        return False

    def _start_keepalive(self) -> None:
        ka = self._keepalive
        if ka is None or self._keepalive_running():
            return
        now = clock.monotonic()
        if isinstance(ka, OptionsKeepalive):
            ka.start(now, self._local)
        else:
            ka.start(now)
        self.wheel.touch(ka)

    def _stop_keepalive(self) -> None:
        if self._keepalive is not None:
            self._keepalive.stop()

    def _set_interval(self, interval: float) -> None:
        ka = self._keepalive
        if ka is not None:
            ka.set_interval(interval, clock.monotonic())
            self.wheel.touch(ka)

    def _on_keepalive(self, events: Sequence[object]) -> None:
        now = clock.monotonic()
        for event in events:
            if isinstance(event, SendPing):
                self._send(event.data)
                self.report(KeepaliveTraffic("sent", "crlf", self.remote, len(event.data)))
            elif isinstance(event, SendStun):
                if self._udp is not None:
                    self._udp.sendto(event.data, self.remote)
                self.report(KeepaliveTraffic("sent", "stun", self.remote, len(event.data)))
            elif isinstance(event, SendRequest):
                self._send(event.data)
                self.report(KeepaliveTraffic("sent", "options", self.remote, len(event.data)))
            elif isinstance(event, PongReceived):
                self.report(KeepaliveTraffic("received", "pong", self.remote, 2, event.rtt))
            elif isinstance(event, MappedAddress):
                detail = f"mapped {event.addr[0]}:{event.addr[1]}"
                self.report(KeepaliveTraffic("received", "stun", self.remote, 0, event.rtt, detail))
            elif isinstance(event, KeepaliveAnswered):
                detail = f"status {event.status}"
                self.report(
                    KeepaliveTraffic("received", "options", self.remote, 0, event.rtt, detail)
                )
            elif isinstance(event, MappedAddressChanged | StunErrorResponse):
                self.report(event)
            elif isinstance(event, KeepaliveFlowFailed | KeepaliveFailed):
                self._feed(self.registration.flow_failed(event.reason, now))


def _route_source(family: int, remote: Address) -> str:
    """The local address the kernel would send from to ``remote`` (no packet is sent)."""
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect(remote)
        return str(probe.getsockname()[0])


def _describe(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"timed out after {timeout:g} s"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {exc.reason or exc}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
