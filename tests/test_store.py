"""The SQLite store: WAL, schema, batches, history order, RTT minutes, prune, SIGKILL safety."""

from __future__ import annotations

import logging
import math
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sipalive.errors import ConfigError
from sipalive.store import (
    SCHEMA_VERSION,
    OutboxRow,
    RttMinute,
    Store,
    StoreWriter,
    TargetRow,
    TransitionRow,
)

SRC = Path(__file__).parent.parent / "src"


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "var" / "sipalive.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[Store]:
    with Store(db_path) as s:
        yield s


def tr(target: str, at: float, to: str = "unreachable", cause: str = "timeout") -> TransitionRow:
    return TransitionRow(target, at, "reachable", to, cause, None if to == "unreachable" else 0.02)


def pragma(path: Path, name: str) -> object:
    db = sqlite3.connect(path)
    try:
        return db.execute(f"PRAGMA {name}").fetchone()[0]
    finally:
        db.close()


def test_wal_mode_schema_version_and_parent_directory(db_path: Path) -> None:
    Store(db_path).close()  # creates var/
    assert pragma(db_path, "journal_mode") == "wal"
    assert pragma(db_path, "user_version") == SCHEMA_VERSION
    with Store(db_path) as again:  # migrations are not re-applied
        assert again.load_targets() == {}


def test_targets_round_trip_and_upsert(db_path: Path) -> None:
    a = TargetRow("a", "sip:a.example", "reachable", 100.0, 0.012, 10, 7, 3, 3, 1, 1, 1)
    b = TargetRow("b", "sip:b.example", "unknown")
    with Store(db_path) as store:
        store.upsert_targets([a, b])
        store.upsert_targets(
            [TargetRow("b", "sip:b2.example", "unreachable", 5.0, None, 4, 0, 4, 4)]
        )
    with Store(db_path) as store:
        loaded = store.load_targets()
        assert loaded["a"] == a
        assert loaded["b"] == TargetRow("b", "sip:b2.example", "unreachable", 5.0, None, 4, 0, 4, 4)
        store.remove_targets(["a"])
        assert set(store.load_targets()) == {"b"}


def test_batch_is_one_transaction(store: Store) -> None:
    store.add_transitions(tr(f"t{i % 100}", float(i)) for i in range(10_000))
    assert len(store.recent_transitions(limit=20_000)) == 10_000
    bad = [tr("x", 1.0), TransitionRow("x", 2.0, "a", "b", None, None)]  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="add transitions"):
        store.add_transitions(bad)
    assert store.history("x") == []  # the good row of the failed batch was rolled back


def test_history_oldest_first_with_limit_and_since(store: Store) -> None:
    store.add_transitions([tr("a", 30.0), tr("b", 15.0), tr("a", 10.0, "reachable", "recovered")])
    store.add_transitions([tr("a", 20.0, "lagged", "rtt"), tr("a", 40.0)])
    assert [t.at for t in store.history("a")] == [10.0, 20.0, 30.0, 40.0]
    assert [t.at for t in store.history("a", limit=2)] == [30.0, 40.0]  # the latest two
    assert [t.at for t in store.history("a", since=20.0)] == [20.0, 30.0, 40.0]
    first = store.history("a")[0]
    assert first.to_json() == {
        "at": "1970-01-01T00:00:10.000Z",
        "from": "reachable",
        "to": "reachable",
        "cause": "recovered",
        "rtt_s": 0.02,
    }


def test_recent_transitions_and_polling_by_id(store: Store) -> None:
    store.add_transitions(tr(f"t{i}", float(i)) for i in range(10))
    recent = store.recent_transitions(limit=3)
    assert [t.target for t in recent] == ["t7", "t8", "t9"]
    assert recent[0].id is not None
    store.add_transitions([tr("new", 99.0)])
    assert [t.target for t in store.recent_transitions(after_id=recent[-1].id or 0)] == ["new"]


