"""``sipalive register``: register with a registrar and stay reachable until stopped.

One log line per event: registered, refreshed, keep-alive failure (flow failed), flow
recovered, public address changed, inbound request (method, From, source, our answer),
registration failures with the retry delay, and on SIGTERM/SIGINT the un-registration.
``--verbose`` adds the keep-alive traffic itself. Exit status: 0 after a clean stop, 1 when
the registration is refused for good (bad credentials, 403, 404...) or the un-register
fails, 2 for bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import random
import signal
import sys
import time

from sipalive.cli.common import (
    UsageError,
    effective_transport,
    parse_count,
    parse_duration,
    parse_target,
    parse_transport,
)
from sipalive.errors import ConfigError, ParseError, ResolveError
from sipalive.io.ua import (
    KEEPALIVE_MODES,
    FlowUp,
    InboundRequest,
    KeepaliveTraffic,
    UaConfig,
    UaProblem,
    UserAgent,
)
from sipalive.keepalive.stun import MappedAddressChanged, StunErrorResponse
from sipalive.keepalive.tcp import TcpKeepaliveOptions
from sipalive.sip.build import USER_AGENT, format_host
from sipalive.sip.registration import (
    FlowFailed,
    FlowRecovered,
    KeepaliveInterval,
    PublicAddressChanged,
    Refreshed,
    Registered,
    Registration,
    RegistrationConfig,
    RegistrationExpired,
    RegistrationFailed,
    Unregistered,
)
from sipalive.sip.transaction import TimerConfig
from sipalive.sip.uri import SipUri, parse_host_port

REASONS = {
    404: "Not Found",
    480: "Temporarily Unavailable",
    486: "Busy Here",
    488: "Not Acceptable Here",
    503: "Service Unavailable",
    600: "Busy Everywhere",
    603: "Decline",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sipalive register",
        description="Register with a SIP registrar, keep the registration and the NAT binding "
        "alive, answer OPTIONS and INVITE, log every event; un-register on SIGTERM.",
    )
    p.add_argument(
        "--registrar", required=True, metavar="URI", help="sip:/sips: URI or host[:port]"
    )
    p.add_argument("--user", required=True, help="user part of the AOR and of the Contact")
    p.add_argument("--domain", help="AOR domain (default: the registrar's host)")
    p.add_argument("--auth-user", help="digest user name, if not --user")
    secret = p.add_mutually_exclusive_group()
    secret.add_argument("--password-env", metavar="VAR", help="read the password from $VAR")
    secret.add_argument("--password-file", metavar="FILE", help="read the password from FILE")
    p.add_argument("-T", "--transport", help="udp, tcp or tls (or ;transport= in the URI)")
    p.add_argument("--expires", default="3600", help="registration lifetime asked for (s)")
    p.add_argument(
        "--keepalive",
        default="crlf",
        choices=KEEPALIVE_MODES,
        help="crlf (CRLFCRLF; ping/pong on TCP/TLS), stun (UDP; the registrar must answer "
        "STUN on its SIP port), options, register (short re-REGISTERs), none",
    )
    p.add_argument(
        "--keepalive-interval",
        default="25",
        help="seconds between keep-alives, jittered 80-100%% (default 25; a registrar's "
        "Flow-Timer or Via keep may shorten it)",
    )
    p.add_argument(
        "--pong-timeout",
        default="10",
        help="no CRLF pong (TCP/TLS) or STUN answer (UDP, --keepalive stun) this long after "
        "a keep-alive means the flow failed",
    )
    p.add_argument(
        "--tcp-keepalive",
        default="auto",
        metavar="IDLE,INTVL,CNT|off",
        help="OS TCP keep-alive on TCP/TLS flows (default: idle = keep-alive interval, 5, 3)",
    )
    p.add_argument("--tcp-user-timeout", metavar="S", help="TCP_USER_TIMEOUT on TCP/TLS flows")
    p.add_argument("--listen", metavar="ADDR", help="local HOST[:PORT] (or :PORT) to send from")
    p.add_argument(
        "--invite-response",
        default="480",
        metavar="CODE [REASON]",
        help="final response to inbound INVITEs (default 480 Temporarily Unavailable)",
    )
    p.add_argument("--instance-id", metavar="URN", help="RFC 5626 outbound: +sip.instance URN")
    p.add_argument(
        "--no-contact-rewrite",
        action="store_true",
        help="keep the local address in Contact even when received/rport say otherwise",
    )
    p.add_argument("--timeout", help="give up on a REGISTER after this long (default 64*T1)")
    p.add_argument("--backoff-base", default="30", help="RFC 5626 §4.5 base-time (default 30s)")
    p.add_argument("--backoff-max", default="1800", help="RFC 5626 §4.5 max-time (default 1800s)")
    p.add_argument("--stop-timeout", default="5", help="how long to wait for the un-register")
    p.add_argument("--duration", help="stop (and un-register) after this long")
    p.add_argument("--ca", help="CA bundle (PEM) to verify the registrar's TLS certificate")
    p.add_argument("--insecure", action="store_true", help="do not verify TLS certificates")
    p.add_argument("--cert", help="client certificate (PEM) for TLS")
    p.add_argument("--key", help="client key (PEM) for TLS")
    p.add_argument("--user-agent", default=USER_AGENT)
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("-v", "--verbose", action="store_true", help="log keep-alive traffic too")
    return p


# -- reading the options -------------------------------------------------------------------


def read_password(args: argparse.Namespace) -> str | None:
    """From the environment or a file; the value never reaches argv or a log line."""
    if args.password_env:
        value = os.environ.get(args.password_env)
        if value is None:
            raise UsageError(f"--password-env: ${args.password_env} is not set")
        return value
    if args.password_file:
        try:
            with open(args.password_file, encoding="utf-8") as f:
                value = f.readline().rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"--password-file: cannot read {args.password_file}: {exc}") from exc
        if not value:
            raise UsageError(f"--password-file: {args.password_file} holds no password")
        return value
    return None


def parse_listen(text: str) -> tuple[str, int]:
    text = text.strip()
    if text.isdigit():
        text = ":" + text
    try:
        if text.startswith(":"):
            host, port = "0.0.0.0", parse_host_port("x" + text, "--listen")[1]
        else:
            host, port = parse_host_port(text, "--listen")
    except ParseError as exc:
        raise UsageError(f"--listen: {exc.reason}") from exc
    return host, port or 0


def parse_invite_response(text: str) -> tuple[int, str]:
    code_text, _, reason = text.strip().partition(" ")
    code = parse_count(code_text, "--invite-response", 300)
    if code > 699:
        raise UsageError(f"--invite-response: a final failure code 300-699, got {code}")
    return code, reason.strip() or REASONS.get(code, "Unavailable")


def tcp_keepalive(args: argparse.Namespace, interval: float) -> TcpKeepaliveOptions | None:
    text = args.tcp_keepalive.strip().lower()
    user_timeout = None
    if args.tcp_user_timeout:
        user_timeout = round(parse_duration(args.tcp_user_timeout, "--tcp-user-timeout") * 1000)
    if text == "off":
        if user_timeout is None:
            return None
        return TcpKeepaliveOptions(False, 1, 1, 1, user_timeout)
    if text == "auto":
        values = [max(1, round(interval)), 5, 3]
    else:
        parts = text.split(",")
        if len(parts) != 3:
            raise UsageError(f"--tcp-keepalive: expected IDLE,INTVL,CNT or off, got {text!r}")
        values = [parse_count(v.strip(), "--tcp-keepalive", 1) for v in parts]
    try:
        return TcpKeepaliveOptions(True, values[0], values[1], values[2], user_timeout)
    except ConfigError as exc:
        raise UsageError(f"--tcp-keepalive: {exc}") from exc


# -- the log -------------------------------------------------------------------------------


def _addr(addr: tuple[str, int] | None) -> str:
    return "-" if addr is None else f"{format_host(addr[0])}:{addr[1]}"


def _snake(name: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")


class Log:
    def __init__(self, aor: str, as_json: bool, verbose: bool) -> None:
        self.aor = aor
        self.json = as_json
        self.verbose = verbose

    def __call__(self, event: object) -> None:
        if isinstance(event, KeepaliveTraffic) and not self.verbose:
            return
        text = self.text(event)
        if text is None:
            return
        if self.json:
            obj: dict[str, object] = {
                "ts": round(time.time(), 3),
                "event": _snake(type(event).__name__),
            }
            if dataclasses.is_dataclass(event) and not isinstance(event, type):
                obj.update(dataclasses.asdict(event))
            line = json.dumps(obj)
        else:
            line = f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {text}"
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    def text(self, e: object) -> str | None:
        if isinstance(e, FlowUp):
            return f"flow up: {e.transport} {_addr(e.local)} -> {_addr(e.remote)}"
        if isinstance(e, Registered):
            return (
                f"registered {self.aor} contact=<{e.contact}> expires={e.expires}s "
                f"refresh in {e.refresh_in:.0f}s public={_addr(e.public_addr)}"
            )
        if isinstance(e, Refreshed):
            return f"refreshed {self.aor} expires={e.expires}s refresh in {e.refresh_in:.0f}s"
        if isinstance(e, FlowRecovered):
            return (
                f"flow recovered after {e.down_for:.1f}s: registered {self.aor} "
                f"contact=<{e.contact}> expires={e.expires}s"
            )
        if isinstance(e, FlowFailed):
            then = (
                "re-registering on a new flow now"
                if e.retry_in == 0
                else (f"new flow and REGISTER in {e.retry_in:.1f}s")
            )
            return f"flow failed: {e.reason}; {then}"
        if isinstance(e, RegistrationFailed):
            then = "giving up" if e.fatal else f"retrying in {e.retry_in or 0:.1f}s"
            return f"registration failed: {e.status} {e.reason}; {then}"
        if isinstance(e, PublicAddressChanged):
            return (
                f"public address {_addr(e.new)} (Contact had {_addr(e.old)}; "
                "Via received/rport): re-registering"
            )
        if isinstance(e, KeepaliveInterval):
            return f"registrar asks for keep-alives at most {e.interval:g}s apart ({e.source})"
        if isinstance(e, RegistrationExpired):
            return f"registration expired: <{e.contact}> is no longer registered"
        if isinstance(e, Unregistered):
            if e.status is None:
                return f"unregistered: {e.reason}"
            ok = 200 <= e.status < 300
            return f"{'unregistered' if ok else 'un-register failed'}: {e.status} {e.reason}"
        if isinstance(e, InboundRequest):
            answer = "not answered" if e.status is None else f"answered {e.status}"
            return (
                f"inbound {e.method} from {e.from_uri} via {e.transport} {_addr(e.source)}: "
                f"{answer}"
            )
        if isinstance(e, KeepaliveTraffic):
            where = "to" if e.direction == "sent" else "from"
            text = f"keep-alive {e.direction} {e.kind} {where} {_addr(e.peer)}"
            if e.rtt is not None:
                text += f" rtt={e.rtt * 1000:.1f}ms"
            return text + (f" {e.detail}" if e.detail else "")
        if isinstance(e, MappedAddressChanged):
            return f"STUN mapped address changed: {_addr(e.old)} -> {_addr(e.new)}"
        if isinstance(e, StunErrorResponse):
            return f"STUN error response {e.code} {e.reason}"
        if isinstance(e, UaProblem):
            return f"{'fatal' if e.fatal else 'error'}: {e.message}"
        return None


# -- running -------------------------------------------------------------------------------


async def _register(args: argparse.Namespace) -> int:
    from sipalive.io.resolver import resolve
    from sipalive.io.tlsctx import TlsOptions, client_context

    uri = parse_target(args.registrar)
    option = parse_transport(args.transport) if args.transport else None
    transport = effective_transport(uri, option) or ("tls" if uri.scheme == "sips" else None)
    password = read_password(args)
    expires = parse_count(args.expires, "--expires", 1)
    interval = parse_duration(args.keepalive_interval, "--keepalive-interval")
    if not interval > 0:
        raise UsageError("--keepalive-interval must be > 0")
    invite = parse_invite_response(args.invite_response)
    timeout = parse_duration(args.timeout, "--timeout") if args.timeout else None
    try:
        targets = await resolve(uri.scheme, uri.host, uri.port, transport)
    except ResolveError as exc:
        sys.stdout.write(f"sipalive register: {exc}\n")
        return 1
    target = targets[0]
    if args.keepalive == "stun" and target.transport != "udp":
        raise UsageError("--keepalive stun is for UDP (RFC 5626 §4.4.2); use crlf over TCP/TLS")
    # RFC 3261 §10.2: the Request-URI names the registrar's domain, no user part; and the
    # transport, as ping does (a sips: URI implies TLS already)
    named = None if target.transport == "udp" or uri.scheme == "sips" else target.transport
    bare = SipUri(uri.scheme, None, None, uri.host, uri.port, uri.params)
    request_uri = bare.with_transport(named)
    domain = args.domain or format_host(uri.host)
    aor = f"sip:{args.user}@{domain}"
    try:
        config = RegistrationConfig(
            registrar_uri=str(request_uri),
            aor=aor,
            user=args.user,
            transport=target.transport,
            password=password,
            auth_user=args.auth_user,
            expires=expires,
            instance_id=args.instance_id,
            keep=args.keepalive != "none",
            rewrite_contact=not args.no_contact_rewrite,
            refresh_every=interval if args.keepalive == "register" else None,
            backoff_base=parse_duration(args.backoff_base, "--backoff-base"),
            backoff_max=parse_duration(args.backoff_max, "--backoff-max"),
            timers=TimerConfig(timeout=timeout),
            user_agent=args.user_agent,
        )
        ssl_context = None
        if target.transport == "tls":
            ssl_context = client_context(TlsOptions(args.ca, args.insecure, args.cert, args.key))
    except ConfigError as exc:
        raise UsageError(str(exc)) from exc
    rng = random.SystemRandom()
    registration = Registration(config, rand=rng.random, rand_token=lambda: os.urandom(8).hex())
    ua_config = UaConfig(
        target=target,
        keepalive=args.keepalive,
        keepalive_interval=interval,
        pong_timeout=parse_duration(args.pong_timeout, "--pong-timeout"),
        listen=parse_listen(args.listen) if args.listen else None,
        tcp_keepalive=tcp_keepalive(args, interval) if target.transport != "udp" else None,
        ssl_context=ssl_context,
        server_hostname=uri.host,  # RFC 5922 §4: the certificate must match the URI's domain
        invite_status=invite[0],
        invite_reason=invite[1],
        stop_timeout=parse_duration(args.stop_timeout, "--stop-timeout"),
        user_agent=args.user_agent,
    )
    log = Log(aor, args.json, args.verbose)
    ua = UserAgent(
        registration,
        ua_config,
        log,
        rand=rng.random,
        rand_bytes=os.urandom,
        rand_token=lambda: os.urandom(8).hex(),
    )
    loop = asyncio.get_running_loop()
    stop, force = asyncio.Event(), asyncio.Event()

    def on_signal() -> None:
        (force if stop.is_set() else stop).set()

    loop.add_signal_handler(signal.SIGTERM, on_signal)
    loop.add_signal_handler(signal.SIGINT, on_signal)
    if args.duration:
        loop.call_at(loop.time() + parse_duration(args.duration, "--duration"), stop.set)
    return await ua.run(stop, force)


def main(argv: list[str]) -> int:
    from sipalive.cli.aio import run_command

    return run_command(build_parser(), argv, _register)
