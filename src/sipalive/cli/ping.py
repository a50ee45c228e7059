"""``sipalive ping``: like ping/fping for SIP. One OPTIONS transaction per interval per target,
all targets concurrently on one event loop; ``--flood`` measures transactions per second."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import sys
from dataclasses import dataclass, field

from sipalive import clock
from sipalive.cli.aio import run_command
from sipalive.cli.common import (
    UsageError,
    effective_transport,
    parse_count,
    parse_duration,
    parse_target,
    parse_transport,
    timer_config,
)
from sipalive.errors import ConfigError, ResolveError, TransportError
from sipalive.io.driver import TransactionDriver
from sipalive.io.flood import FloodDatagrams, FloodEngine, FloodStream
from sipalive.io.flows import StreamFlow, UdpFlow, open_stream, open_udp
from sipalive.io.resolver import Target, resolve
from sipalive.io.tlsctx import TlsOptions, client_context
from sipalive.io.ws import WsFlow, open_ws
from sipalive.sip.build import OptionsTemplate, format_host
from sipalive.sip.transaction import Cause, ClientTransaction, TimerConfig, TransactionResult
from sipalive.sip.uri import SipUri


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sipalive ping",
        description="Probe SIP peers with OPTIONS, like ping/fping. Exit 0 if every target "
        "answered, else 1.",
    )
    p.add_argument("targets", nargs="+", metavar="URI", help="sip:/sips: URI or host[:port]")
    p.add_argument("-c", "--count", default="0", help="probes per target (default: until ^C)")
    p.add_argument("-i", "--interval", default="1", help="time between probes (default 1s)")
    p.add_argument("-T", "--transport", help="udp, tcp, tls, ws or wss (or ;transport= in the URI)")
    p.add_argument("--ws-path", default="/", help="resource path for ws/wss (RFC 7118)")
    p.add_argument("--t1", help="RFC 3261 T1 (default 0.5s)")
    p.add_argument("--t2", help="RFC 3261 T2 (default 4s)")
    p.add_argument("--retransmits", help="at most N retransmissions, then give up when due")
    p.add_argument("--timeout", help="Timer F: give up after this long (default 64*T1)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--flood", action="store_true", help="COUNT transactions back to back")
    p.add_argument("--window", default="100", help="with --flood: at most W in flight")
    p.add_argument(
        "--crlf",
        action="store_true",
        help="send RFC 5626 CRLFCRLF keep-alive pings (TCP/TLS) and time the CRLF pong",
    )
    p.add_argument("--from", dest="from_uri", help="From URI")
    p.add_argument("--user-agent", default="sipalive/0.1")
    p.add_argument("--ca", help="CA bundle (PEM) to verify TLS servers with")
    p.add_argument("--insecure", action="store_true", help="do not verify TLS certificates")
    p.add_argument("--cert", help="client certificate (PEM) for TLS")
    p.add_argument("--key", help="client key (PEM) for TLS")
    p.add_argument("-q", "--quiet", action="store_true", help="only the summaries")
    return p


@dataclass(slots=True)
class Stats:
    target: str
    sent: int = 0
    answered: int = 0
    failed: int = 0
    retransmits: int = 0
    rtts: list[float] = field(default_factory=list)
    codes: dict[int, int] = field(default_factory=dict)
    elapsed: float = 0.0
    error: str | None = None

    def summary(self) -> dict[str, object]:
        loss = 100.0 * (self.sent - self.answered) / self.sent if self.sent else 100.0
        out: dict[str, object] = {
            "type": "summary",
            "target": self.target,
            "sent": self.sent,
            "answered": self.answered,
            "loss_pct": round(loss, 3),
            "codes": {str(k): v for k, v in sorted(self.codes.items())},
            "retransmits": self.retransmits,
            "elapsed_s": round(self.elapsed, 6),
        }
        if self.rtts:
            mean = sum(self.rtts) / len(self.rtts)
            mdev = math.sqrt(sum((r - mean) ** 2 for r in self.rtts) / len(self.rtts))
            out |= {
                "rtt_min_s": min(self.rtts),
                "rtt_avg_s": mean,
                "rtt_max_s": max(self.rtts),
                "rtt_mdev_s": mdev,
            }
        if self.error:
            out["error"] = self.error
        return out


class Output:
    def __init__(self, as_json: bool, quiet: bool) -> None:
        self.json = as_json
        self.quiet = quiet

    def line(self, obj: dict[str, object], text: str) -> None:
        if self.quiet and obj.get("type") == "reply":
            return
        sys.stdout.write((json.dumps(obj) if self.json else text) + "\n")
        sys.stdout.flush()


class Prober:
    """One target: resolution, one flow kept open, and its transactions."""

    _counter = 0

    def __init__(
        self,
        text: str,
        uri: SipUri,
        transport: str | None,
        timers: TimerConfig,
        driver: TransactionDriver,
        args: argparse.Namespace,
        out: Output,
    ) -> None:
        self.text = text
        self.uri = uri
        self.transport = transport
        self.timers = timers
        self.driver = driver
        self.args = args
        self.out = out
        self.stats = Stats(text)
        self.flow: UdpFlow | StreamFlow | WsFlow | None = None
        self.target: Target | None = None
        rnd = os.urandom(12).hex()
        self.prefix = "z9hG4bK" + rnd[:12]
        self.from_tag = rnd[12:]
        self.call_id = os.urandom(8).hex() + "@sipalive"
        self._options: OptionsTemplate | None = None

    async def connect(self) -> None:
        uri = self.uri
        supported: tuple[str, ...] = ("udp", "tcp", "tls")
        if self.transport in ("ws", "wss"):  # only when asked for: NAPTR never picks them
            supported += ("ws", "wss")
        targets = await resolve(uri.scheme, uri.host, uri.port, self.transport, supported=supported)
        errors: list[str] = []
        for target in targets:
            try:
                if target.transport == "udp":
                    self.flow = await open_udp(self.driver, target.address, target.port)
                elif target.transport in ("ws", "wss"):
                    a = self.args
                    secure = target.transport == "wss"
                    ctx = (
                        client_context(TlsOptions(a.ca, a.insecure, a.cert, a.key))
                        if secure
                        else None
                    )
                    self.flow = await open_ws(
                        self.driver,
                        target.address,
                        target.port,
                        secure=secure,
                        host=uri.host,  # RFC 5922 §4
                        path=a.ws_path,
                        ssl_context=ctx,
                        timeout=self.timers.give_up_after(),
                    )
                else:
                    ctx = None
                    if target.transport == "tls":
                        a = self.args
                        ctx = client_context(TlsOptions(a.ca, a.insecure, a.cert, a.key))
                    self.flow = await open_stream(
                        self.driver,
                        target.address,
                        target.port,
                        ssl_context=ctx,
                        # RFC 5922 §4: the certificate must match the URI's domain
                        server_hostname=uri.host,
                        timeout=self.timers.give_up_after(),
                    )
            except TransportError as exc:
                errors.append(str(exc))
                continue
            self.target = target
            return
        raise TransportError("; ".join(errors) or f"no usable target for {uri}")

    def request_uri(self) -> str:
        assert self.target is not None
        text = str(self.uri)
        if self.target.transport != "udp" and self.uri.transport is None:
            text = str(self.uri.with_transport(self.target.transport))
        return text

    async def crlf_probe(self, seq: int) -> TransactionResult | None:
        """RFC 5626 §4.4.1: CRLFCRLF ping; the pong is a CRLF, due within the timeout. Over a
        WebSocket the keep-alive is a WebSocket Ping and its Pong (RFC 7118 §6)."""
        flow = self.flow
        assert isinstance(flow, StreamFlow | WsFlow)
        loop = asyncio.get_running_loop()
        pong: asyncio.Future[float] = loop.create_future()

        def on_pong() -> None:
            if not pong.done():
                pong.set_result(clock.monotonic())

        flow.on_pong = on_pong
        self.stats.sent += 1
        sent = clock.monotonic()
        if isinstance(flow, WsFlow):
            flow.send_ping()
        else:
            flow.send(b"\r\n\r\n")
        assert self.target is not None
        where = f"{format_host(self.target.address)}:{self.target.port}"
        obj: dict[str, object] = {"type": "pong", "target": self.text, "seq": seq}
        try:
            got = await asyncio.wait_for(pong, self.timers.give_up_after())
        except TimeoutError:
            self.stats.failed += 1
            obj |= {"rtt_s": None, "error": "no pong"}
            text = f"no pong from {where} ({self.target.transport}): seq={seq}"
        else:
            rtt = got - sent
            self.stats.answered += 1
            self.stats.rtts.append(rtt)
            obj["rtt_s"] = rtt
            text = f"pong from {where} ({self.target.transport}): seq={seq} rtt={rtt * 1000:.3f} ms"
        self.out.line(obj, text)
        return None

    def _template(self) -> OptionsTemplate:
        if self._options is None:
            assert self.flow is not None
            assert self.target is not None
            self._options = OptionsTemplate(
                self.request_uri(),
                transport=self.target.transport,
                local=self.flow.local,
                from_tag=self.from_tag,
                from_uri=self.args.from_uri,
                user_agent=self.args.user_agent,
            )
        return self._options

    def start_probe(self, seq: int) -> asyncio.Future[TransactionResult]:
        assert self.flow is not None
        assert self.target is not None
        Prober._counter += 1
        branch = f"{self.prefix}{Prober._counter:x}"
        data = self._template().fill(branch, f"{Prober._counter:x}-{self.call_id}", seq)
        txn = ClientTransaction.from_bytes(
            data,
            branch=branch,
            method="OPTIONS",
            reliable=self.target.transport != "udp",
            timers=self.timers,
        )
        self.stats.sent += 1
        return self.driver.start(txn, self.flow)

    async def probe(self, seq: int) -> TransactionResult | None:
        result = await self.start_probe(seq)
        self.record(seq, result)
        return result

    def record(self, seq: int, result: TransactionResult) -> None:
        st = self.stats
        st.codes[result.status] = st.codes.get(result.status, 0) + 1
        st.retransmits += result.retransmits
        assert self.target is not None
        t = self.target
        where = f"{format_host(t.address)}:{t.port}"
        obj: dict[str, object] = {
            "type": "reply",
            "target": self.text,
            "seq": seq,
            "status": result.status,
            "reason": result.reason,
            "source": where,
            "transport": t.transport,
            "retransmits": result.retransmits,
            "rtt_s": result.rtt_first,
            "rtt_last_s": result.rtt_last,
            "cause": result.cause,
        }
        if result.response is not None:
            st.answered += 1
            rtt = result.rtt_first or 0.0
            st.rtts.append(rtt)
            text = (
                f"{result.status} {result.reason} from {where} ({t.transport}): seq={seq} "
                f"rtt={rtt * 1000:.3f} ms retransmits={result.retransmits}"
            )
        else:
            st.failed += 1
            obj["error"] = result.error
            if result.cause == "timeout":
                text = (
                    f"no answer from {where} ({t.transport}): seq={seq} timeout after "
                    f"{result.duration:.3f} s, {result.retransmits + 1} transmission(s)"
                )
            else:
                text = f"error from {where} ({t.transport}): seq={seq} {result.error}"
        if not self.args.flood:
            self.out.line(obj, text)

    def record_flood(self, result: TransactionResult) -> None:
        """``record`` for a flood, which prints no line per probe."""
        st = self.stats
        st.codes[result.status] = st.codes.get(result.status, 0) + 1
        st.retransmits += result.retransmits
        if result.cause == Cause.RESPONSE:
            st.answered += 1
            st.rtts.append(result.rtt_first or 0.0)
        else:
            st.failed += 1

    def print_summary(self) -> None:
        s = self.stats.summary()
        lines = [
            f"--- {self.text} ---",
            f"{s['sent']} sent, {s['answered']} answered, {s['loss_pct']}% loss, "
            f"time {self.stats.elapsed:.3f} s",
        ]
        if self.stats.rtts:
            vals = [float(str(s[k])) * 1000 for k in ("rtt_min_s", "rtt_avg_s", "rtt_max_s")]
            mdev = float(str(s["rtt_mdev_s"])) * 1000
            lines.append(
                f"rtt min/avg/max/mdev = {vals[0]:.3f}/{vals[1]:.3f}/{vals[2]:.3f}/{mdev:.3f} ms"
            )
        if self.args.flood and self.stats.elapsed > 0:
            rate = self.stats.sent / self.stats.elapsed
            s["rate_per_s"] = round(rate, 1)
            s["failures"] = self.stats.sent - sum(
                v for k, v in self.stats.codes.items() if 200 <= k < 300
            )
            lines.append(
                f"flood: {rate:.0f} transactions/s, {s['failures']} failures, "
                f"{self.stats.retransmits} retransmissions"
            )
        if self.stats.error:
            lines.append(f"error: {self.stats.error}")
        self.out.line(s, "\n".join(lines))


async def run_target(prober: Prober, count: int, interval: float, window: int) -> None:
    start = clock.monotonic()
    try:
        await prober.connect()
    except (ResolveError, TransportError, ConfigError) as exc:
        prober.stats.error = str(exc)
        prober.stats.elapsed = clock.monotonic() - start
        if not prober.out.json:
            sys.stdout.write(f"{prober.text}: {exc}\n")
        return
    start = clock.monotonic()
    tasks: set[asyncio.Task[TransactionResult | None]] = set()
    try:
        if prober.args.flood:
            await _flood(prober, count, window)
        elif prober.args.crlf and not isinstance(prober.flow, StreamFlow | WsFlow):
            prober.stats.error = "--crlf needs a TCP or TLS flow (RFC 5626 §4.4.1)"
            sys.stdout.write(f"{prober.text}: {prober.stats.error}\n")
        else:
            seq = 0
            crlf = prober.args.crlf
            while count == 0 or seq < count:
                seq += 1
                task = asyncio.ensure_future(prober.crlf_probe(seq) if crlf else prober.probe(seq))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                if count and seq >= count:
                    break
                await asyncio.sleep(max(0.0, start + seq * interval - clock.monotonic()))
            if tasks:
                await asyncio.gather(*tasks)
    finally:
        prober.stats.elapsed = clock.monotonic() - start
        if prober.flow is not None:
            prober.flow.close()


async def _flood(prober: Prober, count: int, window: int) -> None:
    """COUNT transactions, WINDOW in flight: on UDP, TCP and TLS one FloodEngine (one
    transaction table, responses peeked, no task or future per probe); on a WebSocket the
    driver's transactions, chained by callbacks."""
    flow = prober.flow
    if isinstance(flow, UdpFlow | StreamFlow) and flow.transport is not None and not flow.closed:
        assert prober.target is not None
        engine = FloodEngine(
            prober._template(),
            prober.prefix,
            prober.call_id,
            prober.timers,
            reliable=prober.target.transport != "udp",
            count=count,
            window=window,
            record=prober.record_flood,
        )
        if isinstance(flow, UdpFlow):
            FloodDatagrams(engine, flow.transport)
        else:
            FloodStream(engine, flow.transport)
        try:
            await engine.run()
        finally:
            prober.stats.sent = engine.started
        return
    done = asyncio.Event()
    state = {"started": 0, "finished": 0}

    def launch() -> None:
        if done.is_set() or prober.flow is None or prober.flow.closed:
            done.set()  # stopped (signal) or the flow is gone: launch nothing more
            return
        state["started"] += 1
        seq = state["started"]
        future = prober.start_probe(seq)
        future.add_done_callback(lambda f: finished(seq, f))

    def finished(seq: int, future: asyncio.Future[TransactionResult]) -> None:
        state["finished"] += 1
        if not future.cancelled():
            prober.record(seq, future.result())
        if state["started"] < count:
            launch()
        elif state["finished"] >= count:
            done.set()

    for _ in range(min(window, count)):
        launch()
    await done.wait()


