"""``sipalive respond --registrar`` as a process, with real UAs registering to it: the
project's own ``sipalive register`` (UDP and TCP) and ``baresip``. The registrar's log is the
witness: registered, qualified reachable through the flow the REGISTER came on, unreachable
and removed once the UA is SIGKILLed (no un-REGISTER), bindings restored after a restart.
Raw sockets play a hung TCP UA and check the wire (both challenges, 423, Flow-Timer); the
binding store, the users file and ``contacts()`` are checked in process at the end.

Every process runs in its own session and is stopped (SIGTERM, then SIGKILL of its group);
every wait is bounded; ports are 4-digit ones from ``realpeers.free_port``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Self

import pytest

from procs import BIN, make_cert
from realpeers import binary, free_port
from sipalive.io.limits import Admission
from sipalive.io.registrar import (
    BindingStore,
    ContactStatus,
    RegistrarService,
    RegistrarSettings,
    load_users,
)
from sipalive.io.server import Listener, ListenSpec, start_listeners
from sipalive.qualify import JITTER, QualifySettings
from sipalive.sip.build import make_request
from sipalive.sip.digest import Challenge, authorization
from sipalive.sip.framing import MessageReceived, Role, StreamFramer
from sipalive.sip.headers import parse_name_addr
from sipalive.sip.message import Response, parse_message
from sipalive.sip.registrar import (
    Binding,
    Flow,
    Registrar,
    RegistrarConfig,
    Users,
)
from sipalive.sip.responder import StatelessResponder

PASSWORD = "Reg-pw:7#x"
FREQUENCY = 1.0
TIMEOUT = 1.0
QUALIFY = ["--qualify-frequency", str(FREQUENCY), "--qualify-timeout", str(TIMEOUT)]
# a contact is unreachable at most one jittered interval plus a timeout after its last answer
DETECT = FREQUENCY * (1 + JITTER) + TIMEOUT


def unconnected(binding: Binding) -> Binding:
    """``binding`` as a store gives it back: without its connection."""
    return replace(binding, flow=replace(binding.flow, connection=0))


class Proc:
    """A process with its output in a file; its whole session is killed on exit."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.path = log
        with log.open("w") as out:
            self.proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                start_new_session=True,
            )

    def log(self) -> str:
        return self.path.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            found = re.search(pattern, self.log(), re.MULTILINE)
            if found is not None:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} within {timeout}s in:\n{self.log()}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to un-register."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(5)

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
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(5)


@pytest.fixture
def users(tmp_path: Path) -> Path:
    path = tmp_path / "users"
    path.write_text(f"# test users\nalice:{PASSWORD}\ncarol:carol-pw-1\n")
    path.chmod(0o600)
    return path


def registrar(tmp_path: Path, users: Path, port: int, *extra: str, name: str = "reg") -> Proc:
    """``sipalive respond --registrar`` on udp+tcp 127.0.0.1:PORT, listening when returned."""
    args = [
        str(BIN), "respond", "--listen", f"udp:127.0.0.1:{port}",
        "--listen", f"tcp:127.0.0.1:{port}", "--registrar", "--users", str(users),
        "--registrar-db", str(tmp_path / "registrar.db"), "--duration", "60", *extra,
    ]  # fmt: skip
    proc = Proc(args, tmp_path / f"{name}.log")
    try:
        proc.wait_for("listening on", 10)
    except AssertionError:
        proc.__exit__(None, None, None)
        raise
    return proc


def ua(tmp_path: Path, port: int, *extra: str, password: str = PASSWORD, name: str = "ua") -> Proc:
    """``sipalive register`` as alice with the registrar at 127.0.0.1:PORT."""
    args = [
        str(BIN), "register", "--registrar", f"sip:127.0.0.1:{port}", "--user", "alice",
        "--password-env", "SIPALIVE_TEST_PW", "--expires", "300", "--duration", "60", *extra,
    ]  # fmt: skip
    return Proc(args, tmp_path / f"{name}.log", env={"SIPALIVE_TEST_PW": password})


ALICE = r"sip:alice@127\.0\.0\.1"


