"""``sipalive respond``: answers OPTIONS (200), CRLFCRLF pings (CRLF pong, streams only) and
STUN Binding Requests on its UDP ports; refuses everything else with the right code. Over
WebSocket (ws, wss; subprotocol ``sip``, RFC 7118) it answers WebSocket pings too."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys

from sipalive.cli.common import UsageError, parse_duration
from sipalive.errors import ConfigError
from sipalive.io.limits import Admission, parse_networks, parse_rate
from sipalive.io.server import Listener, ListenSpec, log_line, start_listeners, sweep_idle
from sipalive.sip.responder import ResponderConfig, StatelessResponder
from sipalive.sip.uri import DEFAULT_PORTS, parse_host_port

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
    try:
        opened = await start_listeners(listener, specs, tls_ctx, args.reuse_port, args.rcvbuf)
    except OSError as exc:
        sys.stderr.write(f"sipalive respond: cannot listen: {exc.strerror or exc}\n")
        return 1
    log_line("listening on " + ", ".join(str(s) for s in specs))
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
    for item in opened:
        item.close()
    st = listener.stats
    log_line(
        f"stopped: {st.requests} requests, {st.answered} answered, {st.client_errors} client "
        f"errors, {st.stun} STUN, {st.pongs} pongs, {st.dropped} dropped"
    )
    return 0


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from sipalive.cli.ping import run_loop

    try:
        return run_loop(_serve(args))
    except UsageError as exc:
        parser.error(str(exc))
    return 2
