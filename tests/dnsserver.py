"""A tiny authoritative DNS server for tests, on 127.0.0.1 with an ephemeral port.

It answers UDP and TCP (same port, so a truncated UDP answer can be retried over TCP) from a
dict zone ``{(name, rdtype): [rdata text, ...]}``, in one background thread::

    zone = {("example.com", "NAPTR"): ['10 50 "s" "SIP+D2U" "" _sip._udp.example.com.']}
    with DnsServer(zone, silent={"slow.example.com"}) as server:
        resolve_sync(..., nameservers=server.nameservers)
        assert ("example.com", "NAPTR") in server.asked

A name with no record of the asked type, but with records of another type or names below it, is
NOERROR with an empty answer (NODATA); any other name is NXDOMAIN. ``silent`` names (or
``(name, rdtype)`` pairs) get no answer at all, to test timeouts; ``rcodes`` forces a response
code (SERVFAIL, REFUSED) for a name. UDP answers larger than the client allows (512 bytes
without EDNS) are truncated (TC) the way a real server does.

Bounded: one thread, one datagram or TCP message at a time, at most 64 KiB each, a 1 s read
timeout on TCP clients, a query log of the last 1000 questions; ``close`` (or leaving the
``with`` block) stops the thread and closes the sockets.
"""

from __future__ import annotations

import collections
import selectors
import socket
import struct
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from types import TracebackType

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

_MAX_MESSAGE = 65535
_TCP_READ_TIMEOUT = 1.0

Zone = Mapping[tuple[str, str], Sequence[str]]


def _name(text: str) -> dns.name.Name:
    return dns.name.from_text(text)


def _key(name: dns.name.Name) -> str:
    return name.to_text(omit_final_dot=True).lower()


class DnsServer:
    """An in-process authoritative server; use it as a context manager."""

    def __init__(
        self,
        zone: Zone,
        *,
        silent: Iterable[str | tuple[str, str]] = (),
        rcodes: Mapping[str, str] | None = None,
        ttl: int = 60,
    ) -> None:
        self._records: dict[tuple[str, dns.rdatatype.RdataType], list[str]] = {}
        for (name, rdtype), texts in zone.items():
            key = (_key(_name(name)), dns.rdatatype.from_text(rdtype))
            self._records.setdefault(key, []).extend(texts)
        self._names = {name for name, _ in self._records}
        # Every ancestor of a name exists, if only as an empty non-terminal: NODATA, not NXDOMAIN.
        self._existing = {
            _key(ancestor) for name in self._names for ancestor in _ancestors(_name(name))
        }
        self._silent: set[tuple[str, dns.rdatatype.RdataType | None]] = set()
        for entry in silent:
            if isinstance(entry, str):
                self._silent.add((_key(_name(entry)), None))
            else:
                self._silent.add((_key(_name(entry[0])), dns.rdatatype.from_text(entry[1])))
        self._rcodes = {
            _key(_name(name)): dns.rcode.from_text(rcode) for name, rcode in (rcodes or {}).items()
        }
        self._ttl = ttl
        self.log: collections.deque[tuple[str, str, str]] = collections.deque(maxlen=1000)
        self._udp, self._tcp = _bind_pair()
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread = threading.Thread(target=self._serve, name="test-dns", daemon=True)
        self._stopping = False

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._udp.getsockname()[:2]
        return str(host), int(port)

    @property
    def nameservers(self) -> list[tuple[str, int]]:
        return [self.address]

    @property
    def asked(self) -> list[tuple[str, str]]:
        """(name, rdtype) of every question received, oldest first."""
        return [(name, rdtype) for name, rdtype, _ in self.log]

    def __enter__(self) -> DnsServer:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._stopping = True
        self._wake_w.send(b"x")
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        for sock in (self._udp, self._tcp, self._wake_r, self._wake_w):
            sock.close()

    def _serve(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._udp, selectors.EVENT_READ)
            selector.register(self._tcp, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while not self._stopping:
                for key, _ in selector.select(timeout=0.5):
                    if key.fileobj is self._udp:
                        self._serve_udp()
                    elif key.fileobj is self._tcp:
                        self._serve_tcp()

    def _serve_udp(self) -> None:
        try:
            wire, peer = self._udp.recvfrom(_MAX_MESSAGE)
        except OSError:
            return
        reply = self._reply(wire, "udp")
        if reply is not None:
            self._udp.sendto(reply, peer)

    def _serve_tcp(self) -> None:
        try:
            conn, _ = self._tcp.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(_TCP_READ_TIMEOUT)
            try:
                while True:
                    header = _read_exactly(conn, 2)
                    if header is None:
                        return
                    (length,) = struct.unpack("!H", header)
                    wire = _read_exactly(conn, length)
                    if wire is None:
                        return
                    reply = self._reply(wire, "tcp")
                    if reply is None:
                        return
                    conn.sendall(struct.pack("!H", len(reply)) + reply)
            except OSError:
                return

    def _reply(self, wire: bytes, via: str) -> bytes | None:
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None
        if len(query.question) != 1:
            return None
        question = query.question[0]
        name, rdtype = _key(question.name), dns.rdatatype.RdataType(question.rdtype)
        self.log.append((name, dns.rdatatype.to_text(rdtype), via))
        if (name, None) in self._silent or (name, rdtype) in self._silent:
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if name in self._rcodes:
            response.set_rcode(self._rcodes[name])
        elif (name, rdtype) in self._records:
            response.answer.append(
                dns.rrset.from_text_list(
                    question.name,
                    self._ttl,
                    dns.rdataclass.IN,
                    rdtype,
                    self._records[(name, rdtype)],
                )
            )
        elif name not in self._existing:
            response.set_rcode(dns.rcode.NXDOMAIN)
        limit = _MAX_MESSAGE
        if via == "udp":
            limit = max(512, query.payload) if query.edns >= 0 else 512
        try:
            return response.to_wire(max_size=limit)
        except dns.exception.TooBig:
            truncated = dns.message.make_response(query)
            truncated.flags |= dns.flags.AA | dns.flags.TC
            return truncated.to_wire(max_size=limit)


def _ancestors(name: dns.name.Name) -> Iterator[dns.name.Name]:
    while name != dns.name.root:
        yield name
        name = name.parent()


def _read_exactly(conn: socket.socket, count: int) -> bytes | None:
    data = b""
    while len(data) < count:
        chunk = conn.recv(count - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _bind_pair() -> tuple[socket.socket, socket.socket]:
    """A UDP and a TCP socket on the same ephemeral port of 127.0.0.1."""
    for _ in range(50):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", 0))
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            tcp.bind(udp.getsockname())
        except OSError:
            udp.close()
            tcp.close()
            continue
        tcp.listen(8)
        return udp, tcp
    raise OSError("no port free for both UDP and TCP on 127.0.0.1")
