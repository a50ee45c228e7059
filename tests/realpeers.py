"""Real SIP peers for the test suite: SIPp, sipsak, Kamailio, and a loopback UDP capture.

Everything here binds to a loopback address only (127.0.0.1 by default). Every process is
started by a context manager that stops it again (SIGTERM, a bounded grace period, then
SIGKILL for its whole process group) and reaps it; every wait loop is bounded in time.
The scenario files and the Kamailio configuration live in ``tests/data``: nothing outside the
repository is read.

A peer binary that is not installed skips the test, or fails it under ``CI=true`` (CI must
run against the real peers, see ``scripts/install-peers.sh``).

Names and shapes::

    require(*binaries), require_root(), unavailable(reason)
    free_port(transport, host), free_port_pair(host)
    SippUas(port, ...)            context manager, sipp answering (or swallowing) OPTIONS
    run_sipp_uac(target, ...)     sipp as a load generator -> SippUacResult
    Kamailio(port, ...)           context manager, registrar/OPTIONS responder, TLS on port+1
    sipsak(*args)                 runs sipsak -> CompletedProcess[str]
    UdpCapture(port, host)        context manager, kernel-timestamped datagrams sent to a port
    sipp_uas_on_free_port(...), kamailio_on_free_port(...)
                                  pick a free port, start, retry if the port was taken meanwhile

PeerStartError is raised when a peer does not come up; its message carries the peer's log.
"""

from __future__ import annotations

import contextlib
import csv
import ctypes
import ipaddress
import math
import os
import random
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal, NamedTuple, NoReturn, Self, TypeVar

import pytest

DATA_DIR = Path(__file__).resolve().parent / "data"
SIPP_SCENARIOS = DATA_DIR / "sipp"
KAMAILIO_CFG = DATA_DIR / "kamailio.cfg"
KAMAILIO_MODULES = Path("/usr/lib/x86_64-linux-gnu/kamailio/modules")

PortTransport = Literal["udp", "tcp", "both"]
SippTransport = Literal["udp", "tcp"]

# sipsak 0.9.8.1 truncates a 5-digit port in the Request-URI, so every port is 4 digits.
PORT_MIN = 2000
PORT_MAX = 9999
# Standard SIP ports, and what SIPp binds next to its SIP socket: the RTP echo ports
# (6000, 6002, then +4 for every further sipp) and the control port (8888, then +1).
_RESERVED_PORTS = frozenset({5060, 5061, *range(6000, 6200), *range(8888, 9000)})
_handed_out: set[int] = set()

_EXTRA_BIN_DIRS = ("/usr/sbin", "/sbin")  # kamailio and kamcmd live in /usr/sbin


class PeerStartError(RuntimeError):
    """A real peer did not come up. ``port_in_use`` says whether retrying on another port helps."""

    def __init__(self, message: str, *, port_in_use: bool = False) -> None:
        super().__init__(message)
        self.port_in_use = port_in_use


# ---------------------------------------------------------------------------------------------
# availability


