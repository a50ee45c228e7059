"""The commands as a user runs them, against our own responder (unit depth: our fakes).
The same commands against real peers are in test_interop.py."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from pathlib import Path

import pytest

from procs import make_cert, respond, sipalive
from realpeers import free_port
from sipalive.sip.responder import ResponderConfig, StatelessResponder
from sipalive.stun import codec as stun

OK_LINE = re.compile(
    r"^SIP OK - 200 OK from 127\.0\.0\.1:(\d+) in \d+\.\d\d ms \| rtt=\d\.\d{6}s;;;0; "
    r"status=200;;;; retransmits=0;;;;$"
)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_cert(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def server(certs: tuple[Path, Path]):  # type: ignore[no-untyped-def]
    with respond("--reason", "Alive", tls=certs) as resp:
        yield resp.port
    assert "stopped:" in resp.log()


def test_check_ok(server: int) -> None:
    r = sipalive("check", "-H", "127.0.0.1", "-p", str(server))
    assert r.returncode == 0, r.stdout
    assert OK_LINE.match(r.stdout.strip().replace("200 Alive", "200 OK")), r.stdout


def test_check_thresholds(server: int) -> None:
    warn = sipalive("check", "-H", "127.0.0.1", "-p", str(server), "-w", "1us", "-c", "10s")
    assert warn.returncode == 1
    assert warn.stdout.startswith("SIP WARNING - 200 Alive")
    assert "rtt=" in warn.stdout
    assert ";1e-06;10;0;" in warn.stdout
    crit = sipalive("check", "-H", "127.0.0.1", "-p", str(server), "-w", "1us", "-c", "2us")
    assert crit.returncode == 2
    inside = sipalive("check", "-H", "127.0.0.1", "-p", str(server), "-c", "@0:10s")
    assert inside.returncode == 2  # alert inside the range


def test_check_unexpected_code(server: int) -> None:
    r = sipalive("check", "-H", "127.0.0.1", "-p", str(server), "--expect", "404")
    assert r.returncode == 2
    assert "unexpected status" in r.stdout


def test_check_tcp_and_tls(server: int, certs: tuple[Path, Path]) -> None:
    tcp = sipalive("check", "-H", "127.0.0.1", "-p", str(server), "-T", "tcp", "-v")
    assert tcp.returncode == 0, tcp.stdout
    assert "phases: connect=" in tcp.stdout
    tls = sipalive(
        "check", "-H", "127.0.0.1", "-p", str(server + 1), "-T", "tls", "--ca", str(certs[0])
    )
    assert tls.returncode == 0, tls.stdout
    unverified = sipalive("check", "-H", "127.0.0.1", "-p", str(server + 1), "-T", "tls")
    assert unverified.returncode == 2
    assert "certificate verify failed" in unverified.stdout
    insecure = sipalive(
        "check", "-H", "127.0.0.1", "-p", str(server + 1), "-T", "tls", "--insecure"
    )
    assert insecure.returncode == 0, insecure.stdout


def test_check_closed_port_fails_at_once() -> None:
    port = free_port("both")
    t0 = time.monotonic()
    r = sipalive("check", "-H", "127.0.0.1", "-p", str(port))
    assert time.monotonic() - t0 < 2.0
    assert r.returncode == 2
    assert "ICMP port unreachable" in r.stdout
    assert "status=503" in r.stdout


def test_check_silent_peer_times_out_on_schedule() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    try:
        port = sock.getsockname()[1]
        t0 = time.monotonic()
        r = sipalive(
            "check", "-H", "127.0.0.1", "-p", str(port), "--t1", "50ms", "--retransmits", "2"
        )
        elapsed = time.monotonic() - t0
        assert r.returncode == 2
        assert "after 0.35 s, 3 transmissions" in r.stdout
        assert 0.35 <= elapsed < 2.0
        sock.settimeout(0.1)
        got = [sock.recv(65536) for _ in range(3)]
        assert all(g.startswith(b"OPTIONS sip:127.0.0.1:") for g in got)
        assert len({g for g in got}) == 1  # retransmissions are identical
    finally:
        sock.close()


@pytest.mark.parametrize(
    "args",
    [[], ["-H"], ["-H", "127.0.0.1", "-p", "x"], ["-H", "127.0.0.1", "-w", "fast"],
     ["-H", "127.0.0.1", "-T", "sctp"], ["-H", "127.0.0.1", "--expect", "7"], ["--bogus"]],
)  # fmt: skip
def test_check_usage_errors_are_unknown(args: list[str]) -> None:
    r = sipalive("check", *args)
    assert r.returncode == 3
    assert r.stdout.startswith("SIP UNKNOWN - ")
    assert "Usage: sipalive check" in r.stdout


def test_ping_json(server: int) -> None:
    r = sipalive("ping", "-c", "3", "-i", "0.05", "--json", f"sip:ping@127.0.0.1:{server}")
    assert r.returncode == 0, r.stderr
    objs = [json.loads(line) for line in r.stdout.splitlines()]
    replies = [o for o in objs if o["type"] == "reply"]
    assert [o["seq"] for o in replies] == [1, 2, 3]
    assert all(o["status"] == 200 and o["reason"] == "Alive" for o in replies)
    assert all(0 < o["rtt_s"] < 1 for o in replies)
    (summary,) = [o for o in objs if o["type"] == "summary"]
    assert (summary["sent"], summary["answered"], summary["loss_pct"]) == (3, 3, 0.0)
    assert summary["rtt_min_s"] <= summary["rtt_avg_s"] <= summary["rtt_max_s"]


def test_ping_several_targets_and_transports(server: int, certs: tuple[Path, Path]) -> None:
    r = sipalive(
        "ping", "-c", "2", "-i", "0.05", "--ca", str(certs[0]),
        f"127.0.0.1:{server}", f"sip:127.0.0.1:{server};transport=tcp",
        f"sips:127.0.0.1:{server + 1}",
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("(udp): seq=") == 2
    assert r.stdout.count("(tcp): seq=") == 2
    assert r.stdout.count("(tls): seq=") == 2
    assert r.stdout.count(" answered, 0.0% loss") == 3


def test_ping_unreachable_exits_1() -> None:
    port = free_port("both")
    r = sipalive("ping", "-c", "2", "-i", "0.05", f"127.0.0.1:{port}", f"127.0.0.1:{port}")
    assert r.returncode == 1
    assert "ICMP port unreachable" in r.stdout


def test_ping_flood(server: int) -> None:
    r = sipalive("ping", "--flood", "-c", "300", "--window", "20", "--json", f"127.0.0.1:{server}")
    assert r.returncode == 0
    (summary,) = [json.loads(line) for line in r.stdout.splitlines()]
    assert summary["sent"] == summary["answered"] == 300
    assert summary["failures"] == 0
    assert summary["rate_per_s"] > 0


def test_ping_flood_tcp_and_tls(server: int, certs: tuple[Path, Path]) -> None:
    for uri in (f"sip:127.0.0.1:{server};transport=tcp", f"sips:127.0.0.1:{server + 1}"):
        r = sipalive("ping", "--flood", "-c", "3000", "--window", "64", "--json", "--ca",
                     str(certs[0]), uri)  # fmt: skip
        assert r.returncode == 0, r.stdout + r.stderr
        (summary,) = [json.loads(line) for line in r.stdout.splitlines()]
        assert (summary["sent"], summary["answered"], summary["failures"]) == (3000, 3000, 0)
        assert summary["codes"] == {"200": 3000}


class UnrulyPeer(threading.Thread):
    """A UDP peer that answers every OPTIONS, but: drops the first copy of every 4th request,
    sends garbage, an unknown branch, a 100 Trying, compact-form answers (the full parser's
    path) and duplicate 200s around its answers."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.responder = StatelessResponder(ResponderConfig(tag_key=b"k"))
        self.seen: dict[bytes, int] = {}  # Call-ID -> request number
        self.copies: dict[bytes, int] = {}
        self.dropped = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                data, addr = self.sock.recvfrom(65536)
            except TimeoutError:
                continue
            call_id = re.search(rb"Call-ID: (\S+)", data)
            assert call_id is not None
            n = self.seen.setdefault(call_id[1], len(self.seen))
            copies = self.copies.get(call_id[1], 0)
            self.copies[call_id[1]] = copies + 1
            if n % 4 == 0 and copies == 0:
                self.dropped += 1
                continue
            reply = self.responder.handle_datagram(data, addr)
            assert reply is not None
            out = [b"SIP/2.0 200 OK\r\nVia: broken\r\n\r\n", b"\x00garbage",
                   reply.data.replace(b"branch=z9hG4bK", b"branch=z9hG4bKother")]  # fmt: skip
            if n % 3 == 0:
                out.append(reply.data.replace(b"200 OK", b"100 Trying"))
            final = reply.data.replace(b"\r\nVia: ", b"\r\nv: ") if n % 2 else reply.data
            out += [final, final] if n % 5 == 0 else [final]
            for datagram in out:
                self.sock.sendto(datagram, addr)


