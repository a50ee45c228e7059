"""A TCP peer black-holed behind a real NAT (issue 3): the monitor must notice a dead kept
connection by itself, by RFC 5626 CRLF pong timeout or by kernel TCP keep-alive, within
their bounds, long before its next OPTIONS probe would.

``sipalive monitor`` runs in the lab's ``lan`` namespace (its HTTP API on 127.0.0.1 there),
``sipalive respond --listen tcp:198.51.100.2:5060`` in ``wan``; the router in between drops
every packet of the flow (both directions) once the target is Reachable. qualify_frequency
is 30 s, so within the test only the keep-alive under test can detect anything. Detection
time = the transition's ``at`` (from /api/targets/NAME/history) minus the moment the
black-hole went in. Then the black-hole is lifted and the target must recover (a new
connection; ``unreachable_frequency`` = 1 s).
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from netlab import WAN_IP, NetLab
from realpeers import require
from sipalive.keepalive.tcp import TcpKeepaliveOptions
from sipalive.qualify.schedule import spread_fraction

pytestmark = [pytest.mark.netns, pytest.mark.slow]

SIPALIVE = Path(sys.executable).parent / "sipalive"
API = "http://127.0.0.1:8060"
SLACK = 1.0  # seconds on top of each configured bound
FLOW = ["-p", "tcp", "--dport", "5060"]  # and its mirror: the whole connection


def early_name(base: str) -> str:
    """A target name whose first probe comes in the first 1% of qualify_frequency (the
    scheduler spreads first probes by a hash of the name)."""
    return next(n for i in itertools.count() if spread_fraction(n := f"{base}-{i}") < 0.01)


def at_seconds(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


@dataclass
class Monitored:
    lab: NetLab
    name: str
    monitor: subprocess.Popen[bytes]
    logs: dict[str, Path]

    def api(self, path: str) -> Any:
        done = self.lab.run("lan", "curl", "-fsS", "--max-time", "2", API + path, check=False)
        if done.returncode != 0:
            return None
        return json.loads(done.stdout)

    def history(self) -> list[dict[str, Any]]:
        return self.api(f"/api/targets/{self.name}/history") or []

    def wait_for(self, to: str, timeout: float, after: int = 0) -> dict[str, Any]:
        """The first transition to ``to`` past the first ``after`` ones; bounded."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.monitor.poll() is None, f"monitor exited:\n{self.tail()}"
            found = [h for h in self.history()[after:] if h["to"] == to]
            if found:
                return found[0]
            time.sleep(0.05)
        raise AssertionError(
            f"{self.name}: no transition to {to} within {timeout:.1f} s; history "
            f"{self.history()}\n{self.tail()}"
        )

    def connections(self) -> str:
        return self.lab.run("lan", "ss", "-tnoH", "state", "established",
                            "( dport = :5060 )").stdout  # fmt: skip

    def tail(self) -> str:
        parts = []
        for what, path in self.logs.items():
            lines = path.read_text(errors="replace").splitlines()[-25:]
            parts.append(f"--- {what} ({path})\n" + "\n".join(lines))
        return "\n".join(parts)


def wait_until(what: str, predicate: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} not within {timeout} s"
        time.sleep(0.05)


@contextmanager
def monitored(tmp_path: Path, base: str, settings: str) -> Iterator[Monitored]:
    """respond in wan, the monitor in lan watching it over TCP, the target Reachable."""
    require("curl", "ss")
    name = early_name(base)
    logs = {"respond": tmp_path / "respond.log", "monitor": tmp_path / "monitor.log"}
    config = tmp_path / "monitor.toml"
    config.write_text(
        f'[http]\nlisten = "127.0.0.1:8060"\n'
        f'[storage]\npath = "{tmp_path / "sipalive.db"}"\n'
        f"[[targets]]\n"
        f'name = "{name}"\n'
        f'uri = "sip:ping@{WAN_IP}:5060;transport=tcp"\n'
        f"qualify_frequency = 30\nqualify_timeout = 2\nunreachable_frequency = 1\n"
        f"{settings}\n"
    )
    with NetLab() as lab, logs["respond"].open("wb") as rlog, logs["monitor"].open("wb") as mlog:
        lab.exec("wan", SIPALIVE, "respond", "--listen", f"tcp:{WAN_IP}:5060",
                 "--duration", "120", stdout=rlog, stderr=subprocess.STDOUT)  # fmt: skip
        wait_until("respond listening", lambda: "listening" in logs["respond"].read_text(), 10)
        monitor = lab.exec("lan", SIPALIVE, "monitor", "-c", config, cwd=tmp_path,
                           stdout=mlog, stderr=subprocess.STDOUT)  # fmt: skip
        m = Monitored(lab, name, monitor, logs)
        try:
            wait_until("monitor API", lambda: m.api("/api/targets") is not None, 15)
            first = m.wait_for("reachable", 10)
            assert first["from"] == "unknown"
            yield m
        finally:
            print(m.tail())
            lab.stop(monitor, grace=5)