def unavailable(reason: str) -> NoReturn:
    """Skip the current test, or fail it when running under ``CI=true``."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: real peers are mandatory)", pytrace=False)
    pytest.skip(reason)


def _which(name: str) -> str | None:
    found = shutil.which(name)
    if found is None:
        extra = os.pathsep.join(_EXTRA_BIN_DIRS)
        found = shutil.which(name, path=extra)
    return found


def binary(name: str) -> str:
    """Absolute path of an installed binary; skips/fails the test if it is missing."""
    path = _which(name)
    if path is None:
        unavailable(f"{name} is not installed (make peers)")
    return path


def require(*binaries: str) -> None:
    """Skip (or under CI=true fail) unless every named binary is installed."""
    missing = [name for name in binaries if _which(name) is None]
    if missing:
        unavailable(f"not installed: {', '.join(missing)} (make peers)")


def require_root() -> None:
    """Skip (or under CI=true fail) unless running as root."""
    if os.geteuid() != 0:
        unavailable("needs root")


def _check_loopback(host: str) -> None:
    if not ipaddress.IPv4Address(host).is_loopback:
        raise ValueError(f"real peers stay on IPv4 loopback (127.0.0.0/8), got host {host!r}")


# ---------------------------------------------------------------------------------------------
# ports


def _bindable(port: int, kind: int, host: str) -> bool:
    with socket.socket(socket.AF_INET, kind) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(transport: PortTransport = "udp", host: str = "127.0.0.1", *, span: int = 1) -> int:
    """A port in 2000-9999 that is free right now on ``host`` for ``transport``.

    ``span`` > 1 asks for that many consecutive free ports (the first one is returned).
    Ports are picked at random (other test processes may be picking too) and never handed out
    twice by this process; SIP's 5060/5061 and SIPp's own RTP/control ports are avoided.
    """
    _check_loopback(host)
    kinds = {
        "udp": (socket.SOCK_DGRAM,),
        "tcp": (socket.SOCK_STREAM,),
        "both": (socket.SOCK_DGRAM, socket.SOCK_STREAM),
    }[transport]
    rng = random.SystemRandom()
    for _ in range(500):
        first = rng.randint(PORT_MIN, PORT_MAX - span + 1)
        ports = range(first, first + span)
        if any(p in _RESERVED_PORTS or p in _handed_out for p in ports):
            continue
        if all(_bindable(p, kind, host) for p in ports for kind in kinds):
            _handed_out.update(ports)
            return first
    raise RuntimeError(f"no free {transport} port in {PORT_MIN}-{PORT_MAX} on {host}")


def free_port_pair(host: str = "127.0.0.1") -> int:
    """A port P with P and P+1 free for UDP and TCP (Kamailio: UDP+TCP on P, TLS on P+1)."""
    return free_port("both", host, span=2)


def _listening_pids(port: int, transport: SippTransport) -> set[int]:
    """Pids of the processes that have a UDP socket bound / a TCP socket listening on ``port``."""
    flags = "-Hlnup" if transport == "udp" else "-Hlntp"
    out = subprocess.run(
        [binary("ss"), flags, f"sport = :{port}"],
        capture_output=True,
        text=True,
        timeout=5,
        check=False,
    ).stdout
    return {int(pid) for pid in re.findall(r"pid=(\d+)", out)}


# ---------------------------------------------------------------------------------------------
# processes


def _process_group(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is ``pgid``."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def _stop_group(proc: subprocess.Popen[bytes], grace: float) -> list[int]:
    """Stop ``proc`` (started with start_new_session=True) and everything in its group.

    SIGTERM to the leader, up to ``grace`` seconds for it and its children to exit, then SIGKILL
    to the group. Always reaps the leader. Returns the pids still alive afterwards (normally none).
    """
    pgid = proc.pid
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            proc.wait(5)
    deadline = time.monotonic() + grace
    killed = False
    while members := _process_group(pgid):
        if time.monotonic() > deadline:
            if killed:
                return members
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            killed = True
            deadline = time.monotonic() + 2.0
        time.sleep(0.05)
    return []


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no {path.name})"
    return "\n".join(text.splitlines()[-lines:])


# ---------------------------------------------------------------------------------------------
# SIPp UAS


@dataclass(frozen=True)
class SippMessage:
    """One entry of SIPp's ``-trace_msg`` log."""

    direction: Literal["received", "sent"]
    transport: str
    timestamp: str
    text: str

    @property
    def first_line(self) -> str:
        return self.text.split("\n", 1)[0].rstrip("\r")


_SIPP_LOG_ENTRY = re.compile(
    r"^-{10,} (?P<ts>\S+ \S+)\n(?P<tr>\S+) message (?P<dir>received|sent)[^\n]*\n\n",
    re.MULTILINE,
)
_SIPP_ERROR_LINE = re.compile(r"Unable|errno|[Ee]rror(?!s \(send)")  # not "UDP errors (send/..."
_REASON = re.compile(r"[A-Za-z0-9 .,'()/-]{1,80}")


def parse_sipp_messages(log: str) -> list[SippMessage]:
    """Split a SIPp ``-trace_msg`` log into its messages (SIPp does not end entries cleanly)."""
    heads = list(_SIPP_LOG_ENTRY.finditer(log))
    messages = []
    for head, nxt in zip(heads, [*heads[1:], None], strict=True):
        body = log[head.end() : nxt.start() if nxt else len(log)].strip("\n")
        direction: Literal["received", "sent"] = "received" if head["dir"] == "received" else "sent"
        messages.append(SippMessage(direction, head["tr"], head["ts"], body))
    return messages


