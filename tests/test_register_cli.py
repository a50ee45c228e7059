"""``sipalive register`` as a process: against a real Kamailio (digest auth, UDP, TCP, TLS,
relayed OPTIONS and INVITE, nathelper pings, un-REGISTER on SIGTERM), and against small
in-process registrars that misbehave on purpose (a NAT in front: received/rport, Flow-Timer,
a STUN mapping that changes, CRLF pings never answered, a registrar that is down at first).

Every process is stopped (SIGTERM, then SIGKILL) and every wait is bounded.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Self

import pytest

from procs import BIN, sipalive
from realpeers import Kamailio, free_port, kamailio_on_free_port, require
from sipalive.sip.framing import MessageReceived, PingReceived, Role, StreamFramer
from sipalive.sip.headers import Headers, parse_name_addr
from sipalive.sip.message import Request, Response, parse_message
from sipalive.stun import codec as stun

PASSWORD = "Kx7-secret-pw"
WRONG = "not-the-password-9"


class Ua:
    """``sipalive register ARGS`` with its output in a file, stopped on exit."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="sipalive-register-"))
        self.path = self.dir / "register.log"
        with self.path.open("w") as out:
            self.proc = subprocess.Popen(
                [str(BIN), "register", *args, "--duration", "90"],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
            )

    def log(self) -> str:
        return self.path.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float = 10.0, count: int = 1) -> list[re.Match[str]]:
        deadline = time.monotonic() + timeout
        while True:
            found = list(re.finditer(pattern, self.log(), re.MULTILINE))
            if len(found) >= count:
                return found
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError(f"no {count}x {pattern!r} in:\n{self.log()}")
            time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)


# -- Kamailio ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kam(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kamailio]:
    """Kamailio with digest auth, pinging every registered contact with OPTIONS each second."""
    with kamailio_on_free_port(
        tls=True,
        auth=True,
        password=PASSWORD,
        natping_interval=1,
        natping="sip",
        run_dir=tmp_path_factory.mktemp("kamailio-register"),
    ) as k:
        yield k


def kamailio_ua(
    kam: Kamailio, user: str, transport: str, *extra: str, password: str = PASSWORD
) -> Ua:
    port = kam.tls_port if transport == "tls" else kam.port
    tls = ["--ca", str(kam.cert_path)] if transport == "tls" else []
    return Ua(
        "--registrar", f"sip:127.0.0.1:{port}", "--user", user, "-T", transport,
        "--password-env", "SIPALIVE_TEST_PW", "--expires", "60", *tls, *extra,
        env={"SIPALIVE_TEST_PW": password},
    )  # fmt: skip


