"""The registrar of ``sipalive respond --registrar``: the pure
:class:`~sipalive.sip.registrar.Registrar` on the respond listeners, its bindings in SQLite,
and every registered contact qualified through the flow its REGISTER came on.

* **Routing.** :class:`RegistrarService` plugs into the listeners as their
  :class:`~sipalive.io.server.ListenerHook`: REGISTER requests (UDP, TCP, TLS) and the
  responses to its own requests come here; everything else goes on to the stateless
  responder. WebSocket listeners answer REGISTER with 405, as before.
* **The way back to a contact** is the way its REGISTER came (RFC 5626 §5.3): over UDP from
  the listening socket it arrived at to the packet's source address, which is the UA's NAT
  binding, whatever the Contact says; over TCP/TLS on that very connection, which the idle
  timeout then leaves open for as long as a binding uses it. A connection that is gone
  (closed, or from before a restart) reaches nobody: the contact fails its next qualify.
* **Qualify.** Each binding is a :class:`~sipalive.qualify.QualifyTarget` on one
  :class:`~sipalive.qualify.Scheduler`: an OPTIONS every ``qualify_frequency`` (the first one
  right after the REGISTER that made it; those restored after a restart are spread over one
  interval), states and hysteresis from the qualify domain, a lost connection is UNREACHABLE
  at once. With ``remove_unavailable``, UNREACHABLE drops the binding and closes its
  connection unless another binding uses it.
* **Storage.** Bindings and the nonce secret live in their own SQLite file (WAL,
  ``synchronous=NORMAL``: a commit survives the process being killed, perhaps not a power
  cut). Changes are written behind, in a batch every ``flush_interval`` off the event loop,
  and at shutdown; a REGISTER answered in the last ``flush_interval`` before a crash may be
  lost, and its UA's next refresh puts it back. Bindings are restored at start, those expired
  meanwhile dropped.
* **Time.** The pure registrar runs on the wall clock (expiry and nonces must mean the same
  after a restart); probes and their schedule on the monotonic clock. One loop timer serves
  both, besides the transaction driver's own.

One log line per event: registered, refreshed, expired, removed (and why), each qualify
transition (reachable, lagged, unreachable), and each refused REGISTER other than a plain
challenge. No password, nonce secret or digest response is ever logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import sqlite3
import stat
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sipalive import clock
from sipalive.errors import ConfigError, ParseError, TransportError
from sipalive.io.driver import TransactionDriver
from sipalive.io.server import Listener, StreamServerProtocol, UdpServerProtocol, log_line
from sipalive.qualify import QualifySettings, QualifyState, QualifyTarget, Scheduler, Transition
from sipalive.sip.build import OptionsTemplate, format_host
from sipalive.sip.message import Request, Response, parse_message
from sipalive.sip.registrar import (
    Binding,
    BindingAdded,
    BindingExpired,
    BindingRefreshed,
    BindingRemoved,
    Flow,
    RegisterRejected,
    Registrar,
    RegistrarConfig,
    RemoveCause,
    SendResponse,
    Users,
)
from sipalive.sip.transaction import Cause, ClientTransaction, TimerConfig, TransactionResult

Address = tuple[str, int]


@dataclass(frozen=True, slots=True)
class RegistrarSettings:
    """How registered contacts are qualified, and how bindings are written.

    ``qualify`` applies to every contact (``qualify_frequency`` 0: none is probed);
    ``remove_unavailable`` drops a binding whose contact goes UNREACHABLE; ``t1`` is the
    probes' retransmission timer (RFC 3261 T1); ``max_in_flight`` bounds the probes out at
    once; ``flush_interval`` is how long changes wait to be written together."""

    qualify: QualifySettings = field(default_factory=QualifySettings)
    remove_unavailable: bool = False
    t1: float = 0.5
    max_in_flight: int = 1000
    flush_interval: float = 0.2


@dataclass(frozen=True, slots=True)
class ContactStatus:
    """One registered contact as the monitor shows it. ``source`` is where requests to it go
    (the NAT binding over UDP, the peer of the kept connection over TCP/TLS); ``expires_at``
    and ``registered_at`` are epoch seconds; ``state`` a
    :class:`~sipalive.qualify.QualifyState` value; ``rtt`` the last probe's round trip (s)."""

    aor: str
    contact: str
    source: Address
    transport: str
    expires_at: float
    state: str
    rtt: float | None
    user_agent: str | None
    registered_at: float


