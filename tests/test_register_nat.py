"""``sipalive register`` behind a real NAT (issue 4, "Tests in a real NAT"): Linux conntrack
and MASQUERADE in network namespaces (tests/netlab.py), the UA in ``lan``, the registrar in
``wan`` (Kamailio with nathelper, or ``sipalive respond --registrar``).

* **Keep-alives keep the binding.** With the conntrack UDP timeouts at 3 s, a UA without
  keep-alives cannot be reached once its binding has expired: an OPTIONS and an INVITE that
  Kamailio relays to its contact are lost at the NAT, and the sipalive registrar's qualify
  OPTIONS (every 6 s) time out. A UA sending CRLF keep-alives every second gets all of
  them. Kamailio's own nathelper pings are off: only the UA's keep-alives count.
* **A cut binding.** The router black-holes the UA's flow: the sipalive registrar finds the
  contact Unreachable and removes it (``--remove-unavailable``) within
  ``qualify_frequency`` (jittered) + ``qualify_timeout``; the UA's OPTIONS keep-alive fails
  and, once the path is back, it registers again; with STUN keep-alives too, a transaction
  being bounded by ``--pong-timeout`` rather than RFC 5389's 39.5 s.
* **Half-open TCP.** The router black-holes the UA's TCP connection: the UA notices by CRLF
  pong timeout, by TCP keep-alive and by TCP_USER_TIMEOUT, each within its configured bound
  + 1 s, measured from the ``ts`` of its ``--json`` log; then it connects again.

Every process is started through the lab (stopped on exit, whatever happens); every wait is
bounded.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from netlab import LAN_IP, ROUTER_WAN_IP, WAN_IP, NetLab
from realpeers import KAMAILIO_CFG, KAMAILIO_MODULES, binary, require, unavailable
from sipalive.keepalive.tcp import TcpKeepaliveOptions
from sipalive.qualify import JITTER

pytestmark = [pytest.mark.netns, pytest.mark.slow]

SIPALIVE = Path(sys.executable).parent / "sipalive"
PORT = 5060  # the registrar's, in wan
UDP_TIMEOUT = 3  # both conntrack UDP timeouts, in nat
SLACK = 1.0  # seconds on top of each configured bound
PASSWORD = "Nat-lab-pw-4"
ENV = {**os.environ, "SIPALIVE_TEST_PW": PASSWORD}
PUBLIC = re.escape(ROUTER_WAN_IP)


# -- processes in the lab --------------------------------------------------------------------


class Proc:
    """A process in one of the lab's namespaces, its stdout and stderr in one file."""

    def __init__(self, lab: NetLab, ns: str, log: Path, *cmd: str | Path) -> None:
        self.lab = lab
        self.path = log
        with log.open("wb") as out:
            self.proc = lab.exec(ns, *cmd, stdout=out, stderr=subprocess.STDOUT, env=ENV)

    def text(self) -> str:
        return self.path.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float, count: int = 1) -> float:
        """Waits for ``count`` lines matching ``pattern``; the monotonic time they were seen."""
        deadline = time.monotonic() + timeout
        while len(re.findall(pattern, self.text(), re.MULTILINE)) < count:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError(
                    f"no {count}x {pattern!r} within {timeout:g} s in {self.path}:\n{self.text()}"
                )
            time.sleep(0.05)
        return time.monotonic()

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        """The ``--json`` log lines (of one ``event`` kind)."""
        out = []
        for line in self.text().splitlines():
            if line.startswith("{"):
                event = json.loads(line)
                if kind is None or event["event"] == kind:
                    out.append(event)
        return out

    def wait_event(
        self,
        kind: str,
        timeout: float,
        where: Callable[[dict[str, Any]], bool] = lambda e: True,
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            found = [e for e in self.events(kind) if where(e)]
            if found:
                return found[0]
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError(f"no {kind} event within {timeout:g} s:\n{self.text()}")
            time.sleep(0.05)

    def inbound(self, method: str) -> list[dict[str, Any]]:
        return [e for e in self.events("inbound_request") if e["method"] == method]


def wind_up(lab: NetLab, *procs: Proc) -> None:
    """Stops the processes in this order (UAs before their registrar, so that they can
    un-register) and prints their logs, which pytest shows when the test failed."""
    for p in procs:
        lab.stop(p.proc)
    for p in procs:
        print(f"--- {p.path.name}\n{p.text()[-8000:]}")


def unregistered(lab: NetLab, ua: Proc) -> int:
    """SIGTERM: the status of the UA's un-REGISTER."""
    lab.stop(ua.proc)
    (event,) = ua.events("unregistered")
    return int(event["status"])


def register(lab: NetLab, tmp_path: Path, user: str, *extra: str) -> Proc:
    """``sipalive register --json`` as USER in lan, to the registrar in wan."""
    return Proc(
        lab, "lan", tmp_path / f"{user}.log", SIPALIVE, "register",
        "--registrar", f"sip:{WAN_IP}:{PORT}", "--user", user,
        "--password-env", "SIPALIVE_TEST_PW", "--expires", "300", "--duration", "100",
        "--stop-timeout", "1", "--json", "-v", *extra,
    )  # fmt: skip


def registered(ua: Proc, timeout: float = 10.0) -> dict[str, Any]:
    """The UA's ``registered`` event, once its Contact is the NAT's public address."""
    return ua.wait_event(
        "registered", timeout, lambda e: e["contact"].split("@")[1].startswith(ROUTER_WAN_IP)
    )


def local_port(ua: Proc) -> int:
    return int(ua.wait_event("flow_up", 5)["local"][1])


def sipalive_registrar(lab: NetLab, tmp_path: Path, *extra: str) -> Proc:
    """``sipalive respond --registrar`` on udp+tcp WAN_IP:PORT in wan, listening."""
    users = tmp_path / "users"
    users.write_text(f"alice:{PASSWORD}\nbob:{PASSWORD}\nquiet:{PASSWORD}\nkept:{PASSWORD}\n")
    users.chmod(0o600)
    reg = Proc(
        lab, "wan", tmp_path / "registrar.log", SIPALIVE, "respond",
        "--listen", f"udp:{WAN_IP}:{PORT}", "--listen", f"tcp:{WAN_IP}:{PORT}",
        "--registrar", "--users", str(users), "--registrar-db", "", "--duration", "100",
        *extra,
    )  # fmt: skip
    reg.wait_for("listening on", 10)
    return reg


def aor(user: str) -> str:
    return re.escape(f"sip:{user}@{WAN_IP}")


# -- Kamailio in wan -------------------------------------------------------------------------


def kamailio_args(run_dir: Path) -> list[str]:
    """tests/realpeers.py ``Kamailio._args`` for WAN_IP (that fixture stays on loopback):
    UDP+TCP on PORT, digest auth with PASSWORD, no TLS, nathelper pings off."""
    return [
        "-f", str(KAMAILIO_CFG), "-L", str(KAMAILIO_MODULES), "-DD", "-E",
        "-Y", str(run_dir), "-P", str(run_dir / "kamailio.pid"), "-w", str(run_dir),
        "-m", "32", "-M", "8", "-a", "no", "--debug=2",
        "-l", f"udp:{WAN_IP}:{PORT}", "-l", f"tcp:{WAN_IP}:{PORT}",
        "-A", f'CTL_SOCK="unix:{run_dir / "kamailio_ctl"}"',
        "-A", "NATPING_INTERVAL=0", "-A", "KEEPALIVE_TIMEOUT=0",
        "-A", "WITH_AUTH", "-A", f'AUTH_PASSWORD="{PASSWORD}"',
    ]  # fmt: skip


class KamailioInWan:
    """Kamailio running in the lab's wan namespace (under ``timeout``, as the fixture does:
    a hard stop even if this process dies); the lab stops it."""

    def __init__(self, lab: NetLab, run_dir: Path) -> None:
        kamailio, self.kamcmd_bin = binary("kamailio"), binary("kamcmd")
        if not (KAMAILIO_MODULES / "nathelper.so").exists():
            unavailable(f"Kamailio modules not found in {KAMAILIO_MODULES}")
        run_dir.mkdir()
        self.ctl = run_dir / "kamailio_ctl"
        args = kamailio_args(run_dir)
        check = lab.run("wan", kamailio, *args, "-c", check=False, timeout=30)
        assert check.returncode == 0, f"kamailio -c failed:\n{check.stdout}{check.stderr}"
        self.log = Proc(lab, "wan", run_dir / "kamailio.log", binary("timeout"), "-k", "5",
                        "120", kamailio, *args)  # fmt: skip
        deadline = time.monotonic() + 15
        while not self._ready(lab):
            assert self.log.proc.poll() is None, f"kamailio exited:\n{self.log.text()}"
            assert time.monotonic() < deadline, f"kamailio not ready:\n{self.log.text()}"
            time.sleep(0.1)

    def _ready(self, lab: NetLab) -> bool:
        if not self.ctl.is_socket():
            return False
        if "kamailio" not in lab.run("wan", "ss", "-Hlnup", f"sport = :{PORT}").stdout:
            return False
        try:
            return "PID" in self.kamcmd("core.psx")
        except (AssertionError, subprocess.TimeoutExpired):
            return False

    def kamcmd(self, *args: str) -> str:
        done = subprocess.run([self.kamcmd_bin, "-s", f"unix:{self.ctl}", *args],
                              capture_output=True, text=True, timeout=5, check=False)  # fmt: skip
        assert done.returncode == 0, f"kamcmd {args}: {done.stderr}"
        return done.stdout

    def contacts(self, user: str) -> list[str]:
        blocks = re.split(r"\n\s*AoR: ", self.kamcmd("ul.dump"))
        for block in blocks[1:]:
            if block.split("\n", 1)[0].strip() == user:
                return re.findall(r"Address: (\S+)", block)
        return []


# An INVITE from wan to sip:USER@REGISTRAR (Kamailio relays it to the contact). Prints the
# final status ("FINAL 480"; the 4xx is ACKed, RFC 3261 §17.1.1.3) or "NOFINAL" and the
# provisional ones seen, after WAIT seconds.
INVITE = r"""
import socket, sys, time
host, port, user, wait = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((host, 0))
me = s.getsockname()[1]
head = (f"Via: SIP/2.0/UDP {host}:{me};branch=z9hG4bKnat{me};rport\r\nMax-Forwards: 70\r\n"
        f"From: <sip:caller@{host}>;tag=c{me}\r\nTo: <sip:{user}@{host}>\r\n"
        f"Call-ID: nat{me}@test\r\n")
uri = f"sip:{user}@{host}:{port}"
s.sendto((f"INVITE {uri} SIP/2.0\r\n{head}CSeq: 1 INVITE\r\n"
          f"Contact: <sip:caller@{host}:{me}>\r\nContent-Length: 0\r\n\r\n").encode(), (host, port))
seen, end = [], time.monotonic() + wait
while (left := end - time.monotonic()) > 0:
    s.settimeout(left)
    try:
        data = s.recv(65535).decode(errors="replace")
    except TimeoutError:
        break
    status = int(data.split(" ", 2)[1])
    if status >= 200:
        to = next(l for l in data.split("\r\n") if l.lower().startswith("to:"))
        ack = head.replace(f"To: <sip:{user}@{host}>", to)
        s.sendto(f"ACK {uri} SIP/2.0\r\n{ack}CSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n".encode(),
                 (host, port))
        print("FINAL", status)
        sys.exit(0)
    seen.append(status)
print("NOFINAL", *seen)
"""


def invite(lab: NetLab, user: str, wait: float) -> str:
    return lab.run("wan", sys.executable, "-c", INVITE, WAN_IP, str(PORT), user, str(wait)).stdout


def ping(lab: NetLab, user: str) -> subprocess.CompletedProcess[str]:
    """``sipalive ping`` sip:USER@registrar from wan: Kamailio relays it to USER's contact."""
    return lab.run("wan", SIPALIVE, "ping", "-c", "1", "--timeout", "2",
                   f"sip:{user}@{WAN_IP}:{PORT}", check=False)  # fmt: skip


def nat_entries(lab: NetLab, port: int) -> list[str]:
    """The conntrack entries in nat for UDP flows from the UA's port."""
    out = lab.conntrack("-L", "-p", "udp", "--sport", str(port)).stdout
    return [line for line in out.splitlines() if f"sport={port} " in line]


def wait_expired(lab: NetLab, port: int) -> float:
    """Waits (at most the timeout + 3 s) until the UA's binding is gone; how long it took."""
    start = time.monotonic()
    while nat_entries(lab, port):
        assert time.monotonic() - start < UDP_TIMEOUT + 3, nat_entries(lab, port)
        time.sleep(0.1)
    return time.monotonic() - start


# -- 1. keep-alives keep the binding -----------------------------------------------------------


@contextmanager
def quiet_and_kept(lab: NetLab, tmp_path: Path) -> Iterator[tuple[Proc, Proc]]:
    """Two UAs: ``quiet`` without keep-alives, ``kept`` with CRLF keep-alives every second."""
    quiet = register(lab, tmp_path, "quiet", "--keepalive", "none")
    kept = register(lab, tmp_path, "kept", "--keepalive", "crlf", "--keepalive-interval", "1")
    registered(quiet)
    registered(kept)
    try:
        yield quiet, kept
    finally:
        wind_up(lab, quiet, kept)


@pytest.mark.realpeer
def test_kamailio_relays_reach_the_ua_only_while_its_keepalives_run(tmp_path: Path) -> None:
    require("kamailio", "kamcmd", "ss")
    with NetLab(udp_timeout=UDP_TIMEOUT, udp_timeout_stream=UDP_TIMEOUT) as lab:
        kam = KamailioInWan(lab, tmp_path / "kam")
        try:
            with quiet_and_kept(lab, tmp_path) as (quiet, kept):
                for ua, user in ((quiet, "quiet"), (kept, "kept")):
                    # the UA put its public address in the Contact; Kamailio relays there
                    assert kam.contacts(user) == [registered(ua)["contact"]]
                # a fresh binding lets the relayed OPTIONS through, keep-alives or not
                assert "200 OK" in ping(lab, "quiet").stdout
                quiet.wait_event("inbound_request", 3)
                gone = wait_expired(lab, local_port(quiet))
                print(f"quiet's binding expired {gone:.1f} s after the relayed OPTIONS")
                assert nat_entries(lab, local_port(kept))

                answered = ping(lab, "kept")
                assert "200 OK" in answered.stdout, answered.stdout + answered.stderr
                lost = ping(lab, "quiet")
                assert lost.returncode != 0, lost.stdout
                assert "200 OK" not in lost.stdout
                assert invite(lab, "kept", 5) == "FINAL 480\n"
                assert invite(lab, "quiet", 3).startswith("NOFINAL")

                kept.wait_event("inbound_request", 3, lambda e: e["method"] == "ACK")
                (options,) = kept.inbound("OPTIONS")
                assert options["source"] == [WAN_IP, PORT]
                assert options["status"] == 200
                assert [e["status"] for e in kept.inbound("INVITE")] == [480]
                assert len(quiet.inbound("OPTIONS")) == 1  # the one before the expiry
                assert quiet.inbound("INVITE") == []
                sent = kept.events("keepalive_traffic")
                assert sum(e["direction"] == "sent" and e["kind"] == "crlf" for e in sent) >= 3
                # quiet's un-REGISTER leaves from a new binding: Kamailio takes it all the same
                assert unregistered(lab, kept) == 200
                assert unregistered(lab, quiet) == 200
                assert kam.contacts("kept") == kam.contacts("quiet") == []
        finally:
            wind_up(lab, kam.log)


def test_sipalive_registrar_qualifies_the_ua_only_while_its_keepalives_run(
    tmp_path: Path,
) -> None:
    frequency, timeout = 6.0, 1.0  # a qualify OPTIONS every 6 s: the binding lasts 3 s
    with NetLab(udp_timeout=UDP_TIMEOUT, udp_timeout_stream=UDP_TIMEOUT) as lab:
        reg = sipalive_registrar(lab, tmp_path, "--qualify-frequency", str(frequency),
                                 "--qualify-timeout", str(timeout))  # fmt: skip
        try:
            with quiet_and_kept(lab, tmp_path) as (quiet, kept):
                contact = rf"contact=<sip:\w+@{PUBLIC}:\d+>"
                reg.wait_for(rf"registrar: {aor('quiet')} {contact} unknown -> reachable", 5)
                reg.wait_for(rf"registrar: {aor('kept')} {contact} unknown -> reachable", 5)
                # one probe each right after the REGISTERs (two, if the answer to the first
                # REGISTER made the UA register its public Contact before the probe ended)
                probed = {ua: len(ua.inbound("OPTIONS")) for ua in (quiet, kept)}
                start = time.monotonic()
                reg.wait_for(
                    rf"{aor('quiet')} {contact} reachable -> unreachable \(timeout\)",
                    frequency * (1 + JITTER) + timeout + SLACK,
                )
                print(f"quiet unreachable {time.monotonic() - start:.1f} s after both reachable")
                deadline = time.monotonic() + frequency * (1 + JITTER) + SLACK
                while len(kept.inbound("OPTIONS")) == probed[kept]:
                    assert time.monotonic() < deadline, kept.text()
                    time.sleep(0.05)
                time.sleep(0.5)  # the registrar has its 200 and logs nothing
                assert re.search(rf"{aor('kept')} .* -> unreachable", reg.text()) is None
                assert len(quiet.inbound("OPTIONS")) == probed[quiet]
                assert len(kept.inbound("OPTIONS")) == probed[kept] + 1
                for ua in (quiet, kept):
                    # every qualify OPTIONS that reached the UA came from the registrar's port
                    assert {tuple(e["source"]) for e in ua.inbound("OPTIONS")} == {(WAN_IP, PORT)}
                    assert unregistered(lab, ua) == 200
        finally:
            wind_up(lab, reg)


# -- 2. a cut binding --------------------------------------------------------------------------

FREQUENCY, TIMEOUT = 2.0, 1.0
QUALIFY = ["--qualify-frequency", str(FREQUENCY), "--qualify-timeout", str(TIMEOUT),
           "--remove-unavailable"]  # fmt: skip
REMOVED = FREQUENCY * (1 + JITTER) + TIMEOUT  # the registrar's bound, from the cut
# the UA: a keep-alive each second, a transaction (REGISTER, OPTIONS) gives up after 2 s,
# a new flow at once after a failure, then 0.5-2 s apart (RFC 5626 §4.5)
UA_TIMERS = ["--keepalive-interval", "1", "--timeout", "2", "--backoff-base", "1",
             "--backoff-max", "2"]  # fmt: skip


def udp_flow(port: int) -> list[str]:
    """The UA's UDP flow from LAN_IP:port (the black-hole adds the other direction)."""
    return ["-p", "udp", "-s", LAN_IP, "--sport", str(port)]


def cut_until_removed(lab: NetLab, reg: Proc, user: str, port: int) -> float:
    """Black-holes the UA's flow once its contact is Reachable; the time of the cut
    (``time.time()``) once the registrar has removed the contact, within its bound."""
    reg.wait_for(rf"{aor(user)} contact=<[^>]+> unknown -> reachable", 5)
    time.sleep(0.5)  # keep-alives answered: the flow works
    lab.blackhole(True, udp_flow(port))
    cut, start = time.time(), time.monotonic()
    reg.wait_for(rf"{aor(user)} contact=<[^>]+> reachable -> unreachable \(timeout\)",
                 REMOVED + SLACK)  # fmt: skip
    seen = reg.wait_for(rf"registrar: removed {aor(user)} contact=<[^>]+> \(unavailable\)", 1)
    print(f"{user}: removed by the registrar {seen - start:.2f} s after the cut "
          f"(bound {REMOVED:g} s)")  # fmt: skip
    assert seen - start <= REMOVED + SLACK
    return cut


def test_cut_binding_is_removed_and_the_ua_registers_again(tmp_path: Path) -> None:
    with NetLab(udp_timeout=UDP_TIMEOUT, udp_timeout_stream=UDP_TIMEOUT) as lab:
        reg = sipalive_registrar(lab, tmp_path, *QUALIFY)
        alice = register(lab, tmp_path, "alice", "--keepalive", "options", *UA_TIMERS,
                         "--listen", f"{LAN_IP}:5070")  # fmt: skip
        try:
            registered(alice)
            reg.wait_for(rf"registrar: registered {aor('alice')} contact=<sip:alice@{PUBLIC}:5070>"
                         rf" via udp {PUBLIC}:5070", 5)  # fmt: skip
            cut = cut_until_removed(lab, reg, "alice", 5070)
            failed = alice.wait_event("flow_failed", 1 + 2 + SLACK)
            noticed = failed["ts"] - cut
            print(f"alice: flow failed {noticed:.2f} s after the cut ({failed['reason']})")
            assert 0 < noticed <= 1 + 2 + SLACK
            time.sleep(1.0)  # the re-REGISTER, sent at once, is lost in the black-hole
            lab.blackhole(False, udp_flow(5070))
            lifted = time.time()
            back = alice.wait_event("flow_recovered", 2 + 2 + 2 * SLACK)
            print(f"alice: registered again {back['ts'] - lifted:.2f} s after the lift")
            reg.wait_for(rf"registrar: registered {aor('alice')} contact=<[^>]+> via udp "
                         rf"{PUBLIC}:5070", 2, count=2)  # fmt: skip
            reg.wait_for(rf"{aor('alice')} contact=<[^>]+> unknown -> reachable", 3, count=2)
            kinds = [e["event"] for e in alice.events() if e["event"] != "keepalive_traffic"]
            assert kinds.index("flow_failed") < kinds.index("flow_recovered")
            assert unregistered(lab, alice) == 200
        finally:
            wind_up(lab, alice, reg)


class UaDidNotNotice(AssertionError):
    """The UA did not notice the cut (what once happened with RFC 5389's 39.5 s)."""


def test_stun_keepalive_notices_a_short_cut_and_registers_again(tmp_path: Path) -> None:
    with NetLab(udp_timeout=UDP_TIMEOUT, udp_timeout_stream=UDP_TIMEOUT) as lab:
        reg = sipalive_registrar(lab, tmp_path, *QUALIFY)
        # --pong-timeout bounds a STUN keep-alive transaction too
        bob = register(lab, tmp_path, "bob", "--keepalive", "stun", *UA_TIMERS,
                       "--pong-timeout", "2", "--listen", f"{LAN_IP}:5072")  # fmt: skip
        try:
            registered(bob)
            bob.wait_event("keepalive_traffic", 3, lambda e: e["kind"] == "stun"
                           and e["direction"] == "received")  # fmt: skip
            cut = cut_until_removed(lab, reg, "bob", 5072)
            time.sleep(max(0.0, cut + 1 + 2 + SLACK - time.time()))
            lab.blackhole(False, udp_flow(5072))  # a 4-5 s cut
            deadline = time.monotonic() + 2 + 2 + 2 * SLACK
            while "flow_recovered" not in {e["event"] for e in bob.events()}:
                if time.monotonic() > deadline:
                    raise UaDidNotNotice(
                        f"bob: no flow failure {time.time() - cut:.1f} s after a cut that made "
                        f"the registrar drop its binding:\n{bob.text()}"
                    )
                time.sleep(0.05)
            reg.wait_for(rf"registrar: registered {aor('bob')} ", 2, count=2)
        finally:
            wind_up(lab, bob, reg)


# -- 3. half-open TCP --------------------------------------------------------------------------

TCP_FLOW = ["-p", "tcp", "--dport", str(PORT)]  # and its mirror: the whole connection
KEEPALIVE = TcpKeepaliveOptions(True, 1, 1, 2)


@pytest.mark.parametrize(
    ("options", "bound", "reason"),
    [
        pytest.param(
            ["--keepalive", "crlf", "--keepalive-interval", "1", "--pong-timeout", "0.5",
             "--tcp-keepalive", "off"],
            1 + 0.5, r"no CRLF pong within 0.5 s of the ping", id="pong-timeout",
        ),
        pytest.param(
            ["--keepalive", "none", "--tcp-keepalive", "1,1,2"],
            KEEPALIVE.detection_bound(), r"connection lost: .*timed out", id="tcp-keepalive",
        ),
        # the CRLF ping is the traffic left unacknowledged; its pong timeout is far off
        pytest.param(
            ["--keepalive", "crlf", "--keepalive-interval", "1", "--pong-timeout", "30",
             "--tcp-keepalive", "off", "--tcp-user-timeout", "2"],
            1 + 2, r"connection lost: .*timed out", id="tcp-user-timeout",
        ),
    ],
)  # fmt: skip
def test_half_open_tcp_flow_is_detected_within_its_bound(
    tmp_path: Path, options: list[str], bound: float, reason: str
) -> None:
    require("ss")
    with NetLab() as lab:
        reg = sipalive_registrar(lab, tmp_path)  # one qualify, at the REGISTER
        alice = register(lab, tmp_path, "alice", "-T", "tcp", "--backoff-base", "1",
                         "--backoff-max", "2", *options)  # fmt: skip
        try:
            registered(alice)
            reg.wait_for(rf"{aor('alice')} contact=<[^>]+;transport=tcp> unknown -> reachable", 5)
            time.sleep(1.5)  # a ping/pong round or a TCP keep-alive probe answered
            conns = lab.run("lan", "ss", "-tnoH", "state", "established",
                            f"( dport = :{PORT} )").stdout  # fmt: skip
            assert conns.count(f"{WAN_IP}:{PORT}") == 1, conns
            assert ("timer:(keepalive" in conns) == ("1,1,2" in options), conns
            assert alice.events("flow_failed") == []
            lab.blackhole(True, TCP_FLOW)
            cut = time.time()
            failed = alice.wait_event("flow_failed", bound + SLACK + 3)
            detected = failed["ts"] - cut
            print(f"{' '.join(options)}: flow failed {detected:.2f} s after the black-hole "
                  f"(bound {bound:g} s): {failed['reason']}")  # fmt: skip
            assert re.search(reason, failed["reason"]), failed
            assert 0 < detected <= bound + SLACK
            lab.blackhole(False, TCP_FLOW)
            back = alice.wait_event("flow_recovered", 2 + 10)  # back-off, then a connect
            print(f"registered again on a new connection {back['ts'] - cut:.2f} s after the cut")
            assert len(alice.events("flow_up")) >= 2
            assert unregistered(lab, alice) == 200
        finally:
            wind_up(lab, alice, reg)