def test_ping_flood_unruly_peer_retransmits_and_drops_junk() -> None:
    peer = UnrulyPeer()
    peer.start()
    try:
        r = sipalive("ping", "--flood", "-c", "400", "--window", "20", "--t1", "0.05", "--json",
                     f"127.0.0.1:{peer.port}")  # fmt: skip
    finally:
        peer.stop.set()
        peer.join()
        peer.sock.close()
    assert r.returncode == 0, r.stdout + r.stderr
    (summary,) = [json.loads(line) for line in r.stdout.splitlines()]
    assert (summary["sent"], summary["answered"], summary["failures"]) == (400, 400, 0)
    assert peer.dropped == 100
    assert summary["retransmits"] >= 100


def test_ping_flood_closed_port_fails_every_transaction_with_503() -> None:
    port = free_port("udp")
    r = sipalive("ping", "--flood", "-c", "50", "--window", "10", "--json", f"127.0.0.1:{port}")
    assert r.returncode == 1
    (summary,) = [json.loads(line) for line in r.stdout.splitlines()]
    assert (summary["sent"], summary["answered"], summary["failures"]) == (50, 0, 50)
    assert summary["codes"] == {"503": 50}


def test_ping_flood_malformed_stream_fails_what_is_in_flight() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def peer() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"garbage\r\n\r\n")
            conn.settimeout(5)
            while conn.recv(65536):
                pass

    thread = threading.Thread(target=peer, daemon=True)
    thread.start()
    try:
        r = sipalive("ping", "--flood", "-c", "100", "--window", "10", "--json",
                     f"sip:127.0.0.1:{port};transport=tcp")  # fmt: skip
    finally:
        thread.join(10)
        listener.close()
    assert r.returncode == 1
    (summary,) = [json.loads(line) for line in r.stdout.splitlines()]
    assert summary["sent"] == summary["failures"] == 10
    assert summary["codes"] == {"503": 10}


