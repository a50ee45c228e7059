"""ClientTable (sip/bulk.py) against N ClientTransaction objects: same results, same
transmission instants, same next timer, for random interleavings of starts, responses,
transport errors and time steps."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipalive.errors import LocalProtocolError
from sipalive.sip.bulk import ClientTable
from sipalive.sip.headers import Headers
from sipalive.sip.message import Response
from sipalive.sip.transaction import (
    ClientTransaction,
    Completed,
    Event,
    TimerConfig,
    TransactionResult,
    TransactionState,
    Transmit,
)

Key = tuple[str, str]


def response(branch: str, method: str, status: int) -> Response:
    fields = [
        ("Via", f"SIP/2.0/UDP 127.0.0.1:5060;branch={branch}"),
        ("From", "<sip:a@b>;tag=1"),
        ("To", "<sip:c@d>;tag=2"),
        ("Call-ID", "cid"),
        ("CSeq", f"1 {method}"),
    ]
    return Response(status, "Reason", Headers(fields))


@dataclass
class Trace:
    sends: list[tuple[int, float]] = field(default_factory=list)
    results: dict[int, TransactionResult] = field(default_factory=dict)
    unmatched: int = 0
    absorbed: int = 0


class Reference:
    """N ClientTransactions, driven as the TransactionDriver drives them. ``lazy``: Timer K
    is not reported as a timer (ClientTable's ``lazy_timer_k``)."""

    def __init__(self, timers: TimerConfig, reliable: bool, lazy: bool = False) -> None:
        self.timers = timers
        self.reliable = reliable
        self.lazy = lazy
        self.txns: dict[Key, tuple[int, ClientTransaction]] = {}
        self.trace = Trace()

    def _apply(self, token: int, events: list[Event], now: float) -> None:
        for ev in events:
            if isinstance(ev, Transmit):
                self.trace.sends.append((token, now))
            elif isinstance(ev, Completed):
                assert token not in self.trace.results
                self.trace.results[token] = ev.result

    def _sweep(self) -> None:
        for key in [k for k, (_, t) in self.txns.items() if t.get_timer() is None]:
            del self.txns[key]

    def start(self, token: int, branch: str, method: str, now: float) -> None:
        txn = ClientTransaction.from_bytes(
            b"req%d" % token, branch=branch, method=method, reliable=self.reliable,
            timers=self.timers,
        )  # fmt: skip
        self.txns[(branch, method)] = (token, txn)
        self._apply(token, txn.start(now), now)

    def advance(self, now: float) -> None:
        for token, txn in list(self.txns.values()):
            while (when := txn.get_timer()) is not None and when <= now:
                self._apply(token, txn.handle_timer(now), now)
        self._sweep()

    def receive(self, resp: Response, now: float) -> None:
        entry = self.txns.get((resp.branch or "", resp.cseq.method))
        if entry is None:
            self.trace.unmatched += 1
            return
        token, txn = entry
        if txn.state == TransactionState.COMPLETED:
            self.trace.absorbed += 1
        self._apply(token, txn.receive_response(resp, now), now)
        self._sweep()

    def transport_error(self, now: float) -> None:
        for token, txn in list(self.txns.values()):
            self._apply(token, txn.transport_error(now, "boom"), now)
        self._sweep()

    def fail(self, key: Key, now: float) -> None:
        entry = self.txns.get(key)
        if entry is not None:
            self._apply(entry[0], entry[1].transport_error(now, "ICMP"), now)
        self._sweep()

    def get_timer(self) -> float | None:
        timers = [
            w
            for _, t in self.txns.values()
            if (w := t.get_timer()) is not None
            and not (self.lazy and t.state == TransactionState.COMPLETED)
        ]
        return min(timers) if timers else None

    def in_flight(self) -> list[tuple[str, str, int]]:
        return sorted(
            (key[0], key[1], token)
            for key, (token, t) in self.txns.items()
            if t.state in (TransactionState.TRYING, TransactionState.PROCEEDING)
        )


class Bulk:
    def __init__(self, timers: TimerConfig, reliable: bool, lazy: bool = False) -> None:
        self.table: ClientTable[int] = ClientTable(timers, reliable=reliable, lazy_timer_k=lazy)
        self.trace = Trace()

    def _done(self, token: int, result: TransactionResult) -> None:
        assert token not in self.trace.results
        self.trace.results[token] = result

    def start(self, token: int, branch: str, method: str, now: float) -> None:
        self.table.start(branch, method, b"req%d" % token, now, token)
        self.trace.sends.append((token, now))

    def advance(self, now: float) -> None:
        while (when := self.table.get_timer()) is not None and when <= now:
            sends, done = self.table.handle_timer(now)
            for token, data in sends:
                assert data == b"req%d" % token
                self.trace.sends.append((token, now))
            for token, result in done:
                self._done(token, result)

    def receive(self, resp: Response, now: float) -> None:
        got = self.table.receive(resp.branch, resp.cseq.method, resp.status, resp.reason, now, resp)
        if got is not None:
            self._done(*got)
        self.trace.unmatched = self.table.unmatched
        self.trace.absorbed = self.table.absorbed

    def transport_error(self, now: float) -> None:
        for token, result in self.table.transport_error(now, "boom"):
            self._done(token, result)

    def fail(self, key: Key, now: float) -> None:
        got = self.table.fail(key[0], key[1], now, "ICMP")
        if got is not None:
            self._done(*got)

    def get_timer(self) -> float | None:
        return self.table.get_timer()

    def in_flight(self) -> list[tuple[str, str, int]]:
        return sorted(self.table.in_flight())


# binary fractions, so that ties between timers happen and compare exactly
TIMERS = st.builds(
    TimerConfig,
    t1=st.sampled_from([0.25, 0.5]),
    t2=st.sampled_from([0.5, 1.0, 4.0]),
    t4=st.sampled_from([0.25, 5.0]),
    timeout=st.sampled_from([None, 1.0, 3.0, 7.5]),
    retransmits=st.sampled_from([None, 0, 1, 3]),
)
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("start"), st.sampled_from(["OPTIONS", "INFO"]), st.integers(0, 3)),
        st.tuples(
            st.just("resp"),
            st.integers(0, 40),
            st.sampled_from([100, 180, 200, 404, 503]),
            st.sampled_from(["same", "method", "branch"]),
        ),
        st.tuples(st.just("step"), st.sampled_from([0.0, 0.125, 0.25, 0.375, 1.0, 2.5, 6.0])),
        st.tuples(st.just("error"), st.just(0)),
        st.tuples(st.just("fail"), st.integers(0, 40)),
    ),
    max_size=80,
)