def test_udp_contact_is_qualified_and_removed_when_the_ua_dies(tmp_path: Path, users: Path) -> None:
    port = free_port("both")
    with registrar(tmp_path, users, port, *QUALIFY, "--remove-unavailable") as reg:
        with ua(tmp_path, port, "-T", "udp") as alice:
            alice.wait_for(r"registered sip:alice@127\.0\.0\.1 contact=")
            reg.wait_for(
                rf"registrar: registered {ALICE} contact=<sip:alice@127\.0\.0\.1:\d+> via udp"
            )
            reg.wait_for(rf"{ALICE} contact=<[^>]+> unknown -> reachable \(code 200")
            alice.wait_for(r"inbound OPTIONS from sip:sipalive@127\.0\.0\.1 via udp")
            # refreshes go on through the same binding: still reachable a few probes later
            alice.wait_for(r"(?s)(inbound OPTIONS.*){3}", 5)
            alice.kill()
            killed = time.monotonic()
            reg.wait_for(rf"{ALICE} contact=<[^>]+> reachable -> unreachable \(timeout\)", 5)
            reg.wait_for(rf"registrar: removed {ALICE} contact=<[^>]+> \(unavailable\)", 2)
            elapsed = time.monotonic() - killed
        assert elapsed <= DETECT + 0.5, elapsed
        assert "wrong" not in reg.log()
        assert PASSWORD not in reg.log()


def test_tcp_connection_is_kept_past_the_idle_timeout_and_used(tmp_path: Path, users: Path) -> None:
    port = free_port("both")
    # no qualify and no keep-alives: nothing but the binding keeps the connection open
    with registrar(
        tmp_path, users, port, "--qualify-frequency", "0", "--idle-timeout", "0.5"
    ) as reg:
        with ua(tmp_path, port, "-T", "tcp", "--keepalive", "none") as alice:
            alice.wait_for(r"registered sip:alice@127\.0\.0\.1 contact=<[^>]+;transport=tcp>")
            reg.wait_for(rf"registrar: registered {ALICE} contact=<[^>]+> via tcp")
            time.sleep(2.0)  # four idle timeouts
            assert alice.stop() == 0
            reg.wait_for(rf"registrar: removed {ALICE} contact=<[^>]+> \(unregistered\)", 5)
        log = alice.log()
        assert log.count("flow up") == 1, log  # the un-REGISTER went over the first connection
        assert "flow failed" not in log


def test_tcp_contact_is_unreachable_as_soon_as_its_connection_drops(
    tmp_path: Path, users: Path
) -> None:
    port = free_port("both")
    with registrar(tmp_path, users, port, *QUALIFY, "--remove-unavailable") as reg:
        with ua(tmp_path, port, "-T", "tcp") as alice:
            reg.wait_for(rf"{ALICE} contact=<[^>]+;transport=tcp> unknown -> reachable", 10)
            alice.wait_for(r"inbound OPTIONS from sip:sipalive@127\.0\.0\.1 via tcp")
            alice.kill()
            killed = time.monotonic()
            reg.wait_for(rf"{ALICE} contact=<[^>]+> reachable -> unreachable \(flow-failed\)", 3)
            reg.wait_for(rf"registrar: removed {ALICE} contact=<[^>]+> \(unavailable\)", 1)
        assert time.monotonic() - killed < 3


def test_tls_contact_is_qualified_over_its_connection(tmp_path: Path, users: Path) -> None:
    port = free_port("both", span=2)
    cert, key = make_cert(tmp_path)
    tls = ("--listen", f"tls:127.0.0.1:{port + 1}", "--cert", str(cert), "--key", str(key))
    with registrar(tmp_path, users, port, *QUALIFY, *tls) as reg:
        with ua(tmp_path, port + 1, "-T", "tls", "--ca", str(cert)) as alice:
            reg.wait_for(rf"registrar: registered {ALICE} contact=<[^>]+;transport=tls> via tls")
            reg.wait_for(rf"{ALICE} contact=<[^>]+> unknown -> reachable \(code 200", 5)
            alice.wait_for(r"inbound OPTIONS from sip:sipalive@127\.0\.0\.1 via tls")
            assert alice.stop() == 0
            reg.wait_for(rf"registrar: removed {ALICE} contact=<[^>]+> \(unregistered\)", 5)
        assert alice.log().count("flow up") == 1


def test_wrong_password_is_refused_and_the_client_gives_up(tmp_path: Path, users: Path) -> None:
    port = free_port("both")
    with registrar(tmp_path, users, port) as reg:
        with ua(tmp_path, port, password="not-the-password") as alice:
            assert alice.proc.wait(10) == 1
            assert "registration failed: 401" in alice.log()
        reg.wait_for(r"REGISTER from udp 127\.0\.0\.1:\d+ for sip:alice@127\.0\.0\.1: 401 "
                     r"\(wrong password for user alice\)")  # fmt: skip
        assert "registrar: registered" not in reg.log()
        assert "not-the-password" not in reg.log()


