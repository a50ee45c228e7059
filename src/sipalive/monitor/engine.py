"""The qualify engine: continuous OPTIONS qualify of many targets, keep-alives per transport.

Shape (STYLE habit 8): ONE scheduler (a calendar of deadlines) for every target's next probe,
ONE TimerWheel for every keep-alive machine, ONE TransactionDriver for every transaction, ONE
UDP socket per address family with branch-keyed dispatch; a bounded number of probes in flight.
A target costs a few objects, never a task or a timer of its own: a task exists only for a
probe that must first resolve a name or open a connection, and those are bounded by the
in-flight limit. A probe sent on time with no credentials runs in the driver Table of its
timers (a row of a ClientTable, no transaction object); a late one (after resolving or
connecting) or one answering a digest challenge runs as a ClientTransaction of its own.

A probe's ``qualify_timeout`` covers everything (DNS, connect, TLS, the transaction). Results
go through the target's hysteresis machine; a transition is published as an event (stored in
the history and the outbox in one transaction, then delivered) and the target's row is
written back, so a restart resumes state, counters and history.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import math
import os
import random
import socket
import ssl
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar, overload

from sipalive import clock
from sipalive.config import MonitorConfig, Target, TargetSettings
from sipalive.errors import ParseError, ResolveError, TransportError
from sipalive.events import Event, EventDispatcher
from sipalive.http.view import (
    ContactView,
    EngineStats,
    ProbeReport,
    RttMinuteView,
    TargetSample,
    TargetView,
    TransitionView,
)
from sipalive.io.driver import Table, TransactionDriver
from sipalive.io.flows import StreamFlow, open_stream
from sipalive.io.resolver import Target as Resolved
from sipalive.io.resolver import is_ip_literal, resolve
from sipalive.io.timers import TimerWheel
from sipalive.io.tlsctx import TlsOptions, client_context
from sipalive.io.udpshared import PeerFlow, SharedUdpEndpoint, open_shared_udp
from sipalive.io.ws import WsFlow, open_ws
from sipalive.keepalive import crlf as crlf_ka
from sipalive.keepalive import stun as stun_ka
from sipalive.qualify.history import Ring, rtt_bucket
from sipalive.qualify.schedule import Scheduler
from sipalive.qualify.state import QualifyCounters, QualifySettings, QualifyState, Transition
from sipalive.qualify.target import QualifyTarget
from sipalive.sip import digest
from sipalive.sip.build import OptionsTemplate, format_host, make_request
from sipalive.sip.transaction import (
    Cause,
    ClientTransaction,
    TimerConfig,
    TransactionResult,
)
from sipalive.sip.uri import parse_uri
from sipalive.store.sqlite import PruneResult, Store, StoreWriter, TargetRow, TransitionRow
from sipalive.stun import codec as stun

if TYPE_CHECKING:
    from sipalive.io.registrar import RegistrarService

log = logging.getLogger("sipalive.monitor")

KeptFlow = StreamFlow | WsFlow  # a connection kept per target (TCP, TLS, WebSocket)
# a probe in a driver Table: its flow, target, deadline and start
Probe = tuple["PeerFlow | KeptFlow", "Runtime", float, float]
RESOLVE_TTL = 300.0  # seconds a resolution is reused (the resolver does not report DNS TTLs)
R = TypeVar("R")
ROW_PERIOD = 300.0
"""How often a target's row (counters, last RTT) is written when nothing else changes: a
transition writes it at once and durably, a clean stop writes every row; after a crash the
counters restored may be up to this old. At 100k targets every 60 s, a row per probe was
half the store thread's work."""
PRUNE_PERIOD = 3600.0  # how often history older than [storage] retention_days is deleted
TICK = 0.005
"""The probe timer fires on multiples of 5 ms: at 100k targets every 60 s a due time falls
every 0.6 ms, and one loop timer per due time would cost a TimerHandle each; a tick hands
out ~8 at once for at most 5 ms of lag."""


@functools.lru_cache(maxsize=1024)
def qualify_settings(s: TargetSettings) -> QualifySettings:
    """One QualifySettings per distinct TargetSettings (100k targets often share one)."""
    return QualifySettings(
        qualify_frequency=s.qualify_frequency,
        qualify_timeout=s.qualify_timeout,
        qualify_2xx_only=s.qualify_2xx_only,
        lagged_rtt=s.lagged_rtt,
        fail_threshold=s.fail_threshold,
        recover_threshold=s.recover_threshold,
        unreachable_frequency=s.unreachable_frequency,
        expect_codes=s.expect_code_ranges,
    )


@functools.lru_cache(maxsize=1024)
def _timer_config(s: TargetSettings) -> TimerConfig:
    return TimerConfig(
        t1=s.t1, t2=max(4.0, s.t1), timeout=s.qualify_timeout, retransmits=s.retransmits
    )