@settings(max_examples=400, deadline=None)
@given(timers=TIMERS, reliable=st.booleans(), lazy=st.booleans(), ops=OPS)
def test_table_behaves_like_n_client_transactions(
    timers: TimerConfig, reliable: bool, lazy: bool, ops: list[tuple[object, ...]]
) -> None:
    ref, bulk = Reference(timers, reliable, lazy), Bulk(timers, reliable, lazy)
    now = 100.0
    started: list[Key] = []
    for op in ops:
        if op[0] == "start":
            method, reuse = str(op[1]), int(str(op[2]))
            # mostly new branches; sometimes a key that has completed (same branch, same method)
            key = (f"z9hG4bK{len(started)}", method)
            if reuse == 0 and started:
                old = started[-1]
                if old not in ref.txns or ref.txns[old][1].state == TransactionState.COMPLETED:
                    key = old
            started.append(key)
            for side in (ref, bulk):
                side.start(len(started) - 1, key[0], key[1], now)
        elif op[0] == "resp" and started:
            branch, method = started[int(str(op[1])) % len(started)]
            if op[3] == "method":
                method = "INFO" if method == "OPTIONS" else "OPTIONS"
            elif op[3] == "branch":
                branch += "x"
            resp = response(branch, method, int(str(op[2])))
            for side in (ref, bulk):
                side.receive(resp, now)
        elif op[0] == "step":
            now += float(str(op[1]))
            for side in (ref, bulk):
                side.advance(now)
        elif op[0] == "error":
            for side in (ref, bulk):
                side.transport_error(now)
        elif op[0] == "fail" and started:
            key = started[int(str(op[1])) % len(started)]
            for side in (ref, bulk):
                side.fail(key, now)
        assert bulk.get_timer() == ref.get_timer()
        assert bulk.in_flight() == ref.in_flight()
        for branch, method in started:
            entry = ref.txns.get((branch, method))
            active = entry is not None and entry[1].state != TransactionState.COMPLETED
            absorbing = (
                entry is not None
                and entry[1].state == TransactionState.COMPLETED
                and not (lazy and (entry[1].get_timer() or 0.0) <= now)
            )
            expect = entry[0] if entry is not None else None
            assert bulk.table.token_of(branch, method) == (expect if active else None)
            got = bulk.table.kept(branch, method, now)
            assert got == (expect if absorbing else None)
        assert len(bulk.table) == sum(
            t.state in (TransactionState.TRYING, TransactionState.PROCEEDING)
            for _, t in ref.txns.values()
        )
    # let every transaction end
    for _ in range(200):
        when = ref.get_timer()
        if when is None:
            break
        now = when
        for side in (ref, bulk):
            side.advance(now)
    assert bulk.get_timer() is None
    assert sorted(bulk.trace.sends) == sorted(ref.trace.sends)
    assert bulk.trace.results == ref.trace.results
    assert len(bulk.trace.results) == len(started)
    assert (bulk.trace.unmatched, bulk.trace.absorbed) == (ref.trace.unmatched, ref.trace.absorbed)


