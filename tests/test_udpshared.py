"""The monitor's shared UDP endpoint: dispatch by branch, spoof resistance, ICMP attribution."""

from __future__ import annotations

import asyncio
import socket

from realpeers import free_port
from sipalive.io.driver import TransactionDriver
from sipalive.io.udpshared import branch_of, open_shared_udp
from sipalive.sip.build import make_options
from sipalive.sip.message import Request, parse_message
from sipalive.sip.responder import StatelessResponder
from sipalive.sip.transaction import Cause, ClientTransaction, TimerConfig, TransactionResult


def _request(endpoint_port: int, n: int) -> Request:
    return make_options(
        "sip:ping@127.0.0.1", transport="udp", local=("127.0.0.1", endpoint_port),
        branch=f"z9hG4bKshared{n}", from_tag="t", call_id=f"c{n}",
    )  # fmt: skip


def test_branch_of() -> None:
    data = _request(5060, 7).encode()
    assert branch_of(data) == "z9hG4bKshared7"
    assert branch_of(b"no via") is None


def _peer_and_spoofer() -> tuple[socket.socket, socket.socket]:
    """A peer (non-blocking, for the loop's sock_recvfrom) and another address on 127.0.0.1."""
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    peer.setblocking(False)
    spoofer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    spoofer.bind(("127.0.0.1", 0))
    return peer, spoofer


async def _scenario() -> None:
    driver = TransactionDriver()
    endpoint = await open_shared_udp(driver, "127.0.0.1")
    peer, spoofer = _peer_and_spoofer()
    loop = asyncio.get_running_loop()
    try:
        timers = TimerConfig(t1=0.05, retransmits=1)
        peer_addr = peer.getsockname()
        # 1. the right answer from the right address completes the transaction
        req = _request(endpoint.local[1], 1)
        fut = driver.start(
            ClientTransaction(req, reliable=False, timers=timers), endpoint.flow(peer_addr)
        )
        data, src = await loop.sock_recvfrom(peer, 65536)
        reply = StatelessResponder().handle_datagram(data, src)
        assert reply is not None
        # 2. the same answer from another address (spoofed) is ignored first
        spoofer.sendto(reply.data, endpoint.local)
        await asyncio.sleep(0.01)
        assert not fut.done()
        assert endpoint.spoofed == 1
        peer.sendto(reply.data, endpoint.local)
        result = await asyncio.wait_for(fut, 2)
        assert result.status == 200
        # 3. a wrong branch from the right address matches nothing
        bogus = parse_message(reply.data.replace(b"z9hG4bKshared1", b"z9hG4bKnobody"))
        assert not driver.on_response(bogus, peer_addr)  # type: ignore[arg-type]
        # 4. a closed port: ICMP port unreachable fails that transaction at once
        closed = ("127.0.0.1", free_port("udp"))
        req2 = _request(endpoint.local[1], 2)
        t0 = loop.time()
        fut2 = driver.start(
            ClientTransaction(req2, reliable=False, timers=TimerConfig(t1=1.0)),
            endpoint.flow(closed),
        )
        result2 = await asyncio.wait_for(fut2, 2)
        assert (result2.status, result2.cause) == (503, Cause.TRANSPORT_ERROR)
        assert result2.error == "ICMP port unreachable"
        assert loop.time() - t0 < 0.5  # not Timer F (64 s)
        assert endpoint.icmp_errors >= 1
    finally:
        peer.close()
        spoofer.close()
        await endpoint.aclose()


def test_shared_endpoint() -> None:
    asyncio.run(_scenario())


async def _timer_k_scenario() -> None:
    """A COMPLETED UDP transaction is kept as its key only, and still absorbs a retransmitted
    final from its peer (§17.1.2.2) until Timer K; from elsewhere, or after T4, nothing matches."""
    driver = TransactionDriver()
    endpoint = await open_shared_udp(driver, "127.0.0.1")
    peer = ("127.0.0.1", 5999)
    try:
        req = _request(endpoint.local[1], 3)
        reply = StatelessResponder().handle_datagram(req.encode(), ("127.0.0.1", 5999))
        assert reply is not None
        response = parse_message(reply.data)
        txn = ClientTransaction(req, reliable=False, timers=TimerConfig(t4=0.2))
        fut = driver.start(txn, endpoint.flow(peer))
        assert driver.on_response(response, peer)  # type: ignore[arg-type]
        assert (await fut).status == 200
        assert len(driver) == 0  # the transaction itself is gone ...
        assert driver.on_response(response, peer)  # type: ignore[arg-type]  # ... its key absorbs
        assert driver.on_transport_error_for("z9hG4bKshared3", "OPTIONS", peer, "icmp")
        assert driver.unmatched == 0
        assert not driver.on_response(response, ("127.0.0.2", 5999))  # type: ignore[arg-type]
        assert driver.unmatched == 1
        await asyncio.sleep(0.25)  # Timer K fired: TERMINATED, the key matches nothing
        assert not driver.on_response(response, peer)  # type: ignore[arg-type]
        assert not driver.on_transport_error_for("z9hG4bKshared3", "OPTIONS", peer, "icmp")
        assert driver.unmatched == 2
        # the next transaction forgets expired keys
        txn2 = ClientTransaction(
            _request(endpoint.local[1], 4), reliable=False, timers=TimerConfig()
        )
        driver.start(txn2, endpoint.flow(peer))
        assert not driver._completed
        driver.cancel_all()
    finally:
        await endpoint.aclose()


