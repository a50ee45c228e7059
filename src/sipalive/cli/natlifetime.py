"""``sipalive nat-lifetime``: how long the NATs on the path keep an idle UDP binding, and the
keep-alive interval that follows from it.

``--server HOST:PORT`` measures against a cooperating ``sipalive respond --listen udp:...``
beyond the NAT (protocol and search: :mod:`sipalive.keepalive.natlife`); ``--local`` reads
this host's own conntrack timeouts instead and says what they mean for keep-alives.

Exit status: 0 measured (the lifetime within the resolution), 1 not bounded (longer than
``--max``, or the time limit came first: what is known is still printed), 2 bad usage,
3 nothing measured (no answer, not a sipalive server, the path failed).
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from pathlib import Path
from typing import Any

from sipalive.cli.common import UsageError, parse_count, parse_duration
from sipalive.errors import LocalProtocolError, ParseError
from sipalive.keepalive.natlife import (
    MAX_DELAY,
    ConntrackTimeouts,
    NatLifetimeResult,
    ProbeResolved,
    SearchConfig,
    conntrack_advice,
)
from sipalive.sip.uri import parse_host_port

SYSCTL_DIR = "/proc/sys/net/netfilter"
DEFAULT_PORT = 5060


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sipalive nat-lifetime",
        description="Measure how long the NATs on the path keep an idle UDP binding "
        "(against 'sipalive respond'), or explain this host's conntrack timeouts (--local).",
    )
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--server", metavar="HOST:PORT", help="a 'sipalive respond --listen udp:...' beyond the NAT"
    )
    where.add_argument(
        "--local", action="store_true", help="read this host's conntrack timeouts instead"
    )
    p.add_argument(
        "--max",
        default="300",
        metavar="S",
        help=f"longest idle time to try (default 300s, at most {MAX_DELAY:g}s)",
    )
    p.add_argument(
        "--resolution",
        default="0.5",
        metavar="S",
        help="narrow the lifetime to this (default 0.5s; 2%% of it if that is more)",
    )
    p.add_argument(
        "--time-limit", metavar="S", help="give up after this long (default 3 x --max + 30s)"
    )
    p.add_argument("--copies", default="2", metavar="N", help="sockets per probe (default 2)")
    p.add_argument("--parallel", default="256", metavar="N", help="sockets open at once (256)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("-v", "--verbose", action="store_true", help="a line per probe on stderr")
    p.add_argument("--sysctl-dir", default=SYSCTL_DIR, help=argparse.SUPPRESS)
    return p


def _config(args: argparse.Namespace) -> SearchConfig:
    try:
        return SearchConfig(
            max_delay=parse_duration(args.max, "--max"),
            resolution=parse_duration(args.resolution, "--resolution"),
            copies=parse_count(args.copies, "--copies", 1),
            max_trials=parse_count(args.parallel, "--parallel", 1),
            time_limit=(
                parse_duration(args.time_limit, "--time-limit") if args.time_limit else None
            ),
        )
    except LocalProtocolError as exc:
        raise UsageError(str(exc)) from exc


def _server(text: str) -> tuple[str, int]:
    """The server's address: an IP literal or a name (the first UDP address it has)."""
    try:
        host, port = parse_host_port(text.strip(), "--server")
    except ParseError as exc:
        raise UsageError(f"--server: expected HOST:PORT, got {text!r}") from exc
    port = DEFAULT_PORT if port is None else port
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        raise UsageError(f"--server: cannot resolve {host!r}: {exc.strerror}") from exc
    addr = infos[0][4]
    return str(addr[0]), int(addr[1])


