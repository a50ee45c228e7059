"""Events on every state transition, delivered at least once.

:class:`EventDispatcher` takes :class:`Event` objects (``Event.from_transition``) and, in one
transaction, records each transition in the history and writes one outbox row per delivery
sink, *before* any delivery is attempted. It writes a JSON log line at once (:class:`JsonLineSink`,
not persisted: it is a log). One delivery loop, with one timer, then takes due rows from the
outbox and hands them to the sinks with bounded concurrency:

- :class:`WebhookSink` POSTs the event JSON (``X-Sipalive-Event-Id``, optional
  ``X-Sipalive-Signature: sha256=<HMAC-SHA256 of the body>``); anything but a 2xx is retried.
- :class:`ExecSink` runs a command per event, Nagios event-handler style, the event in
  ``SIPALIVE_*`` environment variables, never through a shell; its output goes to the log.

A failed delivery is retried with exponential back-off and jitter (:class:`Backoff`), per event
(persisted in the outbox) and per sink (in memory: a sink that fails is left alone until its
back-off expires, so a receiver that is down gets one attempt per period, not one per event).
A delivered row is marked in the outbox; a row stays claimed until that mark is committed, so
the loop never hands out an event twice in one run. A restart resumes every unmarked row: an
event whose delivery succeeded but whose mark was not yet committed is delivered again, which is
why receivers must deduplicate by event id (at-least-once).

``DeliveryError`` is a :class:`~sipalive.errors.SipaliveError`: a sink could not deliver an
event and wants it retried later.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import os
import random
import shlex
import signal
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Protocol, TextIO

from sipalive import __version__, clock
from sipalive.errors import ConfigError, DeliveryError
from sipalive.store.sqlite import OutboxRow, StoreWriter, TransitionRow, iso8601

if TYPE_CHECKING:
    import aiohttp

log = logging.getLogger("sipalive.events")

SIGNATURE_HEADER = "X-Sipalive-Signature"
EVENT_ID_HEADER = "X-Sipalive-Event-Id"


@dataclass(frozen=True, slots=True)
class Event:
    """A target changed state. ``at`` is wall-clock epoch seconds; JSON shows it in ISO 8601."""

    event_id: str
    target: str
    uri: str
    at: float
    from_state: str
    to_state: str
    cause: str
    rtt_s: float | None
    type: str = "transition"

    @classmethod
    def from_transition(cls, row: TransitionRow, uri: str, kind: str = "transition") -> Event:
        """A new event (fresh uuid4 id) for one transition of the target at ``uri``.

        ``kind`` (the event's ``type``) "contact": a contact registered with the monitor's
        registrar changed state; ``target`` is then its AOR and ``uri`` the contact."""
        return cls(
            uuid.uuid4().hex,
            row.target,
            uri,
            row.at,
            row.from_state,
            row.to_state,
            row.cause,
            row.rtt,
            kind,
        )

    def transition(self) -> TransitionRow:
        return TransitionRow(
            self.target, self.at, self.from_state, self.to_state, self.cause, self.rtt_s
        )

    def to_json(self) -> dict[str, object]:
        return {
            "event_id": self.event_id,
            "type": self.type,
            "target": self.target,
            "uri": self.uri,
            "at": iso8601(self.at),
            "from": self.from_state,
            "to": self.to_state,
            "cause": self.cause,
            "rtt_s": self.rtt_s,
        }

    def dumps(self) -> str:
        """Compact JSON, the exact body a webhook receives (and signs)."""
        return json.dumps(self.to_json(), separators=(",", ":"))

    @classmethod
    def loads(cls, payload: str) -> Event:
        data = json.loads(payload)
        rtt = data["rtt_s"]
        return cls(
            event_id=str(data["event_id"]),
            target=str(data["target"]),
            uri=str(data["uri"]),
            at=datetime.fromisoformat(str(data["at"])).timestamp(),
            from_state=str(data["from"]),
            to_state=str(data["to"]),
            cause=str(data["cause"]),
            rtt_s=None if rtt is None else float(rtt),
            type=str(data["type"]),
        )

    def environment(self) -> dict[str, str]:
        """The ``SIPALIVE_*`` variables of an exec hook; ``SIPALIVE_RTT`` is empty without RTT."""
        return {
            "SIPALIVE_EVENT_ID": self.event_id,
            "SIPALIVE_TARGET": self.target,
            "SIPALIVE_FROM": self.from_state,
            "SIPALIVE_TO": self.to_state,
            "SIPALIVE_CAUSE": self.cause,
            "SIPALIVE_RTT": "" if self.rtt_s is None else repr(self.rtt_s),
            "SIPALIVE_AT": iso8601(self.at),
            "SIPALIVE_URI": self.uri,
        }


def signature(secret: str | bytes, body: bytes) -> str:
    """The ``X-Sipalive-Signature`` value: ``sha256=`` and the hex HMAC-SHA256 of the body."""
    key = secret.encode() if isinstance(secret, str) else secret
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential back-off: ``initial`` doubling (``factor``) up to ``maximum`` seconds, each
    delay shortened by a random fraction up to ``jitter`` so retries after an outage spread."""

    initial: float = 1.0
    factor: float = 2.0
    maximum: float = 300.0
    jitter: float = 0.2

    def delay(self, failures: int, rng: Callable[[], float] = random.random) -> float:
        """The wait after the ``failures``-th consecutive failure (1 for the first)."""
        exponent = min(max(failures - 1, 0), 64)
        base = min(self.maximum, self.initial * self.factor**exponent)
        return base * (1.0 - self.jitter * rng())


class JsonLineSink:
    """Writes each event as one JSON line to a text stream, at once (not through the outbox)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def emit(self, event: Event) -> None:
        try:
            self.stream.write(event.dumps() + "\n")
            self.stream.flush()
        except (OSError, ValueError) as exc:
            log.error("cannot write event %s as a JSON line: %s", event.event_id, exc)


class Sink(Protocol):
    """A destination fed from the outbox. ``key`` names it in the outbox's ``sink`` column."""

    @property
    def key(self) -> str: ...

    async def open(self) -> None: ...

    async def deliver(self, event: Event, payload: str) -> None:
        """Deliver, or raise DeliveryError to be retried later."""

    async def close(self) -> None: ...


class WebhookSink:
    """POSTs each event's JSON to ``url``; a 2xx answer is a delivery, anything else a retry."""

    def __init__(
        self,
        url: str,
        secret: str | bytes | None = None,
        *,
        timeout: float = 10.0,
        name: str | None = None,
    ) -> None:
        self.url = url
        self.secret = secret
        self.timeout = timeout
        self._key = name or url
        self._session: aiohttp.ClientSession | None = None

    @property
    def key(self) -> str:
        return self._key

    async def open(self) -> None:
        import aiohttp

        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            headers={"User-Agent": f"sipalive/{__version__}"},
        )

    async def deliver(self, event: Event, payload: str) -> None:
        import aiohttp

        if self._session is None:
            raise DeliveryError(f"webhook {self.url}: not open")
        body = payload.encode()
        headers = {"Content-Type": "application/json", EVENT_ID_HEADER: event.event_id}
        if self.secret is not None:
            headers[SIGNATURE_HEADER] = signature(self.secret, body)
        try:
            async with self._session.post(
                self.url, data=body, headers=headers, allow_redirects=False
            ) as response:
                if not 200 <= response.status < 300:
                    raise DeliveryError(f"webhook {self.url}: HTTP {response.status}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise DeliveryError(f"webhook {self.url}: {type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class ExecSink:
    """Runs ``command`` (an argument list, no shell) once per event, with ``SIPALIVE_*`` set.

    The handler has run once it exits: a non-zero status or a timeout (the process group is
    then killed) is logged, not retried, as a Nagios event handler is not re-run. Only a
    command that cannot be started (missing, not executable, no resources) is retried.
    Output (stdout and stderr, the first ``output_limit`` bytes) goes to the log.
    """

    def __init__(
        self,
        command: Sequence[str],
        *,
        timeout: float = 30.0,
        name: str | None = None,
        output_limit: int = 64 * 1024,
    ) -> None:
        if not command:
            raise ConfigError("exec", "the command is empty")
        self.command = list(command)
        self.timeout = timeout
        self.output_limit = output_limit
        self._key = name or "exec:" + shlex.join(self.command)

    @property
    def key(self) -> str:
        return self._key

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def deliver(self, event: Event, payload: str) -> None:
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env={**os.environ, **event.environment()},
                start_new_session=True,
            )
        except OSError as exc:
            raise DeliveryError(f"{self._key}: cannot start: {exc}") from exc
        output = bytearray()
        truncated = timed_out = False
        try:
            async with asyncio.timeout(self.timeout):
                assert proc.stdout is not None
                while chunk := await proc.stdout.read(65536):
                    room = self.output_limit - len(output)
                    output += chunk[:room]
                    truncated = truncated or len(chunk) > room
                await proc.wait()
        except TimeoutError:
            timed_out = True
        finally:
            if proc.returncode is None:
                # The whole session: a handler's own children must not outlive it.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        text = output.decode(errors="replace").rstrip() + (" [truncated]" if truncated else "")
        if timed_out:
            log.warning(
                "%s: event %s: killed after %g s: %s", self._key, event.event_id, self.timeout, text
            )
        elif proc.returncode:
            log.warning(
                "%s: event %s: exit status %d: %s",
                self._key,
                event.event_id,
                proc.returncode,
                text,
            )
        else:
            log.info("%s: event %s: done: %s", self._key, event.event_id, text)


class EventDispatcher:
    """Records events durably and delivers them to ``sinks`` at least once.

    ``concurrency`` bounds the deliveries in flight per sink, and so the rows one look at the
    outbox takes. Use as ``async with`` or ``start``/``close``.
    """

    def __init__(
        self,
        writer: StoreWriter,
        sinks: Sequence[Sink] = (),
        *,
        lines: JsonLineSink | None = None,
        backoff: Backoff | None = None,
        concurrency: int = 4,
        wall: Callable[[], float] = clock.wall,
        rng: Callable[[], float] = random.random,
    ) -> None:
        keys = [s.key for s in sinks]
        if len(set(keys)) != len(keys):
            raise ConfigError("events", f"two sinks share a name: {keys}")
        self.writer = writer
        self.sinks = {s.key: s for s in sinks}
        self.lines = lines
        self.backoff = backoff or Backoff()
        self.concurrency = concurrency
        self._wall = wall
        self._rng = rng
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._active: dict[str, set[asyncio.Task[None]]] = {k: set() for k in keys}
        self._claimed: set[tuple[str, str]] = set()
        self._marking: list[tuple[Future[None], tuple[str, str]]] = []
        self._held: dict[str, float] = {}
        self._sink_failures: dict[str, int] = dict.fromkeys(keys, 0)

    async def __aenter__(self) -> EventDispatcher:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Open the sinks and start the delivery loop, which first resumes pending rows."""
        self._loop = asyncio.get_running_loop()
        for sink in self.sinks.values():
            await sink.open()
        self._task = asyncio.create_task(self._run(), name="sipalive-events")

    def publish(self, events: Iterable[Event]) -> Future[None]:
        """Record the events' transitions and queue them for every sink, in one transaction.

        This is the one place transitions reach the history: do not also write them with
        ``add_transitions``. The future resolves once that is committed; delivery starts only
        after it. Close the dispatcher before its writer.
        """
        events = list(events)
        now = self._wall()
        outbox: list[OutboxRow] = []
        for event in events:
            if self.lines is not None:
                self.lines.emit(event)
            payload = event.dumps()
            outbox += [OutboxRow(event.event_id, key, payload, now, now) for key in self.sinks]
        future = self.writer.write(
            transitions=[e.transition() for e in events], outbox=outbox, urgent=True
        )
        if outbox:
            future.add_done_callback(self._wake_threadsafe)
        return future

    async def close(self, grace: float = 5.0) -> None:
        """Stop the loop, give deliveries in flight ``grace`` seconds, commit their marks and
        close the sinks. Anything not delivered stays in the outbox for the next start."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None
        active = [task for tasks in self._active.values() for task in tasks]
        if active:
            _, late = await asyncio.wait(active, timeout=grace)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        if self._marking:
            with contextlib.suppress(ConfigError):
                await asyncio.wrap_future(self.writer.barrier())
        for sink in self.sinks.values():
            await sink.close()

    def _wake_threadsafe(self, _future: object = None) -> None:
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is already closed
            loop.call_soon_threadsafe(self._wake.set)

    def _release_marked(self) -> None:
        still: list[tuple[Future[None], tuple[str, str]]] = []
        for future, key in self._marking:
            if future.done():
                self._claimed.discard(key)
            else:
                still.append((future, key))
        self._marking = still

    async def _run(self) -> None:
        while not self._closing:
            self._wake.clear()
            self._release_marked()
            now = self._wall()
            for key, until in list(self._held.items()):
                if until <= now:
                    del self._held[key]
            # Claimed rows (in flight, or their mark not yet committed) are still undelivered
            # in the database and may come back, so ask for them plus one row per free slot.
            wanted = {
                key: sum(1 for _, sink in self._claimed if sink == key)
                + self.concurrency
                - len(active)
                for key, active in self._active.items()
                if key not in self._held and len(active) < self.concurrency
            }
            timeout: float | None = None
            due: list[OutboxRow] = []
            next_due: float | None = None
            if wanted:
                try:
                    due, next_due = await asyncio.to_thread(self._poll, now, wanted)
                except ConfigError as exc:
                    log.error("cannot read the event outbox: %s", exc)
                    next_due = now + self.backoff.initial
            for row in due:
                active = self._active[row.sink]
                if (row.event_id, row.sink) in self._claimed or len(active) >= self.concurrency:
                    continue
                self._start(row)
            deadlines = [t for t in (next_due, *self._held.values()) if t is not None]
            if deadlines:
                # Capped: deadlines are wall-clock times, and the wall clock may be stepped.
                timeout = min(max(0.0, min(deadlines) - now), self.backoff.maximum)
            if self._closing:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    def _poll(self, now: float, wanted: dict[str, int]) -> tuple[list[OutboxRow], float | None]:
        """Runs in a worker thread: the due rows per sink, and when the next row falls due."""
        store = self.writer.store
        due: list[OutboxRow] = []
        for key, limit in wanted.items():
            due += store.outbox_due(now, limit, [key])
        return due, store.outbox_next_due(now, list(wanted))

    def _start(self, row: OutboxRow) -> None:
        key = (row.event_id, row.sink)
        self._claimed.add(key)
        task = asyncio.create_task(self._deliver(row))
        active = self._active[row.sink]
        active.add(task)

        def done(task: asyncio.Task[None]) -> None:
            active.discard(task)
            self._wake.set()
            if not task.cancelled() and (exc := task.exception()) is not None:
                # Only a mark the writer refused gets here (closed before the dispatcher).
                log.error("event %s to %s: %s", row.event_id, row.sink, exc)

        task.add_done_callback(done)

    async def _deliver(self, row: OutboxRow) -> None:
        sink = self.sinks[row.sink]
        error: str | None = None
        try:
            await sink.deliver(Event.loads(row.payload), row.payload)
        except DeliveryError as exc:
            error = str(exc)
        except Exception as exc:
            # A bug in a sink or an unreadable payload: retried like any failure, never lost.
            log.exception("event %s to %s: unexpected error", row.event_id, row.sink)
            error = repr(exc)
        now = self._wall()
        if error is None:
            self._sink_failures[row.sink] = 0
            future = self.writer.outbox_mark_delivered(row.event_id, row.sink, now)
        else:
            if self._held.get(row.sink, 0.0) <= now:
                # one failed round counts once, however many events were out in it: a sink
                # that is down gets one try per back-off period, not 2**N-longer waits
                self._sink_failures[row.sink] += 1
                hold = now + self.backoff.delay(self._sink_failures[row.sink], self._rng)
                self._held[row.sink] = hold
            next_at = now + self.backoff.delay(row.attempts + 1, self._rng)
            log.warning(
                "event %s to %s: attempt %d failed, next in %.1f s: %s",
                row.event_id,
                row.sink,
                row.attempts + 1,
                next_at - now,
                error,
            )
            future = self.writer.outbox_mark_failed(row.event_id, row.sink, now, next_at, error)
        self._marking.append((future, (row.event_id, row.sink)))
        future.add_done_callback(self._wake_threadsafe)