def test_rtt_minute_aggregates(store: Store) -> None:
    base = 60.0 * 1000
    store.add_rtt_samples([("a", base + 1, 0.010), ("a", base + 59.9, 0.030), ("b", base, 1.0)])
    store.add_rtt_samples([("a", base + 30, 0.020), ("a", base + 60, 0.5)])  # merges, next minute
    series = store.rtt_series("a", base, base + 120)
    assert [m.minute for m in series] == [1000, 1001]
    first = series[0]
    assert (first.count, first.min, first.max) == (3, 0.010, 0.030)
    assert first.mean == pytest.approx(0.020)
    assert first.stddev == pytest.approx(math.sqrt(((0.01**2) + 0 + (0.01**2)) / 3))
    assert first.start == base
    assert series[1] == RttMinute("a", 1001, 1, 0.5, 0.5, 0.5, 0.25)
    assert store.rtt_series("a", base + 60, base + 61) == [series[1]]
    assert store.rtt_series("a", base + 30, base + 31) == [first]  # a minute that overlaps
    assert store.rtt_series("c", base, base + 120) == []


def test_prune(store: Store, caplog: pytest.LogCaptureFixture) -> None:
    day = 86400.0
    now = 100 * day
    store.add_transitions([tr("a", now - 10 * day), tr("a", now - day)])
    store.add_rtt_samples([("a", now - 10 * day, 0.1), ("a", now - day, 0.1)])
    old, new = now - 10 * day, now - day
    store.outbox_add(
        [
            OutboxRow("e1", "s", "{}", old, old),
            OutboxRow("e2", "s", "{}", old, old),
            OutboxRow("e3", "s", "{}", new, new),
        ]
    )
    store.outbox_mark_delivered("e1", "s", old)
    with caplog.at_level(logging.WARNING, "sipalive.store"):
        result = store.prune(7, now)
    assert (result.transitions, result.rtt_minutes) == (1, 1)
    assert (result.delivered_events, result.abandoned_events) == (1, 1)
    assert "abandoned 1 undelivered" in caplog.text
    assert [t.at for t in store.history("a")] == [now - day]
    assert [m.minute for m in store.rtt_series("a", 0, now)] == [int((now - day) // 60)]
    assert [r.event_id for r in store.outbox_all()] == ["e3"]


def test_outbox_lifecycle(store: Store) -> None:
    rows = [OutboxRow(f"e{i}", "hook", f'{{"n":{i}}}', 10.0, 10.0 + i) for i in range(3)]
    store.outbox_add(rows)
    store.outbox_add([OutboxRow("e0", "hook", "other", 99.0, 99.0)])  # a re-add is ignored
    store.outbox_add([OutboxRow("e0", "exec", "{}", 10.0, 10.0)])  # same event, another sink
    assert [(r.event_id, r.sink) for r in store.outbox_due(11.0, 10)] == [
        ("e0", "hook"),
        ("e0", "exec"),
        ("e1", "hook"),
    ]
    assert [r.event_id for r in store.outbox_due(11.0, 10, ["hook"])] == ["e0", "e1"]
    assert store.outbox_next_due(11.0) == 12.0
    store.outbox_mark_failed("e0", "hook", 11.0, 50.0, "HTTP 503")
    failed = store.outbox_get("e0")[0]
    assert (failed.attempts, failed.next_attempt_at, failed.last_error) == (1, 50.0, "HTTP 503")
    assert failed.payload == '{"n":0}'
    store.outbox_mark_delivered("e1", "hook", 12.0)
    store.outbox_mark_failed("e1", "hook", 13.0, 60.0, "late")  # a delivered row stays delivered
    delivered = store.outbox_get("e1")[0]
    assert (delivered.delivered_at, delivered.attempts, delivered.last_error) == (12.0, 1, None)
    assert [r.event_id for r in store.outbox_due(100.0, 10, ["hook"])] == ["e2", "e0"]


def test_unusable_databases_raise_config_error(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database, it is a text file " * 100)
    with pytest.raises(ConfigError, match="not a database") as info:
        Store(garbage)
    assert info.value.where == str(garbage)
    with pytest.raises(ConfigError, match="cannot open"):
        Store(tmp_path)  # a directory
    with pytest.raises(ConfigError, match="cannot open"):
        Store(garbage / "below-a-file.db")


def test_newer_schema_is_refused(db_path: Path) -> None:
    Store(db_path).close()
    db = sqlite3.connect(db_path)
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(ConfigError, match="newer than this sipalive"):
        Store(db_path)


def test_writer_batches_coalesces_and_flushes(store: Store) -> None:
    commits = 0
    commit = store._commit_batch

    def counting(batch: object) -> None:
        nonlocal commits
        commits += 1
        commit(batch)  # type: ignore[arg-type]

    store._commit_batch = counting  # type: ignore[method-assign]
    writer = StoreWriter(store, flush_interval=0.5)
    futures = [writer.add_transitions([tr("a", float(i))]) for i in range(1000)]
    futures += [
        writer.upsert_targets([TargetRow("a", "sip:a", "reachable", probes=i)]) for i in range(50)
    ]
    futures += [writer.add_rtt_samples([("a", 60.0 + i / 100, 0.01 * (i + 1))]) for i in range(100)]
    writer.flush(timeout=5)
    assert all(f.done() and f.exception() is None for f in futures)
    assert commits <= 2
    assert len(store.history("a", limit=5000)) == 1000
    assert store.load_targets()["a"].probes == 49  # the latest upsert wins
    (minute,) = store.rtt_series("a", 0, 600)
    assert (minute.count, minute.min) == (100, 0.01)
    assert minute.max == pytest.approx(1.0)
    writer.add_transitions([tr("b", 1.0)])
    writer.close()  # commits what is queued
    assert len(store.history("b")) == 1
    with pytest.raises(ConfigError, match="closed"):
        writer.add_transitions([tr("c", 1.0)])


def test_writer_retries_a_failed_commit_without_dropping(
    db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with Store(db_path, busy_timeout=0.05) as store:
        writer = StoreWriter(store, flush_interval=0.05)
        other = sqlite3.connect(db_path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")  # hold the write lock: commits fail "locked"
            with caplog.at_level(logging.ERROR, "sipalive.store"):
                future = writer.add_transitions([tr("a", 1.0)])
                with pytest.raises(TimeoutError):
                    future.result(timeout=0.5)
            assert "database is locked" in caplog.text
            other.execute("ROLLBACK")
            future.result(timeout=5)
        finally:
            other.close()
            writer.close()
        assert len(store.history("a")) == 1


CHILD = textwrap.dedent(
    """
    import sys
    from sipalive.store import Store, StoreWriter, TargetRow, TransitionRow

    mode, path = sys.argv[1], sys.argv[2]
    store = Store(path)
    writer = StoreWriter(store, flush_interval=0.001) if mode == "writer" else None
    pad = "x" * 200
    n = 0
    while n < 10_000_000:
        size = 1 if n % 3 == 0 else 300
        rows = [TransitionRow(f"t{i % 50}", float(i), "reachable", "unreachable", pad, 0.01)
                for i in range(n, n + size)]
        targets = [TargetRow(f"t{i % 50}", "sip:t", "unreachable", float(i)) for i in range(n, n + size)]
        if writer is None:
            store.add_transitions(rows)
            store.upsert_targets(targets[-50:])
        else:
            writer.write(transitions=rows, targets=targets).result()
        n += size
        print(n, flush=True)
    """
)


@pytest.mark.parametrize("mode", ["store", "writer"])
def test_sigkill_loses_nothing_committed(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "kill.db"
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, mode, str(path)], stdout=subprocess.PIPE, text=True, env=env
    )
    committed = 0
    try:
        assert proc.stdout is not None
        while committed < 5000:
            line = proc.stdout.readline()
            assert line, f"the writer exited early with {proc.wait(10)}"
            committed = int(line)
        time.sleep(0.005)  # a few more commits, then die in the middle of the next ones
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        committed = max([committed, *map(int, proc.stdout.read().split())])
    finally:
        proc.kill()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    with Store(path) as store:
        ats = sorted(t.at for t in store.recent_transitions(limit=10_000_000))
        assert len(ats) >= committed
        assert ats == [float(i) for i in range(len(ats))]  # a prefix: no gap, no torn batch
        assert all(t.state == "unreachable" for t in store.load_targets().values())
    assert pragma(path, "integrity_check") == "ok"


def test_writer_probe_commits_what_write_commits(db_path: Path, tmp_path: Path) -> None:
    """The future-less per-probe path and ``write`` leave the same rows, in the same order of
    precedence (a later row of a target wins, whichever path it came by)."""
    rows = [
        TargetRow(f"t{i % 7}", "sip:t", "reachable", float(i), 0.001 * i, probes=i)
        for i in range(300)
    ]
    samples = [(f"t{i % 7}", 60.0 + i / 10, 0.001 * (i + 1)) for i in range(300)]
    contents = []
    for name, lean in (("a.db", True), ("b.db", False)):
        with Store(tmp_path / name) as store:
            writer = StoreWriter(store, flush_interval=0.01)
            for i, (row, sample) in enumerate(zip(rows, samples, strict=True)):
                if i % 3 == 0:  # a future-carrying write in between keeps its place
                    writer.upsert_targets([row._replace(state="unreachable")])
                if lean:
                    writer.probe(row, sample if i % 5 else None)
                else:
                    writer.write(targets=[row], rtt_samples=[sample] if i % 5 else [])
            writer.close()
            minutes = [store.rtt_series(f"t{k}", 0, 3600) for k in range(7)]
            contents.append((store.load_targets(), minutes))
    assert contents[0] == contents[1]
    assert contents[0][0]["t6"].probes == 293  # its last row, i = 293
    assert sum(m.count for series in contents[0][1] for m in series) == 240


def test_writer_probe_alone_wakes_the_writer(store: Store) -> None:
    writer = StoreWriter(store, flush_interval=0.05, probe_interval=0.05)
    writer.probe(TargetRow("a", "sip:a", "reachable", probes=3), ("a", 60.0, 0.002))
    for _ in range(100):  # bounded: committed within the flush interval, nobody flushing
        if "a" in store.load_targets():
            break
        time.sleep(0.01)
    assert store.load_targets()["a"].probes == 3
    assert store.rtt_series("a", 0, 600) == []  # its bucket is still open, in memory
    assert writer.rtt_series(store, "a", 0, 600)[0].count == 1
    writer.close()
    assert store.rtt_series("a", 0, 600)[0].count == 1


def test_open_buckets_are_written_once_when_they_close(store: Store) -> None:
    """Probe samples of a target's current bucket stay in memory; a sample of a later bucket
    writes the earlier one as one row; readers see stored rows and the open bucket merged,
    the same aggregates as ``write`` gives; barrier, flush and close write open buckets."""
    writer = StoreWriter(store, flush_interval=0.01, probe_interval=0.01)
    reference = Store(":memory:")
    try:
        rng = random.Random(7)
        samples = []
        for i in range(400):
            name = f"t{rng.randrange(5)}"
            bucket = 300 * (i // 100) + (-300 if rng.random() < 0.02 else 0)  # a few late
            samples.append((name, float(max(0, bucket)), rng.uniform(0.001, 0.2)))
        reference.add_rtt_samples(samples)
        for sample in samples[:250]:
            writer.probe(None, sample)
        writer.add_transitions([tr("x", 1.0)]).result(timeout=5)  # a commit, no barrier
        stored = {m.minute for k in range(5) for m in store.rtt_series(f"t{k}", 0, 3600)}
        assert 10 not in stored  # bucket 600 s is still open
        assert {0, 5} <= stored  # buckets 0 and 300 s closed
        seen = [writer.rtt_series(store, f"t{k}", 0, 3600) for k in range(5)]
        want = [reference.rtt_series(f"t{k}", 0, 3600) for k in range(5)]
        partial = Store(":memory:")
        partial.add_rtt_samples(samples[:250])
        assert seen == [partial.rtt_series(f"t{k}", 0, 3600) for k in range(5)]
        assert writer.rtt_series(store, "t0", 0, 60) == partial.rtt_series("t0", 0, 60)
        for sample in samples[250:]:
            writer.probe(None, sample)
        writer.flush(timeout=5)
        assert [store.rtt_series(f"t{k}", 0, 3600) for k in range(5)] == want
        assert [writer.rtt_series(store, f"t{k}", 0, 3600) for k in range(5)] == want
        writer.probe(None, ("t0", 900.0, 0.5))
        writer.close()
        assert store.rtt_series("t0", 900, 960)[0].count == want[0][-1].count + 1
    finally:
        reference.close()


def test_probe_rows_wait_longer_but_never_delay_a_write(store: Store) -> None:
    """Probe rows alone are committed after ``probe_interval``; a write with a future that
    comes meanwhile is committed within ``flush_interval``, and takes them along."""
    writer = StoreWriter(store, flush_interval=0.05, probe_interval=5.0)
    try:
        writer.probe(TargetRow("a", "sip:a", "reachable", probes=1), None)
        time.sleep(0.3)
        assert "a" not in store.load_targets()  # not yet: nobody waits for it
        t0 = time.monotonic()
        writer.add_transitions([tr("b", 1.0)]).result(timeout=5)
        assert time.monotonic() - t0 < 1.0
        assert store.load_targets()["a"].probes == 1
    finally:
        writer.close()