def test_bindings_are_restored_after_a_restart(tmp_path: Path, users: Path) -> None:
    port = free_port("both")
    with ua(tmp_path, port, "-T", "udp", "--keepalive", "none") as alice:
        with registrar(tmp_path, users, port, *QUALIFY, name="first") as first:
            first.wait_for(rf"{ALICE} contact=<[^>]+> unknown -> reachable", 10)
        assert first.proc.returncode == 0
        with registrar(tmp_path, users, port, *QUALIFY, name="second") as second:
            second.wait_for(r"registrar: restored 1 bindings from .*registrar\.db")
            second.wait_for(rf"{ALICE} contact=<[^>]+> unknown -> reachable", 5)
            # the UA's next request uses the nonce of the first process: the secret was kept
            assert alice.stop() == 0
            second.wait_for(rf"registrar: removed {ALICE} contact=<[^>]+> \(unregistered\)", 5)
        assert "registrar: registered" not in second.log()
        assert "unregistered: 200 OK" in alice.log()


def test_raw_register_sees_both_challenges_flow_timer_and_423(tmp_path: Path, users: Path) -> None:
    port = free_port("both")
    with (
        registrar(
            tmp_path,
            users,
            port,
            "--flow-timer",
            "20",
            "--flow-timer-always",
            "--min-expires",
            "120",
            "--max-expires",
            "600",
            "--qualify-frequency",
            "0",
        ) as reg,  # fmt: skip
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s,
    ):
        s.bind(("127.0.0.1", 0))
        s.settimeout(5)
        local = s.getsockname()
        uri = f"sip:127.0.0.1:{port}"

        def exchange(cseq: int, expires: int, auth: tuple[str, str] | None) -> Response:
            extra = [("Contact", f"<sip:alice@127.0.0.1:{local[1]}>"), ("Expires", str(expires))]
            request = make_request(
                "REGISTER", uri, transport="udp", local=local, branch=f"raw{cseq}",
                from_uri="sip:alice@127.0.0.1", from_tag="t", call_id="raw-call", cseq=cseq,
                to_uri="sip:alice@127.0.0.1", extra=[*extra, *([auth] if auth else [])],
            )  # fmt: skip
            s.sendto(request.encode(), ("127.0.0.1", port))
            response = parse_message(s.recv(65535))
            assert isinstance(response, Response)
            return response

        challenge = exchange(1, 300, None)
        assert challenge.status == 401
        offered = [Challenge.parse(v) for v in challenge.headers.get_fields("WWW-Authenticate")]
        assert [c.algorithm for c in offered] == ["SHA-256", "MD5"]
        nc = iter(range(1, 10))

        def auth() -> tuple[str, str]:
            return authorization(
                offered[0], username="alice", password=PASSWORD, method="REGISTER", uri=uri,
                cnonce="c0ffee", nc=next(nc),
            )  # fmt: skip

        brief = exchange(2, 60, auth())
        assert brief.status == 423
        assert brief.headers.get("Min-Expires") == "120"
        ok = exchange(3, 3600, auth())
        assert ok.status == 200
        (contact,) = ok.headers.get_all("Contact")
        assert dict(parse_name_addr(contact).params)["expires"] == "600"  # --max-expires
        assert ok.headers.get("Flow-Timer") == "20"
        gone = exchange(4, 0, auth())
        assert gone.status == 200
        assert gone.headers.get_all("Contact") == []
        reg.wait_for(r"423 \(60s is below Min-Expires 120s\)")
        reg.wait_for(r"registrar: removed sip:alice@127\.0\.0\.1 contact=<[^>]+> \(unregistered\)")


def raw_register(
    exchange: Callable[[bytes], Response], uri: str, local: tuple[str, int], transport: str
) -> Response:
    """REGISTER alice from ``local`` (challenge, then SHA-256 credentials); the final answer."""
    contact = f"<sip:alice@127.0.0.1:{local[1]};transport={transport}>"

    def request(cseq: int, auth: list[tuple[str, str]]) -> bytes:
        return make_request(
            "REGISTER", uri, transport=transport, local=local, branch=f"hung{cseq}",
            from_uri="sip:alice@127.0.0.1", from_tag="t", call_id="hung", cseq=cseq,
            to_uri="sip:alice@127.0.0.1", extra=[("Contact", contact), *auth],
        ).encode()  # fmt: skip

    challenge = exchange(request(1, []))
    assert challenge.status == 401
    offered = Challenge.parse(challenge.headers.get_fields("WWW-Authenticate")[0])
    auth = authorization(
        offered, username="alice", password=PASSWORD, method="REGISTER", uri=uri, cnonce="c1",
    )  # fmt: skip
    return exchange(request(2, [auth]))


