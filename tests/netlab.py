"""A real NAT in network namespaces, for tests: Linux conntrack, MASQUERADE, black-holes.

::

    [lan] lan0 10.0.0.2/24 --- nat-lan 10.0.0.1 [nat] nat-wan 198.51.100.1 --- wan0 198.51.100.2/24 [wan]
                                      ip_forward=1, MASQUERADE out of nat-wan

The client lives in ``lan``, the server in ``wan``; the server sees the client as
198.51.100.1:PORT, a real NAT binding (a conntrack entry in ``nat``). The addresses exist only
inside the namespaces: nothing here touches the host's interfaces, routes, sysctls or
firewall. Even the veth pairs are created from inside ``lan`` and ``wan``, so no interface
ever appears in the host namespace, not even for an instant.

Shape::

    with NetLab(udp_timeout=3) as lab:          # namespaces <prefix>lan, <prefix>nat, <prefix>wan
        server = lab.exec("wan", "sipalive", "respond", ..., stdout=log)   -> Popen (tracked)
        lab.run("lan", "curl", "-s", url)                                   -> CompletedProcess
        lab.blackhole(True, ["-p", "tcp", "--dport", "5060"])   # DROP in nat, both directions
        lab.conntrack("-L", "-p", "udp")                        # conntrack run inside nat
        lab.clear()                                             # every impairment removed

``prefix`` defaults to a fresh one per lab (the pid and a counter), so labs never collide,
neither in one process nor across parallel runs. Conntrack timeouts are per-netns sysctls set
in ``nat`` only (a new namespace starts from the kernel defaults, udp 30 s / stream 120 s).

Clean-up (``__exit__``, also after a failed test or a failed set-up): every process started
with :meth:`NetLab.exec` is stopped (SIGTERM to its session, a grace period, SIGKILL), then
every process still inside a namespace (``ip netns pids``, whoever started it) is killed, then
the namespaces are deleted. If the test process itself dies (SIGKILL, a CI timeout), a
watchdog process it started notices at once (its stdin pipe reaches EOF) and does the same;
it also does so after ``ttl`` seconds whatever happens.

Needs root and ``ip``, ``iptables``, ``conntrack``: :func:`realpeers.require_root` and
:func:`realpeers.require` skip the test, or fail it under ``CI=true``.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

from realpeers import require, require_root

Role = Literal["lan", "nat", "wan"]
ROLES: tuple[Role, ...] = ("lan", "nat", "wan")

LAN_IP = "10.0.0.2"
ROUTER_LAN_IP = "10.0.0.1"
ROUTER_WAN_IP = "198.51.100.1"  # what the server sees: the MASQUERADE address
WAN_IP = "198.51.100.2"

NETNS_DIR = Path("/run/netns")
BLACKHOLE_COMMENT = "netlab-blackhole"

_counter = itertools.count(1)

# Runs outside the namespaces, in a session of its own (so a Ctrl-C to pytest does not reach
# it). Its stdin is a pipe whose only writer is the lab's process: EOF means that process is
# gone (or closed the lab), and whatever is left of the namespaces is removed.
_WATCHDOG = r"""
import os, select, signal, subprocess, sys, time
ttl, names = float(sys.argv[1]), sys.argv[2:]
end = time.monotonic() + ttl
while (left := end - time.monotonic()) > 0:
    if select.select([0], [], [], min(left, 5.0))[0] and not os.read(0, 4096):
        break
for ns in names:
    if not os.path.exists("/run/netns/" + ns):
        continue
    for _ in range(20):
        pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout
        if not pids.split():
            break
        for pid in pids.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.1)
    subprocess.run(["ip", "netns", "del", ns], capture_output=True)
"""

# Reachability without ping: a datagram to a closed port in wan must come back as an ICMP
# port unreachable (ECONNREFUSED on the connected socket), through the NAT.
_PROBE = f"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1.0)
s.connect(({WAN_IP!r}, 9))
for _ in range(3):
    s.send(b"x")
    try:
        s.recv(1)
    except ConnectionRefusedError:
        sys.exit(0)
    except TimeoutError:
        continue
sys.exit(1)
"""


class NetLabError(RuntimeError):
    """The lab could not be built or torn down; the message says which command failed."""


def unique_prefix() -> str:
    """A prefix no other lab uses: this process's pid and a counter (``nl1234-1-``)."""
    return f"nl{os.getpid()}-{next(_counter)}-"


