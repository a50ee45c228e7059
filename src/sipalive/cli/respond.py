"""``sipalive respond``: answers OPTIONS (200), CRLFCRLF pings (CRLF pong, streams only) and
STUN Binding Requests on its UDP ports; refuses everything else with the right code. Over
WebSocket (ws, wss; subprotocol ``sip``, RFC 7118) it answers WebSocket pings too."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from typing import TYPE_CHECKING

from sipalive.cli.common import UsageError, parse_count, parse_duration
from sipalive.errors import ConfigError
from sipalive.io.limits import Admission, parse_networks, parse_rate
from sipalive.io.server import Listener, ListenSpec, log_line, start_listeners, sweep_idle
from sipalive.sip.responder import ResponderConfig, StatelessResponder
from sipalive.sip.uri import DEFAULT_PORTS, parse_host_port

if TYPE_CHECKING:
    from sipalive.io.registrar import RegistrarService

LISTEN_TRANSPORTS = ("udp", "tcp", "tls", "ws", "wss")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sipalive respond",
        description="Answer SIP OPTIONS, RFC 5626 CRLF keep-alives and STUN binding requests.",
    )
    p.add_argument(
        "--listen",
        action="append",
        default=[],
        metavar="T:HOST:PORT",
        help="udp:127.0.0.1:5060, tcp:[::1]:5060, tls:127.0.0.1:5061, ws:127.0.0.1:8080, "
        "wss:127.0.0.1:8443 (repeatable)",
    )
    p.add_argument("--cert", help="certificate chain (PEM) for tls and wss listeners")
    p.add_argument("--key", help="private key (PEM) for tls and wss listeners")
    p.add_argument("--ca", help="CA bundle to verify client certificates (optional)")
    p.add_argument("--reason", default="OK", help="reason phrase of the 200 (e.g. Alive)")
    p.add_argument("--allow", action="append", default=[], metavar="CIDR", help="allow-list")
    p.add_argument("--rate-limit", metavar="N/s", help="per-source request limit")
    p.add_argument("--server-header", default="sipalive/0.1", help="Server header ('' = none)")
    p.add_argument("--idle-timeout", default="300", help="close idle TCP/TLS/WebSocket connections")
    p.add_argument(
        "--message-timeout", default="10", help="close a connection whose message is unfinished"
    )
    p.add_argument("--duration", help="stop after this long (default: run until SIGTERM)")
    p.add_argument("--reuse-port", action="store_true", help="SO_REUSEPORT (several processes)")
    p.add_argument("--rcvbuf", type=int, help="SO_RCVBUF for UDP listeners, octets")
    _add_registrar_options(p)
    return p


def parse_listen(text: str) -> ListenSpec:
    transport, sep, rest = text.partition(":")
    transport = transport.lower()
    if not sep or transport not in LISTEN_TRANSPORTS:
        raise UsageError(f"--listen: expected udp|tcp|tls|ws|wss:HOST:PORT, got {text!r}")
    try:
        host, port = parse_host_port(rest, "--listen")
    except Exception as exc:
        raise UsageError(f"--listen: bad address in {text!r}") from exc
    if port is None:
        port = DEFAULT_PORTS[transport]
    return ListenSpec(transport, host, port)


async def _serve(args: argparse.Namespace) -> int:
    specs = [parse_listen(t) for t in (args.listen or ["udp:127.0.0.1:5060"])]
    try:
        admission = Admission(
            parse_networks(args.allow) or None,
            parse_rate(args.rate_limit) if args.rate_limit else None,
        )
        tls_ctx = None
        if any(s.transport in ("tls", "wss") for s in specs):
            from sipalive.io.tlsctx import TlsOptions, server_context

            tls_ctx = server_context(TlsOptions(args.ca, False, args.cert, args.key))
    except ConfigError as exc:
        raise UsageError(str(exc)) from exc
    config = ResponderConfig(
        reason=args.reason,
        server=args.server_header or None,
        tag_key=os.urandom(16),
    )
    listener = Listener(StatelessResponder(config), admission)
    listener.idle_timeout = parse_duration(args.idle_timeout, "--idle-timeout")
    listener.message_timeout = parse_duration(args.message_timeout, "--message-timeout")
    registrar = _registrar(args)
    if registrar is not None:
        registrar.attach(listener)
    try:
        opened = await start_listeners(listener, specs, tls_ctx, args.reuse_port, args.rcvbuf)
    except OSError as exc:
        sys.stderr.write(f"sipalive respond: cannot listen: {exc.strerror or exc}\n")
        return 1
    log_line("listening on " + ", ".join(str(s) for s in specs))
    if registrar is not None:
        registrar.listening(opened)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    sweeper = asyncio.ensure_future(sweep_idle(listener))
    duration = parse_duration(args.duration, "--duration") if args.duration else None
    try:
        await asyncio.wait_for(stop.wait(), duration)
    except TimeoutError:
        pass
    sweeper.cancel()
    if registrar is not None:
        await registrar.close()
    for item in opened:
        item.close()
    st = listener.stats
    log_line(
        f"stopped: {st.requests} requests, {st.answered} answered, {st.client_errors} client "
        f"errors, {st.stun} STUN, {st.pongs} pongs, {st.dropped} dropped"
    )
    return 0


def main(argv: list[str]) -> int:
    from sipalive.cli.aio import run_command

    return run_command(build_parser(), argv, _serve)


# -- the registrar (--registrar) -----------------------------------------------------------


def _add_registrar_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "registrar", "accept REGISTER over the udp/tcp/tls listeners and qualify the contacts"
    )
    g.add_argument("--registrar", action="store_true", help="act as a registrar too")
    g.add_argument(
        "--users",
        metavar="FILE",
        help="who may register: one user:password per line, # comments (keep it chmod 600)",
    )
    g.add_argument("--realm", default="sipalive", help="digest realm (default sipalive)")
    g.add_argument(
        "--digest-algorithms",
        default="SHA-256,MD5",
        metavar="LIST",
        help="challenges offered, preferred first (RFC 8760; default SHA-256,MD5)",
    )
    g.add_argument(
        "--registrar-db",
        default="var/registrar.db",
        metavar="PATH",
        help="SQLite file keeping the bindings across restarts ('' = memory only)",
    )
    g.add_argument("--min-expires", default="60", metavar="S", help="shorter is refused: 423")
    g.add_argument("--max-expires", default="3600", metavar="S", help="longer is shortened")
    g.add_argument(
        "--flow-timer",
        metavar="S",
        help="Flow-Timer (RFC 5626) in the 200 to REGISTERs using outbound or offering "
        "keep-alives (Via keep)",
    )
    g.add_argument(
        "--flow-timer-always", action="store_true", help="send the Flow-Timer in every 200"
    )
    g.add_argument(
        "--qualify-frequency",
        default="60",
        metavar="S",
        help="OPTIONS to every contact this often, through its flow (0 = never)",
    )
    g.add_argument("--qualify-timeout", default="3", metavar="S", help="probe timeout")
    g.add_argument(
        "--remove-unavailable",
        action="store_true",
        help="drop the binding (and close its connection) of a contact gone unreachable",
    )


def _registrar(args: argparse.Namespace) -> RegistrarService | None:
    if not args.registrar:
        return None
    from sipalive.io.registrar import build_service

    if not args.users:
        raise UsageError("--registrar needs --users FILE")
    try:
        return build_service(
            users_path=args.users,
            realm=args.realm,
            algorithms=tuple(a.strip().upper() for a in args.digest_algorithms.split(",")),
            min_expires=parse_count(args.min_expires, "--min-expires", 1),
            max_expires=parse_count(args.max_expires, "--max-expires", 1),
            flow_timer=parse_count(args.flow_timer, "--flow-timer", 1) if args.flow_timer else None,
            flow_timer_always=args.flow_timer_always,
            qualify_frequency=parse_duration(args.qualify_frequency, "--qualify-frequency"),
            qualify_timeout=parse_duration(args.qualify_timeout, "--qualify-timeout"),
            remove_unavailable=args.remove_unavailable,
            db_path=args.registrar_db or None,
            server=args.server_header or None,
        )
    except ConfigError as exc:
        raise UsageError(str(exc)) from exc