def test_hung_tcp_contact_is_removed_and_its_connection_closed(tmp_path: Path, users: Path) -> None:
    """A UA that keeps its connection but stops answering: qualify times out, the binding
    goes, and so does the connection (``remove_unavailable``)."""
    port = free_port("both")
    with (
        registrar(tmp_path, users, port, *QUALIFY, "--remove-unavailable") as reg,
        socket.create_connection(("127.0.0.1", port), timeout=5) as s,
    ):
        framer = StreamFramer(Role.CLIENT)

        def read() -> Response:
            while data := s.recv(65535):  # bounded by the socket's timeout
                for event in framer.receive(data):
                    if isinstance(event, MessageReceived) and isinstance(event.message, Response):
                        return event.message
            raise AssertionError("the registrar closed the connection")

        def exchange(data: bytes) -> Response:
            s.sendall(data)
            return read()

        local = s.getsockname()
        assert (
            raw_register(exchange, f"sip:127.0.0.1:{port};transport=tcp", local, "tcp").status
            == 200
        )
        reg.wait_for(rf"registrar: registered {ALICE} contact=<[^>]+> via tcp")
        started = time.monotonic()
        reg.wait_for(rf"{ALICE} contact=<[^>]+> unknown -> unreachable \(timeout\)", 5)
        reg.wait_for(rf"registrar: removed {ALICE} contact=<[^>]+> \(unavailable\)", 1)
        reg.wait_for(r"registrar: closing tcp connection from 127\.0\.0\.1:\d+", 1)
        s.settimeout(2)
        while s.recv(65535):  # the unanswered OPTIONS, then the end of the stream
            pass
        assert time.monotonic() - started <= FREQUENCY + TIMEOUT + 1.0


def test_baresip_registers_and_is_qualified(tmp_path: Path, users: Path) -> None:
    baresip = binary("baresip")
    port, ua_port = free_port("both"), free_port("udp")
    conf = tmp_path / "baresip"
    conf.mkdir()
    (conf / "config").write_text(
        f"sip_listen 127.0.0.1:{ua_port}\nmodule_path /usr/lib/baresip/modules\nmodule account.so\n"
    )
    (conf / "accounts").write_text(
        f"<sip:carol@127.0.0.1:{port};transport=udp>;auth_pass=carol-pw-1;regint=60\n"
    )
    # baresip 1.0 (libre 1.1) gives up on any challenge but MD5: offer MD5 only
    extra = ("--digest-algorithms", "MD5", "--remove-unavailable")
    with registrar(tmp_path, users, port, *QUALIFY, *extra) as reg:
        with Proc([baresip, "-f", str(conf), "-t", "40"], tmp_path / "baresip.log") as bs:
            carol = r"sip:carol@127\.0\.0\.1"
            reg.wait_for(
                rf"registrar: registered {carol} contact=<sip:carol[^>]*@127\.0\.0\.1:{ua_port}"
                rf"[^>]*> via udp 127\.0\.0\.1:{ua_port} expires=60s",
                10,
            )
            reg.wait_for(rf"{carol} contact=<[^>]+> unknown -> reachable \(code 200", 5)
            bs.wait_for(r"200 OK \(sipalive/0\.1\) \[1 binding\]")
            time.sleep(2.5)  # a few more probes
            assert "-> unreachable" not in reg.log()
            bs.kill()
            killed = time.monotonic()
            reg.wait_for(rf"registrar: removed {carol} contact=<[^>]+> \(unavailable\)", 5)
        assert time.monotonic() - killed <= DETECT + 0.5
        assert "carol-pw-1" not in reg.log()


# -- the storage and the users file, in process -------------------------------------------


