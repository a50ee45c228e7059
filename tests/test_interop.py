"""sipalive against real SIP peers: SIPp (UAS and UAC), Kamailio, sipsak, and the wire itself.

The same commands against our own responder are in test_cli.py. Every test here talks to a
real peer process on 127.0.0.1 (4-digit ports) and asserts what the peer saw or answered;
under ``CI=true`` a missing peer fails the test instead of skipping it.
"""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from procs import respond, sipalive
from realpeers import (
    Kamailio,
    SippTransport,
    SippUas,
    UdpCapture,
    free_port,
    require,
    require_root,
    run_sipp_uac,
    sipp_uas_on_free_port,
    sipsak,
)

pytestmark = pytest.mark.realpeer

OK_LINE = re.compile(
    r"^SIP OK - 200 OK from 127\.0\.0\.1:(?P<port>\d+) in \d+\.\d\d ms \| "
    r"rtt=(?P<rtt>\d+\.\d{6})s;;;0; status=200;;;; retransmits=0;;;;$"
)
LOCAL = re.compile(r"; local 127\.0\.0\.1:(\d+)$", re.MULTILINE)
# sipalive check's start-up (a fresh interpreter) on top of a deadline it must keep
STARTUP_ALLOWANCE = 0.35


def _timed(*args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    t0 = time.monotonic()
    done = sipalive(*args)
    return done, time.monotonic() - t0


def _json_lines(done: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in done.stdout.splitlines()]


def _of_type(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["type"] == kind]


def _head(text: str) -> list[str]:
    """Start line and header lines of a message from SIPp's log (its trailing notes cut)."""
    return text.replace("\r\n", "\n").split("\n\n", 1)[0].split("\n")


def _headers(text: str, name: str) -> list[str]:
    prefix = f"{name.lower()}:"
    return [
        line.split(":", 1)[1].strip() for line in _head(text)[1:] if line.lower().startswith(prefix)
    ]


def _assert_our_options(text: str, transport: str, local_port: int | None, cseq: int) -> None:
    """What RFC 3261 §8.1.1 asks of our OPTIONS, as the real peer received it."""
    (via,) = _headers(text, "Via")
    port = r"\d+" if local_port is None else str(local_port)
    assert re.fullmatch(
        rf"SIP/2\.0/{transport.upper()} 127\.0\.0\.1:{port};branch=z9hG4bK[0-9a-f]+;rport", via
    ), via
    assert _headers(text, "Max-Forwards") == ["70"]
    assert _headers(text, "CSeq") == [f"{cseq} OPTIONS"]
    assert _headers(text, "Content-Length") == ["0"]
    (from_,) = _headers(text, "From")
    assert re.search(r";tag=[0-9a-f]+$", from_), from_
    assert len(_headers(text, "Call-ID")) == 1
    assert len(_headers(text, "To")) == 1


def _check_ok(done: subprocess.CompletedProcess[str], port: int) -> float:
    """Exit 0 with the plugin's OK line; returns the RTT from the perfdata."""
    assert done.returncode == 0, done.stdout
    match = OK_LINE.match(done.stdout.splitlines()[0])
    assert match, done.stdout
    assert int(match["port"]) == port
    rtt = float(match["rtt"])
    assert 0 < rtt < 1
    return rtt


# --- SIPp UAS: 200 over UDP and TCP -------------------------------------------------------


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_check_sipp_uas(transport: SippTransport, tmp_path: Path) -> None:
    require("sipp")
    with sipp_uas_on_free_port(transport, log_dir=tmp_path) as uas:
        done = sipalive("check", "-H", "127.0.0.1", "-p", str(uas.port), "-T", transport, "-v")
        received = uas.wait_received(1)
    _check_ok(done, uas.port)
    assert "Server: sipalive-test-sipp-uas" in done.stdout.splitlines()
    local = LOCAL.search(done.stdout)
    assert local, done.stdout
    (options,) = received
    suffix = ";transport=tcp" if transport == "tcp" else ""
    assert _head(options)[0] == f"OPTIONS sip:127.0.0.1:{uas.port}{suffix} SIP/2.0"
    _assert_our_options(options, transport, int(local[1]), cseq=1)


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_ping_sipp_uas(transport: SippTransport, tmp_path: Path) -> None:
    require("sipp")
    with sipp_uas_on_free_port(transport, log_dir=tmp_path) as uas:
        done = sipalive("ping", "-c", "1", "--json", "--timeout", "1", uas.uri)
        received = uas.wait_received(1)
    assert done.returncode == 0, done.stdout + done.stderr
    objs = _json_lines(done)
    (reply,) = _of_type(objs, "reply")
    assert (reply["status"], reply["reason"], reply["transport"]) == (200, "OK", transport)
    assert reply["source"] == f"127.0.0.1:{uas.port}"
    assert 0 < reply["rtt_s"] < 1
    (summary,) = _of_type(objs, "summary")
    assert (summary["sent"], summary["answered"], summary["codes"]) == (1, 1, {"200": 1})
    (options,) = received
    assert _head(options)[0] == f"OPTIONS {uas.uri} SIP/2.0"
    _assert_our_options(options, transport, None, cseq=1)


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_ping_sipp_uas_answers_every_probe(transport: SippTransport, tmp_path: Path) -> None:
    require("sipp")
    with sipp_uas_on_free_port(transport, log_dir=tmp_path) as uas:
        done = sipalive("ping", "-c", "3", "-i", "0.05", "--json", "--timeout", "0.5", uas.uri)
        received = uas.wait_received(3)
    replies = _of_type(_json_lines(done), "reply")
    assert [(r["seq"], r["status"]) for r in replies] == [(1, 200), (2, 200), (3, 200)], replies
    assert all(0 < r["rtt_s"] < 1 for r in replies)
    assert [_headers(m, "CSeq") for m in received] == [[f"{n} OPTIONS"] for n in (1, 2, 3)]
    assert len({_headers(m, "Call-ID")[0] for m in received}) == 3


# --- Kamailio: UDP, TCP, TLS ------------------------------------------------------------------


def _kam_args(kam: Kamailio, transport: str) -> list[str]:
    if transport == "tls":
        return ["-p", str(kam.tls_port), "-T", "tls", "--ca", str(kam.cert_path)]
    return ["-p", str(kam.port), "-T", transport]


@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
def test_check_kamailio(kamailio: Kamailio, transport: str) -> None:
    args = _kam_args(kamailio, transport)
    done = sipalive("check", "-H", "127.0.0.1", *args, "-v")
    _check_ok(done, int(args[1]))
    lines = done.stdout.splitlines()
    assert "Server: sipalive-test-kamailio" in lines
    local = LOCAL.search(done.stdout)
    assert local, done.stdout
    # Kamailio filled in our ;rport (RFC 3581) with the port it saw: our real source port
    (via,) = [line for line in lines if line.startswith("Via: ")]
    assert f";rport={local[1]};received=127.0.0.1" in via, via
    assert via.startswith(f"Via: SIP/2.0/{transport.upper()} 127.0.0.1:{local[1]};branch=z9hG4bK")
    if transport == "tls":
        assert re.search(r"^phases: connect=\S+ms tls=\S+ms response=", done.stdout, re.M)


@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
def test_ping_kamailio(kamailio: Kamailio, transport: str) -> None:
    port = kamailio.tls_port if transport == "tls" else kamailio.port
    done = sipalive(
        "ping", "-c", "3", "-i", "0.05", "--json", "--ca", str(kamailio.cert_path),
        f"sip:ping@127.0.0.1:{port};transport={transport}",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    objs = _json_lines(done)
    replies = _of_type(objs, "reply")
    assert [(r["seq"], r["status"], r["transport"]) for r in replies] == [
        (n, 200, transport) for n in (1, 2, 3)
    ]
    assert all(0 < r["rtt_s"] < 1 and r["retransmits"] == 0 for r in replies)
    (summary,) = _of_type(objs, "summary")
    assert (summary["sent"], summary["answered"], summary["loss_pct"]) == (3, 3, 0.0)


@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
def test_flood_kamailio_zero_failures(kamailio: Kamailio, transport: str) -> None:
    """The flood engine (one transaction table, peeked responses) against Kamailio: every
    transaction answered 200, none lost, none retransmitted on loopback."""
    port = kamailio.tls_port if transport == "tls" else kamailio.port
    done = sipalive(
        "ping", "--flood", "-c", "5000", "--window", "100", "--json", "--ca",
        str(kamailio.cert_path), f"sip:ping@127.0.0.1:{port};transport={transport}",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    (summary,) = _of_type(_json_lines(done), "summary")
    assert (summary["sent"], summary["answered"], summary["failures"]) == (5000, 5000, 0)
    assert summary["codes"] == {"200": 5000}
    assert summary["rate_per_s"] > 0


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_flood_sipp_uas_zero_failures(transport: SippTransport, tmp_path: Path) -> None:
    require("sipp")
    with sipp_uas_on_free_port(transport, log_dir=tmp_path) as uas:
        done = sipalive("ping", "--flood", "-c", "2000", "--window", "50", "--json", uas.uri)
        received = uas.wait_received(2000)
    assert done.returncode == 0, done.stdout + done.stderr
    (summary,) = _of_type(_json_lines(done), "summary")
    assert (summary["sent"], summary["answered"], summary["failures"]) == (2000, 2000, 0)
    assert len(received) == 2000 + summary["retransmits"]
    assert len({_headers(m, "Call-ID")[0] for m in received}) == 2000


def test_kamailio_tls_without_ca_fails_verification(kamailio: Kamailio) -> None:
    port = str(kamailio.tls_port)
    done = sipalive("check", "-H", "127.0.0.1", "-p", port, "-T", "tls")
    assert done.returncode == 2, done.stdout
    assert done.stdout.startswith("SIP CRITICAL - TLS: ")
    assert "certificate verify failed" in done.stdout
    assert "status=503;" in done.stdout
    ping = sipalive("ping", "-c", "1", f"sips:127.0.0.1:{port}")
    assert ping.returncode == 1
    assert "CERTIFICATE_VERIFY_FAILED" in ping.stdout
    assert "0 sent, 0 answered" in ping.stdout


def test_check_tcp_rtt_is_the_network_rtt(kamailio: Kamailio) -> None:
    rtts = [
        _check_ok(sipalive("check", "-H", "127.0.0.1", *_kam_args(kamailio, "tcp")), kamailio.port)
        for _ in range(3)
    ]
    assert min(rtts) < 0.005, rtts


# --- a peer answering 503 ---------------------------------------------------------------------


def test_sipp_503(tmp_path: Path) -> None:
    require("sipp")
    with sipp_uas_on_free_port(code=503, reason="Service Unavailable", log_dir=tmp_path) as uas:
        port = str(uas.port)
        default = sipalive("check", "-H", "127.0.0.1", "-p", port)
        expected = sipalive("check", "-H", "127.0.0.1", "-p", port, "--expect", "503")
        ping = sipalive("ping", "-c", "1", "--json", "--timeout", "1", uas.uri)
        received = uas.wait_received(3)
    assert default.returncode == 2, default.stdout
    assert re.match(
        rf"SIP CRITICAL - 503 Service Unavailable from 127\.0\.0\.1:{port} in \d+\.\d\d ms "
        r"\(unexpected status\) \| rtt=\d\.\d{6}s;;;0; status=503;",
        default.stdout,
    ), default.stdout
    assert expected.returncode == 0, expected.stdout
    assert expected.stdout.startswith(f"SIP OK - 503 Service Unavailable from 127.0.0.1:{port}")
    objs = _json_lines(ping)
    (reply,) = _of_type(objs, "reply")
    assert (reply["status"], reply["reason"], reply["cause"]) == (
        503,
        "Service Unavailable",
        "response",
    )
    assert reply["rtt_s"] > 0
    (summary,) = _of_type(objs, "summary")
    assert summary["codes"] == {"503": 1}
    assert len(received) == 3  # one OPTIONS each, no retransmission of an answered request


# --- a peer that never answers ------------------------------------------------------------------


def test_check_silent_udp_gives_up_on_schedule(sipp_silent_udp: SippUas) -> None:
    uas = sipp_silent_udp
    done, elapsed = _timed(
        "check", "-H", "127.0.0.1", "-p", str(uas.port), "--t1", "100ms", "--retransmits", "2"
    )
    assert done.returncode == 2, done.stdout
    assert done.stdout.startswith(
        f"SIP CRITICAL - no response from 127.0.0.1:{uas.port} (udp) after 0.70 s, "
        "3 transmissions | rtt=U;;;0; status=408;;;; retransmits=2;;;;"
    ), done.stdout
    assert 0.69 <= elapsed < 0.69 + STARTUP_ALLOWANCE
    received = uas.wait_received(3)
    assert len(received) == 3
    assert len({"\n".join(_head(m)) for m in received}) == 1  # the same request each time


def test_ping_silent_udp_reports_timeout(sipp_silent_udp: SippUas) -> None:
    uas = sipp_silent_udp
    done, elapsed = _timed(
        "ping", "-c", "1", "--t1", "0.05", "--retransmits", "3", "--json", uas.uri
    )
    assert done.returncode == 1, done.stdout + done.stderr
    objs = _json_lines(done)
    (reply,) = _of_type(objs, "reply")
    assert (reply["status"], reply["cause"], reply["retransmits"]) == (408, "timeout", 3)
    assert reply["rtt_s"] is None
    (summary,) = _of_type(objs, "summary")
    assert (summary["sent"], summary["answered"]) == (1, 0)
    assert 0.745 <= summary["elapsed_s"] < 0.80  # 0.05 + 0.1 + 0.2, then 0.4 more
    assert 0.745 <= elapsed < 0.75 + 2 * STARTUP_ALLOWANCE  # ping imports asyncio
    received = uas.wait_received(4)
    assert len(received) == 4
    assert len({"\n".join(_head(m)) for m in received}) == 1


def test_check_silent_tcp_same_deadline_no_retransmission(tmp_path: Path) -> None:
    require("sipp")
    with sipp_uas_on_free_port("tcp", mode="silent", log_dir=tmp_path) as uas:
        done, elapsed = _timed(
            "check", "-H", "127.0.0.1", "-p", str(uas.port), "-T", "tcp",
            "--t1", "100ms", "--retransmits", "2",
        )  # fmt: skip
        received = uas.wait_received(2, timeout=0.3)
    assert done.returncode == 2, done.stdout
    assert done.stdout.startswith(
        f"SIP CRITICAL - no response from 127.0.0.1:{uas.port} (tcp) after 0.70 s, "
        "1 transmission | rtt=U;;;0; status=408;;;; retransmits=0;;;;"
    ), done.stdout
    assert 0.69 <= elapsed < 0.69 + STARTUP_ALLOWANCE
    assert len(received) == 1


# --- nobody listening ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("transport", "error"), [("udp", "ICMP port unreachable"), ("tcp", "Connection refused")]
)
def test_check_closed_port_fails_at_once(transport: SippTransport, error: str) -> None:
    port = free_port(transport)
    done, elapsed = _timed("check", "-H", "127.0.0.1", "-p", str(port), "-T", transport)
    assert elapsed < 1.0
    assert done.returncode == 2, done.stdout
    assert done.stdout.startswith("SIP CRITICAL - ")
    assert error in done.stdout
    assert "status=503;" in done.stdout


# --- retransmission instants on the wire -----------------------------------------------------


def test_udp_retransmissions_on_the_wire(sipp_silent_udp: SippUas) -> None:
    """RFC 3261 §17.1.2.2 Timer E with T1 = 100 ms: sent at 0, 100, 300, 700 ms, unchanged."""
    require_root()
    uas = sipp_silent_udp
    with UdpCapture(uas.port) as cap:
        done = sipalive(
            "check", "-H", "127.0.0.1", "-p", str(uas.port), "--t1", "100ms", "--retransmits", "3"
        )
        cap.wait_for(4, timeout=1.0)
    assert done.returncode == 2, done.stdout
    assert "after 1.50 s, 4 transmissions" in done.stdout
    packets = cap.packets
    assert len(packets) == 4, packets
    src_port = packets[0].src_port
    assert all(p.src_port == src_port for p in packets)
    assert len({p.payload for p in packets}) == 1  # byte-identical retransmissions
    assert packets[0].payload.startswith(f"OPTIONS sip:127.0.0.1:{uas.port} SIP/2.0\r\n".encode())
    assert f"Via: SIP/2.0/UDP 127.0.0.1:{src_port};branch=".encode() in packets[0].payload
    offsets_ms = [(p.timestamp - packets[0].timestamp) * 1000 for p in packets]
    for got, nominal in zip(offsets_ms, [0, 100, 300, 700], strict=True):
        assert abs(got - nominal) <= 15, offsets_ms
    gaps_ms = [b - a for a, b in itertools.pairwise(offsets_ms)]
    for gap, timer_e in zip(gaps_ms, [100, 200, 400], strict=True):
        assert abs(gap - timer_e) <= 15, gaps_ms


# --- sipsak and SIPp as clients of `sipalive respond` ---------------------------------------


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_sipsak_against_respond(transport: SippTransport) -> None:
    require("sipsak")
    with respond(tcp=transport == "tcp") as resp:
        uri = f"sip:ping@127.0.0.1:{resp.port}"
        done = sipsak("-vv", "-E", transport, "-s", uri)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "SIP/2.0 200 OK" in out
    assert re.search(r"^\*\* reply received after [\d.]+ ms \*\*$", out, re.MULTILINE)
    assert re.search(rf"^To: {re.escape(uri)};tag=[0-9a-f]+$", out, re.MULTILINE), out
    assert re.search(r"^Allow: OPTIONS$", out, re.MULTILINE)
    assert re.search(r"^Accept: application/sdp$", out, re.MULTILINE)
    assert re.search(r"^Server: sipalive/0\.1$", out, re.MULTILINE)
    (via,) = re.findall(r"^Via: .*$", out, re.MULTILINE)
    assert via.startswith(f"Via: SIP/2.0/{transport.upper()} 127.0.0.1:")
    assert re.search(r";received=127\.0\.0\.1;rport=\d+$", via), via
    assert "stopped: 1 requests, 1 answered, 0 client errors" in resp.log()


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_sipp_uac_load_against_respond(transport: SippTransport, tmp_path: Path) -> None:
    require("sipp")
    with respond(tcp=transport == "tcp") as resp:
        result = run_sipp_uac(
            f"127.0.0.1:{resp.port}", rate=500, count=2000, transport=transport, log_dir=tmp_path
        )
    assert result.ok, result.screen[-3000:] + result.errors
    assert (result.created, result.successful, result.failed) == (2000, 2000, 0)
    assert result.retransmissions == 0
    assert "stopped: 2000 requests, 2000 answered, 0 client errors" in resp.log()


# --- RFC 5626 CRLF keep-alive: Kamailio pongs, SIPp does not ---------------------------------


@pytest.mark.parametrize("transport", ["tcp", "tls"])
def test_crlf_pong_from_kamailio(kamailio: Kamailio, transport: str) -> None:
    port = kamailio.tls_port if transport == "tls" else kamailio.port
    done = sipalive(
        "ping", "--crlf", "-c", "3", "-i", "0.1", "--json", "--ca", str(kamailio.cert_path),
        f"sip:127.0.0.1:{port};transport={transport}",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    objs = _json_lines(done)
    pongs = _of_type(objs, "pong")
    assert [p["seq"] for p in pongs] == [1, 2, 3]
    assert all(p["rtt_s"] is not None and 0 < p["rtt_s"] < 0.1 for p in pongs), pongs
    (summary,) = _of_type(objs, "summary")
    assert (summary["sent"], summary["answered"]) == (3, 3)


def test_crlf_no_pong_from_sipp(sipp_uas_tcp: SippUas) -> None:
    done, elapsed = _timed(
        "ping", "--crlf", "-c", "1", "--timeout", "0.3", "--json", sipp_uas_tcp.uri
    )
    assert done.returncode == 1, done.stdout + done.stderr
    objs = _json_lines(done)
    (pong,) = _of_type(objs, "pong")
    assert (pong["rtt_s"], pong["error"]) == (None, "no pong")
    (summary,) = _of_type(objs, "summary")
    assert (summary["sent"], summary["answered"]) == (1, 0)
    assert summary["elapsed_s"] >= 0.3
    assert elapsed >= 0.3
    text = sipalive("ping", "--crlf", "-c", "1", "--timeout", "0.3", sipp_uas_tcp.uri)
    assert f"no pong from 127.0.0.1:{sipp_uas_tcp.port} (tcp): seq=1" in text.stdout