def load_users(path: str, warn: Callable[[str], None] = log_line) -> Users:
    """The users file (``user:password`` lines, see :meth:`Users.parse`). ``warn`` hears
    that the file is readable by others (never what it holds)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
        mode = os.stat(path).st_mode
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, f"cannot read the users file: {exc}") from exc
    users = Users.parse(text, path)
    if not users:
        raise ConfigError(path, "no users")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        warn(f"registrar: the users file {path} is readable by others (chmod 600)")
    return users


# -- storage -------------------------------------------------------------------------------

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE bindings (
        aor           TEXT NOT NULL,
        key           TEXT NOT NULL,
        contact       TEXT NOT NULL,
        expires_at    REAL NOT NULL,
        call_id       TEXT NOT NULL,
        cseq          INTEGER NOT NULL,
        transport     TEXT NOT NULL,
        source_host   TEXT NOT NULL,
        source_port   INTEGER NOT NULL,
        local_host    TEXT NOT NULL,
        local_port    INTEGER NOT NULL,
        instance      TEXT,
        reg_id        INTEGER,
        q             TEXT,
        user_agent    TEXT,
        registered_at REAL NOT NULL,
        PRIMARY KEY (aor, key)
    ) WITHOUT ROWID;
    CREATE TABLE meta (
        name  TEXT PRIMARY KEY,
        value BLOB NOT NULL
    ) WITHOUT ROWID;
    """,
)

_COLUMNS = (
    "aor, key, contact, expires_at, call_id, cseq, transport, source_host, source_port, "
    "local_host, local_port, instance, reg_id, q, user_agent, registered_at"
)


class BindingStore:
    """The registrar's SQLite file; created with its directory. Thread-safe (one lock), so
    the writes can run off the event loop. Errors are :class:`ConfigError` naming the path."""

    def __init__(self, path: str | Path, *, busy_timeout: float = 5.0) -> None:
        self.path = str(path)
        self._lock = threading.Lock()
        try:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=busy_timeout
            )
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(self.path, f"cannot open the registrar database: {exc}") from exc
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
            if version > len(MIGRATIONS):
                raise ConfigError(
                    self.path, f"schema version {version} is newer than this sipalive"
                )
            for number in range(version + 1, len(MIGRATIONS) + 1):
                self._db.executescript(
                    f"BEGIN IMMEDIATE;\n{MIGRATIONS[number - 1]}\n"
                    f"PRAGMA user_version={number};\nCOMMIT;"
                )
        except sqlite3.Error as exc:
            self._db.close()
            raise ConfigError(self.path, f"cannot use the registrar database: {exc}") from exc
        except ConfigError:
            self._db.close()
            raise

    @contextlib.contextmanager
    def _use(self, what: str) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                yield self._db
            except sqlite3.Error as exc:
                raise ConfigError(self.path, f"{what}: {exc}") from exc

    def secret(self, make: Callable[[], bytes]) -> bytes:
        """The nonce secret, made by ``make`` the first time and kept from then on."""
        with self._use("nonce secret") as db:
            row = db.execute("SELECT value FROM meta WHERE name = 'nonce_secret'").fetchone()
            if row is not None:
                return bytes(row[0])
            value = make()
            db.execute("INSERT INTO meta (name, value) VALUES ('nonce_secret', ?)", (value,))
            return value

    def load(self) -> list[Binding]:
        """Every stored binding; a TCP/TLS one comes back without a connection."""
        with self._use("load bindings") as db:
            rows = db.execute(f"SELECT {_COLUMNS} FROM bindings").fetchall()
        return [_from_row(row) for row in rows]

    def apply(self, upserts: Sequence[Binding], deletes: Sequence[tuple[str, str]]) -> None:
        """Write one batch in one transaction."""
        with self._use("write bindings") as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany("DELETE FROM bindings WHERE aor = ? AND key = ?", deletes)
                db.executemany(
                    f"INSERT OR REPLACE INTO bindings ({_COLUMNS}) "
                    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    [_to_row(b) for b in upserts],
                )
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _to_row(b: Binding) -> tuple[object, ...]:
    flow = b.flow
    return (
        b.aor, b.key, b.contact, b.expires_at, b.call_id, b.cseq, flow.transport,
        flow.source[0], flow.source[1], flow.local[0], flow.local[1], b.instance, b.reg_id,
        b.q, b.user_agent, b.registered_at,
    )  # fmt: skip