def test_ping_usage_errors() -> None:
    assert sipalive("ping").returncode == 2
    bad = sipalive("ping", "-i", "soon", "127.0.0.1")
    assert bad.returncode == 2
    assert "usage: sipalive ping" in bad.stderr
    assert sipalive("ping", "--flood", "127.0.0.1").returncode == 2
    assert sipalive("ping", "-T", "udp", "sip:127.0.0.1;transport=tcp").returncode == 2


def test_respond_crlf_pong_and_stun(server: int) -> None:
    with socket.create_connection(("127.0.0.1", server), 2) as conn:
        conn.sendall(b"\r\n\r\n")
        conn.settimeout(2)
        assert conn.recv(16) == b"\r\n"
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        udp.settimeout(2)
        udp.connect(("127.0.0.1", server))
        udp.send(stun.binding_request(b"0123456789ab"))
        msg = stun.parse(udp.recv(2048))
        assert msg.xor_mapped_address == udp.getsockname()
        udp.send(b"\r\n\r\n")  # nothing comes back for a UDP keep-alive
        udp.settimeout(0.2)
        with pytest.raises(TimeoutError):
            udp.recv(2048)
    finally:
        udp.close()


def test_respond_rate_limit_and_allow_list() -> None:
    with respond("--rate-limit", "5/s", tcp=False) as resp:
        port = resp.port
        r = sipalive("ping", "--flood", "-c", "40", "--window", "40", "--timeout", "0.3",
                     "--t1", "0.1", "--retransmits", "0", "--json", f"127.0.0.1:{port}")  # fmt: skip
        summary = json.loads(r.stdout.splitlines()[-1])
        assert 1 <= summary["answered"] <= 10
    with respond("--allow", "10.0.0.0/8", tcp=False) as resp:
        port = resp.port
        r = sipalive(
            "check", "-H", "127.0.0.1", "-p", str(port), "--t1", "0.05", "--retransmits", "1"
        )
        assert r.returncode == 2
        assert "no response" in r.stdout


