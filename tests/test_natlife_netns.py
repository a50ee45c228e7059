"""``sipalive nat-lifetime`` through a real NAT (issue 4): Linux conntrack + MASQUERADE in
network namespaces (tests/netlab.py), an ordinary ``sipalive respond`` in ``wan``.

* The conntrack UDP timeout is found within +-1 s, in under 60 s, for 5 s and 12 s. The
  stream timeout is set far off (60 s) on purpose: a trial sends one datagram and hears
  nothing until its late answer, so its entry is [UNREPLIED] and only
  ``nf_conntrack_udp_timeout`` may show in the result.
* Linux keeps a socket's public port when its binding is re-created (MASQUERADE without
  ``--random``), and conntrack refreshes an entry on inbound packets too: both reports say
  yes. With ``--random-fully`` and the server's keep-alives dropped before conntrack sees
  them (raw PREROUTING), both say no.
* ``--local`` run inside the NAT namespace reads that namespace's timeouts.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from netlab import WAN_IP, NetLab
from sipalive.keepalive.natlife import recommended_keepalive

pytestmark = [pytest.mark.netns, pytest.mark.slow]

SIPALIVE = Path(sys.executable).parent / "sipalive"
PORT = 3478
STREAM = 60  # the other conntrack UDP timeout, which a one-packet trial must not see
KEEPALIVE_PACKET = 20 + 8 + 28  # IPv4 + UDP + the server's Binding Indication


def start_responder(lab: NetLab, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        proc = lab.exec("wan", SIPALIVE, "respond", "--listen", f"udp:{WAN_IP}:{PORT}",
                        stderr=out, stdout=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 10
    while "listening on" not in log.read_text():
        assert proc.poll() is None, f"respond exited: {log.read_text()}"
        assert time.monotonic() < deadline, "respond did not start within 10 s"
        time.sleep(0.05)
    return proc


def nat_lifetime(lab: NetLab, *args: str) -> tuple[dict[str, Any], float]:
    """Run the command in lan; its JSON result and the wall-clock time it took."""
    started = time.monotonic()
    done = lab.run("lan", SIPALIVE, "nat-lifetime", "--server", f"{WAN_IP}:{PORT}", "--json",
                   "-v", *args, check=False, timeout=120)  # fmt: skip
    took = time.monotonic() - started
    print(done.stderr)  # the probes as they resolved, shown when the test fails
    assert done.stdout, f"no output (exit {done.returncode}): {done.stderr}"
    result: dict[str, Any] = json.loads(done.stdout)
    result["exit"] = done.returncode
    return result, took


@pytest.mark.parametrize("timeout", [5, 12])
def test_finds_the_conntrack_udp_timeout(timeout: int, tmp_path: Path) -> None:
    with NetLab(udp_timeout=timeout, udp_timeout_stream=STREAM) as lab:
        server = start_responder(lab, tmp_path / "respond.log")
        result, took = nat_lifetime(lab)
        print(
            f"udp_timeout={timeout}: lifetime {result['lifetime_s']} s "
            f"[{result['low_s']}, {result['high_s']}], keep-alive "
            f"{result['recommended_keepalive_s']} s; found in {result['search_s']} s, "
            f"{took:.1f} s in all, {result['trials']} trials"
        )
        assert result["exit"] == 0
        assert result["complete"]
        assert result["error"] is None
        assert abs(result["lifetime_s"] - timeout) <= 1.0
        assert result["low_s"] <= timeout <= result["high_s"] + 0.1
        assert result["search_s"] < 60
        assert took < 60
        assert result["recommended_keepalive_s"] == recommended_keepalive(result["low_s"])
        assert result["public_address"].startswith("198.51.100.1:")  # the MASQUERADE address
        assert result["mapped_port_kept"] is True
        assert result["mapping_idle_s"] > result["high_s"]
        assert result["inbound_refresh"] is True
        assert result["refresh_delay_s"] > result["high_s"]
        assert result["server_keepalives"] >= 1
        lab.stop(server)  # and it still shuts down cleanly, answers pending or not
        assert "stopped:" in (tmp_path / "respond.log").read_text()

        local = json.loads(lab.run("nat", SIPALIVE, "nat-lifetime", "--local", "--json").stdout)
        assert local["conntrack"] is True
        assert (local["udp_timeout_s"], local["udp_timeout_stream_s"]) == (timeout, STREAM)
        assert local["recommended_keepalive_s"] == recommended_keepalive(timeout)


def test_no_inbound_refresh_and_a_new_port_are_reported(tmp_path: Path) -> None:
    with NetLab(udp_timeout=5, udp_timeout_stream=STREAM) as lab:
        # A NAT that picks a random port for every new binding...
        lab.run("nat", "iptables", "-t", "nat", "-R", "POSTROUTING", "1", "-o", "nat-wan",
                "-j", "MASQUERADE", "--random-fully")  # fmt: skip
        # ...and whose bindings packets from outside do not refresh: the server's keep-alives
        # are dropped before conntrack sees them.
        lab.run("nat", "iptables", "-t", "raw", "-I", "PREROUTING", "-i", "nat-wan", "-p", "udp",
                "--sport", str(PORT), "-m", "length", "--length", str(KEEPALIVE_PACKET),
                "-j", "DROP")  # fmt: skip
        start_responder(lab, tmp_path / "respond.log")
        result, took = nat_lifetime(lab)
        print(f"random ports, no inbound refresh: {result}, {took:.1f} s")
        assert result["exit"] == 0
        assert abs(result["lifetime_s"] - 5) <= 1.0
        assert result["mapped_port_kept"] is False
        assert result["inbound_refresh"] is False
        assert result["server_keepalives"] == 0
        dropped = lab.run("nat", "iptables", "-t", "raw", "-L", "PREROUTING", "-v", "-n", "-x")
        assert int(dropped.stdout.splitlines()[2].split()[0]) >= 1  # the rule did drop some