def _from_row(r: tuple[Any, ...]) -> Binding:
    return Binding(
        aor=r[0], key=r[1], contact=r[2], expires_at=r[3], call_id=r[4], cseq=r[5],
        flow=Flow(r[6], (r[7], r[8]), (r[9], r[10])), instance=r[11], reg_id=r[12], q=r[13],
        user_agent=r[14], registered_at=r[15],
    )  # fmt: skip


# -- the ways back to a contact ------------------------------------------------------------


class _UdpPath:
    """From a listening UDP socket to a contact's NAT binding."""

    __slots__ = ("dest", "udp")

    def __init__(self, udp: UdpServerProtocol, dest: Address) -> None:
        self.udp = udp
        self.dest = dest

    def send(self, data: bytes) -> None:
        transport = self.udp.transport
        if transport is None or transport.is_closing():
            raise TransportError("the UDP listener is closed")
        transport.sendto(data, self.dest)

    def accepts(self, source: Address) -> bool:
        return source == self.dest


class _StreamPath:
    """Over the TCP/TLS connection a REGISTER came on."""

    __slots__ = ("conn",)

    def __init__(self, conn: StreamServerProtocol) -> None:
        self.conn = conn

    def send(self, data: bytes) -> None:
        transport = self.conn.transport
        if transport is None or transport.is_closing():
            raise TransportError("the connection the REGISTER came on is closed")
        transport.write(data)

    def accepts(self, source: Address) -> bool:
        return source == self.conn.peer


class _Contact:
    """A binding's qualify state and the probe it has ready."""

    __slots__ = ("aor", "key", "made_for", "name", "path", "q", "template")

    def __init__(self, name: str, binding: Binding, q: QualifyTarget) -> None:
        self.name = name
        self.aor = binding.aor
        self.key = binding.key
        self.q = q
        self.made_for: tuple[str, Flow] | None = None  # what ``path`` and ``template`` reach
        self.path: _UdpPath | _StreamPath | None = None
        self.template: OptionsTemplate | None = None


def _synthetic(status: int, cause: str, at: float, error: str) -> TransactionResult:
    reason = "Request Timeout" if status == 408 else "Service Unavailable"
    return TransactionResult(status, reason, cause, None, at, at, 0, None, None, error=error)


def _addr(addr: Address) -> str:
    return f"{format_host(addr[0])}:{addr[1]}"


# -- the service ---------------------------------------------------------------------------


