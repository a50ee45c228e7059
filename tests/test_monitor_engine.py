"""The qualify engine against our own responder, a silent socket and a closed port."""

from __future__ import annotations

import asyncio
import io
import json
import operator
import socket
import time
from pathlib import Path
from typing import Any

from procs import respond
from realpeers import free_port
from sipalive.config import MonitorConfig, parse_config
from sipalive.events import EventDispatcher, JsonLineSink
from sipalive.http.view import TargetSample
from sipalive.monitor.engine import MonitorEngine
from sipalive.store.sqlite import Store, StoreWriter


def _config(db: Path, port: int, silent: int, closed: int) -> str:
    return f"""
[storage]
path = "{db}"
[defaults]
qualify_frequency = 0.4
qualify_timeout = 0.3
unreachable_frequency = 0.4
t1 = 0.05
[[targets]]
name = "alive-udp"
uri = "sip:ping@127.0.0.1:{port}"
[[targets]]
name = "alive-tcp"
uri = "sip:ping@127.0.0.1:{port};transport=tcp"
crlf_ping_interval = 0.3
crlf_pong_timeout = 0.2
[[targets]]
name = "silent"
uri = "sip:ping@127.0.0.1:{silent}"
[[targets]]
name = "closed"
uri = "sip:ping@127.0.0.1:{closed}"
[[targets]]
name = "off"
uri = "sip:ping@127.0.0.1:{port}"
qualify_frequency = 0
"""


class Monitor:
    """An engine with its store, writer and dispatcher, wired as `sipalive monitor` does."""

    def __init__(self, cfg: MonitorConfig, db: Path) -> None:
        self.store_w, self.store = Store(db), Store(db)
        self.writer = StoreWriter(self.store_w)
        self.lines = io.StringIO()
        self.dispatcher = EventDispatcher(self.writer, [], lines=JsonLineSink(self.lines))
        self.engine = MonitorEngine(
            cfg, store=self.store, writer=self.writer, dispatcher=self.dispatcher
        )
        self._stopped = False

    async def start(self) -> None:
        await self.dispatcher.start()
        await self.engine.start()

    async def stop(self) -> None:
        """Stop probing and commit; the read store stays open for assertions."""
        if not self._stopped:
            self._stopped = True
            await self.engine.close()
            await self.dispatcher.close()
            self.writer.close()

    async def close(self) -> None:
        await self.stop()
        self.store.close()
        self.store_w.close()


def _one_tcp_target(
    db: Path, name: str, port: int, *, frequency: float, timeout: float
) -> MonitorConfig:
    """A config of one TCP target on 127.0.0.1:``port``."""
    return parse_config(
        f"""
[storage]
path = "{db}"
[[targets]]
name = "{name}"
uri = "sip:ping@127.0.0.1:{port};transport=tcp"
qualify_frequency = {frequency}
qualify_timeout = {timeout}
""",
        f"{name}.toml",
    )


async def _wait(engine: MonitorEngine, want: dict[str, str], timeout: float) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        states = {t.name: t.state for t in engine.targets()}
        if all(states.get(k) == v for k, v in want.items()):
            return states
        await asyncio.sleep(0.05)
    return states