def _fmt(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _address(addr: tuple[str, int] | None) -> str | None:
    if addr is None:
        return None
    return f"[{addr[0]}]:{addr[1]}" if ":" in addr[0] else f"{addr[0]}:{addr[1]}"


def result_object(server: tuple[str, int], result: NatLifetimeResult) -> dict[str, Any]:
    return {
        "server": _address(server),
        "lifetime_s": _fmt(result.lifetime_s),
        "low_s": _fmt(result.low_s),
        "high_s": _fmt(result.high_s),
        "recommended_keepalive_s": result.recommended_keepalive_s,
        "complete": result.complete,
        "reason": result.reason,
        "error": result.error,
        "mapped_port_kept": result.mapped_port_kept,
        "mapping_idle_s": _fmt(result.mapping_idle_s),
        "inbound_refresh": result.inbound_refresh,
        "refresh_delay_s": _fmt(result.refresh_delay_s),
        "server_keepalives": result.server_keepalives,
        "public_address": _address(result.public_address),
        "rtt_ms": None if result.rtt_s is None else round(result.rtt_s * 1000, 3),
        "trials": result.trials,
        "search_s": _fmt(result.search_s),
        "elapsed_s": _fmt(result.elapsed_s),
        "probes": [{"delay_s": p.delay, "outcome": p.outcome} for p in result.probes],
    }


def _yes(value: bool | None) -> str:
    return {True: "yes", False: "no", None: "unknown"}[value]


def result_text(server: tuple[str, int], result: NatLifetimeResult) -> str:
    where = _address(server)
    if result.error is not None:
        return f"NAT binding lifetime via {where}: not measured: {result.error}"
    lines = []
    if result.high_s is not None:
        lines.append(
            f"NAT binding lifetime via {where}: {result.lifetime_s:.1f} s (answered after "
            f"{result.low_s:g} s of silence, expired after {result.high_s:g} s)"
        )
    else:
        lines.append(
            f"NAT binding lifetime via {where}: at least {result.low_s:g} s ({result.reason})"
        )
    if result.recommended_keepalive_s is not None:
        lines.append(
            f"keep-alive interval: {result.recommended_keepalive_s:g} s or less (80 % of "
            f"{result.low_s:g} s less 1 s: with RFC 5626's 80-100 % jitter every gap stays "
            "below the lifetime)"
        )
    elif result.high_s is None:
        lines.append(f"keep-alive interval: a lower bound of {result.low_s:g} s says little")
    else:
        lines.append("keep-alive interval: none works (the binding lives under 1.5 s)")
    public = _address(result.public_address) or "unknown"
    kept = _yes(result.mapped_port_kept)
    if result.mapping_idle_s is not None:
        kept += f" (after {result.mapping_idle_s:.1f} s idle)"
    lines.append(f"public address {public}; same mapping again after the binding expired: {kept}")
    refresh = _yes(result.inbound_refresh)
    if result.inbound_refresh is not None:
        refresh += (
            f" ({result.server_keepalives} server keep-alives received; the answer after "
            f"{result.refresh_delay_s:g} s {'arrived' if result.inbound_refresh else 'did not'})"
        )
    lines.append(f"server-side keep-alives refresh the binding (RFC 4787 REQ-6): {refresh}")
    search = f"lifetime found in {result.search_s:.1f} s, " if result.search_s else ""
    lines.append(f"{result.trials} trials, {search}{result.elapsed_s:.1f} s in all")
    return "\n".join(lines)


def _progress(event: ProbeResolved) -> None:
    verdict = "answered" if event.answered else "expired"
    sys.stderr.write(f"[{event.elapsed:7.2f} s] {event.delay:g} s: {verdict}\n")
    sys.stderr.flush()


def _measure(args: argparse.Namespace) -> int:
    config = _config(args)
    server = _server(args.server)
    from sipalive.cli.aio import run_loop
    from sipalive.io.natlife import measure

    found: list[NatLifetimeResult] = []

    async def run() -> int:
        found.append(await measure(server, config, on_progress=_progress if args.verbose else None))
        return 0

    run_loop(run())
    result = found[0]
    if args.json:
        sys.stdout.write(json.dumps(result_object(server, result)) + "\n")
    else:
        sys.stdout.write(result_text(server, result) + "\n")
    if result.error is not None:
        return 3
    return 0 if result.complete else 1


def read_conntrack(directory: Path) -> ConntrackTimeouts:
    def value(name: str) -> int | None:
        try:
            return int((directory / name).read_text().strip())
        except (OSError, ValueError):
            return None

    return ConntrackTimeouts(
        value("nf_conntrack_udp_timeout"),
        value("nf_conntrack_udp_timeout_stream"),
        value("nf_conntrack_tcp_timeout_established"),
    )


def _local(args: argparse.Namespace) -> int:
    directory = Path(args.sysctl_dir)
    timeouts = read_conntrack(directory)
    advice = conntrack_advice(timeouts)
    if args.json:
        obj = {
            "conntrack": timeouts.loaded,
            "udp_timeout_s": timeouts.udp,
            "udp_timeout_stream_s": timeouts.udp_stream,
            "tcp_timeout_established_s": timeouts.tcp_established,
            "recommended_keepalive_s": advice.udp_keepalive_s,
            "recommended_tcp_keepalive_s": advice.tcp_keepalive_s,
            "notes": list(advice.notes),
        }
        sys.stdout.write(json.dumps(obj) + "\n")
        return 0
    head = f"conntrack timeouts of this host ({directory}):"
    sys.stdout.write("\n".join([head, *(f"  - {note}" for note in advice.notes)]) + "\n")
    return 0


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _local(args) if args.local else _measure(args)
    except UsageError as exc:
        parser.error(str(exc))
    return 2
