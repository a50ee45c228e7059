"""Batched UDP I/O (recvmmsg/sendmmsg) against plain sockets, and the responder's batched UDP
listener in process: same answers as the asyncio datagram endpoint, STUN, 400s, the registrar's
view of the socket."""

from __future__ import annotations

import asyncio
import select
import socket
from collections.abc import Iterator
from typing import cast

import pytest

from sipalive.io import mmsg
from sipalive.io.limits import Admission
from sipalive.io.server import BatchedUdpTransport, Listener, ListenSpec, start_listeners
from sipalive.sip.responder import ResponderConfig, StatelessResponder
from sipalive.stun import codec as stun
from test_fastpath import SIPP, SIPSAK

pytestmark = pytest.mark.skipif(not mmsg.available(), reason="no recvmmsg/sendmmsg")


def _pair(family: int, host: str) -> Iterator[tuple[socket.socket, socket.socket]]:
    a = socket.socket(family, socket.SOCK_DGRAM)
    b = socket.socket(family, socket.SOCK_DGRAM)
    try:
        for s in (a, b):
            s.bind((host, 0))
            s.setblocking(False)
        yield a, b
    finally:
        a.close()
        b.close()


@pytest.fixture(params=[(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")], ids=["v4", "v6"])
def pair(request: pytest.FixtureRequest) -> Iterator[tuple[socket.socket, socket.socket]]:
    family, host = request.param
    try:
        yield from _pair(family, host)
    except OSError as exc:  # pragma: no cover - a host without IPv6
        pytest.skip(f"{host}: {exc}")


def _wait(sock: socket.socket) -> None:
    assert select.select([sock], [], [], 2)[0], "nothing arrived"


def test_nothing_queued_is_an_empty_batch(pair: tuple[socket.socket, socket.socket]) -> None:
    assert mmsg.MmsgSocket(pair[0], batch=4).recv() == []


def test_round_trip_in_batches(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    ma, mb = mmsg.MmsgSocket(a, batch=4), mmsg.MmsgSocket(b, batch=4)
    dest = a.getsockname()[:2]
    items = [(b"datagram %d" % i + b"x" * i, dest) for i in range(10)]
    assert mb.send(items) == 10  # three sendmmsg calls of at most 4
    got: list[tuple[bytes, tuple[str, int]]] = []
    while len(got) < 10:
        _wait(a)
        batch = ma.recv()
        assert len(batch) <= 4
        got += batch
    assert [d for d, _ in got] == [d for d, _ in items]
    assert {src for _, src in got} == {b.getsockname()[:2]}
    # and the same source as recvfrom reports, through plain sockets the other way
    assert ma.send([(b"back", got[0][1])]) == 1
    _wait(b)
    data, src = b.recvfrom(100)
    assert (data, src[:2]) == (b"back", dest)


def test_too_long_a_datagram_comes_back_one_octet_longer_than_the_limit(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    a, b = pair
    b.sendto(b"y" * 500, a.getsockname())
    b.sendto(b"z" * 100, a.getsockname())
    _wait(a)
    got = mmsg.MmsgSocket(a, batch=8, max_size=200).recv()
    while len(got) < 2:
        _wait(a)
        got += mmsg.MmsgSocket(a, batch=8, max_size=200).recv()
    assert [d for d, _ in got] == [b"y" * 201, b"z" * 100]


def test_send_to_many_destinations_and_a_refused_one() -> None:
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        sender = mmsg.MmsgSocket(socks[0], batch=8)
        items = [(b"to %d" % i, socks[i].getsockname()) for i in (1, 2, 1)]
        assert sender.send(items) == 3
        socks[1].settimeout(2)
        socks[2].settimeout(2)
        assert [socks[1].recv(10), socks[1].recv(10), socks[2].recv(10)] == [
            b"to 1",
            b"to 1",
            b"to 2",
        ]
        assert sender.send([]) == 0
    finally:
        for s in socks:
            s.close()


# -- the responder's batched listener -------------------------------------------------------


async def _exchange(batched: bool, datagrams: list[bytes], client: socket.socket) -> list[bytes]:
    config = ResponderConfig(tag_key=b"same key")
    listener = Listener(StatelessResponder(config), Admission(), log=lambda _: None)
    opened = await start_listeners(listener, [ListenSpec("udp", "127.0.0.1", 0)], batched=batched)
    (opened_udp,) = opened
    assert isinstance(opened_udp, BatchedUdpTransport) == batched
    transport = cast(asyncio.DatagramTransport, opened_udp)
    port = transport.get_extra_info("sockname")[1]
    loop = asyncio.get_running_loop()
    answers: list[bytes] = []
    try:
        for data in datagrams:
            client.sendto(data, ("127.0.0.1", port))
        deadline = loop.time() + 2
        while loop.time() < deadline and len(answers) < len(datagrams) - 1:
            try:
                answers.append(client.recv(65536))
            except BlockingIOError:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)  # anything that should not come
        while True:
            try:
                answers.append(client.recv(65536))
            except BlockingIOError:
                break
    finally:
        transport.close()
    assert transport.is_closing()
    stats = listener.stats
    assert (stats.requests, stats.answered, stats.stun) == (len(datagrams), len(answers), 1)
    assert stats.client_errors == 1
    return answers


def test_batched_listener_answers_as_the_asyncio_endpoint() -> None:
    datagrams = [
        SIPP,
        SIPSAK,
        stun.binding_request(b"0123456789ab"),
        b"\r\n\r\n",  # nothing comes back
        SIPP.replace(b"CSeq: 1 OPTIONS", b"CSeq: x OPTIONS"),  # 400
        SIPP.replace(b"Call-ID: 1-", b"Call-ID: 2-"),
    ]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:  # one source for both
        client.bind(("127.0.0.1", 0))
        client.setblocking(False)
        batched = asyncio.run(_exchange(True, datagrams, client))
        plain = asyncio.run(_exchange(False, datagrams, client))
    assert len(batched) == 5
    assert sorted(batched) == sorted(plain)
    assert sum(a.startswith(b"SIP/2.0 200 OK\r\n") for a in batched) == 3
    assert sum(a.startswith(b"SIP/2.0 400 ") for a in batched) == 1


# -- the local address (IP_PKTINFO) ---------------------------------------------------------


def test_pktinfo_tells_the_local_address_and_sends_from_it() -> None:
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client,
    ):
        server.bind(("0.0.0.0", 0))
        server.setblocking(False)
        client.bind(("127.0.0.1", 0))
        client.settimeout(2)
        port = server.getsockname()[1]
        batch = mmsg.MmsgSocket(server, batch=8, pktinfo=True)
        client.sendto(b"to .2", ("127.0.0.2", port))
        client.sendto(b"to .3", ("127.0.0.3", port))
        got: list[tuple[bytes, tuple[str, int]]] = []
        locals_: list[bytes] = []
        while len(got) < 2:
            _wait(server)
            got += batch.recv()
            locals_ += batch.locals
        assert [d for d, _ in got] == [b"to .2", b"to .3"]
        assert [socket.inet_ntoa(a) for a in locals_] == ["127.0.0.2", "127.0.0.3"]
        dest = client.getsockname()
        assert batch.send([(b"a", dest), (b"b", dest), (b"c", dest)], [*locals_, b""]) == 3
        answers = [client.recvfrom(10) for _ in range(3)]
        assert answers == [
            (b"a", ("127.0.0.2", port)),
            (b"b", ("127.0.0.3", port)),
            (b"c", ("127.0.0.1", port)),  # no local given: the kernel's choice
        ]
        assert batch.send([(b"d", dest)]) == 1  # and without locals, nothing left over
        assert client.recvfrom(10) == (b"d", ("127.0.0.1", port))


def test_wildcard_listener_answers_from_the_address_it_was_sent_to() -> None:
    async def run() -> list[tuple[bytes, tuple[str, int]]]:
        listener = Listener(StatelessResponder(), Admission(), log=lambda _: None)
        (udp,) = await start_listeners(listener, [ListenSpec("udp", "0.0.0.0", 0)])
        transport = cast(asyncio.DatagramTransport, udp)
        port = transport.get_extra_info("sockname")[1]
        answers: list[tuple[bytes, tuple[str, int]]] = []
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.bind(("127.0.0.1", 0))
            client.setblocking(False)
            client.sendto(SIPP, ("127.0.0.2", port))  # the fast path
            client.sendto(stun.binding_request(b"0123456789ab"), ("127.0.0.3", port))
            client.sendto(SIPP.replace(b"CSeq: 1 ", b"CSeq: x "), ("127.0.0.4", port))  # 400
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 2
            while loop.time() < deadline and len(answers) < 3:
                try:
                    answers.append(client.recvfrom(4096))
                except BlockingIOError:
                    await asyncio.sleep(0.01)
        transport.close()
        return answers

    answers = sorted(asyncio.run(run()), key=lambda a: a[1])
    assert [a[1][0] for a in answers] == ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    assert answers[0][0].startswith(b"SIP/2.0 200 OK\r\n")
    assert stun.parse(answers[1][0]).msg_class is stun.StunClass.SUCCESS
    assert answers[2][0].startswith(b"SIP/2.0 400 ")


def test_sockets_share_one_receive_area_and_keep_their_datagrams_apart() -> None:
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
            s.setblocking(False)
        a, b = (mmsg.MmsgSocket(s, batch=8, max_size=1000) for s in socks[:2])
        assert a._in is b._in  # one set of buffers, whatever the number of listeners
        for i in range(3):
            socks[2].sendto(b"for a %d" % i, socks[0].getsockname())
            socks[2].sendto(b"for b %d" % i, socks[1].getsockname())
        got_a: list[bytes] = []
        got_b: list[bytes] = []
        while len(got_a) < 3 or len(got_b) < 3:
            select.select(socks[:2], [], [], 2)
            got_a += [d for d, _ in a.recv()]
            got_b += [d for d, _ in b.recv()]
        assert got_a == [b"for a %d" % i for i in range(3)]
        assert got_b == [b"for b %d" % i for i in range(3)]
    finally:
        for s in socks:
            s.close()


def test_a_datagram_too_long_for_udp_ends_the_send(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    a, b = pair
    dest = a.getsockname()[:2]
    items = [(b"first", dest), (b"x" * 70000, dest), (b"never", dest)]
    assert mmsg.MmsgSocket(b, batch=4).send(items) == 1
    _wait(a)
    assert a.recv(100) == b"first"