def black_hole_until_detected(m: Monitored, bound: float, cause: str) -> float:
    """Black-hole the flow; the detection time (s) of the transition to Unreachable."""
    assert [h["to"] for h in m.history()] == ["reachable"], m.history()
    assert m.connections().count(f"{WAN_IP}:5060") == 1, m.connections()
    m.lab.blackhole(True, FLOW)
    cut = time.time()
    down = m.wait_for("unreachable", bound + SLACK + 5, after=1)
    detected = at_seconds(down["at"]) - cut
    print(f"{m.name}: {cause} detected {detected:.2f} s after the black-hole (bound {bound:g} s)")
    assert down["from"] == "reachable"
    assert down["cause"] == cause
    assert 0 < detected <= bound + SLACK
    return detected


CRLF = "crlf_ping_interval = 1\ncrlf_pong_timeout = 0.5\n"
"""crlf_pong_timeout must be less than crlf_ping_interval (config.py): 1 s and 0.5 s."""


def keepalive_settings(options: TcpKeepaliveOptions) -> str:
    settings = (
        "tcp_keepalive_enable = true\n"
        f"tcp_keepalive_idle_time = {options.idle_time}\n"
        f"tcp_keepalive_interval_time = {options.interval_time}\n"
        f"tcp_keepalive_probe_count = {options.probe_count}\n"
    )
    if options.user_timeout_ms is not None:
        settings += f"tcp_user_timeout = {options.user_timeout_ms}\n"
    return settings


KEEPALIVE = TcpKeepaliveOptions(True, 1, 1, 2)
# The user timeout cuts the probe count short (Linux): 5 unanswered probes would take 6 s.
USER_TIMEOUT = TcpKeepaliveOptions(True, 1, 1, 5, user_timeout_ms=2000)


def test_crlf_pong_timeout_detects_a_black_holed_tcp_peer(tmp_path: Path) -> None:
    with monitored(tmp_path, "crlf", CRLF) as m:
        time.sleep(2.5)  # two ping/pong rounds through the NAT, with no transition
        black_hole_until_detected(m, 1 + 0.5, "no-pong")


@pytest.mark.parametrize(("case", "options"), [("keepalive", KEEPALIVE), ("uto", USER_TIMEOUT)])
def test_tcp_keepalive_detects_a_black_holed_tcp_peer(
    tmp_path: Path, case: str, options: TcpKeepaliveOptions
) -> None:
    with monitored(tmp_path, case, keepalive_settings(options)) as m:
        time.sleep(1.5)  # a keep-alive probe answered: the idle connection stays up
        assert "timer:(keepalive" in m.connections(), m.connections()
        black_hole_until_detected(m, options.detection_bound(), "connection-failed")


@pytest.mark.parametrize(("case", "settings", "cause"), [
    pytest.param("crlf-recovery", CRLF, "no-pong", id="no-pong"),
    pytest.param("ka-recovery", keepalive_settings(KEEPALIVE), "connection-failed",
                 id="connection-failed"),
])  # fmt: skip
def test_target_recovers_at_unreachable_frequency_after_a_failed_flow(
    tmp_path: Path, case: str, settings: str, cause: str
) -> None:
    with monitored(tmp_path, case, settings) as m:
        time.sleep(1.5)
        black_hole_until_detected(m, 3, cause)
        m.lab.blackhole(False, FLOW)
        lifted = time.time()
        # unreachable_frequency (1 s) + connect and answer; qualify_frequency is 30 s.
        up = m.wait_for("reachable", 1 + 2 + SLACK, after=2)
        print(f"{m.name}: recovered {at_seconds(up['at']) - lifted:.2f} s after the lift")
        assert up["cause"] == "recovered"
        assert m.connections().count(f"{WAN_IP}:5060") == 1, m.connections()
