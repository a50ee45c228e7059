"""Event delivery: JSON lines, the persisted outbox, webhooks through outages and restarts, exec."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp import web

from sipalive.events import (
    EVENT_ID_HEADER,
    SIGNATURE_HEADER,
    Backoff,
    DeliveryError,
    Event,
    EventDispatcher,
    ExecSink,
    JsonLineSink,
    Sink,
    WebhookSink,
    signature,
)
from sipalive.store import OutboxRow, Store, StoreWriter, TransitionRow

FAST = Backoff(initial=0.05, factor=2.0, maximum=0.2, jitter=0.2)
SECRET = "s3cret"


def make_events(n: int, start: int = 0) -> list[Event]:
    return [
        Event.from_transition(
            TransitionRow(
                f"peer{i}", 1_700_000_000.25 + i, "reachable", "unreachable", "code 503", 0.5
            ),
            f"sip:peer{i}.example;transport=tcp",
        )
        for i in range(start, start + n)
    ]


async def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "events.db"


@asynccontextmanager
async def opened(
    path: Path, sinks: Sequence[Sink], *, lines: JsonLineSink | None = None, concurrency: int = 4
) -> AsyncIterator[EventDispatcher]:
    """A store, its writer and a started dispatcher; all closed on exit."""
    store = Store(path)
    writer = StoreWriter(store, flush_interval=0.01)
    dispatcher = EventDispatcher(writer, sinks, lines=lines, backoff=FAST, concurrency=concurrency)
    try:
        await dispatcher.start()
        yield dispatcher
    finally:
        await dispatcher.close()
        writer.close()
        store.close()


class Receiver:
    """A webhook receiver on 127.0.0.1 that can be down (503) and deduplicates by event id."""

    def __init__(self) -> None:
        self.up = False
        self.refused = 0
        self.received: list[str] = []
        self.bodies: dict[str, dict[str, object]] = {}
        self.bad_signatures = 0
        self.runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if not self.up:
            self.refused += 1
            return web.Response(status=503)
        if request.headers.get(SIGNATURE_HEADER) != signature(SECRET, body):
            self.bad_signatures += 1
            return web.Response(status=401)
        event_id = request.headers[EVENT_ID_HEADER]
        self.received.append(event_id)
        self.bodies[event_id] = json.loads(body)
        return web.Response(status=204)

    async def start(self, port: int = 0) -> int:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", port, reuse_address=True).start()
        return int(self.runner.addresses[0][1])

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


@asynccontextmanager
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    try:
        yield r
    finally:
        await r.stop()


class FakeSink:
    """Records deliveries; ``gate`` holds them, ``fail`` makes them fail."""

    def __init__(self, key: str = "fake") -> None:
        self._key = key
        self.fail = False
        self.gate: asyncio.Event | None = None
        self.attempts: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.check: Callable[[Event], None] | None = None

    @property
    def key(self) -> str:
        return self._key

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def deliver(self, event: Event, payload: str) -> None:
        self.attempts.append(event.event_id)
        if self.check is not None:
            self.check(event)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.gate is not None:
                await self.gate.wait()
        finally:
            self.in_flight -= 1
        if self.fail:
            raise DeliveryError("fake failure")


def run(coro: Callable[[], Awaitable[None]], timeout: float = 15.0) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(coro(), timeout)

    asyncio.run(bounded())


# -- the event itself -------------------------------------------------------------------------


def test_event_json_round_trip_and_environment() -> None:
    (event,) = make_events(1)
    data = json.loads(event.dumps())
    assert data == {
        "event_id": event.event_id,
        "type": "transition",
        "target": "peer0",
        "uri": "sip:peer0.example;transport=tcp",
        "at": "2023-11-14T22:13:20.250Z",
        "from": "reachable",
        "to": "unreachable",
        "cause": "code 503",
        "rtt_s": 0.5,
    }
    assert len(bytes.fromhex(event.event_id)) == 16  # uuid4 hex
    assert Event.loads(event.dumps()) == event
    assert event.environment()["SIPALIVE_RTT"] == "0.5"
    no_rtt = Event.loads(event.dumps().replace('"rtt_s":0.5', '"rtt_s":null'))
    assert no_rtt.environment()["SIPALIVE_RTT"] == ""


def test_backoff_doubles_with_jitter_up_to_the_maximum() -> None:
    backoff = Backoff(initial=1.0, factor=2.0, maximum=300.0, jitter=0.2)
    assert [backoff.delay(n, lambda: 0.0) for n in (1, 2, 3, 9, 10, 5000)] == [
        1.0,
        2.0,
        4.0,
        256.0,
        300.0,
        300.0,
    ]
    assert backoff.delay(1, lambda: 0.999) == pytest.approx(0.8, abs=0.001)


def test_signature_is_hmac_sha256_of_the_body() -> None:
    import hashlib
    import hmac

    body = b'{"event_id":"x"}'
    expected = hmac.new(b"k", body, hashlib.sha256).hexdigest()
    assert signature("k", body) == signature(b"k", body) == f"sha256={expected}"


# -- the dispatcher ---------------------------------------------------------------------------


def test_outbox_and_history_are_written_before_delivery(db_path: Path) -> None:
    sink = FakeSink()
    lines = io.StringIO()
    seen: list[tuple[int, int]] = []

    async def scenario() -> None:
        async with opened(db_path, [sink], lines=JsonLineSink(lines)) as dispatcher:
            store = dispatcher.writer.store

            def check(event: Event) -> None:
                seen.append(
                    (len(store.outbox_get(event.event_id)), len(store.history(event.target)))
                )

            sink.check = check
            events = make_events(3)
            await asyncio.wrap_future(dispatcher.publish(events))
            await wait_until(lambda: len(sink.attempts) == 3)
        assert [json.loads(line)["event_id"] for line in lines.getvalue().splitlines()] == [
            e.event_id for e in events
        ]

    run(scenario)
    assert seen == [(1, 1)] * 3
    with Store(db_path) as store:
        assert all(r.delivered_at is not None and r.attempts == 1 for r in store.outbox_all())


def test_concurrency_is_bounded_and_a_failing_sink_is_held(db_path: Path) -> None:
    sink = FakeSink()

    async def scenario() -> None:
        sink.gate = asyncio.Event()
        async with opened(db_path, [sink], concurrency=3) as dispatcher:
            await asyncio.wrap_future(dispatcher.publish(make_events(40)))
            await wait_until(lambda: sink.in_flight == 3)
            await asyncio.sleep(0.1)
            assert sink.in_flight == sink.max_in_flight == 3
            sink.fail = True
            sink.gate.set()
            await asyncio.sleep(0.5)
            # Held by the sink's back-off: a few attempts per period, not 40 at once.
            assert len(sink.attempts) < 40
            sink.fail = False
            await wait_until(lambda: len(set(sink.attempts)) == 40)
            await wait_until(
                lambda: all(r.delivered_at for r in dispatcher.writer.store.outbox_all())
            )

    run(scenario)
    assert sink.max_in_flight == 3


def test_webhook_down_then_up_across_a_restart_gets_every_event(db_path: Path) -> None:
    sent: list[str] = []

    async def scenario() -> None:
        async with receiver() as rx:
            url = f"http://127.0.0.1:{await rx.start()}/hook"
            async with opened(db_path, [WebhookSink(url, SECRET)]) as dispatcher:
                first = make_events(20)
                sent.extend(e.event_id for e in first)
                await asyncio.wrap_future(dispatcher.publish(first))
                await wait_until(lambda: rx.refused >= 3)
            # Restarted: the pending events come back from the outbox, new ones join them.
            async with opened(db_path, [WebhookSink(url, SECRET)]) as dispatcher:
                second = make_events(10, start=20)
                sent.extend(e.event_id for e in second)
                await asyncio.wrap_future(dispatcher.publish(second))
                await asyncio.sleep(0.2)
                rx.up = True
                await wait_until(lambda: set(rx.received) == set(sent))
                store = dispatcher.writer.store
                await wait_until(lambda: all(r.delivered_at for r in store.outbox_all()))
            assert rx.bad_signatures == 0
            assert sorted(rx.received) == sorted(sent)  # each id once: no duplicate on restart
            assert rx.bodies[sent[0]]["target"] == "peer0"

    run(scenario)
    with Store(db_path) as store:
        rows = store.outbox_all()
    assert len(rows) == 30
    assert {r.event_id for r in rows} == set(sent)
    assert all(r.delivered_at is not None for r in rows)
    assert any(r.attempts > 1 for r in rows)  # the outage was seen
    with Store(db_path) as store:
        assert len(store.recent_transitions(limit=100)) == 30  # recorded once each


def test_webhook_not_listening_then_listening(db_path: Path) -> None:
    sent: list[str] = []

    async def scenario() -> None:
        async with receiver() as rx:
            port = await rx.start()
            await rx.stop()  # nobody listens on the port now: connection refused
            rx.up = True
            url = f"http://127.0.0.1:{port}/hook"
            async with opened(db_path, [WebhookSink(url, SECRET, timeout=2.0)]) as dispatcher:
                events = make_events(15)
                sent.extend(e.event_id for e in events)
                await asyncio.wrap_future(dispatcher.publish(events))
                store = dispatcher.writer.store
                await wait_until(lambda: any(r.attempts for r in store.outbox_all()))
                assert "ClientConnectorError" in (store.outbox_all()[0].last_error or "")
                await rx.start(port)
                await wait_until(lambda: set(rx.received) == set(sent))
                await wait_until(lambda: all(r.delivered_at for r in store.outbox_all()))

    run(scenario)


def test_webhook_signature_is_only_sent_with_a_secret(db_path: Path) -> None:
    headers: list[dict[str, str]] = []

    async def scenario() -> None:
        async def handle(request: web.Request) -> web.Response:
            body = await request.read()
            headers.append(dict(request.headers))
            assert json.loads(body)["event_id"] == request.headers[EVENT_ID_HEADER]
            return web.Response(status=200)

        app = web.Application()
        app.router.add_post("/", handle)
        runner = web.AppRunner(app)
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            url = f"http://127.0.0.1:{runner.addresses[0][1]}/"
            sinks = [
                WebhookSink(url, name="plain"),
                WebhookSink(url, "other-secret", name="signed"),
            ]
            async with opened(db_path, sinks) as dispatcher:
                await asyncio.wrap_future(dispatcher.publish(make_events(1)))
                await wait_until(lambda: len(headers) == 2)
        finally:
            await runner.cleanup()

    run(scenario)
    signed = [h for h in headers if SIGNATURE_HEADER in h]
    assert len(signed) == 1
    assert headers[0][EVENT_ID_HEADER] == headers[1][EVENT_ID_HEADER]
    assert signed[0][SIGNATURE_HEADER] != signature(SECRET, b"")
    assert signed[0]["Content-Type"] == "application/json"


# -- exec hook --------------------------------------------------------------------------------

HOOK = """
import json, os, sys
env = {k: v for k, v in os.environ.items() if k.startswith("SIPALIVE_")}
with open(sys.argv[1], "a") as f:
    f.write(json.dumps(env) + "\\n")