class Runtime:
    """One target's live state: its qualify machine, where it resolves, its flow."""

    __slots__ = (
        "auth_nc",
        "crlf",
        "cseq",
        "dest",
        "flow",
        "last_error",
        "last_probe_at",
        "last_status",
        "mapped",
        "probing",
        "q",
        "resolved_at",
        "row_at",
        "sample",
        "sample_version",
        "stun_ka",
        "table",
        "target",
        "template",
        "udp_ka",
    )

    def __init__(self, target: Target, q: QualifyTarget) -> None:
        self.target = target
        self.q = q
        self.dest: Resolved | None = None
        self.resolved_at = 0.0
        self.flow: PeerFlow | KeptFlow | None = None
        self.template: OptionsTemplate | None = None
        self.cseq = 0
        self.auth_nc = 0
        self.last_status: int | None = None
        self.last_error: str | None = None
        self.last_probe_at: float | None = None
        self.crlf: crlf_ka.CrlfPinger | None = None
        self.udp_ka: crlf_ka.UdpCrlfKeepalive | None = None
        self.stun_ka: stun_ka.StunKeepalive | None = None
        self.mapped: tuple[str, int] | None = None
        self.probing = False
        # the driver Table of its on-time probes (one per timers): found once per flow, as
        # looking it up by settings hashes every setting
        self.table: Table[Probe] | None = None
        self.row_at = -math.inf  # wall time its row was last queued for the store
        # its TargetSample as of q.version: the same object while nothing changed, so that a
        # scrape builds only the changed targets' samples and /metrics can reuse their lines
        self.sample: TargetSample | None = None
        self.sample_version = -1

    @property
    def name(self) -> str:
        return self.target.name

    @property
    def settings(self) -> TargetSettings:
        return self.target.settings

    def row(self) -> TargetRow:
        peer = self.q.peer
        probes, successes, failures, timeouts, transport_errors, rejected = peer.totals()
        return TargetRow(
            self.target.name, self.target.uri, peer.state.value, peer.since, self.q.rtt.last,
            probes, successes, failures, peer.streak(), timeouts, transport_errors, rejected,
        )  # fmt: skip


class Rows(Sequence[R]):
    """Every target's view (or sample), each built when it is read; views are never kept.

    ``/metrics``, ``/api/summary`` and the page read the targets in slices and yield to the
    loop between them: building the views of 100k targets in one go (RTT percentiles
    included) held the loop for 1-2 s, while a slice of 1000 takes a few milliseconds. Not
    keeping them keeps RSS flat: a view with its recent RTTs is ~1 kB, 100 MB at 100k. A
    sample (~0.2 kB) is kept on its Runtime until the target changes (``_sample``)."""

    __slots__ = ("_build", "_runtimes")

    def __init__(self, runtimes: list[Runtime], build: Callable[[Runtime], R]) -> None:
        self._runtimes = runtimes
        self._build = build

    def __len__(self) -> int:
        return len(self._runtimes)

    @overload
    def __getitem__(self, index: int) -> R: ...

    @overload
    def __getitem__(self, index: slice) -> list[R]: ...

    def __getitem__(self, index: int | slice) -> R | list[R]:
        if isinstance(index, slice):
            return list(map(self._build, self._runtimes[index]))
        return self._build(self._runtimes[index])