def test_respond_logs_client_errors_once(tmp_path: Path) -> None:
    with respond(tcp=False) as resp:
        port = resp.port
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            udp.settimeout(2)
            udp.connect(("127.0.0.1", port))
            bad = (
                b"OPTIONS sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;rport;branch=z9hG4bK1\r\n"
                b"From: <sip:a@b>;tag=1\r\nTo: <sip:x@y>\r\nCall-ID: c\r\nCSeq: one OPTIONS\r\n\r\n"
            )
            udp.send(bad)
            assert udp.recv(4096).startswith(b"SIP/2.0 400 Bad Request\r\n")
        finally:
            udp.close()
        assert sipalive("check", "-H", "127.0.0.1", "-p", str(port)).returncode == 0
    log = resp.log()
    assert log.count("400 (bad CSeq") == 1
    assert "OPTIONS ->" not in log  # a good probe is not logged


def test_respond_bad_usage() -> None:
    r = sipalive("respond", "--listen", "sctp:127.0.0.1:5060")
    assert r.returncode == 2
    assert "usage: sipalive respond" in r.stderr
    r = sipalive("respond", "--listen", "tls:127.0.0.1:5061")
    assert r.returncode == 2
    assert "certificate" in r.stderr


def test_flood_with_failures_exits_1_and_sigterm_is_clean() -> None:
    import signal
    import subprocess

    from procs import BIN

    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    try:
        target = f"127.0.0.1:{silent.getsockname()[1]}"
        r = sipalive("ping", "--flood", "-c", "20", "--window", "10", "--t1", "0.05",
                     "--retransmits", "0", "--json", target)  # fmt: skip
        assert r.returncode == 1
        assert json.loads(r.stdout.splitlines()[-1])["failures"] == 20
        proc = subprocess.Popen(
            [str(BIN), "ping", "--flood", "-c", "100000", "--window", "10", "--t1", "0.05",
             "--json", target],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        time.sleep(0.7)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
        assert "Traceback" not in err
        assert "Exception" not in err
        summary = json.loads(out.splitlines()[-1])
        assert summary["type"] == "summary"
        assert 0 < summary["sent"] < 100000
        assert proc.returncode == 1
    finally:
        silent.close()


def test_respond_cuts_off_slow_loris_and_oversized_input() -> None:
    with respond("--message-timeout", "0.5") as resp:
        with socket.create_connection(("127.0.0.1", resp.port), 2) as slow:
            slow.settimeout(3)
            t0 = time.monotonic()
            closed_at = None
            for byte in b"OPTIONS sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:9\r\n" * 3:
                try:
                    slow.sendall(bytes([byte]))
                except OSError:
                    closed_at = time.monotonic()
                    break
                time.sleep(0.02)  # active all the time, never finishing the message
                if time.monotonic() - t0 > 4:
                    break
            if closed_at is None:
                assert slow.recv(100) == b""  # closed by the responder
                closed_at = time.monotonic()
            assert closed_at - t0 < 2.5
        with socket.create_connection(("127.0.0.1", resp.port), 2) as big:
            big.settimeout(3)
            big.sendall(b"OPTIONS sip:x@127.0.0.1 SIP/2.0\r\nX-Big: " + b"a" * 70000)
            data = b""
            while chunk := big.recv(4096):
                data += chunk
            assert data == b"" or data.startswith(b"SIP/2.0 413")  # cut off, connection closed
        assert (
            sipalive("check", "-H", "127.0.0.1", "-p", str(resp.port), "-T", "tcp").returncode == 0
        )
    log = resp.log()
    assert "message not completed in time; closing" in log
    assert "413 (header section too large); closing" in log