class SippUas:
    """SIPp as a UAS on ``host:port``: answers OPTIONS with ``code reason`` or stays silent.

    ``mode="silent"`` receives OPTIONS (and accepts TCP connections) but never answers.
    ``delay_ms`` delays every answer. SIPp stops by itself after ``duration`` seconds (a hard
    stop in case the test process dies); ``__exit__`` stops it earlier. Logs (screen, received
    and sent messages, errors) go to ``log_dir`` (kept) or to a temporary directory (removed).
    """

    def __init__(
        self,
        port: int,
        transport: SippTransport = "udp",
        *,
        mode: Literal["answer", "silent"] = "answer",
        code: int = 200,
        reason: str = "OK",
        delay_ms: int = 0,
        host: str = "127.0.0.1",
        duration: int = 120,
        log_dir: Path | None = None,
        start_timeout: float = 5.0,
    ) -> None:
        _check_loopback(host)
        if transport not in ("udp", "tcp"):
            raise ValueError(f"transport must be udp or tcp, got {transport!r}")
        if mode not in ("answer", "silent"):
            raise ValueError(f"mode must be answer or silent, got {mode!r}")
        if not 100 <= code <= 699:
            raise ValueError(f"code must be 100..699, got {code}")
        if not _REASON.fullmatch(reason):
            raise ValueError(f"reason must be plain text (no SIPp [keywords]), got {reason!r}")
        if delay_ms < 0 or duration <= 0:
            raise ValueError("delay_ms must be >= 0 and duration > 0")
        self.port = port
        self.transport: SippTransport = transport
        self.mode = mode
        self.code = code
        self.reason = reason
        self.delay_ms = delay_ms
        self.host = host
        self.duration = duration
        self._log_dir = log_dir
        self._start_timeout = start_timeout
        self._dir: Path | None = None
        self._own_dir = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._screen: IO[bytes] | None = None

    @property
    def uri(self) -> str:
        """``sip:ping@HOST:PORT``, with ``;transport=tcp`` over TCP (sipsak cannot parse that
        parameter: give it :attr:`base_uri` and ``-E tcp``)."""
        return self.base_uri + (";transport=tcp" if self.transport == "tcp" else "")

    @property
    def base_uri(self) -> str:
        return f"sip:ping@{self.host}:{self.port}"

    @property
    def target(self) -> str:
        """``HOST:PORT``, the form run_sipp_uac takes."""
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("SippUas is not running")
        return self._proc.pid

    @property
    def log_dir(self) -> Path:
        if self._dir is None:
            raise RuntimeError("SippUas was not started")
        return self._dir

    def _scenario(self) -> Path:
        assert self._dir is not None
        if self.mode == "silent":
            text = (SIPP_SCENARIOS / "uas-options-silent.xml").read_text(encoding="iso-8859-1")
        else:
            text = (SIPP_SCENARIOS / "uas-options.xml").read_text(encoding="iso-8859-1")
            text, n = re.subn(
                r"^([ \t]*)SIP/2\.0 200 OK[ \t]*$",
                rf"\g<1>SIP/2.0 {self.code} {self.reason}",
                text,
                count=1,
                flags=re.MULTILINE,
            )
            if n != 1:
                raise RuntimeError("uas-options.xml: no 'SIP/2.0 200 OK' status line to patch")
            if self.delay_ms == 0:
                text = re.sub(r"^[ \t]*<pause[ \t]*/>[ \t]*\n", "", text, flags=re.MULTILINE)
        path = self._dir / "scenario.xml"
        path.write_text(text, encoding="iso-8859-1")
        return path

    def __enter__(self) -> Self:
        sipp = binary("sipp")
        if self._log_dir is not None:
            self._log_dir.mkdir(parents=True, exist_ok=True)
            self._dir = self._log_dir
        else:
            self._dir = Path(tempfile.mkdtemp(prefix="sipalive-sipp-uas-"))
            self._own_dir = True
        try:
            self._start(sipp)
        except BaseException:
            self._stop()
            raise
        return self

    def _start(self, sipp: str) -> None:
        assert self._dir is not None
        cmd = [
            sipp,
            "-sf", str(self._scenario()),
            "-i", self.host,
            "-p", str(self.port),
            "-t", "u1" if self.transport == "udp" else "t1",
            "-d", str(self.delay_ms),
            "-nostdin",
            "-timeout", f"{self.duration}s",
            "-max_socket", "1024",
            "-buff_size", "1048576",
            "-trace_msg", "-message_file", str(self._dir / "messages.log"),
            "-trace_err", "-error_file", str(self._dir / "errors.log"),
        ]  # fmt: skip
        self._screen = (self._dir / "screen.log").open("wb")
        self._proc = subprocess.Popen(
            cmd,
            cwd=self._dir,
            stdin=subprocess.DEVNULL,
            stdout=self._screen,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + self._start_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break
            if self._proc.pid in _listening_pids(self.port, self.transport):
                return
            time.sleep(0.02)
        screen = (self._dir / "screen.log").read_text(errors="replace")
        # SIPp's errors (stderr) come before its final statistics screen in the same file
        errors = [line for line in screen.splitlines() if _SIPP_ERROR_LINE.search(line)]
        state = (
            f"exited with {self._proc.returncode}"
            if self._proc.poll() is not None
            else f"not listening after {self._start_timeout} s"
        )
        raise PeerStartError(
            f"sipp UAS on {self.host}:{self.port}/{self.transport} {state}:\n"
            + "\n".join(errors[:5] or screen.splitlines()[-30:]),
            port_in_use="already in use" in screen.lower(),
        )

    def _stop(self) -> None:
        if self._proc is not None:
            _stop_group(self._proc, grace=3.0)
        if self._screen is not None:
            self._screen.close()
            self._screen = None
        if self._own_dir and self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop()

    def message_log(self) -> str:
        """The raw ``-trace_msg`` log (SIPp writes it as messages come and go)."""
        try:
            return (self.log_dir / "messages.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def messages(self) -> list[SippMessage]:
        return parse_sipp_messages(self.message_log())

    def received(self) -> list[str]:
        """Text of every message SIPp received so far, oldest first (retransmissions included)."""
        return [m.text for m in self.messages() if m.direction == "received"]

    def wait_received(self, count: int = 1, timeout: float = 5.0) -> list[str]:
        """Wait (bounded) until at least ``count`` messages were received; returns them all."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.received()
            if len(got) >= count or time.monotonic() >= deadline:
                return got
            time.sleep(0.02)

    def screen_text(self) -> str:
        return _tail(self.log_dir / "screen.log", lines=200)


# ---------------------------------------------------------------------------------------------
# SIPp UAC


@dataclass(frozen=True)
class SippUacResult:
    """Outcome of :func:`run_sipp_uac` (counters from SIPp's final ``-trace_stat`` row)."""

    successful: int
    failed: int
    retransmissions: int
    created: int
    returncode: int
    screen: str
    errors: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.failed == 0


def _parse_stat_csv(path: Path) -> dict[str, str]:
    try:
        with path.open(newline="", errors="replace") as f:
            rows = [row for row in csv.reader(f, delimiter=";") if row]
    except FileNotFoundError:
        return {}
    if len(rows) < 2:
        return {}
    return dict(zip(rows[0], rows[-1], strict=False))


def _screen_counter(screen: str, label: str) -> int:
    found = re.findall(rf"^\s*{label}\s*\|\s*\d+\s*\|\s*(\d+)", screen, re.MULTILINE)
    return int(found[-1]) if found else 0


def run_sipp_uac(
    target: str,
    rate: float,
    count: int,
    transport: SippTransport = "udp",
    *,
    limit: int = 100,
    recv_timeout_ms: int = 5000,
    timeout: float | None = None,
    host: str = "127.0.0.1",
    service: str = "ping",
    log_dir: Path | None = None,
) -> SippUacResult:
    """Send ``count`` OPTIONS to ``target`` (``host:port``) at ``rate``/s, ``limit`` in flight.

    Each OPTIONS must get a 200 within ``recv_timeout_ms``. ``timeout`` (default: the time the
    run should take + the receive timeout + 10 s) is SIPp's own ``-timeout``; the process is
    killed 10 s after that. Logs go to ``log_dir`` (kept) or a temporary directory (removed).
    """
    _check_loopback(host)
    if rate <= 0 or count <= 0 or limit <= 0:
        raise ValueError("rate, count and limit must be > 0")
    sipp = binary("sipp")
    if timeout is None:
        timeout = math.ceil(count / rate) + recv_timeout_ms / 1000 + 10
    with contextlib.ExitStack() as stack:
        if log_dir is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sipalive-uac-")))
        else:
            log_dir.mkdir(parents=True, exist_ok=True)
            work = log_dir
        result = _run_uac(
            work,
            sipp,
            target=target,
            rate=rate,
            count=count,
            transport=transport,
            limit=limit,
            recv_timeout_ms=recv_timeout_ms,
            timeout=timeout,
            host=host,
            service=service,
        )
    return result


def _run_uac(
    work: Path,
    sipp: str,
    *,
    target: str,
    rate: float,
    count: int,
    transport: SippTransport,
    limit: int,
    recv_timeout_ms: int,
    timeout: float,
    host: str,
    service: str,
) -> SippUacResult:
    cmd = [
        sipp, target,
        "-sf", str(SIPP_SCENARIOS / "uac-options.xml"),
        "-i", host,
        "-t", "u1" if transport == "udp" else "t1",
        "-s", service,
        "-r", f"{rate:g}",
        "-m", str(count),
        "-l", str(limit),
        "-recv_timeout", str(recv_timeout_ms),
        "-nostdin",
        "-timeout", f"{math.ceil(timeout)}s",
        "-buff_size", "1048576",
        "-trace_stat", "-stf", str(work / "stat.csv"), "-fd", "1",
        "-trace_err", "-error_file", str(work / "errors.log"),
    ]  # fmt: skip
    screen_path = work / "screen.log"
    with screen_path.open("wb") as screen_file:
        proc = subprocess.Popen(
            cmd,
            cwd=work,
            stdin=subprocess.DEVNULL,
            stdout=screen_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            returncode = proc.wait(timeout + 10)
        except subprocess.TimeoutExpired:
            raise RuntimeError(
                f"sipp UAC to {target} still running after {timeout + 10:.0f} s:\n"
                + _tail(screen_path)
            ) from None
        finally:
            _stop_group(proc, grace=3.0)
    screen = screen_path.read_text(errors="replace")
    stats = _parse_stat_csv(work / "stat.csv")
    errors = _tail(work / "errors.log", lines=20) if (work / "errors.log").exists() else ""

    def counter(column: str, label: str) -> int:
        value = stats.get(column, "")
        return int(value) if value.isdigit() else _screen_counter(screen, label)

    return SippUacResult(
        successful=counter("SuccessfulCall(C)", "Successful call"),
        failed=counter("FailedCall(C)", "Failed call"),
        retransmissions=counter("Retransmissions(C)", "Retransmissions"),
        created=counter("TotalCallCreated", "Total Calls created"),
        returncode=returncode,
        screen=screen,
        errors=errors,
    )


# ---------------------------------------------------------------------------------------------
# sipsak


def sipsak(*args: str, timeout: float = 15.0) -> subprocess.CompletedProcess[str]:
    """Run ``sipsak ARGS`` (bounded by ``timeout``, killed on expiry); never raises on exit code.

    sipsak exit codes: 0 = 200-class answer, 1 = other final answer (3xx-6xx),
    2 = local error, 3 = no answer / ICMP error.
    """
    return subprocess.run(
        [binary("sipsak"), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=timeout,
        check=False,
    )


# ---------------------------------------------------------------------------------------------
# Kamailio


class Kamailio:
    """Kamailio on ``host``: UDP+TCP on ``port``, TLS on ``port + 1`` (``tls=True``).

    Answers OPTIONS to itself with 200, is a registrar (usrloc in memory, optional digest auth
    with one fixed ``password``), and pings registered contacts every ``natping_interval`` s
    (``natping="udp"``: 4 zero bytes; ``"sip"``: OPTIONS; ``keepalive_timeout`` drops contacts
    that do not answer OPTIONS pings). The core answers RFC 5626 CRLFCRLF with CRLF on TCP/TLS.

    ``__enter__`` makes a run dir (throw-away self-signed certificate, pid file, binrpc ctl
    socket, log), checks the config with ``kamailio -c``, starts ``kamailio -DD -E`` under
    ``timeout DURATION`` (a hard stop if the test process dies) and waits for the ctl socket
    and the listeners. ``__exit__`` stops every process of the group and raises if any is left.
    ``workers`` sets ``-n N -N N``; ``tlsf`` selects the TLSF memory managers (``-x/-X tlsf``).
    """

    def __init__(
        self,
        port: int,
        *,
        tls: bool = True,
        auth: bool = False,
        password: str = "lab",
        natping_interval: int = 0,
        natping: Literal["udp", "sip"] = "udp",
        keepalive_timeout: int = 0,
        host: str = "127.0.0.1",
        workers: int | None = None,
        tlsf: bool = False,
        debug: int = 2,
        duration: int = 900,
        run_dir: Path | None = None,
        start_timeout: float = 10.0,
    ) -> None:
        _check_loopback(host)
        if not PORT_MIN <= port <= PORT_MAX - 1:
            raise ValueError(f"port must be {PORT_MIN}..{PORT_MAX - 1}, got {port}")
        if natping not in ("udp", "sip"):
            raise ValueError(f"natping must be udp or sip, got {natping!r}")
        if not re.fullmatch(r"[A-Za-z0-9._~!$&*+,;=:@-]{1,64}", password):
            raise ValueError("password: 1-64 characters, no quotes, spaces or backslashes")
        if min(natping_interval, keepalive_timeout) < 0 or (workers is not None and workers < 1):
            raise ValueError("natping_interval/keepalive_timeout >= 0, workers >= 1")
        self.port = port
        self.tls = tls
        self.auth = auth
        self.password = password
        self.natping_interval = natping_interval
        self.natping = natping
        self.keepalive_timeout = keepalive_timeout
        self.host = host
        self.workers = workers
        self.tlsf = tlsf
        self.debug = debug
        self.duration = duration
        self._run_dir_arg = run_dir
        self._start_timeout = start_timeout
        self._dir: Path | None = None
        self._own_dir = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    # -- addresses ------------------------------------------------------------------------

    @property
    def tls_port(self) -> int:
        if not self.tls:
            raise RuntimeError("Kamailio was started with tls=False")
        return self.port + 1

    @property
    def uri(self) -> str:
        return f"sip:ping@{self.host}:{self.port}"

    @property
    def run_dir(self) -> Path:
        if self._dir is None:
            raise RuntimeError("Kamailio was not started")
        return self._dir

    @property
    def cert_path(self) -> Path:
        """The server's self-signed certificate: use it as the CA file to verify the TLS port."""
        if not self.tls:
            raise RuntimeError("Kamailio was started with tls=False")
        return self.run_dir / "cert.pem"

    @property
    def ctl_socket(self) -> Path:
        return self.run_dir / "kamailio_ctl"

    @property
    def pgid(self) -> int:
        if self._proc is None:
            raise RuntimeError("Kamailio is not running")
        return self._proc.pid

    def processes(self) -> list[int]:
        """Pids of the Kamailio processes (and the ``timeout`` wrapper) still alive."""
        return _process_group(self._proc.pid) if self._proc is not None else []

    # -- lifecycle --------------------------------------------------------------------------

    def _args(self, modules: Path) -> list[str]:
        d = self.run_dir
        args = [
            "-f", str(KAMAILIO_CFG),
            "-L", str(modules),
            "-DD", "-E",
            "-Y", str(d),
            "-P", str(d / "kamailio.pid"),
            "-w", str(d),
            "-m", "32", "-M", "8",
            "-a", "no",
            f"--debug={self.debug}",
            "-l", f"udp:{self.host}:{self.port}",
            "-l", f"tcp:{self.host}:{self.port}",
            "-A", f'CTL_SOCK="unix:{self.ctl_socket}"',
            "-A", f"NATPING_INTERVAL={self.natping_interval}",
            "-A", f"KEEPALIVE_TIMEOUT={self.keepalive_timeout}",
        ]  # fmt: skip
        if self.natping == "sip":
            args += ["-A", "WITH_SIPPING"]
        if self.auth:
            args += ["-A", "WITH_AUTH", "-A", f'AUTH_PASSWORD="{self.password}"']
        if self.tls:
            args += [
                "-l", f"tls:{self.host}:{self.port + 1}",
                "-A", "WITH_TLS",
                "-A", f'TLS_CERT="{d / "cert.pem"}"',
                "-A", f'TLS_KEY="{d / "key.pem"}"',
            ]  # fmt: skip
        if self.workers is not None:
            args += ["-n", str(self.workers), "-N", str(self.workers)]
        if self.tlsf:
            args += ["-x", "tlsf", "-X", "tlsf"]
        return args

    def _make_cert(self) -> None:
        d = self.run_dir
        san = f"subjectAltName=IP:{self.host},DNS:localhost,DNS:kamailio.lab"
        cmd = [
            binary("openssl"), "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=kamailio.lab", "-addext", san,
            "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem"),
        ]  # fmt: skip
        done = subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if done.returncode != 0:
            raise PeerStartError(f"openssl req -x509 failed:\n{done.stderr}")

    def __enter__(self) -> Self:
        kamailio = binary("kamailio")
        binary("kamcmd")
        modules = KAMAILIO_MODULES
        if not (modules / "registrar.so").exists():
            unavailable(f"Kamailio modules not found in {modules}")
        if self.tls and not (modules / "tls.so").exists():
            unavailable("Kamailio tls.so missing (apt-get install kamailio-tls-modules)")
        if self._run_dir_arg is not None:
            self._run_dir_arg.mkdir(parents=True, exist_ok=True)
            self._dir = self._run_dir_arg
        else:
            self._dir = Path(tempfile.mkdtemp(prefix="sipalive-kamailio-"))
            self._own_dir = True
        if len(f"unix:{self.ctl_socket}") > 100:
            raise ValueError(f"run dir path too long for a unix socket: {self._dir}")
        try:
            self._start(kamailio, modules)
        except BaseException:
            self._stop()
            raise
        return self

    def _start(self, kamailio: str, modules: Path) -> None:
        if self.tls:
            self._make_cert()
        args = self._args(modules)
        check = subprocess.run(
            [kamailio, *args, "-c"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=30,
            check=False,
        )
        (self.run_dir / "check.log").write_text(check.stdout + check.stderr)
        if check.returncode != 0:
            raise PeerStartError(f"kamailio -c failed:\n{check.stdout}{check.stderr}")
        self._log = (self.run_dir / "kamailio.log").open("wb")
        # timeout(1): a hard stop after `duration` even if this test process is killed; it
        # forwards our SIGTERM to kamailio and to the whole process group.
        self._proc = subprocess.Popen(
            [binary("timeout"), "-k", "5", str(self.duration), kamailio, *args],
            cwd=self.run_dir,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + self._start_timeout
        while time.monotonic() < deadline and self._proc.poll() is None:
            if self._ready():
                return
            time.sleep(0.05)
        log = _tail(self.run_dir / "kamailio.log")
        state = (
            f"exited with {self._proc.returncode}"
            if self._proc.poll() is not None
            else f"not ready after {self._start_timeout} s"
        )
        raise PeerStartError(
            f"kamailio on {self.host}:{self.port} {state}:\n{log}",
            port_in_use="already in use" in log.lower(),
        )

    def _ready(self) -> bool:
        if not self.ctl_socket.is_socket():
            return False
        ours = set(self.processes())
        wanted: list[tuple[int, SippTransport]] = [(self.port, "udp"), (self.port, "tcp")]
        if self.tls:
            wanted.append((self.port + 1, "tcp"))
        if not all(_listening_pids(port, tr) & ours for port, tr in wanted):
            return False
        # The main process binds the listeners before it forks the workers: ready means every
        # process Kamailio reports (the ctl handler answering is one of them) is running.
        try:
            psx = self.kamcmd("core.psx", timeout=2.0)
        except (RuntimeError, subprocess.TimeoutExpired):
            return False
        listed = {int(pid) for pid in re.findall(r"PID:\s*(\d+)", psx)}
        return bool(listed) and listed <= set(self.processes())

    def _stop(self) -> list[int]:
        left: list[int] = []
        if self._proc is not None:
            left = _stop_group(self._proc, grace=5.0)
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._own_dir and self._dir is not None and not left:
            shutil.rmtree(self._dir, ignore_errors=True)
        return left

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        left = self._stop()
        if left:
            raise RuntimeError(f"kamailio processes left after stop: {left}")

    # -- inspection -------------------------------------------------------------------------

    def log_text(self) -> str:
        try:
            return (self.run_dir / "kamailio.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def kamcmd(self, *args: str, timeout: float = 5.0) -> str:
        """Run ``kamcmd -s unix:CTL ARGS`` (e.g. ``ul.dump``) and return its output."""
        done = subprocess.run(
            [binary("kamcmd"), "-s", f"unix:{self.ctl_socket}", *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"kamcmd {' '.join(args)} failed ({done.returncode}): {done.stderr}")
        return done.stdout


# ---------------------------------------------------------------------------------------------
# start on a free port, retrying when another process took the port first

_Peer = TypeVar("_Peer")


@contextlib.contextmanager
def _on_free_port(
    make: Callable[[int], AbstractContextManager[_Peer]],
    pick: Callable[[], int],
    attempts: int,
) -> Iterator[_Peer]:
    for attempt in range(1, attempts + 1):
        with contextlib.ExitStack() as stack:
            try:
                peer = stack.enter_context(make(pick()))
            except PeerStartError as exc:
                if exc.port_in_use and attempt < attempts:
                    continue
                raise
            yield peer
            return


def sipp_uas_on_free_port(
    transport: SippTransport = "udp", *, attempts: int = 3, **kwargs: Any
) -> AbstractContextManager[SippUas]:
    """``with sipp_uas_on_free_port("tcp", code=503, reason="Busy") as uas:``."""
    host = str(kwargs.get("host", "127.0.0.1"))
    return _on_free_port(
        lambda port: SippUas(port, transport, **kwargs),
        lambda: free_port(transport, host),
        attempts,
    )


def kamailio_on_free_port(*, attempts: int = 3, **kwargs: Any) -> AbstractContextManager[Kamailio]:
    """``with kamailio_on_free_port(tls=True) as kam:`` (ports P and P+1 checked free)."""
    host = str(kwargs.get("host", "127.0.0.1"))
    return _on_free_port(
        lambda port: Kamailio(port, **kwargs),
        lambda: free_port_pair(host),
        attempts,
    )


# ---------------------------------------------------------------------------------------------
# loopback UDP capture

_ETH_P_IP = 0x0800
_SO_ATTACH_FILTER = 26
_SO_RCVBUFFORCE = 33
# Not exported by Python's socket module. SO_TIMESTAMPNS (== SCM_TIMESTAMPNS) on x86-64 and
# the other asm-generic Linux ABIs; the control message carries a struct timespec (2 x int64).
_SO_TIMESTAMPNS = 35
_TIMESPEC = struct.Struct("@qq")


class CapturedDatagram(NamedTuple):
    timestamp: float  # kernel receive time on lo, CLOCK_REALTIME seconds (time.time() scale)
    src_port: int
    payload: bytes


def _bpf_udp_to(host: str, port: int) -> bytes:
    """Classic BPF for 'ip and udp and dst host HOST and dst port PORT, first fragments'."""
    ldh, ldb, ld, ldxb_msh, ldh_ind = 0x28, 0x30, 0x20, 0xB1, 0x48
    jeq, jset, ret = 0x15, 0x45, 0x06
    dst = int(ipaddress.IPv4Address(host))
    prog = [
        (ldh, 0, 0, 12),  # ethertype (lo has a zeroed 14-byte Ethernet header)
        (jeq, 0, 10, _ETH_P_IP),
        (ldb, 0, 0, 23),  # IP protocol
        (jeq, 0, 8, socket.IPPROTO_UDP),
        (ldh, 0, 0, 20),  # flags + fragment offset
        (jset, 6, 0, 0x1FFF),
        (ldxb_msh, 0, 0, 14),  # X = IP header length
        (ldh_ind, 0, 0, 16),  # UDP destination port
        (jeq, 0, 3, port),
        (ld, 0, 0, 30),  # IP destination address
        (jeq, 0, 1, dst),
        (ret, 0, 0, 0x40000),
        (ret, 0, 0, 0),
    ]
    return b"".join(struct.pack("HBBI", *insn) for insn in prog)


class UdpCapture:
    """Records every UDP datagram sent to ``host:port`` over ``lo``, with kernel timestamps.

    Root only (AF_PACKET). The socket, its BPF filter and SO_TIMESTAMPNS are set up in
    ``__enter__``, so nothing sent after it returns is missed; a background thread reads until
    ``__exit__``, which drains what the kernel already queued and joins the thread (bounded).
    On ``lo`` every frame is seen twice by a packet socket (PACKET_OUTGOING when sent,
    PACKET_HOST when received): only the PACKET_HOST copy is kept, so each datagram appears
    once and its timestamp is when the kernel took it in on ``lo`` (CLOCK_REALTIME, taken in
    the kernel, so it does not depend on when this thread gets to run).
    """

    def __init__(self, port: int, host: str = "127.0.0.1", *, max_packets: int = 100_000) -> None:
        _check_loopback(host)
        self.port = port
        self.host = host
        self.max_packets = max_packets
        self.dropped = 0  # datagrams not kept because max_packets was reached
        self._packets: list[CapturedDatagram] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def __enter__(self) -> Self:
        require_root()
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # protocol 0: nothing yet
        try:
            sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, 4 << 20)
            sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
            code = _bpf_udp_to(self.host, self.port)
            buf = ctypes.create_string_buffer(code, len(code))
            fprog = struct.pack("HL", len(code) // 8, ctypes.addressof(buf))
            sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, fprog)
            sock.bind(("lo", _ETH_P_IP))  # capture starts here, already filtered
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._thread = threading.Thread(
            target=self._run, name=f"UdpCapture:{self.port}", daemon=True
        )
        self._thread.start()
        return self

    def _drain(self, sock: socket.socket) -> None:
        cmsg_space = socket.CMSG_SPACE(_TIMESPEC.size)
        while True:
            try:
                frame, ancdata, _flags, addr = sock.recvmsg(70_000, cmsg_space)
            except BlockingIOError:
                return
            if addr[2] != socket.PACKET_HOST:
                continue  # the PACKET_OUTGOING copy of the same datagram
            stamp = None
            for level, kind, data in ancdata:
                if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS:
                    sec, nsec = _TIMESPEC.unpack_from(data)
                    stamp = sec + nsec / 1e9
            if stamp is None:
                stamp = time.time()
            ip = frame[14:]
            ihl = (ip[0] & 0x0F) * 4
            src_port, _dst_port, length = struct.unpack_from("!HHH", ip, ihl)
            payload = ip[ihl + 8 : ihl + length]
            with self._lock:
                if len(self._packets) < self.max_packets:
                    self._packets.append(CapturedDatagram(stamp, src_port, payload))
                else:
                    self.dropped += 1

    def _run(self) -> None:
        sock = self._sock
        assert sock is not None
        try:
            while not self._stop.is_set():
                readable, _, _ = select.select([sock], [], [], 0.05)
                if readable:
                    self._drain(sock)
            self._drain(sock)
        except BaseException as exc:  # reported by __exit__, never lost in the thread
            self._error = exc

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._sock is not None:
            self._sock.close()
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("UdpCapture thread did not stop")
        if self._error is not None and exc_type is None:
            raise RuntimeError("UdpCapture failed") from self._error

    @property
    def packets(self) -> list[CapturedDatagram]:
        """A snapshot of the datagrams captured so far, in arrival order."""
        with self._lock:
            return list(self._packets)

    def wait_for(self, count: int, timeout: float = 5.0) -> list[CapturedDatagram]:
        """Wait (bounded) until ``count`` datagrams were captured; returns the snapshot."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.packets
            if len(got) >= count or time.monotonic() >= deadline:
                return got
            time.sleep(0.01)
