"""Helper of bench/keepalive_bytes.sh (stdlib only; the script runs it with ``python -S``).

Reads the classic pcap file that ``dumpcap -P -i lo`` wrote while one ``sipalive register`` per
keep-alive mode kept its binding at its own registrar port, and prints, per mode, what the
binding cost on the wire in a window of WINDOW seconds:

* The window opens MARGIN s after the registrar's first ``200`` to a REGISTER on that port (the
  end of the initial registration: REGISTER, 401, REGISTER, 200, and over TCP the handshake,
  all before it) and lasts WINDOW s. The un-REGISTER sent on SIGTERM comes after it; the
  script stops the UAs only once every window is over, and this helper checks that.
* Bytes are IP bytes: the IPv4 total length, i.e. IP + UDP/TCP headers + payload, both
  directions (a pcap frame on ``lo`` also has a 14-byte Ethernet header, not counted: the
  link layer of a real path is different). Payload bytes are printed too.
* A keep-alive round is: crlf, a CRLFCRLF ping from the UA; stun, a Binding request from the UA;
  options, an OPTIONS from the UA; register, a 200 to a REGISTER from the registrar.
* bytes/hour at an interval I = IP bytes per round (window bytes / rounds in the window) times
  3600 / (0.9 I): the UA jitters each interval to 80-100 % of I, so rounds are 0.9 I apart on
  average. The bytes of a round do not depend on I, so the figure at SCALE_TO s (the default
  interval) follows from the one measured at INTERVAL s. Printed as well: the window's bytes
  * 3600 / WINDOW, which also carries the +-1 round quantisation of a finite window.
* "all-in" (an estimate built from measured packet sizes) adds what keeping the registration
  costs on top: every mode but ``register`` refreshes at expires/2 (2 per hour at
  --expires 3600), and since the registrar's nonces live NONCE_TTL s (< 1800 s) each refresh is
  challenged again: counted as the initial registration's SIP messages. ``register`` refreshes
  with pre-emptive credentials (nc+1) and is re-challenged (stale nonce) every NONCE_TTL s:
  one 401 + one REGISTER, sized from the initial exchange, 3600 / NONCE_TTL times per hour.

Prints a text report and a markdown table; ``--emit FILE`` writes ``key<TAB>value`` lines for
run-all.sh (the shell forwards them to SUMMARY_FILE).
"""

from __future__ import annotations

import argparse
import struct
import sys
from dataclasses import dataclass

STUN_COOKIE = b"\x21\x12\xa4\x42"


@dataclass
class Packet:
    ts: float
    up: bool  # UA -> registrar
    ip_len: int
    payload: bytes
    kind: str