class MonitorEngine:
    """Implements ``sipalive.http.view.MonitorView`` for the HTTP layer."""

    def __init__(
        self,
        config: MonitorConfig,
        *,
        store: Store,
        writer: StoreWriter,
        dispatcher: EventDispatcher,
        max_in_flight: int = 2000,
        udp_rcvbuf: int | None = 4 * 1024 * 1024,
        rand: Callable[[], float] = random.random,
        wall: Callable[[], float] = clock.wall,
    ) -> None:
        self.config = config
        self.store = store
        self.writer = writer
        self.dispatcher = dispatcher
        self.max_in_flight = max_in_flight
        self.udp_rcvbuf = udp_rcvbuf
        self._rand = rand
        self._wall = wall
        self.runtimes: dict[str, Runtime] = {}
        self.scheduler = Scheduler(rand=rand, max_in_flight=max_in_flight)
        self.driver: TransactionDriver | None = None
        # the probes sent on time without credentials, one table per (timers, reliable)
        self._tables: dict[tuple[TimerConfig, bool], Table[Probe]] = {}
        self.wheel: TimerWheel | None = None
        self.udp: dict[int, SharedUdpEndpoint] = {}
        self._udp_opening: dict[int, asyncio.Future[SharedUdpEndpoint]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._armed_for: float | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._stun_owner: dict[bytes, Runtime] = {}
        self._ssl: dict[tuple[str | None, bool, str | None, str | None], ssl.SSLContext] = {}
        self._prefix = "z9hG4bK" + os.urandom(6).hex()
        self._counter = 0
        self._lags: Ring[float] = Ring(4096)
        self.counts = {"success": 0, "failure": 0, "timeout": 0, "transport_error": 0}
        self.started_at = wall()
        self._closing = False
        self._prune_handle: asyncio.TimerHandle | None = None
        self._probed: set[str] = set()
        self._qualified: int | None = None
        self._refrozen = False
        self.registrar: RegistrarService | None = None  # [registrar]: set by cli/monitor.py

    # -- life cycle ------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.driver = TransactionDriver(self._loop)
        self.wheel = TimerWheel(self._loop)
        rows = self.store.load_targets()
        for target in self.config.targets:
            self._add(target, rows.get(target.name))
        self.writer.upsert_targets([rt.row() for rt in self.runtimes.values()])
        # the targets live as long as the process: keep the collector from walking them
        gc.collect()
        gc.freeze()
        self._schedule_prune(0.0)
        self._arm()
        log.info("monitor started: %d targets", len(self.runtimes))

    async def close(self) -> None:
        self._closing = True
        if self._handle is not None:
            self._handle.cancel()
        if self._prune_handle is not None:
            self._prune_handle.cancel()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.driver is not None:
            self.driver.cancel_all("monitor stopping")
        for rt in self.runtimes.values():
            self._drop_flow(rt)
        if self.wheel is not None:
            self.wheel.close()
        for endpoint in self.udp.values():
            await endpoint.aclose()
        self.writer.upsert_targets([rt.row() for rt in self.runtimes.values()])
        await asyncio.sleep(0)

    def reload(self, config: MonitorConfig) -> None:
        """SIGHUP: add, remove and update targets; state, counters and history are kept."""
        old = self.runtimes
        now = self._wall()
        new_names = {t.name for t in config.targets}
        for name in [n for n in old if n not in new_names]:
            gone = old.pop(name)
            if name in self.scheduler:  # a nonqualified target was never scheduled
                self.scheduler.remove(name)
            self._drop_flow(gone)
        mono = clock.monotonic()
        for target in config.targets:
            rt = old.get(target.name)
            if rt is None:
                self._add(target, None)
                continue
            if target == rt.target:
                continue
            if (target.uri, target.transport) != (rt.target.uri, rt.target.transport):
                rt.dest = None
            if target.settings != rt.target.settings or rt.dest is None:
                # User-Agent, From, keep-alive, TCP and TLS settings live in the flow and its
                # request template: rebuild both at the next probe
                self._drop_flow(rt)
            rt.target = target
            transition = rt.q.update_settings(qualify_settings(target.settings), now)
            if transition is not None:
                self._emit(rt, transition)
            name = target.name
            if not rt.q.settings.qualified:
                if name in self.scheduler:
                    self.scheduler.remove(name)
            elif name in self.scheduler:
                # also right while a probe is in flight: finished() then uses the new interval
                self.scheduler.reschedule(name, rt.q.next_interval(), mono)
            else:
                self.scheduler.add(name, rt.q.next_interval(), mono)
        self.config = config
        self._qualified = None
        self._arm()
        log.info("configuration reloaded: %d targets", len(self.runtimes))

    def _add(self, target: Target, row: TargetRow | None) -> None:
        settings = qualify_settings(target.settings)
        if row is not None and row.uri == target.uri:
            counters = QualifyCounters(
                probes=row.probes,
                successes=row.successes,
                failures=row.failures,
                timeouts=row.timeouts,
                transport_errors=row.transport_errors,
                rejected=row.rejected,
            )
            q = QualifyTarget(
                target.name,
                settings,
                state=QualifyState(row.state),
                since=row.since,
                counters=counters,
                keep_history=False,  # the store keeps transitions and RTT minutes
            )
        else:
            q = QualifyTarget(target.name, settings, since=self._wall(), keep_history=False)
        rt = Runtime(target, q)
        self.runtimes[target.name] = rt
        if settings.qualified:
            self.scheduler.add(target.name, settings.qualify_frequency, clock.monotonic())

    # -- scheduling: one loop timer -----------------------------------------------------

    def _arm(self) -> None:
        if self._closing or self._loop is None:
            return
        when = self.scheduler.get_timer()
        if when is None:
            return
        tick = math.ceil(when / TICK) * TICK
        if tick < when:  # float rounding: a tick is never before the deadline it serves
            tick += TICK
        if self._armed_for is not None and self._armed_for <= tick and self._handle is not None:
            return
        if self._handle is not None:
            self._handle.cancel()
        self._armed_for = tick
        self._handle = self._loop.call_later(max(0.0, tick - clock.monotonic()), self._due)

    def _due(self) -> None:
        armed = self._armed_for or 0.0
        self._handle = None
        self._armed_for = None
        now = clock.monotonic()
        # the loop may run a timer up to its clock resolution early: what was armed is due
        for due in self.scheduler.pop_due(max(now, armed)):
            self._lags.append(max(0.0, now - due.when))
            rt = self.runtimes.get(due.key)
            if rt is None:
                self.scheduler.remove(due.key)
                continue
            self._launch(rt, now)
        self._arm()

    def _schedule_prune(self, delay: float) -> None:
        if self._loop is not None and not self._closing:
            self._prune_handle = self._loop.call_later(delay, self._prune)

    def _prune(self) -> None:
        """Retention: off the loop (the store serialises its connection), then again later."""
        assert self._loop is not None
        days = self.config.storage.retention_days
        future = self._loop.run_in_executor(None, self.store.prune, days, self._wall())

        def done(f: asyncio.Future[PruneResult]) -> None:
            if not f.cancelled() and f.exception() is not None:
                log.error("pruning the history failed: %s", f.exception())
            self._schedule_prune(PRUNE_PERIOD)

        future.add_done_callback(done)

    # -- probing ----------------------------------------------------------------------------

    def _launch(self, rt: Runtime, now: float) -> None:
        rt.probing = True
        deadline = now + rt.settings.qualify_timeout
        if (
            rt.flow is not None
            and rt.dest is not None
            and now - rt.resolved_at < RESOLVE_TTL
            and not (isinstance(rt.flow, KeptFlow) and rt.flow.closed)
        ):
            self._send(rt, deadline, now, None)
            return
        task = asyncio.ensure_future(self._prepare_and_send(rt, deadline, now))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _prepare_and_send(self, rt: Runtime, deadline: float, started: float) -> None:
        try:
            await self._prepare(rt, deadline)
        except (ResolveError, TransportError, ParseError, OSError) as exc:
            timed_out = clock.monotonic() >= deadline
            # ended before its transaction could start (resolution, connection)
            result = TransactionResult.failure(
                408 if timed_out else 503,
                Cause.TIMEOUT if timed_out else Cause.TRANSPORT_ERROR,
                started,
                clock.monotonic(),
                str(exc),
            )
            self._account(rt, result)
            return
        self._send(rt, deadline, started, None)

    async def _prepare(self, rt: Runtime, deadline: float) -> None:
        """Resolve (RFC 3263) if needed and open the flow; both within the probe deadline."""
        now = clock.monotonic()
        uri = rt.target.sip_uri
        if rt.dest is None or now - rt.resolved_at >= RESOLVE_TTL:
            async with asyncio.timeout(max(0.001, deadline - now)):
                found = await resolve(
                    uri.scheme, uri.host, uri.port, rt.target.transport,
                    timeout=max(0.001, deadline - now),
                    supported=_supported(rt.target.transport),
                )  # fmt: skip
            # an IP literal never needs resolving again; a name whose answer did not change
            # keeps its flow (a TCP/TLS connection, the UDP keep-alive, the template)
            rt.resolved_at = math.inf if is_ip_literal(uri.host) else clock.monotonic()
            if found[0] != rt.dest:
                rt.dest = found[0]
                self._drop_flow(rt)
        dest = rt.dest
        assert dest is not None
        if rt.flow is not None and not (isinstance(rt.flow, KeptFlow) and rt.flow.closed):
            return
        if dest.transport == "udp":
            endpoint = await self._udp_endpoint(dest.address)
            rt.flow = endpoint.flow((dest.address, dest.port))
            local = (_local_address(dest.address, dest.port), endpoint.local[1])
            self._start_udp_keepalive(rt)
        elif dest.transport in ("tcp", "tls"):
            s = rt.settings
            ctx = None
            if dest.transport == "tls":
                ctx = self._tls(s)
            flow = await open_stream(
                self._driver,
                dest.address,
                dest.port,
                ssl_context=ctx,
                server_hostname=uri.host,  # RFC 5922 §4
                timeout=max(0.001, deadline - clock.monotonic()),
                sockopts=s.tcp_keepalive.sockopts() if s.tcp_keepalive_enable else None,
            )
            if s.tcp_user_timeout:
                sock = flow.transport.get_extra_info("socket") if flow.transport else None
                if sock is not None:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, s.tcp_user_timeout)
            rt.flow = flow
            flow.on_close = lambda exc, rt=rt: self._flow_closed(rt, exc)
            local = flow.local
            self._start_crlf(rt, flow)
        elif dest.transport in ("ws", "wss"):
            s = rt.settings
            secure = dest.transport == "wss"
            ws = await open_ws(
                self._driver,
                dest.address,
                dest.port,
                secure=secure,
                host=uri.host,  # RFC 5922 §4
                path=s.ws_path,
                ssl_context=self._tls(s) if secure else None,
                timeout=max(0.001, deadline - clock.monotonic()),
                sockopts=s.tcp_keepalive.sockopts() if s.tcp_keepalive_enable else None,
            )
            rt.flow = ws
            ws.on_close = lambda exc, rt=rt: self._flow_closed(rt, exc)
            local = ws.local
            self._start_crlf(rt, ws)
        else:
            raise TransportError(f"transport {dest.transport} is not supported")
        ruri = str(uri)
        if dest.transport != "udp" and uri.transport is None:
            ruri = str(uri.with_transport(dest.transport))
        rt.template = OptionsTemplate(
            ruri,
            transport=dest.transport,
            local=local,
            from_tag=os.urandom(5).hex(),
            from_uri=rt.settings.from_uri,
            user_agent=rt.settings.user_agent or "sipalive/0.1",
        )

    @property
    def _driver(self) -> TransactionDriver:
        assert self.driver is not None
        return self.driver

    def _send(
        self, rt: Runtime, deadline: float, started: float, authorization: tuple[str, str] | None
    ) -> None:
        assert rt.dest is not None
        assert rt.flow is not None
        assert rt.template is not None
        self._counter += 1
        rt.cseq += 1
        branch = f"{self._prefix}{self._counter:x}"
        call_id = f"{self._counter:x}-{self._prefix[7:]}@sipalive"
        s = rt.target.settings
        reliable = rt.dest.transport != "udp"
        if authorization is None:
            data = rt.template.fill(branch, call_id, rt.cseq)
            if deadline - started == s.qualify_timeout and clock.monotonic() - started < 0.001:
                # sent at once with the whole timeout: one table per settings' timers (no
                # transaction object, closure or heap entry per probe)
                table = rt.table
                if table is None:
                    table = rt.table = self._table(_timer_config(s), reliable)
                table.send((rt.flow, rt, deadline, started), branch, "OPTIONS", data)
                return
        else:
            data = self._auth_request(rt, branch, call_id, authorization)
        # late (resolution, a connection) or answering a challenge: timers of its own
        remaining = max(0.001, deadline - clock.monotonic())
        timers = TimerConfig(
            t1=s.t1, t2=max(4.0, s.t1), timeout=remaining, retransmits=s.retransmits
        )
        txn = ClientTransaction.from_bytes(
            data, branch=branch, method="OPTIONS", reliable=reliable, timers=timers
        )
        # a callback rather than a future: no Future, no loop Handle per probe
        # only a challenge's response is read (_done): any other final need not be parsed
        self._driver.begin(
            txn,
            rt.flow,
            lambda result: self._done(rt, result, deadline, started, authorization),
            needs_response=_CHALLENGES,
        )

    def _table(self, timers: TimerConfig, reliable: bool) -> Table[Probe]:
        table = self._tables.get((timers, reliable))
        if table is None:
            table = self._driver.table(
                timers, self._table_done, reliable=reliable, needs_response=_CHALLENGES
            )
            self._tables[(timers, reliable)] = table
        return table

    def _table_done(self, probe: Probe, result: TransactionResult) -> None:
        self._done(probe[1], result, probe[2], probe[3], None)

    def _auth_request(
        self, rt: Runtime, branch: str, call_id: str, authorization: tuple[str, str]
    ) -> bytes:
        assert rt.dest is not None
        assert isinstance(rt.flow, PeerFlow | KeptFlow)
        uri = str(rt.target.sip_uri)
        local = rt.flow.local if isinstance(rt.flow, KeptFlow) else rt.flow.endpoint.local
        return make_request(
            "OPTIONS",
            uri,
            transport=rt.dest.transport,
            local=local,
            branch=branch,
            from_uri=rt.settings.from_uri or "sip:sipalive@invalid",
            from_tag=os.urandom(5).hex(),
            call_id=call_id,
            cseq=rt.cseq,
            user_agent=rt.settings.user_agent or "sipalive/0.1",
            extra=[authorization, ("Accept", "application/sdp")],
        ).encode()

    def _done(
        self,
        rt: Runtime,
        result: TransactionResult,
        deadline: float,
        started: float,
        authorization: tuple[str, str] | None,
    ) -> None:
        if self._closing:
            return
        s = rt.settings
        if (
            result.status in (401, 407)
            and authorization is None
            and s.auth_username
            and s.auth_password is not None
            and result.response is not None
            and clock.monotonic() < deadline
        ):
            header = "Proxy-Authenticate" if result.status == 407 else "WWW-Authenticate"
            challenge_text = result.response.headers.get(header)
            if challenge_text:
                try:
                    challenge = digest.Challenge.parse(challenge_text, proxy=result.status == 407)
                    rt.auth_nc += 1
                    answer = digest.authorization(
                        challenge,
                        username=s.auth_username,
                        password=s.auth_password.reveal(),
                        method="OPTIONS",
                        uri=str(rt.target.sip_uri),
                        cnonce=os.urandom(8).hex(),
                        nc=rt.auth_nc,
                    )
                except (ParseError, Exception) as exc:
                    rt.last_error = f"digest: {exc}"
                else:
                    self._send(rt, deadline, started, answer)
                    return
        if result.cause == Cause.TRANSPORT_ERROR and isinstance(rt.flow, KeptFlow):
            self._drop_flow(rt)
        self._account(rt, result)

    def _account(self, rt: Runtime, result: TransactionResult) -> None:
        wall = self._wall()
        q = rt.q
        settings = q.peer.settings
        cause = result.cause
        rt.probing = False
        rt.last_status = status = result.status
        rt.last_error = result.error
        rt.last_probe_at = wall
        counts = self.counts
        if cause == Cause.TIMEOUT:
            counts["timeout"] += 1
        elif cause == Cause.TRANSPORT_ERROR:
            counts["transport_error"] += 1
        elif settings.accepts(status):
            counts["success"] += 1
        else:
            counts["failure"] += 1
        transition = q.on_probe_result(result, wall)
        name = rt.target.name
        rtt = result.rtt_first
        sample = None
        if rtt is not None and result.retransmits == 0:
            # stored in the row of its bucket (rtt_bucket), written once the bucket closes
            bucket = _bucket(settings.qualify_frequency)
            sample = (name, wall - wall % bucket, rtt)
        if transition is not None:
            if sample is not None:
                self.writer.probe(None, sample)
            self._emit(rt, transition)  # the transition, durably, with its own row
        elif wall - rt.row_at >= ROW_PERIOD:
            rt.row_at = wall
            self.writer.probe(rt.row(), sample)  # no future, no wake-up per probe
        elif sample is not None:
            self.writer.probe(None, sample)
        if not self._refrozen:
            self._probed.add(name)
            if len(self._probed) >= self._qualified_count():
                # every target now has its flow, template and RTT buffers: move them out of
                # the collector's reach too (freezing only at start left ~7 objects per
                # target to full collections, half the CPU at 100k targets)
                self._refrozen = True
                self._probed.clear()
                gc.collect()
                gc.freeze()
        scheduler = self.scheduler
        # not in flight: removed, or made nonqualified, by a reload while this probe was out
        if self.runtimes.get(name) is rt and scheduler.is_in_flight(name):
            when = scheduler.finished(name, clock.monotonic(), frequency=q.next_interval())
            armed = self._armed_for
            if armed is not None and when >= armed and not scheduler.queued_count:
                return  # the loop timer armed comes first, and no key waits for this slot
        self._arm()

    def _qualified_count(self) -> int:
        if self._qualified is None:
            self._qualified = sum(1 for r in self.runtimes.values() if r.q.settings.qualified)
        return self._qualified

    def _emit(self, rt: Runtime, t: Transition) -> None:
        row = TransitionRow(rt.name, t.at, t.from_state.value, t.to_state.value, t.cause, t.rtt)
        self.dispatcher.publish([Event.from_transition(row, rt.target.uri)])
        self.writer.upsert_targets([rt.row()])
        rt.row_at = self._wall()
        log.info("%s: %s -> %s (%s)", rt.name, row.from_state, row.to_state, row.cause)

    # -- flows and keep-alives ------------------------------------------------------------

    async def _udp_endpoint(self, address: str) -> SharedUdpEndpoint:
        """The one socket of this address family; the first caller opens it, and callers
        arriving meanwhile wait for that same opening (never a second socket)."""
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        endpoint = self.udp.get(family)
        if endpoint is not None:
            return endpoint
        opening = self._udp_opening.get(family)
        if opening is None:
            host = "::" if family == socket.AF_INET6 else "0.0.0.0"  # a client socket
            opening = asyncio.ensure_future(open_shared_udp(self._driver, host, 0, self.udp_rcvbuf))
            self._udp_opening[family] = opening
        endpoint = await asyncio.shield(opening)
        if family not in self.udp:
            endpoint.on_other = self._udp_other
            self.udp[family] = endpoint
        return endpoint

    def _tls(self, s: TargetSettings) -> ssl.SSLContext:
        key = (s.tls_ca, s.tls_insecure, s.tls_cert, s.tls_key)
        ctx = self._ssl.get(key)
        if ctx is None:
            ctx = client_context(TlsOptions(s.tls_ca, s.tls_insecure, s.tls_cert, s.tls_key))
            self._ssl[key] = ctx
        return ctx

    def _start_crlf(self, rt: Runtime, flow: KeptFlow) -> None:
        s = rt.settings
        if s.crlf_ping_interval <= 0 or self.wheel is None:
            return
        pinger = crlf_ka.CrlfPinger(s.crlf_ping_interval, s.crlf_pong_timeout, rand=self._rand)
        rt.crlf = pinger
        pinger.start(clock.monotonic())

        def on_pong() -> None:
            if rt.crlf is pinger:
                self._crlf_events(rt, pinger.pong_received(clock.monotonic()))
                if self.wheel is not None:
                    self.wheel.touch(pinger)

        flow.on_pong = on_pong
        self.wheel.add(pinger, lambda events: self._crlf_events(rt, events))

    def _crlf_events(self, rt: Runtime, events: Sequence[object]) -> None:
        for event in events:
            if isinstance(event, crlf_ka.SendPing) and isinstance(rt.flow, KeptFlow):
                try:
                    if isinstance(rt.flow, WsFlow):
                        rt.flow.send_ping()  # RFC 7118 §6: over WebSocket, a WebSocket Ping
                    else:
                        rt.flow.send(event.data)
                except TransportError:
                    pass
            elif isinstance(event, crlf_ka.FlowFailed):
                log.info("%s: no CRLF pong (%s); flow failed", rt.name, event.reason)
                self._drop_flow(rt)
                self._flow_failed(rt, "no-pong")

    def _start_udp_keepalive(self, rt: Runtime) -> None:
        s = rt.settings
        if self.wheel is None or s.keep_alive_mode == "none" or rt.udp_ka or rt.stun_ka:
            return
        if s.keep_alive_mode == "crlf":
            ka = crlf_ka.UdpCrlfKeepalive(s.keep_alive_interval, rand=self._rand)
            rt.udp_ka = ka
            ka.start(clock.monotonic())
            self.wheel.add(ka, lambda events: self._udp_ka_events(rt, events))
        elif s.keep_alive_mode == "stun":
            machine = stun_ka.StunKeepalive(
                s.keep_alive_interval, rand=self._rand, rand_bytes=os.urandom
            )
            rt.stun_ka = machine
            machine.start(clock.monotonic())
            self.wheel.add(machine, lambda events: self._stun_events(rt, events))

    def _udp_ka_events(self, rt: Runtime, events: Sequence[object]) -> None:
        for event in events:
            if isinstance(event, crlf_ka.SendPing) and isinstance(rt.flow, PeerFlow):
                rt.flow.send(event.data)

    def _stun_events(self, rt: Runtime, events: Sequence[object]) -> None:
        for event in events:
            if isinstance(event, stun_ka.SendStun) and isinstance(rt.flow, PeerFlow):
                self._stun_owner[event.transaction_id] = rt
                if len(self._stun_owner) > 4 * max(1, len(self.runtimes)):
                    self._stun_owner.pop(next(iter(self._stun_owner)))
                rt.flow.send(event.data)
            elif isinstance(event, stun_ka.MappedAddress):
                rt.mapped = event.addr
            elif isinstance(event, stun_ka.MappedAddressChanged):
                log.warning(
                    "%s: STUN mapped address changed %s -> %s", rt.name, event.old, event.new
                )
            elif isinstance(event, crlf_ka.FlowFailed):
                log.info("%s: STUN keep-alive failed (%s)", rt.name, event.reason)
                self._flow_failed(rt, "stun-failed")

    def _udp_other(self, data: bytes, source: tuple[str, int]) -> None:
        if not stun.is_stun(data):
            return
        try:
            msg = stun.parse(data)
        except ParseError:
            return
        rt = self._stun_owner.pop(msg.transaction_id, None)
        if rt is None or rt.stun_ka is None or not isinstance(rt.flow, PeerFlow):
            return
        if not rt.flow.accepts(source):
            return
        self._stun_events(rt, rt.stun_ka.response_received(msg, clock.monotonic()))
        if self.wheel is not None:
            self.wheel.touch(rt.stun_ka)

    def _flow_closed(self, rt: Runtime, exc: Exception | None) -> None:
        """The kept connection ended. A clean close by the peer only means reconnecting at
        the next probe; an error (TCP keep-alive or TCP_USER_TIMEOUT expiry: ETIMEDOUT, a
        reset) means the path failed: Unreachable at once, as for a missing CRLF pong."""
        if not (isinstance(rt.flow, KeptFlow) and rt.flow.closed):
            return
        self._stop_keepalives(rt)
        rt.flow = None
        rt.template = None
        if exc is not None and not self._closing:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            log.info("%s: connection failed (%s)", rt.name, reason)
            rt.last_error = f"connection failed: {reason}"
            self._flow_failed(rt, "connection-failed")

    def _flow_failed(self, rt: Runtime, cause: str) -> None:
        """A keep-alive or the kept connection says the path is dead: Unreachable at once,
        and the next probe (which re-opens the flow) comes at ``unreachable_frequency``
        rather than at the old deadline, up to ``qualify_frequency`` away."""
        transition = rt.q.on_flow_failed(self._wall(), cause)
        if transition is not None:
            self._emit(rt, transition)
        if not rt.probing and rt.name in self.runtimes and rt.q.settings.qualified:
            self.scheduler.reschedule(rt.name, rt.q.next_interval(), clock.monotonic())
            self._arm()

    def _stop_keepalives(self, rt: Runtime) -> None:
        for machine in (rt.crlf, rt.udp_ka, rt.stun_ka):
            if machine is not None and self.wheel is not None:
                self.wheel.remove(machine)
        rt.crlf = rt.udp_ka = rt.stun_ka = None

    def _drop_flow(self, rt: Runtime) -> None:
        self._stop_keepalives(rt)
        flow = rt.flow
        rt.flow = None
        rt.template = None
        rt.table = None
        if isinstance(flow, KeptFlow):
            flow.on_close = None
            flow.close()

    # -- MonitorView ----------------------------------------------------------------------

    def targets(self) -> Sequence[TargetView]:
        return Rows(list(self.runtimes.values()), self._make_view)

    def samples(self) -> Sequence[TargetSample]:
        return Rows(list(self.runtimes.values()), _sample)

    def target(self, name: str) -> TargetView | None:
        rt = self.runtimes.get(name)
        return None if rt is None else self._make_view(rt)

    def _make_view(self, rt: Runtime) -> TargetView:
        snap = rt.q.rtt.snapshot()
        c = rt.q.peer.counters
        return TargetView(
            name=rt.name,
            uri=rt.target.uri,
            group=rt.target.group,
            transport=rt.dest.transport if rt.dest else rt.target.transport,
            state=rt.q.state.value,
            since=rt.q.peer.since or self.started_at,
            rtt_s=snap.last,
            srtt_s=snap.srtt,
            rttvar_s=snap.rttvar,
            rtt_min_s=snap.min,
            rtt_max_s=snap.max,
            rtt_p50_s=snap.p50,
            rtt_p90_s=snap.p90,
            rtt_p99_s=snap.p99,
            probes=c.probes,
            successes=c.successes,
            failures=c.failures,
            timeouts=c.timeouts,
            transport_errors=c.transport_errors,
            last_status=rt.last_status,
            last_error=rt.last_error,
            last_probe_at=rt.last_probe_at,
            qualify_frequency=rt.settings.qualify_frequency,
            recent_rtts=tuple(rt.q.rtt.recent()[-30:]),
        )

    def history(self, name: str, limit: int = 1000) -> list[TransitionView]:
        return [_transition_view(r) for r in self.store.history(name, limit=limit)]

    def events(self, after_id: int = 0, limit: int = 100) -> list[TransitionView]:
        return [
            _transition_view(r) for r in self.store.recent_transitions(limit, after_id=after_id)
        ]

    def rtt_series(self, name: str, since: float, until: float) -> list[RttMinuteView]:
        return [
            RttMinuteView(m.start, m.count, m.min, m.max, m.mean)
            for m in self.writer.rtt_series(self.store, name, since, until)
        ]

    def stats(self) -> EngineStats:
        lags = sorted(self._lags)
        p99 = lags[min(len(lags) - 1, int(0.99 * len(lags)))] if lags else None
        return EngineStats(
            targets=len(self.runtimes),
            in_flight=self.scheduler.in_flight_count,  # probes, not transactions in Timer K
            probes_total=dict(self.counts),
            scheduler_lag_p99_s=p99,
            started_at=self.started_at,
            last_event_id=self.store.last_transition_id(),
        )

    def contacts(self) -> list[ContactView] | None:
        if self.registrar is None:
            return None
        return [
            ContactView(
                aor=c.aor,
                contact=c.contact,
                source=f"{format_host(c.source[0])}:{c.source[1]}",
                transport=c.transport,
                expires_at=c.expires_at,
                state=c.state,
                rtt_s=c.rtt,
                user_agent=c.user_agent,
                registered_at=c.registered_at,
            )
            for c in self.registrar.contacts()
        ]

    async def probe(self, uri: str, module: str | None, timeout: float) -> ProbeReport:
        """An on-demand probe (``/probe``), outside the schedule, with phase timings."""
        t0 = clock.monotonic()
        phases: dict[str, float] = {}
        try:
            target_uri = parse_uri(uri)
        except ParseError as exc:
            return ProbeReport(False, 0.0, None, "", {}, f"bad target: {exc.reason}")
        transport = module if module in _MODULES else target_uri.transport
        deadline = t0 + timeout
        flow: PeerFlow | KeptFlow | None = None
        try:
            async with asyncio.timeout(timeout):
                found = await resolve(
                    target_uri.scheme, target_uri.host, target_uri.port, transport,
                    timeout=timeout, supported=_supported(transport),
                )  # fmt: skip
            phases["resolve"] = clock.monotonic() - t0
            dest = found[0]
            if dest.transport == "udp":
                endpoint = await self._udp_endpoint(dest.address)
                flow = endpoint.flow((dest.address, dest.port))
                local = (_local_address(dest.address, dest.port), endpoint.local[1])
            elif dest.transport in ("tcp", "tls"):
                ctx = client_context(TlsOptions()) if dest.transport == "tls" else None
                flow = await open_stream(
                    self._driver, dest.address, dest.port, ssl_context=ctx,
                    server_hostname=target_uri.host,
                    timeout=max(0.001, deadline - clock.monotonic()),
                )  # fmt: skip
                phases.update(flow.stats.phases)
                local = flow.local
            elif dest.transport in ("ws", "wss"):
                secure = dest.transport == "wss"
                flow = await open_ws(
                    self._driver, dest.address, dest.port, secure=secure,
                    host=target_uri.host,
                    ssl_context=client_context(TlsOptions()) if secure else None,
                    timeout=max(0.001, deadline - clock.monotonic()),
                )  # fmt: skip
                phases.update(flow.stats.phases)
                local = flow.local
            else:
                raise TransportError(f"unsupported transport {dest.transport}")
            template = OptionsTemplate(uri, transport=dest.transport, local=local, from_tag="probe")
            self._counter += 1
            branch = f"{self._prefix}p{self._counter:x}"
            txn = ClientTransaction.from_bytes(
                template.fill(branch, f"p{self._counter:x}-{self._prefix[7:]}", 1),
                branch=branch, method="OPTIONS", reliable=dest.transport != "udp",
                timers=TimerConfig(timeout=max(0.001, deadline - clock.monotonic())),
            )  # fmt: skip
            sent = clock.monotonic()
            result = await self._driver.start(txn, flow)
            if result.response is not None:
                phases["response"] = clock.monotonic() - sent
            ok = result.response is not None and 200 <= result.status < 300
            return ProbeReport(
                ok, clock.monotonic() - t0, result.status, result.reason, phases, result.error,
                dest.transport, dest.address,
            )  # fmt: skip
        except (ResolveError, TransportError, TimeoutError, OSError) as exc:
            return ProbeReport(
                False, clock.monotonic() - t0, None, "", phases, str(exc) or "timeout"
            )
        finally:
            if isinstance(flow, KeptFlow):
                flow.close()


