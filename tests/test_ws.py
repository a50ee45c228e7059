"""SIP over WebSocket (RFC 7118): WsFlow against our ``respond`` listener (in-process and as
the CLI), against misbehaving servers built on the ``websockets`` library, and against
Kamailio's websocket module (realpeer)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import TypeVar, cast

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosedError, InvalidStatus
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from procs import make_cert
from realpeers import (
    DATA_DIR,
    KAMAILIO_MODULES,
    PeerStartError,
    binary,
    free_port,
    free_port_pair,
    unavailable,
)
from sipalive.cli.common import UsageError
from sipalive.cli.respond import parse_listen
from sipalive.errors import TransportError
from sipalive.io.driver import TransactionDriver
from sipalive.io.limits import Admission
from sipalive.io.server import Listener, ListenSpec, start_listeners, sweep_idle
from sipalive.io.tlsctx import TlsOptions, client_context, server_context
from sipalive.io.ws import WsFlow, open_ws
from sipalive.sip.build import OptionsTemplate
from sipalive.sip.message import Response, parse_message
from sipalive.sip.responder import ResponderConfig, StatelessResponder
from sipalive.sip.transaction import Cause, ClientTransaction, TimerConfig, TransactionResult

T = TypeVar("T")
SIP = Subprotocol("sip")
TIMERS = TimerConfig(timeout=5.0)


def run(coro: Awaitable[T]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, 20)

    return asyncio.run(bounded())


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_cert(tmp_path_factory.mktemp("certs"))


class Probe:
    """OPTIONS probes over one flow, numbered like the CLI numbers them."""

    def __init__(self, driver: TransactionDriver, flow: WsFlow, port: int, transport: str) -> None:
        self.driver = driver
        self.flow = flow
        self.template = OptionsTemplate(
            f"sip:ping@127.0.0.1:{port};transport={transport}",
            transport=transport,
            local=flow.local,
            from_tag="wstest",
        )
        self.n = 0

    def start(self) -> asyncio.Future[TransactionResult]:
        self.n += 1
        branch = f"z9hG4bKws{os.getpid()}x{self.n}"
        data = self.template.fill(branch, f"{self.n}-ws@sipalive", self.n)
        txn = ClientTransaction.from_bytes(
            data, branch=branch, method="OPTIONS", reliable=True, timers=TIMERS
        )
        return self.driver.start(txn, self.flow)

    async def options(self) -> TransactionResult:
        return await self.start()


class Served:
    """Our responder in this process on ephemeral ports; its log lines are kept."""

    def __init__(self, listener: Listener, lines: list[str], ports: dict[str, int]) -> None:
        self.listener = listener
        self.lines = lines
        self.ports = ports


@asynccontextmanager
async def listening(
    *specs: str, tls: tuple[Path, Path] | None = None, config: ResponderConfig | None = None
) -> AsyncIterator[Served]:
    lines: list[str] = []
    listener = Listener(StatelessResponder(config), Admission(None, None), log=lines.append)
    ctx = server_context(TlsOptions(None, False, str(tls[0]), str(tls[1]))) if tls else None
    opened = await start_listeners(listener, [ListenSpec(t, "127.0.0.1", 0) for t in specs], ctx)
    servers = [cast(asyncio.Server, s) for s in opened]
    try:
        yield Served(
            listener,
            lines,
            {t: s.sockets[0].getsockname()[1] for t, s in zip(specs, servers, strict=True)},
        )
    finally:
        for server in servers:
            server.close()
        for conn in list(listener.connections):
            if conn.transport is not None:
                conn.transport.abort()
        for server in servers:
            await server.wait_closed()


# -- the client flow against our responder ----------------------------------------------------


def test_options_over_ws_gets_200_with_received_and_rport() -> None:
    async def scenario() -> None:
        async with listening("ws") as srv:
            port = srv.ports["ws"]
            driver = TransactionDriver()
            flow = await open_ws(driver, "127.0.0.1", port, secure=False)
            try:
                assert flow.subprotocol == "sip"
                assert set(flow.stats.phases) == {"connect", "upgrade"}
                assert flow.local[0].endswith(".invalid")
                assert flow.local[1] == flow.sockname[1]
                probe = Probe(driver, flow, port, "ws")
                results = [await probe.options() for _ in range(3)]
            finally:
                flow.close()
            for result in results:
                assert result.status == 200, result.error
                assert result.cause == Cause.RESPONSE
                assert result.response is not None
                via = result.response.vias[0]
                assert via.transport == "WS"
                assert via.host == flow.local[0]
                # RFC 3261 §18.2.1 (sent-by is a domain name) and RFC 3581 §4
                assert via.received == "127.0.0.1"
                assert via.rport == flow.sockname[1]
            assert flow.stats.received == 3
            stats = srv.listener.stats
            assert stats.requests == 3
            assert stats.answered == 3
            assert stats.connections == 1
            assert not srv.lines

    run(scenario())


def test_ws_ping_rtt_and_keepalive_callback() -> None:
    async def scenario() -> None:
        async with listening("ws") as srv:
            flow = await open_ws(TransactionDriver(), "127.0.0.1", srv.ports["ws"], secure=False)
            try:
                rtts = [await flow.ping(timeout=2) for _ in range(3)]
                assert all(0 < rtt < 1 for rtt in rtts)
                pongs: list[float | None] = []
                got = asyncio.Event()

                def on_pong() -> None:
                    pongs.append(flow.last_ping_rtt)
                    got.set()

                flow.on_pong = on_pong  # how the monitor's keep-alive machine hears of it
                flow.send_ping()
                await asyncio.wait_for(got.wait(), 2)
                assert pongs
                assert pongs[0] is not None
                assert pongs[0] > 0
                assert flow.stats.pongs == 4
                assert srv.listener.stats.pongs == 4  # the library answered every ping
            finally:
                flow.close()

    run(scenario())


def test_server_without_sip_subprotocol_is_a_clear_error() -> None:
    async def handler(ws: ServerConnection) -> None:
        await ws.wait_closed()

    async def scenario() -> None:
        async with serve(handler, "127.0.0.1", 0) as server:  # no subprotocols at all
            port = server.sockets[0].getsockname()[1]
            with pytest.raises(TransportError, match=r"without the subprotocol 'sip'.*none"):
                await open_ws(TransactionDriver(), "127.0.0.1", port, secure=False, timeout=5)

    run(scenario())


def test_server_refusing_the_upgrade_names_the_http_status() -> None:
    async def refuse(conn: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await conn.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nno sip.\r\n")
        await writer.drain()
        writer.close()

    async def scenario() -> None:
        server = await asyncio.start_server(refuse, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            with pytest.raises(TransportError, match=r"refused: HTTP 404 Not Found: no sip\."):
                await open_ws(TransactionDriver(), "127.0.0.1", port, secure=False, path="/x")
        finally:
            server.close()

    run(scenario())


def test_connect_refused_and_timeout_are_transport_errors() -> None:
    writers: list[asyncio.StreamWriter] = []

    async def silent(_r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)  # accepts, then never answers the upgrade

    async def scenario() -> None:
        port = free_port("tcp")
        with pytest.raises(TransportError, match=r"connect to 127\.0\.0\.1"):
            await open_ws(TransactionDriver(), "127.0.0.1", port, secure=False)
        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            with pytest.raises(TransportError, match=r"WebSocket upgrade timed out after 0\.3 s"):
                await open_ws(TransactionDriver(), "127.0.0.1", port, secure=False, timeout=0.3)
        finally:
            server.close()
            for writer in writers:
                writer.close()
            await server.wait_closed()

    run(scenario())


def test_wss_verified_with_the_ca_and_refused_without(certs: tuple[Path, Path]) -> None:
    cert, _ = certs

    async def scenario() -> None:
        async with listening("wss", tls=certs) as srv:
            port = srv.ports["wss"]
            driver = TransactionDriver()
            ctx = client_context(TlsOptions(ca=str(cert)))
            flow = await open_ws(driver, "127.0.0.1", port, secure=True, ssl_context=ctx)
            try:
                assert set(flow.stats.phases) == {"connect", "tls", "upgrade"}
                result = await Probe(driver, flow, port, "wss").options()
                assert result.status == 200, result.error
                assert result.response is not None
                assert result.response.vias[0].transport == "WSS"
                assert await flow.ping() > 0
            finally:
                flow.close()
            await asyncio.wait_for(flow.wait_closed(), 5)
            assert flow.closed
            # the system trust store does not know our self-signed certificate
            with pytest.raises(TransportError, match=r"TLS with 127\.0\.0\.1:\d+: .*certificate"):
                await open_ws(driver, "127.0.0.1", port, secure=True)
            # RFC 5922 §4: the name in the URI must be in the certificate
            with pytest.raises(TransportError, match=r"Hostname mismatch|doesn't match"):
                await open_ws(
                    driver, "127.0.0.1", port, secure=True, host="sip.example.com", ssl_context=ctx
                )

    run(scenario())


@pytest.mark.parametrize(
    ("how", "detail", "clean"),
    [
        ("abort", "connection lost: [Errno 104] Connection reset by peer", False),
        ("fin", "closed by peer", True),
        ("close-1011", "WebSocket closed by peer: code 1011 broken", False),
        ("close-1001", "WebSocket closed by peer: code 1001", True),
    ],
)
def test_connection_loss_fails_in_flight_transactions_with_503(
    how: str, detail: str, clean: bool
) -> None:
    """RFC 3261 §8.1.3.1: the transport failed, so each transaction on it ends at once."""

    async def handler(ws: ServerConnection) -> None:
        await ws.recv()  # the OPTIONS: never answered
        if how == "abort":  # a reset: SO_LINGER 0, then close
            sock = ws.transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            ws.transport.abort()
        elif how == "fin":
            ws.transport.close()
        else:
            await ws.close(int(how.split("-")[1]), "broken" if how == "close-1011" else "")

    async def scenario() -> None:
        async with serve(handler, "127.0.0.1", 0, subprotocols=[SIP]) as server:
            port = server.sockets[0].getsockname()[1]
            driver = TransactionDriver()
            flow = await open_ws(driver, "127.0.0.1", port, secure=False)
            closes: list[Exception | None] = []
            flow.on_close = closes.append
            probe = Probe(driver, flow, port, "ws")
            started = time.monotonic()
            first, second = probe.start(), probe.start()
            results = await asyncio.gather(first, second)
            assert time.monotonic() - started < 2  # not Timer F
            for result in results:
                assert result.status == 503
                assert result.cause == Cause.TRANSPORT_ERROR
                assert detail in (result.error or "")
            assert flow.closed
            assert len(closes) == 1
            assert (closes[0] is None) == clean
            with pytest.raises(TransportError):
                flow.send(b"OPTIONS sip:x SIP/2.0\r\n\r\n")
            with pytest.raises(TransportError):
                await flow.ping()
            assert len(driver) == 0

    run(scenario())


def test_pong_of_a_later_ping_acknowledges_earlier_ones() -> None:
    """RFC 6455 §5.5.3: a peer may answer only the most recent of several pings."""

    async def scenario() -> None:
        async with listening("ws") as srv:
            flow = await open_ws(TransactionDriver(), "127.0.0.1", srv.ports["ws"], secure=False)
            try:
                first = asyncio.ensure_future(flow.ping())
                await asyncio.sleep(0)  # ping 1 is out
                flow.send_ping()  # ping 2
                flow._pong(b"unsolicited")  # RFC 6455 §5.5.3: ignored
                assert len(flow._pings) == 2
                flow._pong(b"sipalive-2")  # as if the peer answered only the latest ping
                assert not flow._pings
                assert flow.stats.pongs == 1
                assert await first > 0
                await asyncio.sleep(0.05)  # the real pongs, now unsolicited, change nothing
                assert flow.stats.pongs == 1
            finally:
                flow.close()

    run(scenario())


def test_responses_in_binary_fragmented_messages_are_parsed() -> None:
    """RFC 7118 §4.2: one SIP message per WebSocket message, text or binary, in fragments
    or not, with or without Content-Length; CRLF-only and malformed ones are skipped."""

    async def handler(ws: ServerConnection) -> None:
        async for message in ws:
            raw = message.encode() if isinstance(message, str) else message
            req = parse_message(raw)
            reply = StatelessResponder().handle_request(req, ("127.0.0.1", 1), "ws")  # type: ignore[arg-type]
            assert reply is not None
            await ws.send(b"\r\n")
            await ws.send(b"SIP/2.0 garbage")
            head, _, _ = reply.data.partition(b"Content-Length: 0\r\n")
            data = head + b"\r\n"
            await ws.send([data[:40], data[40:90], data[90:]])  # binary, in three fragments

    async def scenario() -> None:
        async with serve(handler, "127.0.0.1", 0, subprotocols=[SIP]) as server:
            port = server.sockets[0].getsockname()[1]
            driver = TransactionDriver()
            flow = await open_ws(driver, "127.0.0.1", port, secure=False)
            try:
                result = await Probe(driver, flow, port, "ws").options()
                assert result.status == 200, result.error
                assert flow.stats.malformed == 1
                assert flow.stats.received == 2
            finally:
                flow.close()

    run(scenario())


# -- the responder's ws listener, seen by another WebSocket implementation -------------------


def _options(n: int, via: str = "SIP/2.0/WS df7jal23ls0d.invalid;branch=z9hG4bKws{n};rport") -> str:
    return (
        "OPTIONS sip:ping@127.0.0.1 SIP/2.0\r\n"
        f"Via: {via.format(n=n)}\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:a@df7jal23ls0d.invalid>;tag=t\r\n"
        "To: <sip:ping@127.0.0.1>\r\n"
        f"Call-ID: ws-{n}\r\n"
        f"CSeq: {n} OPTIONS\r\n"
        "\r\n"
    )  # no Content-Length: RFC 7118 §4.2 does not need it


def test_respond_over_ws_text_binary_fragments_crlf_and_garbage() -> None:
    async def scenario() -> None:
        async with listening("ws") as srv:
            url = f"ws://127.0.0.1:{srv.ports['ws']}/any/path"
            async with connect(url, subprotocols=[SIP]) as ws:
                assert ws.subprotocol == "sip"
                await ws.send(_options(1))
                first = await ws.recv()
                assert isinstance(first, str)  # a UTF-8 answer goes in a text message
                response = parse_message(first.encode())
                assert isinstance(response, Response)
                assert response.status == 200
                assert response.vias[0].received == "127.0.0.1"
                assert response.vias[0].rport == ws.local_address[1]
                await ws.send(_options(2).encode())  # binary
                second = parse_message((await ws.recv()).encode())
                assert isinstance(second, Response)
                assert second.cseq.seq == 2
                text = _options(3)
                await ws.send([text[:30], text[30:100], text[100:]])  # fragmented
                third = parse_message((await ws.recv()).encode())
                assert isinstance(third, Response)
                assert third.cseq.seq == 3
                await ws.send("\r\n\r\n")  # the CRLF ping some WebSocket UAs send
                assert await ws.recv() == "\r\n"
                await ws.send(_options(9).replace("Max-Forwards: 70", "Bad Header"))
                bad = parse_message((await ws.recv()).encode())
                assert isinstance(bad, Response)
                assert bad.status == 400
                await ws.send(_options(4))  # the connection survived the garbage
                fourth = parse_message((await ws.recv()).encode())
                assert isinstance(fourth, Response)
                assert fourth.status == 200
                await ws.ping()
            stats = srv.listener.stats
            assert (stats.requests, stats.answered, stats.client_errors) == (5, 5, 1)
            assert len(srv.lines) == 1
            assert ": 400 (" in srv.lines[0]

    run(scenario())


def test_respond_refuses_a_client_without_sip_and_oversized_messages() -> None:
    async def scenario() -> None:
        async with listening("ws", config=ResponderConfig(max_message=2000)) as srv:
            url = f"ws://127.0.0.1:{srv.ports['ws']}/"
            with pytest.raises(InvalidStatus) as info:
                async with connect(url):
                    pass
            assert info.value.response.status_code == 400
            assert b"missing subprotocol" in info.value.response.body
            assert any("WebSocket upgrade refused, HTTP 400" in line for line in srv.lines)
            async with connect(url, subprotocols=[SIP]) as ws:
                await ws.send(_options(1) + "X-Pad: " + "x" * 3000 + "\r\n\r\n")
                with pytest.raises(ConnectionClosedError) as closed:
                    await ws.recv()
                assert closed.value.rcvd is not None
                assert closed.value.rcvd.code == 1009
            assert srv.listener.stats.requests == 0

    run(scenario())


def test_respond_survives_a_request_and_a_close_frame_in_one_read() -> None:
    """The request is read after the Close frame moved the connection to CLOSING: it gets no
    answer, and nothing breaks."""

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        errors: list[dict[str, object]] = []
        loop.set_exception_handler(lambda _loop, context: errors.append(context))
        async with listening("ws") as srv:
            port = srv.ports["ws"]
            client = ClientProtocol(parse_uri(f"ws://127.0.0.1:{port}/"), subprotocols=[SIP])
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            client.send_request(client.connect())
            writer.write(b"".join(client.data_to_send()))
            while client.state is not State.OPEN:
                client.receive_data(await reader.read(4096))
            client.send_text(_options(1).encode())
            client.send_close(1000)
            writer.write(b"".join(client.data_to_send()))  # one segment
            while data := await asyncio.wait_for(reader.read(4096), 5):
                client.receive_data(data)
            writer.close()
            frames = [e for e in client.events_received() if isinstance(e, Frame)]
            assert [f.opcode for f in frames] == [Opcode.CLOSE]
            assert srv.listener.stats.answered == 0
        assert not errors

    run(scenario())


async def _until_eof(reader: asyncio.StreamReader, limit: float) -> float:
    started = time.monotonic()
    while await asyncio.wait_for(reader.read(4096), limit):
        pass
    return time.monotonic() - started


def test_respond_cuts_off_slow_ws_upgrades_frames_and_fragmented_messages() -> None:
    """The listener's slow-loris guard holds for WebSocket too: an upgrade request, a frame
    or a fragmented message not completed within --message-timeout closes the connection;
    a connection that is merely idle stays (until --idle-timeout)."""

    async def scenario() -> None:
        async with listening("ws") as srv:
            srv.listener.message_timeout = 0.3
            sweeper = asyncio.ensure_future(sweep_idle(srv.listener))
            port = srv.ports["ws"]

            async def opened() -> tuple[ClientProtocol, asyncio.StreamReader, asyncio.StreamWriter]:
                client = ClientProtocol(parse_uri(f"ws://127.0.0.1:{port}/"), subprotocols=[SIP])
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                client.send_request(client.connect())
                writer.write(b"".join(client.data_to_send()))
                while client.state is not State.OPEN:
                    client.receive_data(await reader.read(4096))
                return client, reader, writer

            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and no more
                assert await _until_eof(reader, 3) < 2
                writer.close()

                client, reader, writer = await opened()
                client.send_text(_options(1).encode())
                frame = b"".join(client.data_to_send())
                writer.write(frame[: len(frame) // 2])  # half a frame
                assert await _until_eof(reader, 3) < 2
                writer.close()

                client, reader, writer = await opened()
                client.send_text(_options(2).encode()[:50], fin=False)  # first fragment only
                writer.write(b"".join(client.data_to_send()))
                assert await _until_eof(reader, 3) < 2
                writer.close()

                client, reader, writer = await opened()
                client.send_text(_options(3).encode())
                writer.write(b"".join(client.data_to_send()))
                await asyncio.sleep(0.8)  # answered, then idle: not a slow-loris
                assert not reader.at_eof()
                assert len(srv.listener.connections) == 1
                writer.close()
            finally:
                sweeper.cancel()
            assert srv.listener.stats.answered == 1
            assert sum("not completed in time" in line for line in srv.lines) == 3

    run(scenario())


def test_parse_listen_knows_ws_and_wss() -> None:
    assert parse_listen("ws:127.0.0.1:8080") == ListenSpec("ws", "127.0.0.1", 8080)
    assert parse_listen("WSS:[::1]") == ListenSpec("wss", "::1", 443)
    assert parse_listen("ws:127.0.0.1") == ListenSpec("ws", "127.0.0.1", 80)
    with pytest.raises(UsageError, match=r"udp\|tcp\|tls\|ws\|wss"):
        parse_listen("sctp:127.0.0.1:5060")


# -- the CLI ------------------------------------------------------------------------------


def _wait_tcp(ports: list[int], proc: subprocess.Popen[str], log: Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited early:\n{log.read_text(errors='replace')}")
        try:
            for port in ports:
                socket.create_connection(("127.0.0.1", port), 1).close()
        except OSError:
            time.sleep(0.05)
            continue
        return
    raise RuntimeError(f"not listening on {ports} within 10 s:\n{log.read_text(errors='replace')}")


@contextmanager
def _process(args: list[str], ports: list[int], log: Path) -> Iterator[subprocess.Popen[str]]:
    with log.open("w") as out:
        proc = subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
    try:
        _wait_tcp(ports, proc, log)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


async def _probe_ws_and_wss(ws_port: int, wss_port: int, ca: Path) -> list[TransactionResult]:
    driver = TransactionDriver()
    results = []
    for port, secure in ((ws_port, False), (wss_port, True)):
        ctx = client_context(TlsOptions(ca=str(ca))) if secure else None
        flow = await open_ws(driver, "127.0.0.1", port, secure=secure, ssl_context=ctx)
        try:
            probe = Probe(driver, flow, port, "wss" if secure else "ws")
            results += [await probe.options(), await probe.options()]
            assert 0 < await flow.ping() < 1
        finally:
            flow.close()
            await asyncio.wait_for(flow.wait_closed(), 5)
    return results


def test_respond_cli_listens_on_ws_and_wss(certs: tuple[Path, Path], tmp_path: Path) -> None:
    cert, key = certs
    port = free_port("tcp", span=2)
    args = [
        sys.executable, "-m", "sipalive", "respond",
        "--listen", f"ws:127.0.0.1:{port}",
        "--listen", f"wss:127.0.0.1:{port + 1}",
        "--cert", str(cert), "--key", str(key),
        "--reason", "Alive", "--duration", "60",
    ]  # fmt: skip
    log = tmp_path / "respond.log"
    with _process(args, [port, port + 1], log) as proc:
        results = run(_probe_ws_and_wss(port, port + 1, cert))
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    assert [(r.status, r.reason) for r in results] == [(200, "Alive")] * 4
    text = log.read_text()
    assert f"listening on ws:127.0.0.1:{port}, wss:127.0.0.1:{port + 1}" in text
    assert "stopped: 4 requests, 4 answered, 0 client errors, 0 STUN, 2 pongs" in text


def test_ping_flood_over_ws_uses_the_driver(tmp_path: Path) -> None:
    """The flood engine takes UDP, TCP and TLS; over a WebSocket the flood chains the
    driver's transactions."""
    port = free_port("tcp")
    args = [sys.executable, "-m", "sipalive", "respond", "--listen", f"ws:127.0.0.1:{port}",
            "--duration", "60"]  # fmt: skip
    with _process(args, [port], tmp_path / "respond.log") as proc:
        r = subprocess.run(
            [sys.executable, "-m", "sipalive", "ping", "--flood", "-c", "300", "--window", "20",
             "--json", "-T", "ws", f"sip:127.0.0.1:{port}"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    assert r.returncode == 0, r.stdout + r.stderr
    summary = json.loads(r.stdout.splitlines()[-1])
    assert (summary["sent"], summary["answered"], summary["failures"]) == (300, 300, 0)


# -- Kamailio's websocket module --------------------------------------------------------------

KAMAILIO_WS_CFG = DATA_DIR / "kamailio-ws.cfg"


@contextmanager
def kamailio_ws(run_dir: Path) -> Iterator[tuple[int, Path]]:
    """Kamailio with tests/data/kamailio-ws.cfg: ws on PORT, wss on PORT+1; yields (PORT,
    its certificate)."""
    kamailio = binary("kamailio")
    for module in ("websocket.so", "xhttp.so", "tls.so"):
        if not (KAMAILIO_MODULES / module).exists():
            unavailable(
                f"Kamailio {module} missing "
                "(apt-get install kamailio-websocket-modules kamailio-tls-modules)"
            )
    cert, key = make_cert(run_dir)
    port = free_port_pair()
    args = [
        kamailio, "-f", str(KAMAILIO_WS_CFG), "-L", str(KAMAILIO_MODULES),
        "-DD", "-E", "-Y", str(run_dir), "-P", str(run_dir / "kamailio.pid"), "-w", str(run_dir),
        "-m", "32", "-M", "8", "-a", "no",
        "-l", f"tcp:127.0.0.1:{port}", "-l", f"tls:127.0.0.1:{port + 1}",
        "-A", "WITH_TLS", "-A", f'TLS_CERT="{cert}"', "-A", f'TLS_KEY="{key}"',
    ]  # fmt: skip
    check = subprocess.run(
        [*args, "-c"], capture_output=True, text=True, errors="replace", timeout=30, check=False
    )
    if check.returncode != 0:
        raise PeerStartError(f"kamailio -c failed:\n{check.stdout}{check.stderr}")
    timeout = [binary("timeout"), "-k", "5", "300"]  # a hard stop if this process dies
    with _process([*timeout, *args], [port, port + 1], run_dir / "kamailio.log"):
        yield port, cert


@pytest.mark.realpeer
def test_kamailio_answers_options_over_ws_and_wss() -> None:
    run_dir = Path(tempfile.mkdtemp(prefix="sipalive-kamailio-ws-"))
    with kamailio_ws(run_dir) as (port, cert):
        results = run(_probe_ws_and_wss(port, port + 1, cert))
    for result, transport in zip(results, ["WS", "WS", "WSS", "WSS"], strict=True):
        assert result.status == 200, result.error
        assert result.response is not None
        via = result.response.vias[0]
        assert via.transport == transport
        assert via.host.endswith(".invalid")
        assert via.received == "127.0.0.1"
        assert via.rport is not None
        assert result.response.headers.get("server") == "sipalive-test-kamailio-ws"
    log = (run_dir / "kamailio.log").read_text(errors="replace")
    assert log.count("WebSocket upgrade from 127.0.0.1") == 2