def invite(port: int, user: str) -> int:
    """INVITE sip:USER@127.0.0.1:PORT over UDP (Kamailio relays it to the registered contact);
    the final status, ACKed as RFC 3261 §17.1.1.3 says."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(5)
        local = s.getsockname()[1]
        via = f"SIP/2.0/UDP 127.0.0.1:{local};branch=z9hG4bKinv{local};rport"
        head = (
            f"Via: {via}\r\nMax-Forwards: 70\r\nFrom: <sip:caller@127.0.0.1>;tag=c{local}\r\n"
            f"To: <sip:{user}@127.0.0.1>\r\nCall-ID: inv{local}@test\r\n"
        )
        s.sendto(
            (
                f"INVITE sip:{user}@127.0.0.1:{port} SIP/2.0\r\n{head}CSeq: 1 INVITE\r\n"
                f"Contact: <sip:caller@127.0.0.1:{local}>\r\nContent-Length: 0\r\n\r\n"
            ).encode(),
            ("127.0.0.1", port),
        )
        while True:
            response = parse_message(s.recv(65535))
            assert isinstance(response, Response)
            if response.status >= 200:
                break
        to = response.headers.get("To")
        ack = f"ACK sip:{user}@127.0.0.1:{port} SIP/2.0\r\n{head}".replace(
            f"To: <sip:{user}@127.0.0.1>", f"To: {to}"
        )
        s.sendto(f"{ack}CSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n".encode(), ("127.0.0.1", port))
        return response.status


def contacts_of(kam: Kamailio, user: str) -> list[str]:
    dump = kam.kamcmd("ul.dump")
    blocks = re.split(r"\n\s*AoR: ", dump)
    for block in blocks[1:]:
        if block.split("\n", 1)[0].strip() == user:
            return re.findall(r"Address: (\S+)", block)
    return []


@pytest.mark.realpeer
@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
def test_registers_with_kamailio_answers_relayed_requests_and_unregisters(
    kam: Kamailio, transport: str
) -> None:
    require("kamailio", "kamcmd")
    user = f"alice-{transport}"
    keepalive = {
        "udp": ["-v", "--keepalive-interval", "1"],
        "tcp": ["--keepalive", "register", "--keepalive-interval", "1"],
        "tls": ["-v", "--keepalive-interval", "1"],
    }[transport]
    with kamailio_ua(kam, user, transport, *keepalive) as ua:
        (m,) = ua.wait_for(
            rf"registered sip:{user}@127\.0\.0\.1 contact=<(?P<contact>[^>]+)> expires=60s"
        )
        contact = m["contact"]
        suffix = "" if transport == "udp" else f";transport={transport}"
        assert re.fullmatch(rf"sip:{user}@127\.0\.0\.1:\d+{suffix}", contact)
        assert contacts_of(kam, user) == [contact]
        # Kamailio looks the AOR up and relays to our contact, over our flow
        done = sipalive("ping", "-c", "1", f"sip:{user}@127.0.0.1:{kam.port}")
        assert "200 OK" in done.stdout, done.stdout + done.stderr
        ua.wait_for(
            rf"inbound OPTIONS from sip:sipalive@127\.0\.0\.1 via {transport} "
            rf"127\.0\.0\.1:\d+: answered 200"
        )
        assert invite(kam.port, user) == 480
        ua.wait_for(
            rf"inbound INVITE from sip:caller@127\.0\.0\.1 via {transport} .*: answered 480"
        )
        ua.wait_for(r"inbound ACK from sip:caller@127\.0\.0\.1 .*: not answered")
        if transport == "udp":  # nathelper's SIP pings go to UDP contacts
            ua.wait_for(r"inbound OPTIONS from sip:pinger@kamailio\.lab .*: answered 200", count=2)
            ua.wait_for(rf"keep-alive sent crlf to 127\.0\.0\.1:{kam.port}$")
        elif transport == "tcp":  # short re-REGISTERs, with the cached digest credentials
            ua.wait_for(rf"refreshed sip:{user}@127\.0\.0\.1 expires=60s", count=2)
        else:  # RFC 5626 CRLFCRLF ping, Kamailio's CRLF pong
            ua.wait_for(rf"keep-alive received pong from 127\.0\.0\.1:{kam.tls_port} rtt=")
        assert ua.stop() == 0
        log = ua.log()
    assert "unregistered: 200 OK" in log
    assert PASSWORD not in log
    assert contacts_of(kam, user) == []


@pytest.mark.realpeer
def test_wrong_password_fails_clearly_and_exits_non_zero(kam: Kamailio, tmp_path: Path) -> None:
    require("kamailio")
    secret = tmp_path / "pw"
    secret.write_text(WRONG + "\n")
    ua = Ua(
        "--registrar", f"sip:127.0.0.1:{kam.port}", "--user", "mallory",
        "--password-file", str(secret),
    )  # fmt: skip
    with ua:
        assert ua.proc.wait(15) == 1
        log = ua.log()
    assert re.search(
        r"registration failed: 401 authentication failed: the registrar rejected the "
        r"credentials; giving up",
        log,
    ), log
    assert WRONG not in log
    assert contacts_of(kam, "mallory") == []


@pytest.mark.realpeer
def test_kamailio_udp_natpings_arrive(tmp_path: Path) -> None:
    """nathelper's 4-byte UDP pings reach the socket the REGISTER left from (``-v`` logs them),
    and ``--keepalive options`` pings Kamailio itself."""
    require("kamailio", "kamcmd")
    with (
        kamailio_on_free_port(
            tls=False, auth=True, password=PASSWORD, natping_interval=1, run_dir=tmp_path / "k"
        ) as kam,
        kamailio_ua(
            kam, "natted", "udp", "-v", "--keepalive", "options", "--keepalive-interval", "1"
        ) as ua,
    ):
        ua.wait_for(r"registered sip:natted@")
        ua.wait_for(rf"keep-alive received ping from 127\.0\.0\.1:{kam.port}$", count=2)
        ua.wait_for(rf"keep-alive received options from 127\.0\.0\.1:{kam.port} rtt=.* status 200")
        assert ua.stop() == 0
        assert contacts_of(kam, "natted") == []


# -- in-process registrars that misbehave on purpose ---------------------------------------


def registrar_reply(
    request: Request,
    source: tuple[str, int],
    *,
    received: str | None,
    rport: int | None,
    flow_timer: int | None,
) -> bytes:
    top = request.vias[0]
    params = "".join(
        f";{k}" if v is None else f";{k}={v}"
        for k, v in top.params
        if k not in ("rport", "received")
    )
    via = (
        f"SIP/2.0/{top.transport} {top.host}:{top.port}{params}"
        f";received={received or source[0]};rport={rport or source[1]}"
    )
    fields = [
        ("Via", via),
        ("From", str(request.from_)),
        ("To", f"{request.to};tag=fake"),
        ("Call-ID", request.call_id),
        ("CSeq", str(request.cseq)),
    ]
    expires = request.headers.get("Expires") or "3600"
    for value in request.headers.get_all("Contact"):
        addr = parse_name_addr(value)
        own = dict(addr.params).get("expires", expires)
        if own != "0" and expires != "0":
            fields.append(("Contact", f"<{addr.uri}>;expires={own}"))
    if flow_timer is not None:
        fields.append(("Flow-Timer", str(flow_timer)))
    fields.append(("Content-Length", "0"))
    return Response(200, "OK", Headers(fields)).encode()


class FakeRegistrar:
    """A registrar on 127.0.0.1, UDP or TCP, in a thread. Accepts every REGISTER (200, our
    Contacts echoed), answers STUN Binding requests (with ``stun_mapped`` when set), and over
    TCP never answers a CRLF ping unless ``pong``. ``received``/``rport`` play a NAT."""

    def __init__(
        self,
        transport: str,
        *,
        port: int | None = None,
        received: str | None = None,
        rport: int | None = None,
        flow_timer: int | None = None,
        pong: bool = False,
    ) -> None:
        self.transport = transport
        self.port = port or free_port("udp" if transport == "udp" else "tcp")
        self.received, self.rport, self.flow_timer, self.pong = received, rport, flow_timer, pong
        self.registers: list[tuple[tuple[str, int], Request]] = []
        self.stun_mapped: tuple[str, int] | None = None
        self.stun_requests = 0
        self.connections = 0
        self._stop = threading.Event()
        self._sel = selectors.DefaultSelector()
        kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
        self.sock = socket.socket(socket.AF_INET, kind)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", self.port))
        if transport != "udp":
            self.sock.listen()
        self._sel.register(self.sock, selectors.EVENT_READ)
        self._framers: dict[socket.socket, StreamFramer] = {}
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop answering and free the port (may be called more than once)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        for conn in list(self._framers):
            conn.close()
        self._framers.clear()
        self.sock.close()
        self._sel.close()

    def _answer(self, request: Request, source: tuple[str, int]) -> bytes | None:
        if request.method != "REGISTER":
            return None
        self.registers.append((source, request))
        return registrar_reply(
            request, source, received=self.received, rport=self.rport, flow_timer=self.flow_timer
        )

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._sel.select(0.05):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if self.transport == "udp":
                    self._datagram(*sock.recvfrom(65535))
                elif sock is self.sock:
                    conn, _ = sock.accept()
                    self.connections += 1
                    self._framers[conn] = StreamFramer(Role.SERVER)
                    self._sel.register(conn, selectors.EVENT_READ)
                else:
                    self._stream(sock)

    def _datagram(self, data: bytes, source: tuple[str, int]) -> None:
        if stun.is_stun(data):
            message = stun.parse(data)
            self.stun_requests += 1
            mapped = self.stun_mapped or source
            self.sock.sendto(stun.binding_success(message.transaction_id, mapped), source)
            return
        if data.strip(b"\r\n"):
            message = parse_message(data)
            if isinstance(message, Request) and (out := self._answer(message, source)):
                self.sock.sendto(out, source)

    def _stream(self, conn: socket.socket) -> None:
        data = conn.recv(65535)
        if not data:
            self._sel.unregister(conn)
            self._framers.pop(conn)
            conn.close()
            return
        peer = conn.getpeername()
        for event in self._framers[conn].receive(data):
            if isinstance(event, PingReceived) and self.pong:
                conn.sendall(b"\r\n")
            elif (
                isinstance(event, MessageReceived)
                and isinstance(event.message, Request)
                and (out := self._answer(event.message, peer))
            ):
                conn.sendall(out)


def test_nat_public_address_flow_timer_and_stun_mapping_change() -> None:
    """A NAT in front of the UA: the registrar sees 198.51.100.7:40000 (received/rport) and
    says Flow-Timer: 2; the STUN mapping then changes, which is a flow failure (RFC 5626
    §4.4.2): the UA re-registers and says the flow recovered."""
    local = free_port("udp")
    with (
        FakeRegistrar("udp", received="198.51.100.7", rport=40000, flow_timer=2) as reg,
        Ua(
            "--registrar", f"sip:127.0.0.1:{reg.port}", "--user", "carol", "--expires", "120",
            "--keepalive", "stun", "--keepalive-interval", "5", "--backoff-base", "0.5", "-v",
            "--listen", f"127.0.0.1:{local}",
        ) as ua,
    ):  # fmt: skip
        ua.wait_for(r"public address 198\.51\.100\.7:40000 \(Contact had 127\.0\.0\.1:\d+; ")
        ua.wait_for(r"registrar asks for keep-alives at most 2s apart \(Flow-Timer\)")
        ua.wait_for(r"registered sip:carol@127\.0\.0\.1 contact=<sip:carol@198\.51\.100\.7:40000>")
        (source, first), (_, second) = reg.registers[:2]
        assert source == ("127.0.0.1", local)
        assert first.vias[0].port == local
        assert second.headers.get_all("Contact") == [
            "<sip:carol@198.51.100.7:40000>",
            f"<sip:carol@127.0.0.1:{local}>;expires=0",
        ]
        assert second.call_id == first.call_id
        assert second.cseq.seq == first.cseq.seq + 1
        # STUN every 2 s (Flow-Timer, not the 5 s asked for): the mapping is learnt...
        ua.wait_for(r"keep-alive received stun from .* mapped 127\.0\.0\.1:\d+", count=2, timeout=8)
        reg.stun_mapped = ("198.51.100.7", 40001)  # ...then the NAT rebinds
        ua.wait_for(r"STUN mapped address changed: 127\.0\.0\.1:\d+ -> 198\.51\.100\.7:40001")
        ua.wait_for(r"flow failed: mapped address changed .*; re-registering on a new flow now")
        ua.wait_for(r"flow recovered after \d+\.\ds: registered sip:carol@127\.0\.0\.1")
        assert ua.stop() == 0
        log = ua.log()
        _, last = reg.registers[-1]
    assert "unregistered: 200 OK" in log
    assert last.headers.get("Expires") == "0"
    assert last.headers.get_all("Contact") == ["<sip:carol@198.51.100.7:40000>"]


def test_tcp_registrar_down_then_pong_timeout_then_recovery_json() -> None:
    """Connection refused at start (RFC 5626 §4.5 back-off), then a registrar that never
    answers CRLF pings: no pong within --pong-timeout fails the flow; the UA opens a new
    connection at once, registers its new Contact and removes the old one."""
    port = free_port("tcp")
    with Ua(
        "--registrar", f"sip:127.0.0.1:{port}", "-T", "tcp", "--user", "dave", "--json",
        "--keepalive-interval", "1", "--pong-timeout", "1", "--backoff-base", "0.5",
        "--backoff-max", "1.5", "--tcp-keepalive", "5,1,2", "--tcp-user-timeout", "3",
    ) as ua:  # fmt: skip
        ua.wait_for(r'"event": "flow_failed".*Connection refused', count=2)
        with FakeRegistrar("tcp", port=port) as reg:
            ua.wait_for(r'"event": "registered"')
            ua.wait_for(r'"event": "flow_failed", "reason": "no CRLF pong within 1 s of the ping"')
            ua.wait_for(r'"event": "flow_recovered"')
            assert ua.stop() == 0
            events = [json.loads(line) for line in ua.log().splitlines()]
            assert reg.connections >= 2
            (_, first), (_, second) = reg.registers[:2]
    kinds = [e["event"] for e in events]
    assert kinds[-1] == "unregistered"
    retries = [e["retry_in"] for e in events if e["event"] == "flow_failed"][:2]
    # min(max, base * 2^failures) * 50..100%: base 0.5 s doubled, then capped at 1.5 s
    assert 0.5 <= retries[0] <= 1.0
    assert 0.75 <= retries[1] <= 1.5
    old = parse_name_addr(first.headers.get_all("Contact")[0]).uri
    assert second.headers.get_all("Contact")[1] == f"<{old}>;expires=0"
    assert old.endswith(";transport=tcp")


def test_unregister_without_answer_is_reported_and_exits_non_zero() -> None:
    with FakeRegistrar("udp") as reg, Ua(
        "--registrar", f"sip:127.0.0.1:{reg.port}", "--user", "erin", "--stop-timeout", "0.5",
    ) as ua:  # fmt: skip
        ua.wait_for(r"registered sip:erin@127\.0\.0\.1 ")
        reg.close()  # the registrar goes away: the un-REGISTER gets no answer
        t0 = time.monotonic()
        assert ua.stop() == 1
        assert time.monotonic() - t0 < 3
        assert "error: un-register: no answer within 0.5 s" in ua.log()