_MODULES = ("udp", "tcp", "tls", "ws", "wss")
_CHALLENGES = frozenset((401, 407))


@functools.lru_cache(maxsize=64)
def _bucket(frequency: float) -> float:
    return rtt_bucket(frequency)


def _supported(transport: str | None) -> tuple[str, ...]:
    """What RFC 3263 may choose: ws/wss only when asked for (no NAPTR service picks them)."""
    if transport in ("ws", "wss"):
        return _MODULES
    return ("udp", "tcp", "tls")


def _sample(rt: Runtime) -> TargetSample:
    q = rt.q
    sample = rt.sample
    if sample is not None and rt.sample_version == q.version:
        return sample
    rtt = q.rtt
    _, successes, failures, timeouts, transport_errors, _ = q.peer.totals()
    rt.sample = sample = TargetSample(
        rt.target.name, q.peer.state.value, rtt.last, rtt.srtt,
        successes, failures, timeouts, transport_errors,
    )  # fmt: skip
    rt.sample_version = q.version
    return sample


def _transition_view(r: TransitionRow) -> TransitionView:
    return TransitionView(r.id, r.target, r.at, r.from_state, r.to_state, r.cause, r.rtt)


_LOCAL_CACHE: dict[tuple[str, int], str] = {}


def _local_address(address: str, port: int) -> str:
    """The source address the kernel picks towards ``address`` (for Via sent-by)."""
    key = (address, port)
    local = _LOCAL_CACHE.get(key)
    if local is None:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            try:
                s.connect((address, port))
                local = str(s.getsockname()[0])
            except OSError:
                local = "::1" if family == socket.AF_INET6 else "127.0.0.1"
        if len(_LOCAL_CACHE) < 65536:
            _LOCAL_CACHE[key] = local
    return local