def test_timer_k_keeps_only_the_key() -> None:
    asyncio.run(_timer_k_scenario())


class _Broken:
    def send(self, data: bytes) -> None:
        raise OSError("network is unreachable")

    def accepts(self, source: tuple[str, int]) -> bool:
        return True


async def _table_scenario() -> None:
    """Transactions in a driver Table (the monitor's on-time probes) on the shared endpoint:
    retransmitted on the table's own timer, answered, spoofed, failed by ICMP, by a send that
    raises, by giving up (408) and by cancel_all."""
    driver = TransactionDriver()
    endpoint = await open_shared_udp(driver, "127.0.0.1")
    peer, spoofer = _peer_and_spoofer()
    loop = asyncio.get_running_loop()
    results: dict[str, TransactionResult] = {}
    table = driver.table(
        TimerConfig(t1=0.05, retransmits=2),
        lambda token, r: results.setdefault(token[1], r),
        needs_response=frozenset((401, 407)),
    )

    def send(n: int, flow: object) -> None:
        data = _request(endpoint.local[1], n).encode()
        table.send((flow, f"r{n}"), f"z9hG4bKshared{n}", "OPTIONS", data)

    async def result(name: str) -> TransactionResult:
        for _ in range(200):
            if name in results:
                return results[name]
            await asyncio.sleep(0.01)
        raise AssertionError(f"{name} never ended")

    try:
        peer_addr = peer.getsockname()
        t0 = loop.time()
        send(1, endpoint.flow(peer_addr))
        first, _ = await loop.sock_recvfrom(peer, 65536)
        again, src = await loop.sock_recvfrom(peer, 65536)  # Timer E: T1 later
        assert again == first
        assert loop.time() - t0 >= 0.045
        reply = StatelessResponder().handle_datagram(again, src)
        assert reply is not None
        spoofer.sendto(reply.data, endpoint.local)
        await asyncio.sleep(0.01)
        assert "r1" not in results
        assert endpoint.spoofed == 1
        peer.sendto(reply.data, endpoint.local)
        got = await result("r1")
        assert (got.status, got.retransmits, got.response) == (200, 1, None)  # not parsed
        peer.sendto(reply.data, endpoint.local)  # a retransmitted final: absorbed (Timer K)
        await asyncio.sleep(0.01)
        assert (endpoint.spoofed, driver.unmatched) == (1, 1)
        spoofer.sendto(reply.data, endpoint.local)  # the same from elsewhere: not absorbed
        await asyncio.sleep(0.01)
        assert (endpoint.spoofed, driver.unmatched) == (2, 2)
        # a closed port: ICMP
        send(2, endpoint.flow(("127.0.0.1", free_port("udp"))))
        got = await result("r2")
        assert (got.status, got.cause, got.error) == (
            503,
            Cause.TRANSPORT_ERROR,
            "ICMP port unreachable",
        )
        # a send that raises
        send(3, _Broken())
        got = results["r3"]  # at once, from within send()
        assert (got.status, got.error) == (503, "network is unreachable")
        # nobody answers: T1, 2 T1, then the cap: 408 at 7 T1 = 0.35 s
        silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        silent.bind(("127.0.0.1", 0))
        try:
            t0 = loop.time()
            send(4, endpoint.flow(silent.getsockname()))
            got = await result("r4")
            assert (got.status, got.cause, got.retransmits) == (408, Cause.TIMEOUT, 2)
            assert 0.3 <= loop.time() - t0 < 1.0
            send(5, endpoint.flow(silent.getsockname()))
            assert len(driver) == 1
            driver.cancel_all("stopping")
            assert (results["r5"].status, results["r5"].error) == (503, "stopping")
            assert len(driver) == 0
        finally:
            silent.close()
    finally:
        peer.close()
        spoofer.close()
        await endpoint.aclose()


def test_table_on_shared_endpoint() -> None:
    asyncio.run(_table_scenario())