def test_binding_store_round_trip_and_kept_secret(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "registrar.db"
    flow = Flow("tcp", ("198.51.100.7", 40123), ("192.0.2.1", 5060), connection=9)
    binding = Binding(
        "sip:a@h", "k", "sip:a@10.0.0.1;transport=tcp", 2e9, "cid", 3, flow,
        instance="urn:uuid:1", reg_id=1, q="0.5", user_agent="UA/1", registered_at=1e9,
    )  # fmt: skip
    store = BindingStore(path)
    secret = store.secret(lambda: b"s" * 32)
    store.apply([binding], [])
    store.close()
    again = BindingStore(path)
    assert again.secret(lambda: b"other" * 8) == secret
    (loaded,) = again.load()
    assert loaded.flow.connection == 0  # a connection does not survive the process
    assert loaded == unconnected(binding)
    again.apply([], [("sip:a@h", "k")])
    assert again.load() == []
    again.close()


def test_users_file_warns_when_others_may_read_it(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_text("alice:pw-1\n")
    path.chmod(0o644)
    warnings: list[str] = []
    users = load_users(str(path), warnings.append)
    assert users.password("alice") == "pw-1"
    assert len(warnings) == 1
    assert "readable by others" in warnings[0]
    assert "pw-1" not in warnings[0]
    path.chmod(0o600)
    warnings.clear()
    load_users(str(path), warnings.append)
    assert warnings == []


def test_contacts_show_source_state_and_rtt_in_process() -> None:
    """The API the monitor reads: a contact qualified reachable with an RTT, then
    unreachable once its UA goes quiet (kept: no ``remove_unavailable``)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(0.1)
        local = s.getsockname()
        quiet = threading.Event()

        def ua(port: int) -> Response:
            def exchange(data: bytes) -> Response:
                s.sendto(data, ("127.0.0.1", port))
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline:
                    with contextlib.suppress(TimeoutError):
                        message = parse_message(s.recv(65535))
                        assert isinstance(message, Response)
                        return message
                raise AssertionError("the registrar did not answer within 5 s")

            final = raw_register(exchange, f"sip:127.0.0.1:{port}", local, "udp")
            responder = StatelessResponder()
            while not quiet.is_set():  # answer the registrar's OPTIONS until told to stop
                with contextlib.suppress(TimeoutError):
                    data, source = s.recvfrom(65535)
                    reply = responder.handle_datagram(data, source)
                    if reply is not None:
                        s.sendto(reply.data, reply.addr)
            return final

        async def until(service: RegistrarService, state: str) -> list[ContactStatus]:
            for _ in range(100):
                contacts = service.contacts()
                if contacts and contacts[0].state == state:
                    return contacts
                await asyncio.sleep(0.05)
            raise AssertionError(f"not {state}: {service.contacts()}")

        async def scenario() -> tuple[list[ContactStatus], list[ContactStatus], list[str]]:
            logs: list[str] = []
            registrar = Registrar(
                RegistrarConfig(), Users({"alice": PASSWORD}), secret=os.urandom(32),
                rand_token=lambda: os.urandom(8).hex(),
            )  # fmt: skip
            qualify = QualifySettings(qualify_frequency=0.3, qualify_timeout=0.5)
            service = RegistrarService(registrar, RegistrarSettings(qualify), log=logs.append)
            listener = Listener(StatelessResponder(), Admission(None, None))
            service.attach(listener)
            opened = await start_listeners(listener, [ListenSpec("udp", "127.0.0.1", 0)])
            service.listening(opened)
            transport = opened[0]
            assert isinstance(transport, asyncio.BaseTransport)
            port = transport.get_extra_info("sockname")[1]
            thread = asyncio.get_running_loop().run_in_executor(None, ua, port)
            try:
                reachable = await until(service, "reachable")
                quiet.set()
                assert (await thread).status == 200
                unreachable = await until(service, "unreachable")
            finally:
                quiet.set()
                await service.close()
                transport.close()
            return reachable, unreachable, logs

        reachable, unreachable, logs = asyncio.run(scenario())
    (contact,) = reachable
    assert contact.aor == "sip:alice@127.0.0.1"
    assert contact.contact == f"sip:alice@127.0.0.1:{local[1]};transport=udp"
    assert (contact.source, contact.transport) == (local, "udp")
    assert contact.rtt is not None
    assert 0 < contact.rtt < 0.5
    assert contact.user_agent == "sipalive/0.1"
    assert contact.expires_at - contact.registered_at == 3600
    assert [c.state for c in unreachable] == ["unreachable"]
    assert any("reachable -> unreachable (timeout)" in line for line in logs), logs
