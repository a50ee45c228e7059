"""The real-peer fixtures work: proven with the real tools alone (sipsak, SIPp, Kamailio,
Python's ssl and raw sockets), no sipalive code involved."""

from __future__ import annotations

import itertools
import os
import socket
import ssl
import time
from pathlib import Path

import pytest

from realpeers import (
    PORT_MAX,
    PORT_MIN,
    Kamailio,
    SippUas,
    UdpCapture,
    free_port,
    free_port_pair,
    kamailio_on_free_port,
    require_root,
    run_sipp_uac,
    sipp_uas_on_free_port,
    sipsak,
)

pytestmark = pytest.mark.realpeer

CRLFCRLF = b"\r\n\r\n"


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists() and "State:\tZ" not in Path(
        f"/proc/{pid}/status"
    ).read_text(errors="replace")


def _options(host: str, port: int, transport: str) -> bytes:
    return (
        f"OPTIONS sip:ping@{host}:{port};transport={transport} SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport.upper()} {host}:5999;branch=z9hG4bK-realpeers-1;rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:tester@{host}>;tag=rp1\r\n"
        f"To: <sip:ping@{host}:{port}>\r\n"
        "Call-ID: realpeers-1@127.0.0.1\r\n"
        "CSeq: 1 OPTIONS\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def _read_until(sock: socket.socket, marker: bytes, limit: int = 65536) -> bytes:
    data = b""
    while marker not in data and len(data) < limit:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


# --- ports ---------------------------------------------------------------------------------


def test_free_port_is_four_digits_and_bindable() -> None:
    for transport in ("udp", "tcp", "both"):
        port = free_port(transport)
        assert PORT_MIN <= port <= PORT_MAX
        assert port not in (5060, 5061, 6000, 6002, 8888)
    pair = free_port_pair()
    for port in (pair, pair + 1):
        for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
            with socket.socket(socket.AF_INET, kind) as sock:
                sock.bind(("127.0.0.1", port))


# --- SIPp UAS + sipsak ---------------------------------------------------------------------


def test_sipsak_gets_200_from_sipp_udp(sipp_uas_udp: SippUas) -> None:
    done = sipsak("-vv", "-s", sipp_uas_udp.uri)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SIP/2.0 200 OK" in done.stdout
    received = sipp_uas_udp.wait_received(1)
    assert received[0].startswith(f"OPTIONS {sipp_uas_udp.uri} SIP/2.0")
    assert "User-Agent: sipsak" in received[0]


def test_sipsak_gets_200_from_sipp_tcp(sipp_uas_tcp: SippUas) -> None:
    assert sipp_uas_tcp.uri.endswith(";transport=tcp")
    done = sipsak("-vv", "-E", "tcp", "-s", sipp_uas_tcp.base_uri)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SIP/2.0 200 OK" in done.stdout
    assert [m.transport for m in sipp_uas_tcp.messages()] == ["TCP", "TCP"]


def test_sipsak_sees_503_from_sipp(tmp_path: Path) -> None:
    with sipp_uas_on_free_port(code=503, reason="Service Unavailable", log_dir=tmp_path) as uas:
        done = sipsak("-vv", "-s", uas.uri)
    assert done.returncode != 0
    assert "SIP/2.0 503 Service Unavailable" in done.stdout


def test_sipp_uas_delays_its_answer(tmp_path: Path) -> None:
    with sipp_uas_on_free_port(delay_ms=300, log_dir=tmp_path) as uas:
        started = time.monotonic()
        done = sipsak("-vv", "-s", uas.uri)
        elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stdout + done.stderr
    assert 0.3 <= elapsed < 1.0


def test_sipp_uas_is_stopped_and_reaped_on_exit(tmp_path: Path) -> None:
    with sipp_uas_on_free_port("tcp", mode="silent", log_dir=tmp_path) as uas:
        pid, port = uas.pid, uas.port
        assert _alive(pid)
    assert not _alive(pid)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


# --- SIPp UAC --------------------------------------------------------------------------------


def test_sipp_uac_100_per_second_all_answered(sipp_uas_udp: SippUas, tmp_path: Path) -> None:
    result = run_sipp_uac(sipp_uas_udp.target, rate=100, count=200, log_dir=tmp_path / "uac")
    assert result.ok, result.screen + result.errors
    assert (result.successful, result.failed, result.created) == (200, 0, 200)
    assert result.retransmissions == 0
    assert len(sipp_uas_udp.wait_received(200)) == 200


# --- Kamailio --------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_kamailio_answers_sipsak(kamailio: Kamailio, transport: str) -> None:
    done = sipsak("-vv", "-E", transport, "-s", kamailio.uri)
    assert done.returncode == 0, done.stdout + done.stderr + kamailio.log_text()[-2000:]
    assert "SIP/2.0 200 OK" in done.stdout
    assert "Server: sipalive-test-kamailio" in done.stdout


@pytest.mark.parametrize("server_name", ["127.0.0.1", "localhost"])
def test_kamailio_tls_verifies_with_its_cert(kamailio: Kamailio, server_name: str) -> None:
    ctx = ssl.create_default_context(cafile=str(kamailio.cert_path))
    assert ctx.check_hostname
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    with (
        socket.create_connection((kamailio.host, kamailio.tls_port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname=server_name) as tls,
    ):
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
        tls.sendall(_options(kamailio.host, kamailio.tls_port, "tls"))
        answer = _read_until(tls, CRLFCRLF)
    assert answer.startswith(b"SIP/2.0 200 OK\r\n"), answer


def test_kamailio_tls_fails_without_its_cert(kamailio: Kamailio) -> None:
    ctx = ssl.create_default_context()  # system CAs only: the self-signed cert is unknown
    with (
        socket.create_connection((kamailio.host, kamailio.tls_port), timeout=5) as raw,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        ctx.wrap_socket(raw, server_hostname=kamailio.host)


@pytest.mark.parametrize("transport", ["tcp", "tls"])
def test_kamailio_answers_crlfcrlf_ping_with_crlf_pong(kamailio: Kamailio, transport: str) -> None:
    """RFC 5626 §4.4.1: CRLFCRLF ping, CRLF pong, on a connection that stays usable."""
    port = kamailio.port if transport == "tcp" else kamailio.tls_port
    with socket.create_connection((kamailio.host, port), timeout=5) as raw:
        sock: socket.socket = raw
        if transport == "tls":
            ctx = ssl.create_default_context(cafile=str(kamailio.cert_path))
            sock = ctx.wrap_socket(raw, server_hostname=kamailio.host)
        for _ in range(2):
            sock.sendall(CRLFCRLF)
            assert sock.recv(16) == b"\r\n"
        sock.sendall(_options(kamailio.host, port, transport))
        assert _read_until(sock, CRLFCRLF).startswith(b"SIP/2.0 200 OK\r\n")
        sock.close()


def test_kamailio_kamcmd(kamailio: Kamailio) -> None:
    assert "kamailio 5." in kamailio.kamcmd("core.version")
    assert "location" in kamailio.kamcmd("ul.dump")


def test_kamailio_tlsf_workers_and_full_stop(tmp_path: Path) -> None:
    with kamailio_on_free_port(tls=False, workers=1, tlsf=True, run_dir=tmp_path) as kam:
        pids = kam.processes()
        assert len(pids) >= 4  # timeout wrapper, main, 1 udp + 1 tcp worker, timers, ctl...
        done = sipsak("-s", kam.uri)
        assert done.returncode == 0, done.stdout + done.stderr
        with pytest.raises(RuntimeError):
            _ = kam.tls_port
    assert kam.processes() == []
    assert not any(_alive(pid) for pid in pids)


# --- UdpCapture --------------------------------------------------------------------------------


def test_udp_capture_timestamps_match_send_times() -> None:
    """Kernel receive stamps on lo are within a few ms of our own send times; one copy each."""
    require_root()
    port = free_port("udp")
    sent: list[float] = []
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender,
    ):
        receiver.bind(("127.0.0.1", port))
        sender.bind(("127.0.0.1", 0))
        with UdpCapture(port) as cap:
            for i, pause in enumerate((0.0, 0.05, 0.1, 0.2)):
                time.sleep(pause)
                sent.append(time.time())
                sender.sendto(b"datagram %d" % i, ("127.0.0.1", port))
            cap.wait_for(len(sent))
        src_port = sender.getsockname()[1]
    packets = cap.packets
    assert [p.payload for p in packets] == [b"datagram %d" % i for i in range(4)]
    assert {p.src_port for p in packets} == {src_port}
    for t_sent, packet in zip(sent, packets, strict=True):
        assert -0.001 <= packet.timestamp - t_sent <= 0.005


def test_udp_capture_sees_sipsak_retransmissions(sipp_silent_udp: SippUas) -> None:
    """sipsak -Z 100 (T1 = 100 ms) to a peer that never answers: sent at 0, T1, 3T1, 7T1.

    sipsak 0.9.8.1 polls its socket for ICMP errors for 10 ms after each timeout before it
    retransmits (check_socket_error: poll(..., 10)), so its n-th retransmission goes out
    n x 10 ms late: expected 0, 110, 320, 730 ms. -D 8 (give up after 8 x T1) lets the 4th
    go out; with -D 4 sipsak gives up at ~730 ms before sending it.
    """
    require_root()
    uas = sipp_silent_udp
    with UdpCapture(uas.port) as cap:
        done = sipsak("-vv", "-Z", "100", "-D", "8", "-s", uas.uri)
        cap.wait_for(4, timeout=1.0)
    assert done.returncode == 3, done.stdout + done.stderr  # 3: no final response
    assert "giving up, no final response" in done.stdout
    packets = cap.packets
    assert len(packets) == 4, packets
    assert len({p.src_port for p in packets}) == 1
    assert len({p.payload for p in packets}) == 1
    assert packets[0].payload.startswith(f"OPTIONS {uas.uri} SIP/2.0\r\n".encode())
    offsets_ms = [(p.timestamp - packets[0].timestamp) * 1000 for p in packets]
    nominal_ms = [0, 100, 300, 700]
    sipsak_lag_ms = [0, 10, 20, 30]
    for got, nominal, lag in zip(offsets_ms, nominal_ms, sipsak_lag_ms, strict=True):
        assert abs(got - (nominal + lag)) <= 15, offsets_ms
    gaps_ms = [b - a for a, b in itertools.pairwise(offsets_ms)]
    for gap, timer_e in zip(gaps_ms, [100, 200, 400], strict=True):
        assert abs(gap - (timer_e + 10)) <= 15, gaps_ms
    assert len(uas.wait_received(4)) == 4


def test_no_leftover_peer_processes_from_this_process() -> None:
    """Nothing this test process started is still running (the module's Kamailio aside)."""
    children = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").read_text().split()
    names = [Path(f"/proc/{pid}/comm").read_text().strip() for pid in children if _alive(int(pid))]
    assert all(name == "timeout" for name in names), names
