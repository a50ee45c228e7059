"""The shared UDP endpoint's peek path (sip/peek.py) against its full-parse path.

A transaction begun with ``needs_response`` may complete on a peeked final without a parse;
whatever arrives (finals, provisionals, challenges, retransmissions within Timer K, answers
from another address, wrong branches, odd shapes the peek leaves to the parser, the RFC 4475
corpus), the driver and endpoint must end exactly as they do when every datagram is parsed:
same results (but ``response``), same provisionals, same counters. The same again for a
transaction sent in a driver Table (the monitor's on-time probes), which must end as one
begun alone (a Table reports no provisionals: nobody reads them there).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipalive import clock
from sipalive.io.driver import TransactionDriver
from sipalive.io.udpshared import SharedUdpEndpoint
from sipalive.sip.peek import peek_datagram
from sipalive.sip.transaction import ClientTransaction, TimerConfig, TransactionResult
from test_peek import CORPUS, DATA, KAMAILIO, as_response, responses

PEER = ("127.0.0.1", 5060)
OTHER = ("127.0.0.2", 5060)
CHALLENGES = frozenset((401, 407))
FIELDS = (
    "status", "reason", "cause", "started", "finished", "retransmits", "rtt_first", "rtt_last",
    "provisional_rtt", "error",
)  # fmt: skip


class FakeFlow:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> None:
        self.sent.append(data)

    def accepts(self, source: tuple[str, int]) -> bool:
        return source == PEER


def run(
    deliveries: list[tuple[bytes, tuple[str, int]]],
    needs: frozenset[int] | None,
    table: bool = False,
) -> tuple[object, ...]:
    """Begin one transaction (branch z9hG4bKq, OPTIONS: test_peek's BASE), alone or in a
    Table, and deliver."""
    loop = asyncio.new_event_loop()
    now = [100.0]
    try:
        with mock.patch.object(clock, "monotonic", side_effect=lambda: now[0]):
            driver = TransactionDriver(loop)
            endpoint = SharedUdpEndpoint(driver)
            results: list[TransactionResult] = []
            provisionals: list[int] = []
            if table:
                probes = driver.table(
                    TimerConfig(), lambda _, r: results.append(r), needs_response=needs
                )
                probes.send((FakeFlow(),), "z9hG4bKq", "OPTIONS", b"OPTIONS")
            else:
                txn = ClientTransaction.from_bytes(
                    b"OPTIONS", branch="z9hG4bKq", method="OPTIONS", reliable=False,
                    timers=TimerConfig(),
                )  # fmt: skip
                driver.begin(
                    txn, FakeFlow(), results.append,
                    lambda r: provisionals.append(r.status), needs_response=needs,
                )  # fmt: skip
            for data, source in deliveries:
                now[0] += 0.01
                endpoint.datagram_received(data, source)
            # which keys a retransmitted final is absorbed by, now
            absorbing = [
                key for key in [("z9hG4bKq", "OPTIONS")] if driver._absorbs(key, PEER, now[0])
            ]
            for result in results:
                if needs is None or result.status in needs:  # the caller reads it
                    assert (result.response is None) == (result.cause != "response")
            return (
                [tuple(getattr(r, f) for f in FIELDS) for r in results],
                provisionals,
                endpoint.received, endpoint.malformed, endpoint.spoofed,
                driver.unmatched, len(driver), absorbing,
            )  # fmt: skip
    finally:
        loop.close()


def same(deliveries: list[tuple[bytes, tuple[str, int]]]) -> tuple[object, ...]:
    full = run(deliveries, None)
    assert run(deliveries, CHALLENGES) == full
    no_provisionals = (*full[:1], [], *full[2:])
    assert run(deliveries, None, table=True) == no_provisionals
    assert run(deliveries, CHALLENGES, table=True) == no_provisionals
    return full


def status(data: bytes, code: bytes) -> bytes:
    return data.replace(b"SIP/2.0 200 OK", b"SIP/2.0 " + code, 1)


def test_an_ordinary_200_is_not_parsed() -> None:
    results: list[TransactionResult] = []
    loop = asyncio.new_event_loop()
    try:
        driver = TransactionDriver(loop)
        endpoint = SharedUdpEndpoint(driver)
        for needs in (CHALLENGES, None):
            branch = "z9hG4bKabc1"  # KAMAILIO's
            txn = ClientTransaction.from_bytes(
                b"OPTIONS", branch=branch, method="OPTIONS", reliable=False, timers=TimerConfig()
            )
            driver.begin(txn, FakeFlow(), results.append, needs_response=needs)
            endpoint.datagram_received(KAMAILIO, PEER)
            driver._completed.clear()
            driver._completed_order.clear()
    finally:
        loop.close()
    assert [(r.status, r.response is None) for r in results] == [(200, True), (200, False)]


BASE = (
    b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKq;rport=5060\r\n"
    b"From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: cid-1@h\r\nCSeq: 1 OPTIONS\r\n"
    b"Content-Length: 0\r\n\r\n"
)


def test_scenarios() -> None:
    assert peek_datagram(BASE) is not None
    challenge = status(BASE, b"401 Unauthorized").replace(
        b"Content-Length", b'WWW-Authenticate: Digest realm="r", nonce="n"\r\nContent-Length'
    )
    # a 200, its retransmission (absorbed in COMPLETED), and one from elsewhere (spoofed)
    assert same([(BASE, PEER), (BASE, PEER), (BASE, OTHER)])[2:6] == (3, 0, 1, 1)
    same([(BASE, OTHER), (BASE, PEER)])  # the spoofed one first: ignored
    same([(status(BASE, b"180 Ringing"), PEER), (status(BASE, b"404 Not Here"), PEER)])
    same([(challenge, PEER), (challenge, PEER)])
    same([(status(BASE, b"407 Proxy"), PEER)])
    same([(BASE.replace(b"z9hG4bKq", b"z9hG4bKx"), PEER), (status(BASE, b"503 Busy"), PEER)])
    same([(BASE.replace(b"CSeq: 1 OPTIONS", b"CSeq: 1 INFO"), PEER)])
    same([(BASE.replace(b"Via:", b"v:"), PEER)])  # the peek leaves it to the parser
    same([(BASE[:-4], PEER), (b"garbage", PEER), (b"\r\n\r\n", PEER)])


@pytest.mark.parametrize("name", CORPUS)
def test_rfc4475_corpus(name: str) -> None:
    data = (Path(DATA) / name).read_bytes()
    same([(data, PEER), (as_response(data), PEER), (BASE, PEER)])


CODES = st.sampled_from([b"200 OK", b"100 Trying", b"183 P", b"401 U", b"407 P", b"486 B", b"699 "])


@settings(max_examples=400)
@given(st.lists(st.tuples(responses(), CODES, st.sampled_from([PEER, PEER, OTHER])), max_size=4))
def test_peek_path_is_the_full_path(
    steps: list[tuple[bytes, bytes, tuple[str, int]]],
) -> None:
    same([(status(data, code), source) for data, code, source in steps])
