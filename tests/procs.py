"""Run sipalive commands as processes (the installed console script)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from realpeers import free_port

BIN = Path(sys.executable).parent / "sipalive"


def sipalive(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN), *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def make_cert(directory: Path, ip: str = "127.0.0.1") -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=sipalive.test", "-addext", f"subjectAltName=IP:{ip},DNS:localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


def _wait_listening(
    port: int, transports: set[str], proc: subprocess.Popen[str], log: Path
) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"respond exited: {log.read_text()}")
        ok = True
        for t in transports:
            if t == "udp":
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                try:
                    s.bind(("127.0.0.1", port))
                    ok = False
                except OSError:
                    pass
                finally:
                    s.close()
            else:
                try:
                    socket.create_connection(
                        ("127.0.0.1", port if t == "tcp" else port + 1), 1
                    ).close()
                except OSError:
                    ok = False
        if ok:
            return
        time.sleep(0.05)
    raise RuntimeError("respond did not start listening within 10 s")


class Responder:
    def __init__(self, port: int, proc: subprocess.Popen[str], log_path: Path) -> None:
        self.port = port
        self.proc = proc
        self.log_path = log_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextmanager
def respond(
    *extra: str, tls: tuple[Path, Path] | None = None, tcp: bool = True
) -> Iterator[Responder]:
    """``sipalive respond`` on udp+tcp PORT (and tls PORT+1); its log goes to a file."""
    port = free_port("both", span=2)
    args = ["respond", "--listen", f"udp:127.0.0.1:{port}"]
    transports = {"udp"}
    if tcp:
        args += ["--listen", f"tcp:127.0.0.1:{port}"]
        transports.add("tcp")
    if tls:
        args += [
            "--listen",
            f"tls:127.0.0.1:{port + 1}",
            "--cert",
            str(tls[0]),
            "--key",
            str(tls[1]),
        ]
        transports.add("tls")
    log_dir = Path(tempfile.mkdtemp(prefix="sipalive-respond-"))
    log_path = log_dir / "respond.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [str(BIN), *args, "--duration", "120", *extra],
            stdout=log, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
    try:
        _wait_listening(port, transports, proc, log_path)
        yield Responder(port, proc, log_path)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)