def read_pcap(path: str) -> list[tuple[float, bytes]]:
    """(timestamp, frame) of every record; classic pcap, either byte order, us or ns stamps."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 24:
        raise SystemExit(f"keepalive_bytes: {path}: not a pcap file (too short)")
    magic = data[:4]
    table = {
        b"\xd4\xc3\xb2\xa1": ("<", 1e-6),
        b"\xa1\xb2\xc3\xd4": (">", 1e-6),
        b"\x4d\x3c\xb2\xa1": ("<", 1e-9),
        b"\xa1\xb2\x3c\x4d": (">", 1e-9),
    }
    if magic not in table:
        raise SystemExit(f"keepalive_bytes: {path}: not a classic pcap file (dumpcap -P)")
    order, unit = table[magic]
    linktype = struct.unpack_from(order + "I", data, 20)[0]
    link_len = {1: 14, 113: 16, 276: 20, 0: 4}.get(linktype)
    if link_len is None:
        raise SystemExit(f"keepalive_bytes: {path}: link type {linktype} not handled")
    out, off = [], 24
    while off + 16 <= len(data):
        sec, frac, incl, _orig = struct.unpack_from(order + "IIII", data, off)
        off += 16
        frame = data[off : off + incl]
        off += incl
        out.append((sec + frac * unit, frame[link_len:]))
    return out


def classify(proto: int, payload: bytes, tcp_flags: int) -> str:
    if not payload:
        if proto == 6:
            if tcp_flags & 0x02:
                return "tcp-syn"
            if tcp_flags & 0x01:
                return "tcp-fin"
            if tcp_flags & 0x04:
                return "tcp-rst"
            return "tcp-ack"
        return "empty"
    if payload == b"\r\n\r\n":
        return "crlf-ping"
    if payload == b"\r\n":
        return "crlf-pong"
    if len(payload) >= 20 and payload[4:8] == STUN_COOKIE:
        kind = {0x0001: "stun-request", 0x0101: "stun-response"}
        return kind.get(struct.unpack_from("!H", payload)[0], "stun-other")
    first = payload.split(b"\r\n", 1)[0]
    method = cseq_method(payload)
    if first.startswith(b"SIP/2.0 "):
        return f"sip-{first[8:11].decode('ascii', 'replace')}-{method}"
    return first.split(b" ", 1)[0].decode("ascii", "replace")[:16] or "other"


def cseq_method(payload: bytes) -> str:
    for line in payload.split(b"\r\n"):
        if line[:5].lower() == b"cseq:":
            parts = line[5:].split()
            return parts[1].decode("ascii", "replace") if len(parts) > 1 else "?"
    return "?"


def packets_for(frames: list[tuple[float, bytes]], port: int) -> list[Packet]:
    out = []
    for ts, ip in frames:
        if len(ip) < 20 or ip[0] >> 4 != 4:
            continue
        ihl = (ip[0] & 0x0F) * 4
        total = struct.unpack_from("!H", ip, 2)[0]
        proto = ip[9]
        if proto not in (6, 17) or len(ip) < ihl + 8:
            continue
        sport, dport = struct.unpack_from("!HH", ip, ihl)
        if port not in (sport, dport):
            continue
        flags = 0
        if proto == 17:
            payload = ip[ihl + 8 : total]
        else:
            doff = (ip[ihl + 12] >> 4) * 4
            flags = ip[ihl + 13]
            payload = ip[ihl + doff : total]
        out.append(Packet(ts, dport == port, total, payload, classify(proto, payload, flags)))
    return out


def is_round(p: Packet, mode: str) -> bool:
    if mode == "crlf":
        return p.up and p.kind == "crlf-ping"
    if mode == "stun":
        return p.up and p.kind == "stun-request"
    if mode == "options":
        return p.up and p.kind == "OPTIONS"
    if mode == "register":
        return not p.up and p.kind == "sip-200-REGISTER"
    return False


def is_unregister(p: Packet) -> bool:
    if not (p.up and p.kind == "REGISTER"):
        return False
    low = p.payload.lower()
    return b"expires: 0\r\n" in low or b"expires=0" in low


@dataclass
class Result:
    name: str
    transport: str
    mode: str
    ok: bool
    note: str = ""
    bytes_w: int = 0
    payload_w: int = 0
    packets_w: int = 0
    rounds: int = 0
    gap: float = 0.0
    reg_bytes: int = 0
    reg_packets: int = 0
    refresh_bytes: int = 0
    challenge_bytes: int = 0
    breakdown: str = ""


def analyse(name: str, port: int, transport: str, mode: str, frames, a) -> Result:
    pk = packets_for(frames, port)
    r = Result(name, transport, mode, False)
    t0 = next((p.ts for p in pk if not p.up and p.kind == "sip-200-REGISTER"), None)
    if t0 is None:
        r.note = f"no 200 to a REGISTER seen on port {port} ({len(pk)} packets)"
        return r
    lo, hi = t0 + a.margin, t0 + a.margin + a.window
    unreg = next((p.ts for p in pk if p.ts > t0 and is_unregister(p)), None)
    last = max(p.ts for p in pk)
    if unreg is not None and unreg < hi:
        r.note = f"the un-REGISTER came {hi - unreg:.1f} s before the window's end"
        return r
    if unreg is None and last < hi - a.interval:
        r.note = f"the capture ends {hi - last:.1f} s before the window's end"
        return r
    initial = [p for p in pk if p.ts <= t0]
    r.reg_bytes = sum(p.ip_len for p in initial)
    r.reg_packets = len(initial)
    # a refresh does not open a connection: leave out the TCP handshake (SYN, SYN-ACK, ACK)
    skip = 3 if [p.kind for p in initial[:3]] == ["tcp-syn", "tcp-syn", "tcp-ack"] else 0
    r.refresh_bytes = sum(p.ip_len for p in initial[skip:])
    # a re-challenge: the 401 and the REGISTER that answers it (sizes from the initial exchange)
    sip = [p for p in initial if p.payload and not p.kind.startswith(("tcp", "crlf"))]
    for i, p in enumerate(sip):
        if p.kind == "sip-401-REGISTER" and i + 1 < len(sip):
            r.challenge_bytes = p.ip_len + sip[i + 1].ip_len
            break
    w = [p for p in pk if lo <= p.ts < hi]
    r.bytes_w = sum(p.ip_len for p in w)
    r.payload_w = sum(len(p.payload) for p in w)
    r.packets_w = len(w)
    rounds = [p.ts for p in w if is_round(p, mode)]
    r.rounds = len(rounds)
    r.gap = (rounds[-1] - rounds[0]) / (len(rounds) - 1) if len(rounds) > 1 else 0.0
    kinds: dict[tuple[str, str], list[int]] = {}
    for p in w:
        kinds.setdefault(("ua>" if p.up else "reg>", p.kind), []).append(p.ip_len)
    r.breakdown = (
        ", ".join(f"{d}{k} {len(v)}x{sum(v) / len(v):.0f}B" for (d, k), v in sorted(kinds.items()))
        or "nothing"
    )
    r.ok = True
    return r


def fmt(x: float) -> str:
    return f"{x:.0f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("pcap")
    ap.add_argument("specs", nargs="+", metavar="NAME:PORT:TRANSPORT:MODE")
    ap.add_argument("--window", type=float, required=True)
    ap.add_argument("--margin", type=float, default=1.0)
    ap.add_argument("--interval", type=float, required=True)
    ap.add_argument("--scale-to", type=float, default=25.0)
    ap.add_argument("--expires", type=int, default=3600)
    ap.add_argument("--nonce-ttl", type=float, default=300.0)
    ap.add_argument("--reference", default="udp-crlf")
    ap.add_argument("--jitter-mean", type=float, default=0.9, help="mean interval / nominal")
    ap.add_argument("--emit")
    a = ap.parse_args()
    frames = read_pcap(a.pcap)
    results = []
    for spec in a.specs:
        name, port, transport, mode = spec.split(":")
        results.append(analyse(name, int(port), transport, mode, frames, a))
    per_h = 3600.0 / a.window
    refreshes_h = 3600.0 / (a.expires / 2)
    rechallenges_h = 3600.0 / a.nonce_ttl
    rows, emit = [], []

    def hourly(r: Result, interval: float) -> float:
        """Bytes per hour at a nominal interval: bytes per round x rounds per hour."""
        if not r.rounds:
            return r.bytes_w * per_h * a.interval / interval
        return r.bytes_w / r.rounds * 3600.0 / (a.jitter_mean * interval)

    def allin(r: Result) -> float:
        ka = hourly(r, a.scale_to)
        if r.mode == "register":
            return ka + rechallenges_h * r.challenge_bytes
        return ka + refreshes_h * r.refresh_bytes

    ref = next((r for r in results if r.name == a.reference and r.ok and r.bytes_w), None)
    print(
        f"# {len(frames)} frames captured; window {a.window:g} s from {a.margin:g} s after each "
        f"initial registration's 200; keep-alive interval {a.interval:g} s (jittered 80-100 %)"
    )
    print(
        "# bytes = IP bytes (IPv4 header + UDP/TCP header + payload), both directions; "
        "the 14-byte loopback link header is not counted"
    )
    for r in results:
        if not r.ok:
            print(f"  {r.name:<14} NO RESULT: {r.note}")
            emit.append((f"ka_{r.name}_bph", "n/a"))
            continue
        print(
            f"  {r.name:<14} window: {r.packets_w} packets, {r.bytes_w} B IP ({r.payload_w} B "
            f"payload), {r.rounds} rounds" + (f", mean gap {r.gap:.2f} s" if r.gap else "")
        )
        print(f"  {'':<14}   {r.breakdown}")
        print(
            f"  {'':<14}   initial registration: {r.reg_packets} packets, {r.reg_bytes} B"
            + (f" (401 + answering REGISTER {r.challenge_bytes} B)" if r.challenge_bytes else "")
        )
    hdr = (
        "| mode | transport | rounds in window (mean gap) | IP bytes per round (packets) | "
        f"bytes/hour at {a.interval:g} s (window-measured) | bytes/hour at {a.scale_to:g} s | "
        f"ratio to {a.reference} | initial registration, bytes | "
        f"all-in bytes/hour at {a.scale_to:g} s (estimate) | ratio to {a.reference} (all-in) |"
    )
    rows.append(hdr)
    rows.append("|" + "---|" * (hdr.count(" | ") + 1))
    for r in results:
        if not r.ok:
            rows.append(f"| {r.mode} | {r.transport} | n/a: {r.note} |" + " |" * 7)
            continue
        bph = hourly(r, a.interval)
        b25 = hourly(r, a.scale_to)
        per_round = (
            f"{r.bytes_w / r.rounds:.0f} ({r.packets_w / r.rounds:.1f})" if r.rounds else "-"
        )
        ratio = ratio_all = "-"
        if ref is not None and r.mode != "none":
            ratio = f"{hourly(r, a.scale_to) / hourly(ref, a.scale_to):.2f}"
            ratio_all = f"{allin(r) / allin(ref):.2f}"
        gap = f" ({r.gap:.2f} s)" if r.gap else ""
        rows.append(
            f"| {r.mode} | {r.transport} | {r.rounds}{gap} | {per_round} | {fmt(bph)} "
            f"({fmt(r.bytes_w * per_h)}) | {fmt(b25)} | {ratio} | {r.reg_bytes} | "
            f"{fmt(allin(r))} | {ratio_all} |"
        )
        emit += [
            (f"ka_{r.name}_bph", f"{bph:.0f}"),
            (f"ka_{r.name}_bph{a.scale_to:g}", f"{b25:.0f}"),
            (f"ka_{r.name}_round_bytes", f"{r.bytes_w / r.rounds:.0f}" if r.rounds else "-"),
            (f"ka_{r.name}_rounds", str(r.rounds)),
            (f"ka_{r.name}_ratio", ratio),
            (f"ka_{r.name}_reg_bytes", str(r.reg_bytes)),
            (f"ka_{r.name}_allin{a.scale_to:g}", f"{allin(r):.0f}"),
            (f"ka_{r.name}_allin_ratio", ratio_all),
        ]
        if r.mode != "none" and r is not ref:
            base = fmt(hourly(ref, a.scale_to)) if ref else "n/a"
            what = (
                f"keep-alive bytes/hour per binding, {r.transport.upper()} {r.mode}, at "
                f"{a.scale_to:g} s (bytes per round measured at {a.interval:g} s for "
                f"{a.window:g} s, IP bytes both ways; all-in estimate incl. refreshes)"
            )
            row = (
                f"| {what} | {fmt(b25)} (all-in {fmt(allin(r))}) | {a.reference} {base} | "
                f"{ratio} (all-in {ratio_all}) | lower | - | - |"
            )
            emit.append((f"mdrow_ka_{r.name}", row))
    print()
    print("\n".join(rows))
    print(
        f"\n(bytes/hour = IP bytes per round x 3600 / ({a.jitter_mean:g} x interval), the mean "
        "jittered interval; in brackets the window's bytes x 3600 / window. ratio = the mode's "
        f"bytes / {a.reference}'s: LOWER is cheaper. 'all-in' adds {refreshes_h:g} refreshes/hour "
        f"at --expires {a.expires} (each as costly as the initial registration without a TCP "
        f"handshake: the registrar's nonces live {a.nonce_ttl:g} s) to every mode but register, "
        f"and to register one stale-nonce 401 + REGISTER every {a.nonce_ttl:g} s.)"
    )
    emit += [
        ("ka_interval", f"{a.interval:g}"),
        ("ka_window", f"{a.window:g}"),
        ("ka_scale_to", f"{a.scale_to:g}"),
    ]
    if a.emit:
        with open(a.emit, "w") as f:
            f.writelines(f"{k}\t{v}\n" for k, v in emit)
    sys.exit(0 if all(r.ok for r in results) else 3)


if __name__ == "__main__":
    main()
