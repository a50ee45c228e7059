"""The NAT lab itself (tests/netlab.py): real MASQUERADE, conntrack timeouts, black-holes,
and a clean-up that leaves nothing behind, not even after a SIGKILL of its owner."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from netlab import LAN_IP, NETNS_DIR, ROUTER_WAN_IP, WAN_IP, NetLab, mirror, unique_prefix

pytestmark = pytest.mark.netns

# A UDP server for wan: prints READY once bound, then answers each datagram with the
# address:port it came from ("echo"), or never answers ("silent"). Bounded by its last arg.
UDP_SERVER = """
import socket, sys, time
host, port, mode, limit = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((host, port))
s.settimeout(0.2)
print("READY", flush=True)
end = time.monotonic() + limit
while time.monotonic() < end:
    try:
        data, addr = s.recvfrom(2048)
    except TimeoutError:
        continue
    print(f"GOT {addr[0]}:{addr[1]} {data!r}", flush=True)
    if mode == "echo":
        s.sendto(f"{addr[0]}:{addr[1]}".encode(), addr)
"""

# A UDP client for lan: one datagram, waits for one answer. Prints the send time (wall
# clock), its own address and the answer, or NOANSWER.
UDP_CLIENT = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(float(sys.argv[3]))
s.connect((sys.argv[1], int(sys.argv[2])))
print("SENT", time.time(), "%s:%d" % s.getsockname(), flush=True)
s.send(b"hello")
try:
    print("ANSWER", s.recv(2048).decode(), flush=True)
except TimeoutError:
    print("NOANSWER", flush=True)
"""