class RegistrarService:
    """Runs a :class:`Registrar` on the listeners of one ``respond`` process.

    Construct, :meth:`restore`, :meth:`attach` to the listener before its sockets open,
    call :meth:`listening` once they are, and ``await close()`` before closing them.
    ``rand`` (in [0, 1]) jitters the probes."""

    def __init__(
        self,
        registrar: Registrar,
        settings: RegistrarSettings,
        *,
        store: BindingStore | None = None,
        log: Callable[[str], None] = log_line,
        rand: Callable[[], float] = random.random,
        on_transition: Callable[[str, str, Transition], None] | None = None,
    ) -> None:
        self.registrar = registrar
        self.settings = settings
        self.store = store
        self.log = log
        # (aor, contact, transition) of every contact qualify transition: the monitor's events
        self.on_transition = on_transition
        self.scheduler = Scheduler(rand=rand, max_in_flight=settings.max_in_flight)
        self._listener: Listener | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._driver: TransactionDriver | None = None
        self._contacts: dict[str, _Contact] = {}
        self._by_connection: dict[int, set[str]] = {}
        self._udp: dict[Address, UdpServerProtocol] = {}
        self._udp_local: dict[UdpServerProtocol, Address] = {}
        self._conn_ids: dict[StreamServerProtocol, int] = {}
        self._conns: dict[int, StreamServerProtocol] = {}
        self._stream_paths: dict[int, _StreamPath] = {}
        self._next_conn = 0
        self._sources: dict[str, str] = {}
        self._prefix = f"z9hG4bK-reg{os.urandom(4).hex()}-"
        self._counter = 0
        self._handle: asyncio.TimerHandle | None = None
        self._armed_for: float | None = None
        self._dirty: dict[tuple[str, str], Binding | None] = {}
        self._flush_handle: asyncio.TimerHandle | None = None
        self._flushing: asyncio.Future[None] | None = None
        self._store_failed = False
        self._ready = False
        self._closing = False

    # -- life ------------------------------------------------------------------------------

    def restore(self) -> None:
        """Take back the stored bindings (those expired meanwhile are deleted); at start-up,
        before :meth:`attach`. Raises ConfigError for a database that cannot be read."""
        if self.store is None:
            return
        stored = self.store.load()
        expired = self.registrar.restore(stored, clock.wall())
        for event in expired:
            if isinstance(event, BindingExpired):
                self._write(event.binding, delete=True)
        for binding in self.registrar.bindings():
            self._track(binding, probe_now=False)
        if stored:
            self.log(
                f"registrar: restored {len(self.registrar)} bindings from {self.store.path}"
                f" ({len(expired)} expired meanwhile)"
            )

    def attach(self, listener: Listener) -> None:
        """Take REGISTERs from ``listener``: before its sockets open, so that no REGISTER
        ever reaches the responder (which refuses it)."""
        self._loop = asyncio.get_running_loop()
        self._driver = TransactionDriver(self._loop)
        self._listener = listener
        listener.hook = self

    def listening(self, opened: Iterable[object]) -> None:
        """The listeners are open (``opened`` is what ``start_listeners`` returned; its UDP
        sockets are where restored UDP contacts are reached from): start probing."""
        for item in opened:
            get_protocol = getattr(item, "get_protocol", None)
            protocol = get_protocol() if get_protocol is not None else None
            if isinstance(protocol, UdpServerProtocol):
                self._udp_socket(protocol)
        self._ready = True
        self._arm()
        if self._dirty and self._loop is not None:
            self._flush_handle = self._loop.call_later(self.settings.flush_interval, self._flush)

    async def close(self) -> None:
        """Stop probing and write what is pending; the bindings stay stored."""
        self._closing = True
        if self._listener is not None and self._listener.hook is self:
            self._listener.hook = None
        if self._handle is not None:
            self._handle.cancel()
        if self._driver is not None:
            self._driver.cancel_all("shutting down")
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self._flushing is not None:
            with contextlib.suppress(Exception):
                await self._flushing
        if self.store is not None:
            self._flush_now()
            self.store.close()

    # -- what the monitor reads ------------------------------------------------------------

    def contacts(self) -> list[ContactStatus]:
        out = []
        for binding in self.registrar.bindings():
            rt = self._contacts.get(_name(binding))
            state = rt.q.state.value if rt is not None else QualifyState.NONQUALIFIED.value
            rtt = rt.q.rtt.last if rt is not None else None
            out.append(
                ContactStatus(
                    binding.aor,
                    binding.contact,
                    binding.flow.source,
                    binding.flow.transport,
                    binding.expires_at,
                    state,
                    rtt,
                    binding.user_agent,
                    binding.registered_at,
                )
            )
        out.sort(key=lambda c: (c.aor, c.contact))
        return out

    # -- ListenerHook ----------------------------------------------------------------------

    def on_datagram(self, data: bytes, source: Address, udp: UdpServerProtocol) -> bool:
        head = data.lstrip(b"\r\n")[:9]
        if head.startswith(b"SIP/2.0 "):
            try:
                message = parse_message(data)
            except ParseError:
                return False
            return isinstance(message, Response) and self.driver.on_response(message, source)
        if head != b"REGISTER ":
            return False
        try:
            message = parse_message(data, udp.listener.responder.config.max_message)
        except ParseError:
            return False  # the responder answers the 400
        if not isinstance(message, Request):
            return False
        lst = udp.listener
        lst.stats.requests += 1
        flow = Flow("udp", source, self._udp_socket(udp))
        self._register(message, flow, udp, None)
        return True

    def on_message(self, message: Request | Response, conn: StreamServerProtocol) -> bool:
        if isinstance(message, Response):
            self.driver.on_response(message, conn.peer)
            return True
        if message.method != "REGISTER":
            return False
        lst = conn.listener
        if not lst.admission.admit(conn.peer[0], clock.monotonic()):
            lst.stats.dropped += 1
            return True
        lst.stats.requests += 1
        flow = Flow(conn.name, conn.peer, self._local_of(conn), self._connection_id(conn))
        self._register(message, flow, None, conn)
        return True

    def on_connection_lost(self, conn: StreamServerProtocol) -> None:
        conn_id = self._conn_ids.pop(conn, None)
        if conn_id is None:
            return
        self._conns.pop(conn_id, None)
        path = self._stream_paths.pop(conn_id, None)
        if path is not None and self._driver is not None:
            self._driver.on_transport_error(path, "connection lost")
        wall = clock.wall()
        for name in sorted(self._by_connection.get(conn_id, ())):
            rt = self._contacts.get(name)
            if rt is None:
                continue
            transition = rt.q.on_flow_failed(wall)
            if transition is not None:
                self._transition(rt, transition)
        self._arm()

    def keeps(self, conn: StreamServerProtocol) -> bool:
        conn_id = self._conn_ids.get(conn)
        return conn_id is not None and self.registrar.uses_connection(conn_id)

    # -- REGISTER --------------------------------------------------------------------------

    @property
    def driver(self) -> TransactionDriver:
        assert self._driver is not None, "start() first"
        return self._driver

    def _register(
        self,
        request: Request,
        flow: Flow,
        udp: UdpServerProtocol | None,
        conn: StreamServerProtocol | None,
    ) -> None:
        events = self.registrar.receive(request, flow, clock.wall())
        for event in events:
            if isinstance(event, SendResponse):
                if conn is not None:
                    if conn.transport is not None and not conn.transport.is_closing():
                        conn.transport.write(event.data)
                        conn.listener.stats.answered += 1
                elif udp is not None and udp.transport is not None:
                    udp.transport.sendto(event.data, event.dest)
                    udp.listener.stats.answered += 1
            else:
                self._on_event(event)
        self._arm()

    def _on_event(self, event: object) -> None:
        if isinstance(event, BindingAdded):
            b = event.binding
            self.log(f"registrar: registered {self._describe(b)}")
            self._write(b)
            self._track(b, probe_now=True)
        elif isinstance(event, BindingRefreshed):
            b = event.binding
            self.log(f"registrar: refreshed {self._describe(b)}")
            self._write(b)
            self._retrack(event.previous, b)
        elif isinstance(event, BindingRemoved):
            b = event.binding
            self.log(f"registrar: removed {b.aor} contact=<{b.contact}> ({event.cause})")
            self._write(b, delete=True)
            self._untrack(b)
            if event.cause == RemoveCause.UNAVAILABLE:
                self._close_unused(b.flow.connection)
        elif isinstance(event, BindingExpired):
            b = event.binding
            self.log(f"registrar: expired {b.aor} contact=<{b.contact}>")
            self._write(b, delete=True)
            self._untrack(b)
        elif isinstance(event, RegisterRejected):
            self.log(
                f"registrar: REGISTER from {event.transport} {_addr(event.source)}"
                f"{' for ' + event.aor if event.aor else ''}: {event.status} ({event.detail})"
            )

    def _describe(self, b: Binding) -> str:
        left = b.remaining(clock.wall())
        return (
            f"{b.aor} contact=<{b.contact}> via {b.flow.transport} {_addr(b.flow.source)} "
            f"expires={left}s"
        )

    def _close_unused(self, conn_id: int) -> None:
        conn = self._conns.get(conn_id) if conn_id else None
        if conn is None or self.registrar.uses_connection(conn_id):
            return
        if conn.transport is not None:
            self.log(f"registrar: closing {conn.name} connection from {_addr(conn.peer)}")
            conn.transport.abort()

    # -- flows -----------------------------------------------------------------------------

    def _udp_socket(self, udp: UdpServerProtocol) -> Address:
        local = self._udp_local.get(udp)
        if local is None:
            assert udp.transport is not None
            name = udp.transport.get_extra_info("sockname")
            local = (str(name[0]), int(name[1]))
            self._udp_local[udp] = local
            self._udp[local] = udp
        return local

    def _connection_id(self, conn: StreamServerProtocol) -> int:
        conn_id = self._conn_ids.get(conn)
        if conn_id is None:
            self._next_conn += 1
            conn_id = self._next_conn
            self._conn_ids[conn] = conn_id
            self._conns[conn_id] = conn
            self._stream_paths[conn_id] = _StreamPath(conn)
        return conn_id

    @staticmethod
    def _local_of(conn: StreamServerProtocol) -> Address:
        name = conn.transport.get_extra_info("sockname") if conn.transport else None
        return (str(name[0]), int(name[1])) if name else ("0.0.0.0", 0)

    def _route(self, flow: Flow) -> tuple[_UdpPath | _StreamPath, Address] | None:
        """The path to a contact registered over ``flow`` and our address on it."""
        if flow.transport == "udp":
            udp = self._udp.get(flow.local)
            if udp is None:
                return None
            host, port = flow.local
            if host in ("0.0.0.0", "::", ""):
                host = self._source_address(flow.source[0])
            return _UdpPath(udp, flow.source), (host, port)
        path = self._stream_paths.get(flow.connection) if flow.connection else None
        if path is None:
            return None
        return path, self._local_of(path.conn)

    def _source_address(self, dest: str) -> str:
        """The local address the kernel sends from towards ``dest`` (for a Via sent-by)."""
        found = self._sources.get(dest)
        if found is None:
            family = socket.AF_INET6 if ":" in dest else socket.AF_INET
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                try:
                    probe.connect((dest, 9))
                    found = str(probe.getsockname()[0])
                except OSError:
                    found = "::1" if family == socket.AF_INET6 else "127.0.0.1"
            if len(self._sources) < 4096:
                self._sources[dest] = found
        return found

    # -- qualify ---------------------------------------------------------------------------

    def _track(self, binding: Binding, *, probe_now: bool) -> None:
        name = _name(binding)
        rt = _Contact(name, binding, QualifyTarget(name, self.settings.qualify))
        self._contacts[name] = rt
        self._index(binding, name)
        if not self.settings.qualify.qualified:
            return
        self.scheduler.add(name, self.settings.qualify.qualify_frequency, clock.monotonic())
        if probe_now:
            self.scheduler.started(name)
            self._probe(rt)

    def _retrack(self, previous: Binding, binding: Binding) -> None:
        """A refresh on another flow (a new connection, a new NAT binding) is probed at once:
        the UA that lost its flow and registered again is most likely reachable again."""
        name = _name(binding)
        self._unindex(previous, name)
        self._index(binding, name)
        rt = self._contacts.get(name)
        if (
            rt is not None
            and previous.flow != binding.flow
            and name in self.scheduler
            and not self.scheduler.is_in_flight(name)
        ):
            self.scheduler.started(name)
            self._probe(rt)

    def _untrack(self, binding: Binding) -> None:
        name = _name(binding)
        self._unindex(binding, name)
        if self._contacts.pop(name, None) is not None and name in self.scheduler:
            self.scheduler.remove(name)

    def _index(self, binding: Binding, name: str) -> None:
        conn = binding.flow.connection
        if conn:
            self._by_connection.setdefault(conn, set()).add(name)

    def _unindex(self, binding: Binding, name: str) -> None:
        conn = binding.flow.connection
        names = self._by_connection.get(conn) if conn else None
        if names is not None:
            names.discard(name)
            if not names:
                del self._by_connection[conn]

    def _probe(self, rt: _Contact) -> None:
        binding = self.registrar.binding(rt.aor, rt.key)
        if binding is None:
            return
        now = clock.monotonic()
        if rt.made_for != (binding.contact, binding.flow) or rt.template is None:
            rt.made_for, rt.path, rt.template = (binding.contact, binding.flow), None, None
            route = self._route(binding.flow)
            if route is not None:
                rt.path, local = route
                try:
                    rt.template = OptionsTemplate(
                        binding.contact,
                        transport=binding.flow.transport,
                        local=local,
                        from_tag=os.urandom(5).hex(),
                        from_uri=f"sip:sipalive@{format_host(local[0])}",
                    )
                except ParseError as exc:
                    self._later(rt, _synthetic(503, Cause.TRANSPORT_ERROR, now, exc.reason))
                    return
        if rt.path is None or rt.template is None:
            gone = "connection" if binding.flow.transport != "udp" else "UDP listener"
            self._later(rt, _synthetic(503, Cause.TRANSPORT_ERROR, now, f"no {gone} to it"))
            return
        self._counter += 1
        branch = f"{self._prefix}{self._counter:x}"
        data = rt.template.fill(branch, f"{branch[7:]}@sipalive", self._counter)
        timers = TimerConfig(
            t1=self.settings.t1,
            t2=max(4.0, self.settings.t1),
            timeout=self.settings.qualify.qualify_timeout,
        )
        txn = ClientTransaction.from_bytes(
            data,
            branch=branch,
            method="OPTIONS",
            reliable=binding.flow.transport != "udp",
            timers=timers,
        )
        future = self.driver.start(txn, rt.path)

        def done(f: asyncio.Future[TransactionResult]) -> None:
            if not f.cancelled() and not self._closing:
                self._finished(rt, f.result())

        future.add_done_callback(done)

    def _later(self, rt: _Contact, result: TransactionResult) -> None:
        assert self._loop is not None
        self._loop.call_soon(self._finished, rt, result)

    def _finished(self, rt: _Contact, result: TransactionResult) -> None:
        if self._contacts.get(rt.name) is not rt:
            return  # removed (or replaced) while the probe was out
        transition = rt.q.on_probe_result(result, clock.wall())
        if transition is not None:
            self._transition(rt, transition)
        if self._contacts.get(rt.name) is rt and rt.name in self.scheduler:
            self.scheduler.finished(rt.name, clock.monotonic(), rt.q.next_interval())
        self._arm()

    def _transition(self, rt: _Contact, t: Transition) -> None:
        binding = self.registrar.binding(rt.aor, rt.key)
        contact = binding.contact if binding is not None else rt.key
        rtt = f", rtt {t.rtt * 1000:.1f} ms" if t.rtt is not None else ""
        self.log(
            f"registrar: {rt.aor} contact=<{contact}> {t.from_state.value} -> "
            f"{t.to_state.value} ({t.cause}{rtt})"
        )
        if self.on_transition is not None:
            self.on_transition(rt.aor, contact, t)
        if t.to_state is QualifyState.UNREACHABLE and self.settings.remove_unavailable:
            for event in self.registrar.remove(rt.aor, rt.key, RemoveCause.UNAVAILABLE):
                self._on_event(event)

    # -- the one timer ---------------------------------------------------------------------

    def _arm(self) -> None:
        if self._closing or not self._ready or self._loop is None:
            return
        mono = clock.monotonic()
        deadlines = []
        expiry = self.registrar.get_timer()
        if expiry is not None:
            deadlines.append(mono + (expiry - clock.wall()))
        due = self.scheduler.get_timer()
        if due is not None:
            deadlines.append(due)
        if not deadlines:
            return
        when = min(deadlines)
        if self._handle is not None and self._armed_for is not None and self._armed_for <= when:
            return
        if self._handle is not None:
            self._handle.cancel()
        self._armed_for = when
        self._handle = self._loop.call_later(max(0.0, when - mono), self._fire)

    def _fire(self) -> None:
        self._handle = None
        self._armed_for = None
        for event in self.registrar.handle_timer(clock.wall()):
            self._on_event(event)
        for due in self.scheduler.pop_due(clock.monotonic()):
            rt = self._contacts.get(due.key)
            if rt is None:
                self.scheduler.remove(due.key)
            else:
                self._probe(rt)
        self._arm()

    # -- writing behind --------------------------------------------------------------------

    def _write(self, binding: Binding, *, delete: bool = False) -> None:
        if self.store is None:
            return
        self._dirty[(binding.aor, binding.key)] = None if delete else binding
        if self._flush_handle is None and self._flushing is None and self._loop is not None:
            self._flush_handle = self._loop.call_later(self.settings.flush_interval, self._flush)

    def _batch(self) -> tuple[list[Binding], list[tuple[str, str]]]:
        dirty, self._dirty = self._dirty, {}
        upserts = [b for b in dirty.values() if b is not None]
        deletes = [k for k, b in dirty.items() if b is None]
        return upserts, deletes

    def _flush(self) -> None:
        self._flush_handle = None
        if self.store is None or self._loop is None or not self._dirty:
            return
        upserts, deletes = self._batch()
        self._flushing = self._loop.run_in_executor(None, self.store.apply, upserts, deletes)
        self._flushing.add_done_callback(self._flushed)

    def _flushed(self, future: asyncio.Future[None]) -> None:
        self._flushing = None
        exc = None if future.cancelled() else future.exception()
        if exc is not None and not self._store_failed:
            self._store_failed = True  # once: a full disk would otherwise log every batch
            self.log(f"registrar: cannot store bindings: {exc}")
        if self._dirty and not self._closing and self._loop is not None:
            self._flush_handle = self._loop.call_later(self.settings.flush_interval, self._flush)

    def _flush_now(self) -> None:
        if self.store is None or not self._dirty:
            return
        upserts, deletes = self._batch()
        try:
            self.store.apply(upserts, deletes)
        except ConfigError as exc:
            self.log(f"registrar: cannot store bindings: {exc}")