async def _main(args: argparse.Namespace) -> int:
    count = parse_count(args.count, "-c")
    interval = parse_duration(args.interval, "-i")
    window = parse_count(args.window, "--window", 1)
    if args.flood and count == 0:
        raise UsageError("--flood needs -c COUNT")
    if not args.flood and interval <= 0:
        raise UsageError("-i: the interval must be > 0")
    timers = timer_config(
        parse_duration(args.t1, "--t1") if args.t1 else None,
        parse_duration(args.t2, "--t2") if args.t2 else None,
        parse_count(args.retransmits, "--retransmits") if args.retransmits else None,
        parse_duration(args.timeout, "--timeout") if args.timeout else None,
    )
    option_transport = parse_transport(args.transport) if args.transport else None
    driver = TransactionDriver()
    out = Output(args.json, args.quiet)
    probers = []
    for text in args.targets:
        uri = parse_target(text)
        probers.append(
            Prober(text, uri, effective_transport(uri, option_transport), timers, driver, args, out)
        )
    loop = asyncio.get_running_loop()
    main_task = asyncio.gather(*(run_target(p, count, interval, window) for p in probers))
    loop.add_signal_handler(signal.SIGINT, main_task.cancel)
    loop.add_signal_handler(signal.SIGTERM, main_task.cancel)
    try:
        await main_task
    except asyncio.CancelledError:
        driver.cancel_all("interrupted")
    for p in probers:
        p.print_summary()
    if args.flood:
        # the flood is a zero-failure measurement: any non-2xx or lost transaction fails it
        failed = any(
            p.stats.sent
            != p.stats.codes.get(200, 0) + sum(v for k, v in p.stats.codes.items() if 200 < k < 300)
            for p in probers
        )
        return 1 if failed or not all(p.stats.sent for p in probers) else 0
    return 0 if all(p.stats.answered > 0 for p in probers) else 1


def main(argv: list[str]) -> int:
    return run_command(build_parser(), argv, _main)