def test_default_schedule_and_karn_rtts() -> None:
    table: ClientTable[str] = ClientTable(TimerConfig(), reliable=False)
    table.start("z9hG4bKa", "OPTIONS", b"a", 0.0, "a")
    table.start("z9hG4bKb", "OPTIONS", b"b", 0.25, "b")
    sends: list[tuple[str, float]] = []
    now = 0.0
    while (when := table.get_timer()) is not None and when < 2.0:
        now = when
        sends += [(tok, now) for tok, _ in table.handle_timer(now)[0]]
    assert sends == [("a", 0.5), ("b", 0.75), ("a", 1.5), ("b", 1.75)]
    got = table.receive("z9hG4bKa", "OPTIONS", 200, "OK", 1.625)
    assert got is not None
    token, result = got
    assert token == "a"
    assert (result.status, result.retransmits) == (200, 2)
    assert result.rtt_first == 1.625
    assert result.rtt_last == 0.125
    assert table.receive("z9hG4bKa", "OPTIONS", 200, "OK", 1.7) is None
    assert table.absorbed == 1
    assert len(table) == 1


def test_give_up_and_transport_error_are_408_and_503() -> None:
    table: ClientTable[int] = ClientTable(TimerConfig(t1=0.1, retransmits=3), reliable=False)
    table.start("z9hG4bK1", "OPTIONS", b"x", 0.0, 1)
    table.start("z9hG4bK2", "OPTIONS", b"y", 0.0, 2)
    assert table.receive("z9hG4bK2", "OPTIONS", 100, "Trying", 0.05) is None
    # far late: Timer E fires at 0.1, is re-anchored at 1.5 (no burst), fires again at 1.5
    sends, done = table.handle_timer(1.5)
    assert [token for token, _ in sends] == [1, 1]
    assert done == []
    (failed,) = table.transport_error(1.5, "ICMP port unreachable")[:1]
    assert failed[1].status == 503
    assert failed[1].error == "ICMP port unreachable"
    assert len(table) == 0


def test_misuse_is_a_local_error() -> None:
    table: ClientTable[int] = ClientTable(TimerConfig(), reliable=True)
    with pytest.raises(LocalProtocolError):
        table.start("z9hG4bK1", "INVITE", b"", 0.0, 1)
    with pytest.raises(LocalProtocolError):
        table.start("", "OPTIONS", b"", 0.0, 1)
    table.start("z9hG4bK1", "OPTIONS", b"", 0.0, 1)
    with pytest.raises(LocalProtocolError):
        table.start("z9hG4bK1", "OPTIONS", b"", 0.0, 2)


def test_answered_transactions_leave_their_fifo_in_start_order() -> None:
    """An answered transaction is dropped from its FIFO as soon as it is at the head, so it
    is not kept (and promoted by the collector) until the table's next timer."""
    table: ClientTable[int] = ClientTable(TimerConfig(), reliable=False, lazy_timer_k=True)
    for n in range(3):
        table.start(f"z9hG4bK{n}", "OPTIONS", b"x", 0.0, n)
    assert table.receive("z9hG4bK1", "OPTIONS", 200, "OK", 0.01) is not None
    assert [t.token for t in table._stages[0]] == [0, 1, 2]  # 1 waits behind 0
    assert table.receive("z9hG4bK0", "OPTIONS", 200, "OK", 0.02) is not None
    assert [t.token for t in table._stages[0]] == [2]
    assert table.receive("z9hG4bK2", "OPTIONS", 200, "OK", 0.03) is not None
    assert not table._stages[0]
    assert table.get_timer() is None