def wait_line(proc: subprocess.Popen[str], prefix: str, timeout: float = 5.0) -> str:
    """The first line of ``proc``'s stdout that starts with ``prefix``; bounded."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        if select.select([proc.stdout], [], [], left)[0]:
            line = proc.stdout.readline()
            if not line:
                break
            if line.startswith(prefix):
                return line.strip()
    raise AssertionError(f"no {prefix!r} line from {proc.args!r} within {timeout} s")


def udp_server(lab: NetLab, port: int, mode: str = "echo") -> subprocess.Popen[str]:
    proc = lab.exec(
        "wan", sys.executable, "-c", UDP_SERVER, WAN_IP, str(port), mode, "30",
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    wait_line(proc, "READY")
    return proc


def udp_client(lab: NetLab, port: int, wait: float = 1.0) -> dict[str, list[str]]:
    out = lab.run("lan", sys.executable, "-c", UDP_CLIENT, WAN_IP, str(port), str(wait)).stdout
    return {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.strip()}


def conntrack_udp(lab: NetLab, dport: int) -> list[str]:
    out = lab.conntrack("-L", "-p", "udp", "--dport", str(dport)).stdout
    return [line for line in out.splitlines() if f"dport={dport}" in line]


def host_links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True,
                         timeout=10, check=True).stdout  # fmt: skip
    return {line.split(":")[1].strip() for line in out.splitlines()}


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def test_lan_reaches_wan_through_the_nat() -> None:
    with NetLab() as lab:
        server = udp_server(lab, 7000)
        got = udp_client(lab, 7000)
        local_ip, local_port = got["SENT"][1].split(":")
        assert local_ip == LAN_IP
        # The server saw the MASQUERADE address; Linux kept the client's port.
        assert got["ANSWER"] == [f"{ROUTER_WAN_IP}:{local_port}"]
        entries = conntrack_udp(lab, 7000)
        assert len(entries) == 1, entries
        entry = entries[0]
        assert f"src={LAN_IP} dst={WAN_IP} sport={local_port} dport=7000" in entry
        assert f"src={WAN_IP} dst={ROUTER_WAN_IP} sport=7000" in entry  # the reply tuple
        assert "UNREPLIED" not in entry
        lab.stop(server)


def test_conntrack_timeouts_are_set_in_nat_only_and_a_binding_expires() -> None:
    host_udp = Path("/proc/sys/net/netfilter/nf_conntrack_udp_timeout").read_text().strip()
    with NetLab(udp_timeout=3, udp_timeout_stream=3, tcp_timeout_established=77) as lab:
        nat = "net.netfilter.nf_conntrack_"
        assert lab.sysctl("nat", nat + "udp_timeout") == "3"
        assert lab.sysctl("nat", nat + "udp_timeout_stream") == "3"
        assert lab.sysctl("nat", nat + "tcp_timeout_established") == "77"
        assert lab.sysctl("nat", "net.ipv4.ip_forward") == "1"
        assert Path("/proc/sys/net/netfilter/nf_conntrack_udp_timeout").read_text().strip() == (
            host_udp
        )
        udp_server(lab, 7001, mode="silent")
        got = udp_client(lab, 7001, wait=0.2)
        sent = float(got["SENT"][0])
        assert "NOANSWER" in got
        entries = conntrack_udp(lab, 7001)
        assert len(entries) == 1, entries
        assert "[UNREPLIED]" in entries[0]
        assert int(entries[0].split()[2]) <= 3  # seconds left
        while conntrack_udp(lab, 7001):
            assert time.time() - sent < 6.0, "binding still there 6 s after its only packet"
            time.sleep(0.05)
        gone = time.time() - sent
        print(f"udp_timeout=3: conntrack entry gone {gone:.2f} s after its only packet")
        assert 3.0 <= gone <= 5.0


def test_blackhole_drops_both_directions_until_lifted() -> None:
    assert mirror(["-p", "tcp", "-s", LAN_IP, "--dport", "5060", "-o", "nat-wan"]) == [
        "-p", "tcp", "-d", LAN_IP, "--sport", "5060", "-i", "nat-wan",
    ]  # fmt: skip
    with NetLab() as lab:
        server = udp_server(lab, 7002)
        assert "ANSWER" in udp_client(lab, 7002)
        lab.blackhole(True, ["-p", "udp", "--dport", "7002"])
        rules = lab.run("nat", "iptables", "-S", "FORWARD").stdout
        assert "--dport 7002" in rules
        assert "--sport 7002" in rules
        assert "NOANSWER" in udp_client(lab, 7002, wait=0.5)
        lab.blackhole(False, ["-p", "udp", "--dport", "7002"])
        assert "ANSWER" in udp_client(lab, 7002)
        # One direction only: the request gets through, the answer does not.
        lab.blackhole(True, ["-p", "udp", "--sport", "7002"], both=False)
        assert "NOANSWER" in udp_client(lab, 7002, wait=0.5)
        lab.stop(server)
        received = [line for line in server.stdout or () if line.startswith("GOT")]
        assert len(received) == 3  # the black-holed request never arrived
        counters = lab.run("nat", "iptables", "-L", "FORWARD", "-v", "-n", "-x").stdout
        assert "netlab-blackhole" in counters
        lab.clear()
        assert "netlab-blackhole" not in lab.run("nat", "iptables", "-S", "FORWARD").stdout
        assert "MASQUERADE" in lab.run("nat", "iptables", "-t", "nat", "-S").stdout


def test_cleanup_after_a_failure_leaves_no_namespace_and_no_process() -> None:
    links = host_links()
    seen: dict[str, Any] = {}

    def failing_test() -> None:
        with NetLab() as lab, NetLab() as other:
            seen["names"] = names = lab.namespaces + other.namespaces
            assert len(set(names)) == 6
            assert all((NETNS_DIR / n).exists() for n in names)
            assert host_links() == links  # no veth ever appears on the host
            seen["tracked"] = lab.exec("wan", "sleep", "300")
            # Not started through the lab: found by `ip netns pids` all the same.
            seen["stray"] = stray = subprocess.Popen(
                ["ip", "netns", "exec", lab.ns("lan"), "sleep", "300"]
            )
            deadline = time.monotonic() + 20  # generous: a busy box is slow
            while stray.pid not in lab.pids("lan"):
                assert time.monotonic() < deadline
                time.sleep(0.02)
            seen["watchdogs"] = [lab.watchdog_pid, other.watchdog_pid]
            raise RuntimeError("the test failed")

    with pytest.raises(RuntimeError, match="the test failed"):
        failing_test()
    assert seen["stray"].wait(5) in (-signal.SIGTERM, -signal.SIGKILL)
    assert seen["tracked"].returncode is not None
    assert not alive(seen["tracked"].pid)
    for name in seen["names"]:
        assert not (NETNS_DIR / name).exists()
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                            timeout=10, check=True).stdout  # fmt: skip
    assert not any(name in listed for name in seen["names"])
    assert not any(pid is not None and alive(pid) for pid in seen["watchdogs"])
    assert host_links() == links


def test_watchdog_removes_the_lab_when_its_owner_is_killed() -> None:
    prefix = unique_prefix()
    owner_script = (
        "import sys, time\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "from netlab import NetLab\n"
        "lab = NetLab(prefix=sys.argv[2]).__enter__()\n"
        "lab.exec('wan', 'sleep', '300')\n"
        "print('UP', flush=True)\n"
        "time.sleep(60)\n"
    )
    owner = subprocess.Popen(
        [sys.executable, "-c", owner_script, str(Path(__file__).parent), prefix],
        stdout=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    names = [f"{prefix}{role}" for role in ("lan", "nat", "wan")]
    try:
        wait_line(owner, "UP", timeout=60)  # set-up is slow on a busy box
        assert all((NETNS_DIR / n).exists() for n in names)
        orphan = int(
            subprocess.run(["ip", "netns", "pids", names[2]], capture_output=True, text=True,
                           timeout=10, check=True).stdout.split()[0]
        )  # fmt: skip
        os.killpg(owner.pid, signal.SIGKILL)  # no __exit__, no finally: only the watchdog
        owner.wait(5)
        deadline = time.monotonic() + 20  # generous: a busy box is slow
        while any((NETNS_DIR / n).exists() for n in names) or alive(orphan):
            assert time.monotonic() < deadline, "watchdog did not clean up within 20 s"
            time.sleep(0.05)
    finally:
        if owner.poll() is None:
            os.killpg(owner.pid, signal.SIGKILL)
            owner.wait(5)
        assert owner.stdout is not None
        owner.stdout.close()
        for name in names:  # only if the watchdog failed: never leave them behind
            if (NETNS_DIR / name).exists():
                for pid in subprocess.run(["ip", "netns", "pids", name], capture_output=True,
                                          text=True, check=False).stdout.split():  # fmt: skip
                    os.kill(int(pid), signal.SIGKILL)
                subprocess.run(["ip", "netns", "del", name], check=False)