def mirror(match: Sequence[str]) -> list[str]:
    """The iptables match for the other direction of the same flow (for FORWARD).

    Source and destination swap (addresses, ports, interfaces). In FORWARD the lan side of a
    masqueraded flow is still 10.0.0.2 in both directions (SNAT happens after FORWARD, the
    reverse translation before it), so the swap is exact.
    """
    swap = {
        "-s": "-d", "--source": "--destination", "--src": "--dst",
        "--sport": "--dport", "--source-port": "--destination-port",
        "--sports": "--dports", "--source-ports": "--destination-ports",
        "-i": "-o", "--in-interface": "--out-interface",
    }  # fmt: skip
    both = {**swap, **{v: k for k, v in swap.items()}}
    return [both.get(token, token) for token in match]


class NetLab:
    """Three namespaces ``<prefix>lan``, ``<prefix>nat``, ``<prefix>wan`` joined by veth pairs.

    ``udp_timeout`` / ``udp_timeout_stream`` / ``tcp_timeout_established`` (seconds; None
    leaves the kernel default) are the conntrack timeouts of the ``nat`` namespace. ``ttl``
    bounds the lab's life even if nothing else removes it.
    """

    def __init__(
        self,
        prefix: str | None = None,
        *,
        udp_timeout: int = 10,
        udp_timeout_stream: int = 10,
        tcp_timeout_established: int | None = None,
        ttl: float = 600.0,
    ) -> None:
        self.prefix = unique_prefix() if prefix is None else prefix
        self.udp_timeout = udp_timeout
        self.udp_timeout_stream = udp_timeout_stream
        self.tcp_timeout_established = tcp_timeout_established
        self.ttl = ttl
        self.names: dict[Role, str] = {role: f"{self.prefix}{role}" for role in ROLES}
        self._procs: list[subprocess.Popen[Any]] = []
        self._blackholes: list[list[str]] = []
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._created: list[str] = []

    # -- names -------------------------------------------------------------------------

    def ns(self, role: Role) -> str:
        """The namespace's real name (``ns("lan")`` -> ``"nl1234-1-lan"``)."""
        try:
            return self.names[role]
        except KeyError:
            raise ValueError(f"namespace role must be lan, nat or wan, got {role!r}") from None

    @property
    def namespaces(self) -> list[str]:
        return [self.names[role] for role in ROLES]

    # -- set-up ------------------------------------------------------------------------

    def __enter__(self) -> Self:
        require_root()
        require("ip", "iptables", "conntrack")
        for name in self.namespaces:
            if (NETNS_DIR / name).exists():
                raise NetLabError(
                    f"network namespace {name} already exists (left by a crashed run? "
                    f"'ip netns del {name}'); refusing to touch it"
                )
        try:
            self._up()
        except BaseException as exc:
            self._down(exc)
            raise
        return self

    def _host(self, *cmd: str) -> None:
        """A command in the host namespace: only ``ip netns add|del`` ever runs this way."""
        self._check(subprocess.run(cmd, capture_output=True, text=True, timeout=10))

    @staticmethod
    def _check(done: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
        if done.returncode != 0:
            raise NetLabError(
                f"{' '.join(map(str, done.args))} exited {done.returncode}: "
                f"{(done.stderr or done.stdout or '').strip()}"
            )
        return done

    def _up(self) -> None:
        lan, nat, wan = self.namespaces
        # The watchdog first: from here on, even a SIGKILL of this process cleans up.
        self._watchdog = subprocess.Popen(
            [sys.executable, "-c", _WATCHDOG, str(self.ttl), *self.namespaces],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        for name in self.namespaces:
            self._host("ip", "netns", "add", name)
            self._created.append(name)
            self.run(name, "ip", "link", "set", "lo", "up")
        # Created from inside lan / wan, with the peer moved straight into nat.
        self.run(lan, "ip", "link", "add", "lan0", "type", "veth", "peer", "name", "nat-lan",
                 "netns", nat)  # fmt: skip
        self.run(wan, "ip", "link", "add", "wan0", "type", "veth", "peer", "name", "nat-wan",
                 "netns", nat)  # fmt: skip
        self.run(lan, "ip", "addr", "add", f"{LAN_IP}/24", "dev", "lan0")
        self.run(nat, "ip", "addr", "add", f"{ROUTER_LAN_IP}/24", "dev", "nat-lan")
        self.run(nat, "ip", "addr", "add", f"{ROUTER_WAN_IP}/24", "dev", "nat-wan")
        self.run(wan, "ip", "addr", "add", f"{WAN_IP}/24", "dev", "wan0")
        for ns, dev in ((lan, "lan0"), (nat, "nat-lan"), (nat, "nat-wan"), (wan, "wan0")):
            self.run(ns, "ip", "link", "set", dev, "up")
        self.run(lan, "ip", "route", "add", "default", "via", ROUTER_LAN_IP)
        self._wait_links_up()
        self.run(nat, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        # The NAT rule also starts conntrack in this namespace (its hooks are per-netns and
        # registered only once a rule needs them), which creates the timeouts below.
        self.run(nat, "iptables", "-t", "nat", "-A", "POSTROUTING", "-o", "nat-wan",
                 "-j", "MASQUERADE")  # fmt: skip
        timeouts = {
            "nf_conntrack_udp_timeout": self.udp_timeout,
            "nf_conntrack_udp_timeout_stream": self.udp_timeout_stream,
            "nf_conntrack_tcp_timeout_established": self.tcp_timeout_established,
        }
        for key, value in timeouts.items():
            if value is not None:
                self.run(nat, "sysctl", "-qw", f"net.netfilter.{key}={int(value)}")
        probe = self.run(lan, sys.executable, "-c", _PROBE, check=False)
        if probe.returncode != 0:
            raise NetLabError(f"lan -> wan reachability check failed: {probe.stderr.strip()}")
        # Start every test from an empty table (the probe above left an entry).
        self.conntrack("-F")

    def _wait_links_up(self) -> None:
        """veth operstate is updated asynchronously (linkwatch): wait for all four ends."""
        lan, nat, wan = self.namespaces
        wanted = {(lan, "lan0"), (nat, "nat-lan"), (nat, "nat-wan"), (wan, "wan0")}
        deadline = time.monotonic() + 5.0
        while True:
            down = set()
            for ns, dev in wanted:
                out = self.run(ns, "ip", "-o", "link", "show", "dev", dev).stdout
                if "state UP" not in out:
                    down.add((ns, dev))
            if not down:
                return
            if time.monotonic() > deadline:
                raise NetLabError(f"links not up after 5 s: {sorted(down)}")
            time.sleep(0.05)

    # -- running things inside ---------------------------------------------------------

    def _name(self, ns: str) -> str:
        for role, name in self.names.items():
            if ns in (role, name):
                return name
        raise ValueError(f"namespace must be lan, nat or wan (or its full name), got {ns!r}")

    def exec(
        self, ns: str, *cmd: str | os.PathLike[str], **popen_kwargs: Any
    ) -> subprocess.Popen[Any]:
        """Start ``cmd`` inside ``ns`` (``ip netns exec``, which execs it: the Popen's pid
        is the command's). Tracked: stopped by :meth:`stop` or at the latest on exit. By
        default stdin is /dev/null and the command gets a session of its own."""
        popen_kwargs.setdefault("stdin", subprocess.DEVNULL)
        popen_kwargs.setdefault("start_new_session", True)
        proc = subprocess.Popen(["ip", "netns", "exec", self._name(ns), *map(str, cmd)],
                                **popen_kwargs)  # fmt: skip
        self._procs.append(proc)
        return proc

    def run(
        self,
        ns: str,
        *cmd: str | os.PathLike[str],
        check: bool = True,
        timeout: float = 20.0,
        **run_kwargs: Any,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` inside ``ns`` to completion (text output captured, bounded in time).
        ``check`` raises :class:`NetLabError` with the command's stderr on a non-zero exit."""
        run_kwargs.setdefault("capture_output", True)
        run_kwargs.setdefault("text", True)
        run_kwargs.setdefault("stdin", subprocess.DEVNULL)
        done: subprocess.CompletedProcess[str] = subprocess.run(
            ["ip", "netns", "exec", self._name(ns), *map(str, cmd)],
            timeout=timeout,
            check=False,
            **run_kwargs,
        )
        return self._check(done) if check else done

    def stop(self, proc: subprocess.Popen[Any], grace: float = 3.0) -> int | None:
        """SIGTERM ``proc``'s session, up to ``grace`` seconds, then SIGKILL; reaps it.
        Returns its exit status (None if it could not be reaped). Its pipes stay open (what
        it wrote can still be read) until the lab closes."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(5)
        # Children it left in its session (start_new_session: the group is its pid).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        return proc.returncode

    def pids(self, ns: str) -> list[int]:
        """Every process whose network namespace is ``ns`` (``ip netns pids``)."""
        out = subprocess.run(["ip", "netns", "pids", self._name(ns)], capture_output=True,
                             text=True, timeout=10, check=False).stdout  # fmt: skip
        return [int(pid) for pid in out.split()]

    def sysctl(self, ns: str, key: str) -> str:
        """A sysctl's value as seen inside ``ns``."""
        return self.run(ns, "sysctl", "-n", key).stdout.strip()

    # -- the router --------------------------------------------------------------------

    def conntrack(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        """``conntrack ARGS`` inside nat (``-L`` when no args). Not checked by default:
        conntrack exits 1 when a filter matches nothing."""
        return self.run("nat", "conntrack", *(args or ("-L",)), check=check)

    def blackhole(self, on: bool, match: Sequence[str] = (), *, both: bool = True) -> None:
        """DROP forwarded packets in nat: a dead peer, or a half-open TCP connection.

        ``match`` is an iptables match (``["-p", "tcp", "--dport", "5060"]``; empty: every
        forwarded packet). ``both`` also drops the other direction of the same flow (see
        :func:`mirror`). ``on=False`` removes what ``blackhole(True, match)`` added, or every
        black-hole when ``match`` is empty.
        """
        rules = [list(match)]
        if both and list(match) != mirror(match):
            rules.append(mirror(match))
        if on:
            for rule in rules:
                self._drop_rule(["-I", "FORWARD", "1"], rule)
                self._blackholes.append(rule)
            return
        for rule in list(self._blackholes) if not match else rules:
            if rule in self._blackholes:
                self._drop_rule(["-D", "FORWARD"], rule)
                self._blackholes.remove(rule)

    def _drop_rule(self, op: list[str], rule: list[str]) -> None:
        self.run("nat", "iptables", *op, *rule, "-m", "comment", "--comment", BLACKHOLE_COMMENT,
                 "-j", "DROP")  # fmt: skip

    def clear(self) -> None:
        """Remove every impairment: the filter and mangle FORWARD chains of nat are emptied
        (NAT itself, in the nat table's POSTROUTING, stays)."""
        self.run("nat", "iptables", "-F", "FORWARD")
        self.run("nat", "iptables", "-t", "mangle", "-F", "FORWARD")
        self._blackholes.clear()

    # -- clean-up ----------------------------------------------------------------------

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._down(exc)

    def _down(self, exc: BaseException | None) -> None:
        problems: list[str] = []
        for proc in self._procs:
            if self.stop(proc) is None:
                problems.append(f"pid {proc.pid} ({proc.args!r}) could not be reaped")
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
        self._procs.clear()
        for name in self._created:
            problems += self._kill_inside(name)
        for name in list(self._created):
            done = subprocess.run(["ip", "netns", "del", name], capture_output=True, text=True,
                                  timeout=10, check=False)  # fmt: skip
            if done.returncode != 0 and (NETNS_DIR / name).exists():
                problems.append(f"ip netns del {name}: {done.stderr.strip()}")
            else:
                self._created.remove(name)
        self._stop_watchdog()
        if problems:
            message = "NetLab clean-up: " + "; ".join(problems)
            if exc is None:
                raise NetLabError(message)
            exc.add_note(message)

    def _kill_inside(self, name: str) -> list[str]:
        """SIGTERM, then SIGKILL, every process left in ``name``; bounded."""
        if not (NETNS_DIR / name).exists():
            return []
        pids = self.pids(name)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 2.0
        killed = False
        while pids := self.pids(name):
            if time.monotonic() > deadline:
                if killed:
                    return [f"processes {pids} survive SIGKILL in {name}"]
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                killed = True
                deadline = time.monotonic() + 3.0
            time.sleep(0.05)
        return []

    def _stop_watchdog(self) -> None:
        dog = self._watchdog
        if dog is None:
            return
        self._watchdog = None
        if dog.stdin is not None:
            dog.stdin.close()  # EOF: it removes whatever is left (nothing, normally) and exits
        try:
            dog.wait(10)
        except subprocess.TimeoutExpired:
            dog.kill()
            dog.wait(5)

    @property
    def watchdog_pid(self) -> int | None:
        return None if self._watchdog is None else self._watchdog.pid
