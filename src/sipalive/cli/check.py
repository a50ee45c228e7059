"""``sipalive check``: a Nagios/Icinga plugin (Monitoring Plugins development guidelines).

One status line, perfdata, exit 0/1/2/3. Start-up is the budget: for a literal IP over UDP
this path imports no asyncio, dnspython, aiohttp or msgspec (tests/test_check_imports.py).
"""

from __future__ import annotations

import sys

from sipalive.cli.common import (
    UsageError,
    parse_count,
    parse_duration,
    parse_transport,
    timer_config,
)
from sipalive.cli.nagios import (
    CRITICAL,
    OK,
    STATE_NAMES,
    UNKNOWN,
    WARNING,
    Range,
    code_expected,
    parse_expect,
)

USAGE = """\
Usage: sipalive check -H HOST [-p PORT] [-T udp|tcp|tls] [-u URI] [-w RANGE] [-c RANGE]
                      [-t TIMEOUT] [--t1 S] [--retransmits N] [--expect CODES]
                      [--ca FILE] [--insecure] [--cert FILE --key FILE] [-v]

Sends one SIP OPTIONS to HOST and reports as a Nagios/Icinga plugin:
  0 OK, 1 WARNING (RTT over -w), 2 CRITICAL (no answer, unexpected code, RTT over -c),
  3 UNKNOWN (usage error).

  -H, --hostname HOST   IP address or DNS name (RFC 3263 NAPTR/SRV/A when no port is given)
  -p, --port PORT       port (default 5060, 5061 for tls)
  -T, --transport T     udp (default), tcp or tls
  -u, --uri URI         Request-URI (default sip:HOST:PORT)
  -w, --warning RANGE   RTT warning range, e.g. 0.2, 200ms, @0:0.01
  -c, --critical RANGE  RTT critical range
  -t, --timeout S       give up after S (default 10s); Timer F
      --t1 S            RFC 3261 T1, first retransmission interval (default 0.5s)
      --retransmits N   at most N retransmissions over UDP, then give up when the next is due
      --expect CODES    accepted final codes: 200, 2xx, 200,404, 200-299, any (default 2xx)
      --from URI        From URI;  --user-agent UA
      --ca FILE         CA bundle for TLS;  --insecure: no TLS verification
      --cert FILE --key FILE   client certificate for TLS
  -v, --verbose         add phase timings and the response headers
  -V, --version, -h, --help
"""

# option -> canonical key; flags take no value. Hand-parsed: getopt/argparse import gettext
# and re, which would cost more start-up time than the probe itself.
_VALUED = {
    "-H": "H", "--hostname": "H", "-p": "p", "--port": "p", "-T": "T", "--transport": "T",
    "-u": "u", "--uri": "u", "-w": "w", "--warning": "w", "-c": "c", "--critical": "c",
    "-t": "t", "--timeout": "t", "--t1": "t1", "--retransmits": "retransmits",
    "--expect": "expect", "--from": "from", "--user-agent": "user-agent", "--ca": "ca",
    "--cert": "cert", "--key": "key",
}  # fmt: skip
_FLAGS = {
    "-h": "help", "--help": "help", "-V": "version", "--version": "version",
    "-v": "verbose", "--verbose": "verbose", "--insecure": "insecure",
}  # fmt: skip


def parse_argv(argv: list[str]) -> tuple[dict[str, str], set[str]]:
    """``-H x``, ``-Hx``, ``--hostname x``, ``--hostname=x``; flags alone."""
    values: dict[str, str] = {}
    flags: set[str] = set()
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        name, eq, inline = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if not eq and not arg.startswith("--") and len(arg) > 2 and arg[:2] in _VALUED:
            name, inline, eq = arg[:2], arg[2:], "="
        if name in _FLAGS and not eq:
            flags.add(_FLAGS[name])
        elif name in _VALUED:
            if eq:
                values[_VALUED[name]] = inline
            elif i < len(argv):
                values[_VALUED[name]] = argv[i]
                i += 1
            else:
                raise UsageError(f"option {name} requires an argument")
        elif arg.startswith("-"):
            raise UsageError(f"unknown option {arg}")
        else:
            raise UsageError(f"unexpected argument {arg!r}")
    return values, flags


def main(argv: list[str]) -> int:
    try:
        return _check(argv)
    except UsageError as exc:
        sys.stdout.write(f"SIP UNKNOWN - {exc}\n{USAGE}")
        return UNKNOWN