async def _scenario(tmp_path: Path) -> None:
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    db = tmp_path / "m.db"
    try:
        with respond() as resp:
            cfg = parse_config(
                _config(db, resp.port, silent.getsockname()[1], free_port("both")), "m.toml"
            )
            mon = Monitor(cfg, db)
            await mon.start()
            engine, store_r = mon.engine, mon.store
            lines = mon.lines
            try:
                want = {
                    "alive-udp": "reachable",
                    "alive-tcp": "reachable",
                    "silent": "unreachable",
                    "closed": "unreachable",
                    "off": "nonqualified",
                }
                states = await _wait(engine, want, 5.0)
                assert states == want
                views = {t.name: t for t in engine.targets()}
                # the lean rows /metrics reads say what the full views say (no await between)
                full = [TargetSample.of(t) for t in engine.targets()]
                assert list(engine.samples()) == full
                assert engine.samples()[1:3] == full[1:3]
                assert engine.samples()[-1] == full[-1]
                # no await in between, nothing changed: the very same objects (/metrics' cache)
                assert all(map(operator.is_, engine.samples(), engine.samples()))
                rt = engine.runtimes["alive-udp"]
                before = {t.name: t for t in engine.samples()}["alive-udp"]
                rt.q.version += 1  # what on_probe_result and the others do
                after = {t.name: t for t in engine.samples()}["alive-udp"]
                assert after is not before
                assert after == before
                assert views["alive-udp"].rtt_s is not None
                assert 0 < views["alive-udp"].rtt_s < 0.1
                assert views["closed"].last_error == "ICMP port unreachable"
                assert views["silent"].last_status == 408
                assert views["alive-tcp"].transport == "tcp"
                assert len(engine.udp) == 1  # one shared socket, however many UDP targets
                assert engine._refrozen  # every qualified target probed: frozen again for GC
                assert engine.stats().in_flight <= 4  # probes out, not transactions in Timer K
                stats = engine.stats()
                assert stats.targets == 5
                assert stats.probes_total["success"] >= 2
                # a target's row waits for ROW_PERIOD when nothing changes; its state not
                await asyncio.sleep(1.0)
                await asyncio.to_thread(mon.writer.flush, 5.0)
                stored = store_r.load_targets()["alive-udp"]
                live = engine.target("alive-udp")
                assert live is not None
                assert stored.state == "reachable"
                assert 1 <= stored.probes < live.probes
            finally:
                pass
        # the responder is gone: both live targets go unreachable within frequency+timeout
        t0 = time.monotonic()
        states = await _wait(engine, {"alive-udp": "unreachable", "alive-tcp": "unreachable"}, 3.0)
        assert states["alive-udp"] == "unreachable"
        assert states["alive-tcp"] == "unreachable"
        assert time.monotonic() - t0 <= 0.4 + 0.3 + 0.5
        await mon.stop()
        history = store_r.history("alive-udp")
        assert [(h.from_state, h.to_state) for h in history][:2] == [
            ("unknown", "reachable"),
            ("reachable", "unreachable"),
        ]
        events = [json.loads(line) for line in lines.getvalue().splitlines()]
        assert {"target": "alive-udp", "from": "reachable", "to": "unreachable"}.items() <= next(
            e for e in events if e["target"] == "alive-udp" and e["to"] == "unreachable"
        ).items()
        assert len({e["event_id"] for e in events}) == len(events)
        rows = store_r.load_targets()
        assert rows["alive-udp"].state == "unreachable"
        assert rows["alive-udp"].probes >= 2
        # a clean stop writes every row as it is
        assert rows["alive-udp"].probes == engine.target("alive-udp").probes  # type: ignore[union-attr]
        await mon.close()
    finally:
        silent.close()


def test_engine_states_and_persistence(tmp_path: Path) -> None:
    asyncio.run(_scenario(tmp_path))


class TcpResponder:
    """A TCP server answering requests with our StatelessResponder; keeps its connections
    (``conns``) and counts the answers."""

    def __init__(self) -> None:
        from sipalive.sip.responder import StatelessResponder

        self.responder = StatelessResponder()
        self.conns: list[asyncio.StreamWriter] = []
        self.answered = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        from sipalive.sip.framing import MessageReceived, StreamFramer
        from sipalive.sip.message import Request

        self.conns.append(writer)
        framer = StreamFramer()
        peer = writer.get_extra_info("peername")
        while data := await reader.read(65536):
            for ev in framer.receive(data):
                if isinstance(ev, MessageReceived) and isinstance(ev.message, Request):
                    reply = self.responder.handle_request(ev.message, peer, "tcp")
                    assert reply is not None
                    writer.write(reply.data)
                    self.answered += 1