print("hook ran for", env["SIPALIVE_TARGET"])
print("to stderr", file=sys.stderr)
"""


@pytest.fixture
def info_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.INFO, "sipalive.events"):
        yield caplog


def test_exec_hook_gets_the_event_in_its_environment(
    db_path: Path, tmp_path: Path, info_logs: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "hook.jsonl"
    sink = ExecSink([sys.executable, "-c", HOOK, str(out)], timeout=10)
    events = make_events(2)

    async def scenario() -> None:
        async with opened(db_path, [sink]) as dispatcher:
            await asyncio.wrap_future(dispatcher.publish(events))
            store = dispatcher.writer.store
            await wait_until(lambda: all(r.delivered_at for r in store.outbox_all()))

    run(scenario)
    envs = sorted((json.loads(line) for line in out.read_text().splitlines()), key=str)
    by_id = {e["SIPALIVE_EVENT_ID"]: e for e in envs}
    assert by_id[events[1].event_id] == {
        "SIPALIVE_EVENT_ID": events[1].event_id,
        "SIPALIVE_TARGET": "peer1",
        "SIPALIVE_FROM": "reachable",
        "SIPALIVE_TO": "unreachable",
        "SIPALIVE_CAUSE": "code 503",
        "SIPALIVE_RTT": "0.5",
        "SIPALIVE_AT": "2023-11-14T22:13:21.250Z",
        "SIPALIVE_URI": "sip:peer1.example;transport=tcp",
    }
    assert len(by_id) == 2
    assert "hook ran for peer0" in info_logs.text
    assert "to stderr" in info_logs.text


def test_exec_hook_timeout_kills_and_a_missing_command_is_retried(
    db_path: Path, tmp_path: Path, info_logs: pytest.LogCaptureFixture
) -> None:
    slow = ExecSink(
        [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(30)"],
        timeout=0.5,
        name="slow",
    )
    missing = ExecSink([str(tmp_path / "no-such-handler")], name="missing")

    async def scenario() -> None:
        async with opened(db_path, [slow, missing]) as dispatcher:
            await asyncio.wrap_future(dispatcher.publish(make_events(1)))
            store = dispatcher.writer.store

            def rows() -> dict[str, OutboxRow]:
                return {r.sink: r for r in store.outbox_all()}

            await wait_until(lambda: rows()["slow"].delivered_at is not None)
            await wait_until(lambda: rows()["missing"].attempts >= 3)
            assert rows()["missing"].delivered_at is None

    run(scenario)
    assert "killed after 0.5 s: started" in info_logs.text
    assert "cannot start" in info_logs.text