def _check(argv: list[str]) -> int:
    o, flags = parse_argv(argv)
    if "help" in flags:
        sys.stdout.write(USAGE)
        return OK
    if "version" in flags:
        from sipalive import __version__

        sys.stdout.write(f"sipalive check {__version__}\n")
        return OK
    verbose = "verbose" in flags
    insecure = "insecure" in flags
    host = o.get("H")
    if not host:
        raise UsageError("-H HOST is required")
    transport = parse_transport(o.get("T") or "udp")
    port_text = o.get("p")
    port = parse_count(port_text, "-p", 1) if port_text else None
    if port is not None and port > 65535:
        raise UsageError(f"-p: port out of range: {port}")
    warn = _range(o, "w")
    crit = _range(o, "c")
    timeout = parse_duration(o.get("t") or "10", "-t")
    if timeout <= 0:
        raise UsageError("-t: the timeout must be > 0")
    t1 = parse_duration(o["t1"], "--t1") if "t1" in o else None
    retransmits = parse_count(o["retransmits"], "--retransmits") if "retransmits" in o else None
    timers = timer_config(t1, None, retransmits, timeout)
    expect = parse_expect(o.get("expect", "2xx"))

    from sipalive.io.oneshot import Destination, probe
    from sipalive.sip.build import format_host
    from sipalive.sip.uri import parse_host_port

    try:
        bare_host, _ = parse_host_port(host.strip("[]") if host.count(":") > 1 else host)
    except Exception as exc:
        raise UsageError(f"-H: bad host {host!r}") from exc
    destinations = _resolve(bare_host, port, transport)
    if isinstance(destinations, str):
        return _emit(CRITICAL, destinations, None, warn, crit)
    ssl_context = None
    if transport == "tls":
        from sipalive.errors import ConfigError
        from sipalive.io.tlsctx import TlsOptions, client_context

        try:
            ssl_context = client_context(
                TlsOptions(o.get("ca"), insecure, o.get("cert"), o.get("key"))
            )
        except ConfigError as exc:
            raise UsageError(str(exc)) from exc
    outcome = None
    for address, dport, name in destinations:
        hp = f"[{name}]" if ":" in name else name
        uri = o.get("u") or f"sip:{hp}:{dport}"
        if transport != "udp" and "transport=" not in uri:
            uri += f";transport={transport}"
        outcome = probe(
            Destination(transport, address, dport, name, uri),
            timers,
            from_uri=o.get("from"),
            user_agent=o.get("user-agent"),
            ssl_context=ssl_context,
        )
        if outcome.result.cause != "transport-error":
            break  # RFC 3263 §4.3: try the next target only on a transport failure
    assert outcome is not None
    result = outcome.result
    dest = outcome.destination
    where = f"{format_host(dest.address)}:{dest.port}"
    perf_status = str(result.status)
    if result.response is None:
        if result.cause == "timeout":
            sent = result.retransmits + 1
            text = (
                f"no response from {where} ({transport}) after {result.duration:.2f} s, "
                f"{sent} transmission{'s' if sent > 1 else ''}"
            )
        else:
            text = f"{result.error} ({where} {transport})"
        state = CRITICAL
        rtt = None
    else:
        rtt = result.rtt_first or 0.0
        text = f"{result.status} {result.reason} from {where} in {rtt * 1000:.2f} ms"
        if not code_expected(result.status, expect):
            state = CRITICAL
            text += " (unexpected status)"
        elif crit is not None and crit.alert(rtt):
            state = CRITICAL
        elif warn is not None and warn.alert(rtt):
            state = WARNING
        else:
            state = OK
        if result.retransmits:
            text += f" after {result.retransmits} retransmission(s)"
    perf = (
        f"rtt={'U' if rtt is None else f'{rtt:.6f}s'};{warn.perf() if warn else ''};"
        f"{crit.perf() if crit else ''};0; status={perf_status};;;; "
        f"retransmits={result.retransmits};;;;"
    )
    lines = [f"SIP {STATE_NAMES[state]} - {text} | {perf}"]
    if verbose:
        phases = " ".join(f"{k}={v * 1000:.3f}ms" for k, v in outcome.phases.items())
        local = f"{format_host(outcome.local[0])}:{outcome.local[1]}" if outcome.local else "-"
        lines.append(f"phases: {phases or 'none'}; local {local}")
        if result.response is not None:
            lines.extend(f"{n}: {v}" for n, v in result.response.headers)
    sys.stdout.write("\n".join(lines) + "\n")
    return state


def _emit(state: int, text: str, _rtt: float | None, warn: Range | None, crit: Range | None) -> int:
    perf = f"rtt=U;{warn.perf() if warn else ''};{crit.perf() if crit else ''};0;"
    sys.stdout.write(f"SIP {STATE_NAMES[state]} - {text} | {perf}\n")
    return state


def _range(o: dict[str, str], short: str) -> Range | None:
    text = o.get(short)
    return Range(text, f"-{short}") if text else None


def _resolve(host: str, port: int | None, transport: str) -> list[tuple[str, int, str]] | str:
    """Destinations to try in order, or the error text. An IP literal needs no DNS."""
    if ":" in host or host.replace(".", "").isdigit():
        default = 5061 if transport == "tls" else 5060
        return [(host, port or default, host)]
    from sipalive.errors import ResolveError
    from sipalive.io.resolver import resolve_sync

    try:
        targets = resolve_sync("sips" if transport == "tls" else "sip", host, port, transport)
    except ResolveError as exc:
        return f"cannot resolve {host}: {exc}"
    # RFC 5922 §4: a TLS server is verified against the domain asked for, not the SRV target
    return [(t.address, t.port, host) for t in targets if t.transport == transport]