async def _reset_scenario(tmp_path: Path) -> None:
    import struct

    tcp = TcpResponder()
    port = await tcp.start()
    conns = tcp.conns
    # "tcp-peer-19" hashes to the start of the 30 s spread: its first probe goes out at once
    db = tmp_path / "r.db"
    cfg = _one_tcp_target(db, "tcp-peer-19", port, frequency=30, timeout=1)
    mon = Monitor(cfg, db)
    await mon.start()
    engine = mon.engine
    try:
        assert (await _wait(engine, {"tcp-peer-19": "reachable"}, 35.0))[
            "tcp-peer-19"
        ] == "reachable"
        sock = conns[0].get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conns[0].close()  # RST: the kept connection fails with ECONNRESET
        t0 = time.monotonic()
        states = await _wait(engine, {"tcp-peer-19": "unreachable"}, 3.0)
        assert states["tcp-peer-19"] == "unreachable"
        assert time.monotonic() - t0 < 3.0  # not the next probe, 30 s away
        view = engine.target("tcp-peer-19")
        assert view is not None
        assert view.last_error is not None
        assert view.last_error.startswith("connection failed")
    finally:
        await mon.stop()
        await tcp.close()
        await mon.close()


def test_kept_connection_failure_is_unreachable_at_once(tmp_path: Path) -> None:
    asyncio.run(_reset_scenario(tmp_path))


async def _spoof_scenario(tmp_path: Path) -> None:
    from sipalive.sip.responder import StatelessResponder

    victim = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # gets probes, never answers
    victim.bind(("127.0.0.1", 0))
    victim.setblocking(False)
    attacker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    attacker.bind(("127.0.0.1", 0))
    attacker.setblocking(False)
    db = tmp_path / "s.db"
    with respond() as resp:
        cfg = parse_config(
            f"""
[storage]
path = "{db}"
[defaults]
qualify_frequency = 0.2
qualify_timeout = 0.15
unreachable_frequency = 0.2
t1 = 0.05
[[targets]]
name = "alive"
uri = "sip:ping@127.0.0.1:{resp.port}"
[[targets]]
name = "victim"
uri = "sip:ping@127.0.0.1:{victim.getsockname()[1]}"
""",
            "s.toml",
        )
        mon = Monitor(cfg, db)
        await mon.start()
        engine = mon.engine
        try:
            want = {"alive": "reachable", "victim": "unreachable"}
            assert await _wait(engine, want, 5.0) == want
            endpoint = engine.udp[socket.AF_INET]
            target_addr = ("127.0.0.1", endpoint.local[1])
            alive_before = engine.target("alive").probes  # type: ignore[union-attr]
            spoofed = garbage = 0
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:  # bounded in time
                # answer every probe the victim got, correctly, but from the attacker's port
                for _ in range(50):
                    try:
                        data, src = victim.recvfrom(65536)
                    except BlockingIOError:
                        break
                    reply = StatelessResponder().handle_datagram(data, src)
                    if reply is not None:
                        attacker.sendto(reply.data, target_addr)
                        spoofed += 1
                for i in range(200):
                    attacker.sendto(b"SIP/2.0 200 OK\r\nVia: garbage %d\r\n\r\n" % i, target_addr)
                    attacker.sendto(bytes([i % 256]) * 64, target_addr)
                    garbage += 2
                await asyncio.sleep(0.01)
            assert spoofed >= 5
            assert garbage >= 10_000
            states = {t.name: t.state for t in engine.targets()}
            assert states == want  # nothing the attacker sent changed a state
            alive_after = engine.target("alive").probes  # type: ignore[union-attr]
            assert alive_after - alive_before >= 5  # the other probes kept going (0.2 s period)
            assert endpoint.spoofed >= spoofed
            assert endpoint.malformed + endpoint.received >= garbage
        finally:
            await mon.stop()
            await mon.close()
            victim.close()
            attacker.close()


def test_garbage_and_spoofed_answers_change_nothing(tmp_path: Path) -> None:
    asyncio.run(_spoof_scenario(tmp_path))