def _name(binding: Binding) -> str:
    return f"{binding.aor}|{binding.key}"


def build_service(
    *,
    users_path: str,
    realm: str,
    algorithms: tuple[str, ...],
    min_expires: int,
    max_expires: int,
    flow_timer: int | None,
    flow_timer_always: bool,
    qualify_frequency: float,
    qualify_timeout: float,
    remove_unavailable: bool,
    db_path: str | None,
    server: str | None = None,
    log: Callable[[str], None] = log_line,
    warn: Callable[[str], None] | None = None,
) -> RegistrarService:
    """The registrar service of ``respond --registrar`` and of the monitor's ``[registrar]``:
    users file, binding database (its nonce secret survives restarts), restored bindings.
    Raises ConfigError naming the file (users, database) and the reason."""
    users = load_users(users_path, warn or log)
    config = RegistrarConfig(
        realm=realm,
        min_expires=min_expires,
        max_expires=max_expires,
        default_expires=max(min_expires, min(3600, max_expires)),
        flow_timer=flow_timer,
        flow_timer_always=flow_timer_always,
        algorithms=algorithms,
        server=server,
    )
    settings = RegistrarSettings(
        qualify=QualifySettings(
            qualify_frequency=qualify_frequency, qualify_timeout=qualify_timeout
        ),
        remove_unavailable=remove_unavailable,
    )
    fresh = os.urandom(32)
    store = BindingStore(db_path) if db_path else None
    try:
        registrar = Registrar(
            config,
            users,
            secret=store.secret(lambda: fresh) if store is not None else fresh,
            rand_token=lambda: os.urandom(8).hex(),
            tag_key=os.urandom(16),
        )
        service = RegistrarService(registrar, settings, store=store, log=log)
        service.restore()
    except ConfigError:
        if store is not None:
            store.close()
        raise
    return service
