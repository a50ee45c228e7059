"""SQLite storage: targets' current state, every transition, per-minute RTT, the event outbox.

Durability. The database runs in WAL mode with ``synchronous=FULL``: every commit fsyncs the
write-ahead log before it returns, so a committed transaction survives a SIGKILL *and* a power
loss. ``NORMAL`` would already survive a SIGKILL (the WAL frames sit in the OS page cache), but
may drop the last commits on power loss; since every write from the monitor goes through
:class:`StoreWriter`, which commits one batch every ``flush_interval``, FULL costs a handful of
fsyncs per second, off the event loop, and buys the stronger promise.

Threads. :class:`Store` is synchronous and guards its one connection with a lock, so it may be
called from the writer thread and from ``asyncio.to_thread`` at once. The event loop never calls
it directly for writes: it hands rows to :class:`StoreWriter`, which merges them in memory
(target upserts coalesce by name, RTT samples fold into per-minute aggregates) and commits them
in one transaction from its own thread. The monitor's per-probe rows come through
:meth:`StoreWriter.probe` (no future, no wake-up per probe) and, alone, are committed every
5 seconds; it stamps each RTT sample with the start of its ``rtt_bucket`` (5 minutes for a
target probed every 60 s), and the writer keeps each target's current bucket in memory until
it closes, so that a row of ``rtt_minutes`` is inserted once with several probes (what a
SIGKILL may lose is in :class:`StoreWriter`).

Errors. A database that cannot be opened, is not SQLite, is corrupt or cannot be written raises
:class:`~sipalive.errors.ConfigError` naming the path and SQLite's reason.

Schema. ``PRAGMA user_version`` holds the schema version; :data:`MIGRATIONS` lists the scripts
that take a database from version ``n - 1`` to ``n``, each applied in its own transaction.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sqlite3
import threading
from array import array
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

from sipalive import clock
from sipalive.errors import ConfigError

log = logging.getLogger("sipalive.store")

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE targets (
        name        TEXT PRIMARY KEY,
        uri         TEXT NOT NULL,
        state       TEXT NOT NULL,
        since       REAL,
        last_rtt    REAL,
        probes      INTEGER NOT NULL DEFAULT 0,
        successes   INTEGER NOT NULL DEFAULT 0,
        failures    INTEGER NOT NULL DEFAULT 0,
        consecutive INTEGER NOT NULL DEFAULT 0,
        timeouts         INTEGER NOT NULL DEFAULT 0,
        transport_errors INTEGER NOT NULL DEFAULT 0,
        rejected         INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE transitions (
        id         INTEGER PRIMARY KEY,
        target     TEXT NOT NULL,
        at         REAL NOT NULL,
        from_state TEXT NOT NULL,
        to_state   TEXT NOT NULL,
        cause      TEXT NOT NULL,
        rtt        REAL
    );
    CREATE INDEX transitions_target_at ON transitions (target, at);
    CREATE INDEX transitions_at ON transitions (at);
    CREATE TABLE rtt_minutes (
        target TEXT NOT NULL,
        minute INTEGER NOT NULL,
        count  INTEGER NOT NULL,
        min    REAL NOT NULL,
        max    REAL NOT NULL,
        sum    REAL NOT NULL,
        sumsq  REAL NOT NULL,
        PRIMARY KEY (target, minute)
    ) WITHOUT ROWID;
    CREATE INDEX rtt_minutes_minute ON rtt_minutes (minute);
    CREATE TABLE events_outbox (
        id              INTEGER PRIMARY KEY,
        event_id        TEXT NOT NULL,
        sink            TEXT NOT NULL,
        created_at      REAL NOT NULL,
        payload         TEXT NOT NULL,
        attempts        INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,
        last_attempt_at REAL,
        delivered_at    REAL,
        last_error      TEXT,
        UNIQUE (event_id, sink)
    );
    CREATE INDEX events_outbox_due ON events_outbox (next_attempt_at)
        WHERE delivered_at IS NULL;
    CREATE INDEX events_outbox_created ON events_outbox (created_at);
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)

_DAY = 86400.0


def iso8601(at: float) -> str:
    """Epoch seconds as ISO 8601 UTC with milliseconds: ``2024-05-01T12:00:00.123Z``."""
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


class TargetRow(NamedTuple):
    """A target's current state and counters, as restored after a restart.

    ``failures`` = ``timeouts`` + ``transport_errors`` + ``rejected``, as the qualify engine
    counts them; ``consecutive`` is the current streak (the engine may restart it from zero).
    A tuple in the column order of ``targets``: the monitor makes one per probe, and it goes
    to ``executemany`` as it is.
    """

    name: str
    uri: str
    state: str
    since: float | None = None
    last_rtt: float | None = None
    probes: int = 0
    successes: int = 0
    failures: int = 0
    consecutive: int = 0
    timeouts: int = 0
    transport_errors: int = 0
    rejected: int = 0


@dataclass(frozen=True, slots=True)
class TransitionRow:
    """One state change. ``id`` is assigned by the database (None before insertion)."""

    target: str
    at: float
    from_state: str
    to_state: str
    cause: str
    rtt: float | None
    id: int | None = None

    def to_json(self) -> dict[str, object]:
        """The history item of the API contract: ``{at, from, to, cause, rtt_s}``."""
        return {
            "at": iso8601(self.at),
            "from": self.from_state,
            "to": self.to_state,
            "cause": self.cause,
            "rtt_s": self.rtt,
        }


@dataclass(frozen=True, slots=True)
class RttMinute:
    """RTT samples of one target within one minute (``minute`` = epoch seconds // 60)."""

    target: str
    minute: int
    count: int
    min: float
    max: float
    sum: float
    sumsq: float

    @property
    def start(self) -> float:
        return self.minute * 60.0

    @property
    def mean(self) -> float:
        return self.sum / self.count

    @property
    def stddev(self) -> float:
        return math.sqrt(max(0.0, self.sumsq / self.count - self.mean**2))

    def merged(self, other: RttMinute) -> RttMinute:
        return RttMinute(
            self.target,
            self.minute,
            self.count + other.count,
            min(self.min, other.min),
            max(self.max, other.max),
            self.sum + other.sum,
            self.sumsq + other.sumsq,
        )


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One event waiting for (or done with) delivery to one sink.

    ``(event_id, sink)`` is unique: the same event goes to two webhooks under the same id.
    """

    event_id: str
    sink: str
    payload: str
    created_at: float
    next_attempt_at: float
    attempts: int = 0
    last_attempt_at: float | None = None
    delivered_at: float | None = None
    last_error: str | None = None


@dataclass(frozen=True, slots=True)
class PruneResult:
    transitions: int
    rtt_minutes: int
    delivered_events: int
    abandoned_events: int


def _aggregate(samples: Iterable[tuple[str, float, float]]) -> dict[tuple[str, int], RttMinute]:
    out: dict[tuple[str, int], RttMinute] = {}
    for target, at, rtt in samples:
        minute = int(at // 60)
        one = RttMinute(target, minute, 1, rtt, rtt, rtt, rtt * rtt)
        key = (target, minute)
        old = out.get(key)
        out[key] = one if old is None else old.merged(one)
    return out


# A row of rtt_minutes: (target, minute, count, min, max, sum, sumsq).
RttTuple = tuple[str, int, int, float, float, float, float]

_TARGET_COLUMNS = (
    "name, uri, state, since, last_rtt, probes, successes, failures, consecutive, "
    "timeouts, transport_errors, rejected"
)
_TRANSITION_COLUMNS = "target, at, from_state, to_state, cause, rtt, id"
_OUTBOX_COLUMNS = (
    "event_id, sink, payload, created_at, next_attempt_at, attempts, last_attempt_at, "
    "delivered_at, last_error"
)


class Store:
    """The SQLite database at ``path`` (created with its parent directories if missing)."""

    def __init__(self, path: str | Path, *, busy_timeout: float = 5.0) -> None:
        self.path = str(path)
        self._lock = threading.Lock()
        memory = self.path == ":memory:"
        try:
            if not memory:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=busy_timeout
            )
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(self.path, f"cannot open the database: {exc}") from exc
        try:
            self._setup(memory)
        except sqlite3.Error as exc:
            self._db.close()
            raise ConfigError(self.path, f"cannot use the database: {exc}") from exc
        except ConfigError:
            self._db.close()
            raise

    def _setup(self, memory: bool) -> None:
        mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if not memory and str(mode).lower() != "wal":
            raise ConfigError(self.path, f"cannot switch to WAL journal mode (got {mode!r})")
        self._db.execute("PRAGMA synchronous=FULL")
        version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise ConfigError(
                self.path,
                f"schema version {version} is newer than this sipalive ({SCHEMA_VERSION})",
            )
        for number in range(version + 1, SCHEMA_VERSION + 1):
            # executescript() commits first, so BEGIN/COMMIT live inside the script itself.
            script = MIGRATIONS[number - 1]
            self._db.executescript(
                f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version={number};\nCOMMIT;"
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _read(self, what: str) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                yield self._db
            except sqlite3.Error as exc:
                raise ConfigError(self.path, f"{what}: {exc}") from exc

    @contextlib.contextmanager
    def _write(self, what: str) -> Iterator[sqlite3.Connection]:
        """One transaction: BEGIN IMMEDIATE takes the write lock up front, so a busy database
        waits in ``busy_timeout`` here instead of failing half-way through the batch."""
        with self._read(what) as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    # -- targets -----------------------------------------------------------------------------

    def upsert_targets(self, rows: Iterable[TargetRow]) -> None:
        with self._write("upsert targets") as db:
            self._upsert_targets(db, rows)

    @staticmethod
    def _upsert_targets(db: sqlite3.Connection, rows: Iterable[TargetRow]) -> None:
        db.executemany(
            f"INSERT INTO targets ({_TARGET_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?) "
            "ON CONFLICT (name) DO UPDATE SET uri=excluded.uri, state=excluded.state, "
            "since=excluded.since, last_rtt=excluded.last_rtt, probes=excluded.probes, "
            "successes=excluded.successes, failures=excluded.failures, "
            "consecutive=excluded.consecutive, timeouts=excluded.timeouts, "
            "transport_errors=excluded.transport_errors, rejected=excluded.rejected",
            rows,
        )

    def remove_targets(self, names: Iterable[str]) -> None:
        """Forget targets' current state (their history stays until pruned)."""
        with self._write("remove targets") as db:
            db.executemany("DELETE FROM targets WHERE name = ?", ((n,) for n in names))

    def load_targets(self) -> dict[str, TargetRow]:
        with self._read("load targets") as db:
            rows = db.execute(f"SELECT {_TARGET_COLUMNS} FROM targets").fetchall()
        return {r[0]: TargetRow(*r) for r in rows}

    # -- transitions -------------------------------------------------------------------------

    def add_transitions(self, rows: Iterable[TransitionRow]) -> None:
        with self._write("add transitions") as db:
            self._add_transitions(db, rows)

    @staticmethod
    def _add_transitions(db: sqlite3.Connection, rows: Iterable[TransitionRow]) -> None:
        db.executemany(
            "INSERT INTO transitions (target, at, from_state, to_state, cause, rtt) "
            "VALUES (?,?,?,?,?,?)",
            ((r.target, r.at, r.from_state, r.to_state, r.cause, r.rtt) for r in rows),
        )

    def history(
        self, name: str, limit: int = 1000, since: float | None = None
    ) -> list[TransitionRow]:
        """The latest ``limit`` transitions of ``name`` at or after ``since``, oldest first."""
        with self._read("read history") as db:
            rows = db.execute(
                f"SELECT {_TRANSITION_COLUMNS} FROM transitions WHERE target = ? AND at >= ? "
                "ORDER BY at DESC, id DESC LIMIT ?",
                (name, -math.inf if since is None else since, limit),
            ).fetchall()
        return [TransitionRow(*r) for r in reversed(rows)]

    def recent_transitions(self, limit: int = 100, after_id: int = 0) -> list[TransitionRow]:
        """Transitions of all targets, oldest first: with ``after_id`` 0 the latest ``limit``;
        otherwise the ``limit`` rows right after ``after_id``, so that a client polling with
        the last id it saw pages forward and never skips one.
        """
        with self._read("read transitions") as db:
            if after_id > 0:
                rows = db.execute(
                    f"SELECT {_TRANSITION_COLUMNS} FROM transitions WHERE id > ? "
                    "ORDER BY id LIMIT ?",
                    (after_id, limit),
                ).fetchall()
                return [TransitionRow(*r) for r in rows]
            rows = db.execute(
                f"SELECT {_TRANSITION_COLUMNS} FROM transitions ORDER BY id DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [TransitionRow(*r) for r in reversed(rows)]

    def last_transition_id(self) -> int:
        with self._read("read transitions") as db:
            row = db.execute("SELECT max(id) FROM transitions").fetchone()
        return int(row[0] or 0)

    # -- RTT aggregates ----------------------------------------------------------------------

    def add_rtt_samples(self, samples: Iterable[tuple[str, float, float]]) -> None:
        """Fold ``(target, at, rtt)`` samples into the per-minute aggregates."""
        self.add_rtt_minutes(_aggregate(samples).values())

    def add_rtt_minutes(self, minutes: Iterable[RttMinute]) -> None:
        with self._write("add RTT samples") as db:
            self._add_rtt_minutes(db, minutes)

    @staticmethod
    def _add_rtt_minutes(db: sqlite3.Connection, minutes: Iterable[RttMinute]) -> None:
        Store._add_rtt_rows(
            db, ((m.target, m.minute, m.count, m.min, m.max, m.sum, m.sumsq) for m in minutes)
        )

    @staticmethod
    def _add_rtt_rows(db: sqlite3.Connection, rows: Iterable[RttTuple]) -> None:
        """Add ``(target, minute, count, min, max, sum, sumsq)`` rows to the aggregates: a
        row already stored for the same target and minute is merged with it."""
        db.executemany(
            "INSERT INTO rtt_minutes (target, minute, count, min, max, sum, sumsq) "
            "VALUES (?,?,?,?,?,?,?) ON CONFLICT (target, minute) DO UPDATE SET "
            "count = count + excluded.count, min = min(min, excluded.min), "
            "max = max(max, excluded.max), sum = sum + excluded.sum, "
            "sumsq = sumsq + excluded.sumsq",
            rows,
        )

    def rtt_series(self, name: str, since: float, until: float) -> list[RttMinute]:
        """Per-minute aggregates of the minutes that overlap ``[since, until)``, in order."""
        with self._read("read RTT series") as db:
            rows = db.execute(
                "SELECT target, minute, count, min, max, sum, sumsq FROM rtt_minutes "
                "WHERE target = ? AND minute >= ? AND minute < ? ORDER BY minute",
                (name, int(since // 60), math.ceil(until / 60)),
            ).fetchall()
        return [RttMinute(*r) for r in rows]

    # -- outbox ------------------------------------------------------------------------------

    def outbox_add(self, rows: Iterable[OutboxRow]) -> None:
        """Add events to deliver; adding an ``(event_id, sink)`` twice keeps the first."""
        with self._write("add to the outbox") as db:
            self._outbox_add(db, rows)

    @staticmethod
    def _outbox_add(db: sqlite3.Connection, rows: Iterable[OutboxRow]) -> None:
        db.executemany(
            f"INSERT OR IGNORE INTO events_outbox ({_OUTBOX_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)",
            (
                (
                    r.event_id,
                    r.sink,
                    r.payload,
                    r.created_at,
                    r.next_attempt_at,
                    r.attempts,
                    r.last_attempt_at,
                    r.delivered_at,
                    r.last_error,
                )
                for r in rows
            ),
        )

    def outbox_due(
        self, now: float, limit: int, sinks: Sequence[str] | None = None
    ) -> list[OutboxRow]:
        """Undelivered rows whose next attempt is due at ``now``, the most overdue first."""
        where, args = self._sinks_clause(sinks)
        with self._read("read the outbox") as db:
            rows = db.execute(
                f"SELECT {_OUTBOX_COLUMNS} FROM events_outbox WHERE delivered_at IS NULL "
                f"AND next_attempt_at <= ?{where} ORDER BY next_attempt_at, id LIMIT ?",
                (now, *args, limit),
            ).fetchall()
        return [OutboxRow(*r) for r in rows]

    def outbox_next_due(self, after: float, sinks: Sequence[str] | None = None) -> float | None:
        """The earliest next attempt later than ``after``, or None."""
        where, args = self._sinks_clause(sinks)
        with self._read("read the outbox") as db:
            row = db.execute(
                "SELECT min(next_attempt_at) FROM events_outbox WHERE delivered_at IS NULL "
                f"AND next_attempt_at > ?{where}",
                (after, *args),
            ).fetchone()
        return None if row[0] is None else float(row[0])

    def outbox_get(self, event_id: str) -> list[OutboxRow]:
        """Every sink's row of one event."""
        with self._read("read the outbox") as db:
            rows = db.execute(
                f"SELECT {_OUTBOX_COLUMNS} FROM events_outbox WHERE event_id = ? ORDER BY id",
                (event_id,),
            ).fetchall()
        return [OutboxRow(*r) for r in rows]

    def outbox_all(self) -> list[OutboxRow]:
        with self._read("read the outbox") as db:
            rows = db.execute(f"SELECT {_OUTBOX_COLUMNS} FROM events_outbox ORDER BY id").fetchall()
        return [OutboxRow(*r) for r in rows]

    @staticmethod
    def _sinks_clause(sinks: Sequence[str] | None) -> tuple[str, tuple[str, ...]]:
        if sinks is None:
            return "", ()
        return f" AND sink IN ({','.join('?' * len(sinks))})", tuple(sinks)

    def outbox_mark_delivered(self, event_id: str, sink: str, now: float) -> None:
        with self._write("mark an event delivered") as db:
            self._mark_delivered(db, [(event_id, sink, now)])

    @staticmethod
    def _mark_delivered(db: sqlite3.Connection, marks: Iterable[tuple[str, str, float]]) -> None:
        db.executemany(
            "UPDATE events_outbox SET delivered_at = ?, last_attempt_at = ?, "
            "attempts = attempts + 1, last_error = NULL "
            "WHERE event_id = ? AND sink = ? AND delivered_at IS NULL",
            ((now, now, event_id, sink) for event_id, sink, now in marks),
        )

    def outbox_mark_failed(
        self, event_id: str, sink: str, now: float, next_attempt_at: float, error: str = ""
    ) -> None:
        with self._write("mark an event failed") as db:
            self._mark_failed(db, [(event_id, sink, now, next_attempt_at, error)])

    @staticmethod
    def _mark_failed(
        db: sqlite3.Connection, marks: Iterable[tuple[str, str, float, float, str]]
    ) -> None:
        db.executemany(
            "UPDATE events_outbox SET attempts = attempts + 1, last_attempt_at = ?, "
            "next_attempt_at = ?, last_error = ? "
            "WHERE event_id = ? AND sink = ? AND delivered_at IS NULL",
            (
                (now, next_at, error, event_id, sink)
                for event_id, sink, now, next_at, error in marks
            ),
        )

    # -- retention ---------------------------------------------------------------------------

    def prune(self, retention_days: float, now: float) -> PruneResult:
        """Delete history, RTT minutes and outbox rows older than the retention.

        An event still undelivered after the whole retention is abandoned, with a warning:
        at-least-once has to end somewhere, or a receiver gone for good grows the outbox forever.
        """
        cutoff = now - retention_days * _DAY
        with self._write("prune") as db:
            transitions = db.execute("DELETE FROM transitions WHERE at < ?", (cutoff,)).rowcount
            minutes = db.execute(
                "DELETE FROM rtt_minutes WHERE minute < ?", (int(cutoff // 60),)
            ).rowcount
            delivered = db.execute(
                "DELETE FROM events_outbox WHERE delivered_at IS NOT NULL AND delivered_at < ?",
                (cutoff,),
            ).rowcount
            abandoned = db.execute(
                "DELETE FROM events_outbox WHERE delivered_at IS NULL AND created_at < ?",
                (cutoff,),
            ).rowcount
        if abandoned:
            log.warning(
                "%s: abandoned %d undelivered events older than %g days",
                self.path,
                abandoned,
                retention_days,
            )
        return PruneResult(transitions, minutes, delivered, abandoned)

    # -- batches -----------------------------------------------------------------------------

    def _commit_batch(self, batch: _Batch) -> None:
        with self._write("write batch") as db:
            self._upsert_targets(db, batch.targets.values())
            self._add_transitions(db, batch.transitions)
            self._add_rtt_minutes(db, batch.rtt.values())
            self._add_rtt_rows(db, batch.closed)
            self._outbox_add(db, batch.outbox)
            self._mark_failed(db, batch.failed)
            self._mark_delivered(db, batch.delivered)


@dataclass(slots=True)
class _Batch:
    """Writes waiting for the next commit; ``futures`` resolve once they are committed.
    ``samples`` are the raw ``(target, at, rtt)`` of :meth:`StoreWriter.probe`, still to fold
    into the writer's open buckets; ``closed`` the rows of the buckets that closed meanwhile."""

    targets: dict[str, TargetRow] = field(default_factory=dict)
    transitions: list[TransitionRow] = field(default_factory=list)
    rtt: dict[tuple[str, int], RttMinute] = field(default_factory=dict)
    samples: list[tuple[str, float, float]] = field(default_factory=list)
    closed: list[RttTuple] = field(default_factory=list)
    outbox: list[OutboxRow] = field(default_factory=list)
    failed: list[tuple[str, str, float, float, str]] = field(default_factory=list)
    delivered: list[tuple[str, str, float]] = field(default_factory=list)
    futures: list[Future[None]] = field(default_factory=list)
    close_open: bool = False

    def rows(self) -> int:
        return (
            len(self.targets)
            + len(self.transitions)
            + len(self.rtt)
            + len(self.samples)
            + len(self.closed)
            + len(self.outbox)
            + len(self.failed)
            + len(self.delivered)
        )

    def absorb(self, newer: _Batch) -> None:
        """Append ``newer`` after this batch: newer target rows win, RTT minutes add up."""
        self.targets.update(newer.targets)
        self.transitions += newer.transitions
        for key, minute in newer.rtt.items():
            old = self.rtt.get(key)
            self.rtt[key] = minute if old is None else old.merged(minute)
        self.samples += newer.samples
        self.closed += newer.closed
        self.outbox += newer.outbox
        self.failed += newer.failed
        self.delivered += newer.delivered
        self.futures += newer.futures
        self.close_open = self.close_open or newer.close_open


# An open bucket is written once this many minutes older than the newest sample seen, even if
# its target sends no later one (removed, unreachable): RTT buckets are at most 15 minutes.
_STALE_MINUTES = 30


class _OpenBuckets:
    """Each target's current RTT bucket, aggregated in memory until it closes: a row of
    ``rtt_minutes`` is then written once per bucket, not updated at every probe.

    One slot per target in flat arrays (no Python object per sample or bucket: ~60 bytes a
    target). A sample in a later bucket than its target's open one closes it (its row goes
    to ``closed``); a sample in an earlier bucket (a clock stepped back) is a row of its own,
    which the upsert merges with the stored one.
    """

    __slots__ = ("count", "free", "hi", "latest", "lo", "minute", "slots", "sum", "sumsq")

    def __init__(self) -> None:
        self.slots: dict[str, int] = {}
        self.free: list[int] = []
        self.minute = array("q")
        self.count = array("q")
        self.lo = array("d")
        self.hi = array("d")
        self.sum = array("d")
        self.sumsq = array("d")
        self.latest = 0

    def add(self, samples: Iterable[tuple[str, float, float]], closed: list[RttTuple]) -> None:
        slots = self.slots
        minutes, count, lo, hi, total, sumsq = (
            self.minute,
            self.count,
            self.lo,
            self.hi,
            self.sum,
            self.sumsq,
        )
        latest = self.latest
        for target, at, rtt in samples:
            minute = int(at // 60)
            latest = max(latest, minute)
            slot = slots.get(target)
            if slot is not None:
                open_minute = minutes[slot]
                if minute == open_minute:
                    count[slot] += 1
                    lo[slot] = min(lo[slot], rtt)
                    hi[slot] = max(hi[slot], rtt)
                    total[slot] += rtt
                    sumsq[slot] += rtt * rtt
                    continue
                if minute < open_minute:
                    closed.append((target, minute, 1, rtt, rtt, rtt, rtt * rtt))
                    continue
                closed.append(self._row(target, slot))
            elif self.free:
                slot = slots[target] = self.free.pop()
            else:
                slot = slots[target] = len(minutes)
                for column in (minutes, count, lo, hi, total, sumsq):
                    column.append(0)
            minutes[slot] = minute
            count[slot] = 1
            lo[slot] = hi[slot] = total[slot] = rtt
            sumsq[slot] = rtt * rtt
        self.latest = latest

    def _row(self, target: str, slot: int) -> RttTuple:
        return (
            target,
            self.minute[slot],
            self.count[slot],
            self.lo[slot],
            self.hi[slot],
            self.sum[slot],
            self.sumsq[slot],
        )

    def get(self, target: str) -> RttMinute | None:
        slot = self.slots.get(target)
        return None if slot is None else RttMinute(*self._row(target, slot))

    def close(self, before: int | None = None) -> list[RttTuple]:
        """Close every bucket (``before`` None) or those of minutes before ``before``."""
        rows = []
        for target, slot in list(self.slots.items()):
            if before is None or self.minute[slot] < before:
                rows.append(self._row(target, slot))
                del self.slots[target]
                self.free.append(slot)
        return rows


class StoreWriter:
    """Collects writes in memory and commits them from a dedicated thread.

    A batch is committed ``flush_interval`` seconds after its first write, or as soon as
    ``flush_rows`` rows are waiting, or on :meth:`flush`; a batch of :meth:`probe` rows
    alone (which nobody waits for) after ``probe_interval`` seconds. Every write method returns a
    :class:`concurrent.futures.Future` that resolves once its rows are committed (await it
    with ``asyncio.wrap_future``); writes passed to one call are committed in one transaction.

    The RTT samples of :meth:`probe` (the monitor's, stamped with the start of their bucket)
    are aggregated in memory per target until its bucket closes (:class:`_OpenBuckets`): each
    row of ``rtt_minutes`` is then inserted once, not updated at every probe. Open buckets are
    written by :meth:`flush`, :meth:`barrier` and :meth:`close`; :meth:`rtt_series` reads the
    stored rows with the open bucket merged in. What a SIGKILL loses, then: the open buckets
    (at most one bucket of RTT samples per target: 5 minutes at ``qualify_frequency`` 60,
    :func:`~sipalive.qualify.history.rtt_bucket`) and the last ``probe_interval`` seconds of
    probe rows (counters, which are anyway written at most every 300 s per target); never a
    transition or the target row written with it, which carry a future.

    Bounds: target upserts coalesce by name and RTT samples by (target, minute), so those grow
    with the number of targets, not with time. Everything else counts towards ``max_pending``
    rows; a writer that cannot keep up (or a database that keeps failing) makes the caller wait
    there instead of growing without end. A failed commit is logged and retried with the next
    batch; nothing is dropped.
    """

    def __init__(
        self,
        store: Store,
        *,
        flush_interval: float = 0.1,
        flush_rows: int = 5000,
        max_pending: int = 1_000_000,
        probe_interval: float = 5.0,
    ) -> None:
        self.store = store
        self.flush_interval = flush_interval
        self.probe_interval = max(flush_interval, probe_interval)
        self.flush_rows = flush_rows
        self.max_pending = max_pending
        self._cond = threading.Condition()
        self._pending = _Batch()
        self._open = _OpenBuckets()
        self._open_lock = threading.Lock()  # the writer thread folds, readers read
        self._swept = 0  # _open.latest at the last sweep of stale buckets
        self._urgent = False
        self._closing = False
        self._error: ConfigError | None = None
        self._thread = threading.Thread(target=self._run, name="sipalive-store", daemon=True)
        self._thread.start()

    def write(
        self,
        *,
        targets: Iterable[TargetRow] = (),
        transitions: Iterable[TransitionRow] = (),
        rtt_samples: Iterable[tuple[str, float, float]] = (),
        outbox: Iterable[OutboxRow] = (),
        failed: Iterable[tuple[str, str, float, float, str]] = (),
        delivered: Iterable[tuple[str, str, float]] = (),
        urgent: bool = False,
    ) -> Future[None]:
        """Queue writes that commit together. ``urgent`` commits without waiting the interval."""
        return self._queue(
            _Batch(
                targets={t.name: t for t in targets},
                transitions=list(transitions),
                rtt=_aggregate(rtt_samples),
                outbox=list(outbox),
                failed=list(failed),
                delivered=list(delivered),
            ),
            urgent,
        )

    def _queue(self, batch: _Batch, urgent: bool) -> Future[None]:
        future: Future[None] = Future()
        # RUNNING: a caller's cancel() cannot race the writer thread's set_result().
        future.set_running_or_notify_cancel()
        batch.futures.append(future)
        with self._cond:
            if self._closing:
                raise ConfigError(self.store.path, "the store writer is closed")
            while (
                self._pending.rows() >= self.max_pending
                and not self._closing
                and self._error is None
            ):
                self._urgent = True
                self._cond.notify_all()
                self._cond.wait()
            self._pending.absorb(batch)
            if urgent or self._pending.rows() >= self.flush_rows:
                self._urgent = True
            self._cond.notify_all()
        return future

    def probe(self, row: TargetRow | None, sample: tuple[str, float, float] | None) -> None:
        """One probe's target row and RTT sample (either may be None), with no future: the
        monitor's hot path.
        Committed with the next batch like any write (nothing waits for it); it wakes the
        writer thread only when it starts a batch, not once per probe."""
        with self._cond:
            if self._closing:
                raise ConfigError(self.store.path, "the store writer is closed")
            pending = self._pending
            first = not pending.targets and not pending.samples and not pending.futures
            if row is not None:
                pending.targets[row.name] = row
            if sample is not None:
                pending.samples.append(sample)
            # samples are only folded in memory (cheap): the bound is the list's size
            if len(pending.samples) >= 10 * self.flush_rows:
                self._urgent = True
                self._cond.notify_all()
            elif first:
                self._cond.notify_all()

    def upsert_targets(self, rows: Iterable[TargetRow]) -> Future[None]:
        return self.write(targets=rows)

    def add_transitions(self, rows: Iterable[TransitionRow]) -> Future[None]:
        return self.write(transitions=rows)

    def add_rtt_samples(self, samples: Iterable[tuple[str, float, float]]) -> Future[None]:
        return self.write(rtt_samples=samples)

    def outbox_add(self, rows: Iterable[OutboxRow]) -> Future[None]:
        return self.write(outbox=rows)

    def outbox_mark_delivered(self, event_id: str, sink: str, now: float) -> Future[None]:
        return self.write(delivered=[(event_id, sink, now)])

    def outbox_mark_failed(
        self, event_id: str, sink: str, now: float, next_attempt_at: float, error: str = ""
    ) -> Future[None]:
        return self.write(failed=[(event_id, sink, now, next_attempt_at, error)])

    def barrier(self) -> Future[None]:
        """A future that resolves once everything queued so far is committed, which is soon,
        the open RTT buckets included."""
        return self._queue(_Batch(close_open=True), True)

    def rtt_series(self, reader: Store, name: str, since: float, until: float) -> list[RttMinute]:
        """``reader.rtt_series`` with ``name``'s open bucket merged in. A bucket that closes
        while its row is being committed is missing from this answer only (milliseconds)."""
        stored = reader.rtt_series(name, since, until)
        with self._open_lock:
            current = self._open.get(name)
        if current is None or not int(since // 60) <= current.minute < math.ceil(until / 60):
            return stored
        kept = [m for m in stored if m.minute != current.minute]
        for m in stored:
            if m.minute == current.minute:
                current = m.merged(current)
        kept.append(current)
        kept.sort(key=lambda m: m.minute)
        return kept

    def flush(self, timeout: float | None = None) -> None:
        """Commit everything queued so far, blocking the caller (not for the event loop)."""
        self.barrier().result(timeout)

    def close(self) -> None:
        """Commit what is queued and stop the thread; raises ConfigError if that commit fails."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join()
        if self._error is not None:
            raise self._error

    def _take(self) -> _Batch | None:
        with self._cond:
            while not self._pending.rows() and not self._pending.futures and not self._closing:
                self._cond.wait()
            began = clock.monotonic()
            while not (self._urgent or self._closing):
                # probe rows alone wait longer: nobody waits for them, and each commit is an
                # fsync; a write with a future brings the commit forward to flush_interval
                wait = self.flush_interval if self._pending.futures else self.probe_interval
                remaining = began + wait - clock.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            batch, self._pending, self._urgent = self._pending, _Batch(), False
            if self._closing:
                if not batch.futures and not batch.rows() and not self._open.slots:
                    return None
                batch.close_open = True
            return batch

    def _fold(self, batch: _Batch) -> None:
        """Fold the batch's probe samples into the open buckets, the buckets they close (and
        stale ones, or all of them for a barrier) into the batch's rows."""
        with self._open_lock:
            self._open.add(batch.samples, batch.closed)
            batch.samples = []
            if batch.close_open:
                batch.closed += self._open.close()
            elif self._open.latest - self._swept >= 5:
                self._swept = self._open.latest
                batch.closed += self._open.close(self._swept - _STALE_MINUTES)

    def _run(self) -> None:
        while (batch := self._take()) is not None:
            self._fold(batch)
            try:
                self.store._commit_batch(batch)
            except ConfigError as exc:
                with self._cond:
                    batch.absorb(self._pending)
                    self._pending = batch
                    if self._closing:
                        self._error = exc
                        failed, self._pending = self._pending.futures, _Batch()
                    else:
                        failed = []
                        log.error("%s; retrying in %g s", exc, self.flush_interval)
                        self._cond.wait(self.flush_interval)
                    self._cond.notify_all()
                for future in failed:
                    future.set_exception(exc)
                if failed:
                    return
                continue
            with self._cond:
                self._cond.notify_all()
            for future in batch.futures:
                future.set_result(None)