async def _prune_scenario(tmp_path: Path) -> None:
    from sipalive.store.sqlite import TransitionRow

    db = tmp_path / "p.db"
    with Store(db) as seed:
        old = time.time() - 40 * 86400
        seed.add_transitions([TransitionRow("x", old, "unknown", "reachable", "code 200", 0.001)])
        seed.add_transitions([TransitionRow("x", time.time(), "reachable", "lagged", "rtt", 0.2)])
    cfg = parse_config(
        f"""
[storage]
path = "{db}"
retention_days = 30
[[targets]]
name = "x"
uri = "sip:x@127.0.0.1:9"
qualify_frequency = 0
""",
        "p.toml",
    )
    mon = Monitor(cfg, db)
    await mon.start()
    store_r = mon.store
    try:
        for _ in range(100):  # bounded: the first prune runs right after start
            if len(store_r.history("x")) == 1:
                break
            await asyncio.sleep(0.02)
        assert [(h.from_state, h.to_state) for h in store_r.history("x")] == [
            ("reachable", "lagged")
        ]
    finally:
        await mon.stop()
        await mon.close()


def test_history_older_than_retention_is_pruned(tmp_path: Path) -> None:
    asyncio.run(_prune_scenario(tmp_path))


async def _ws_scenario(tmp_path: Path) -> None:
    db = tmp_path / "w.db"
    ws_port = free_port("tcp")
    with respond("--listen", f"ws:127.0.0.1:{ws_port}") as resp:
        for _ in range(100):  # bounded: the ws listener comes up with the others
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", ws_port)) == 0:
                    break
            await asyncio.sleep(0.02)
        cfg = parse_config(
            f"""
[storage]
path = "{db}"
[[targets]]
name = "over-ws"
uri = "sip:ping@127.0.0.1:{ws_port};transport=ws"
qualify_frequency = 0.4
qualify_timeout = 0.3
unreachable_frequency = 0.4
crlf_ping_interval = 0.2
crlf_pong_timeout = 0.15
""",
            "w.toml",
        )
        mon = Monitor(cfg, db)
        await mon.start()
        engine = mon.engine
        try:
            assert (await _wait(engine, {"over-ws": "reachable"}, 5.0))["over-ws"] == "reachable"
            view = engine.target("over-ws")
            assert view is not None
            assert view.transport == "ws"
            assert view.rtt_s is not None
            await asyncio.sleep(0.6)  # a few WebSocket pings answered: still reachable
            assert engine.target("over-ws").state == "reachable"  # type: ignore[union-attr]
            assert "stopped:" not in resp.log()
        except BaseException:
            await mon.stop()
            raise
    try:
        states = await _wait(engine, {"over-ws": "unreachable"}, 3.0)
        assert states["over-ws"] == "unreachable"
    finally:
        await mon.stop()
        await mon.close()


def test_qualify_over_websocket(tmp_path: Path) -> None:
    asyncio.run(_ws_scenario(tmp_path))


async def _literal_scenario(tmp_path: Path) -> None:
    tcp = TcpResponder()
    port = await tcp.start()
    db = tmp_path / "l.db"
    cfg = _one_tcp_target(db, "literal", port, frequency=0.2, timeout=0.5)
    mon = Monitor(cfg, db)
    await mon.start()
    try:
        for _ in range(100):  # bounded: ~10 probes, many resolution lifetimes
            if tcp.answered >= 10:
                break
            await asyncio.sleep(0.05)
        assert tcp.answered >= 10
        # an IP literal is never resolved again, so its kept connection is never dropped
        assert len(tcp.conns) == 1
    finally:
        await mon.stop()
        await tcp.close()
        await mon.close()


def test_literal_target_keeps_its_connection(tmp_path: Path, monkeypatch: Any) -> None:
    import sipalive.monitor.engine

    monkeypatch.setattr(sipalive.monitor.engine, "RESOLVE_TTL", 0.1)
    asyncio.run(_literal_scenario(tmp_path))
