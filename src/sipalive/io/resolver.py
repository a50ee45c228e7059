"""Locating SIP servers: RFC 3263 client-side resolution, a SIP URI to the targets to try.

``resolve_sync`` / ``resolve`` turn (scheme, host, port, transport) into an ordered list of
:class:`Target` (transport, IP address, port, TLS name), the order being the RFC 3263 §4.3
failover order: try the first, and on a transport error, a 503 or a timeout, the next.

The procedure (RFC 3263 §4.1 "Selecting a Transport Protocol", §4.2 "Determining Port and IP
Address") is a pure generator, ``_Procedure.steps``, that yields batches of DNS lookups and gets
their answers sent back. Two thin drivers run it: one blocking (dnspython's ``dns.resolver`` and
``socket.getaddrinfo``), one asyncio (``dns.asyncresolver`` and ``loop.getaddrinfo``, a batch's
lookups running concurrently). The procedure is the same for both, so both order targets alike.

Choices where the RFCs leave room, each one named at the place it is made:

* Without NAPTR records (§4.1, "If no NAPTR records are found") the client queries SRV for
  each transport it supports, ``_sip`` for SIP URIs and ``_sips`` for SIPS URIs, and
  ``_sips._tcp`` for TLS on a SIP URI (§4.2). The order of ``supported`` is the client's
  preference, so the default ``("udp", "tcp", "tls")`` puts UDP first, as §4.1 does whenever
  it has to pick one.
  Every transport that answers contributes its targets, in that order.
* NAPTR records are taken in (order, preference) order, all of them, not only the first
  order that matches (RFC 3403 §4.1): the first targets are exactly those of the most
  preferred usable record, and the records after them are where §4.3 failover goes next.
* NAPTR records with a flag other than "s" or a non-empty regexp are not SIP transport
  records (§4.1) and are ignored. A NAPTR set with no usable record, or whose SRV
  replacements hold no SRV record, is treated as no NAPTR set at all: §4.1 obliges the
  domain to keep SRV records at the original name for RFC 2543 clients anyway.
* A NXDOMAIN for the host on the NAPTR query means nothing exists below it either (RFC 8020),
  so the per-transport SRV queries are skipped; the A/AAAA lookup is still made, since the
  system resolver may know the name from /etc/hosts.
* SRV records found, but none with a usable target: no A/AAAA fallback (§4.2 falls back
  only when no SRV record was found; a target of "." means the service is decidedly not
  available, RFC 2782).
* ``sips:`` with ``transport=tcp`` means TLS over TCP (RFC 3261 §26.2.2 deprecates
  ``transport=tls``); ``sips:`` over UDP cannot be.
* WebSocket (RFC 7118) has NAPTR services (SIP+D2W, SIPS+D2W) whose replacement names the SRV
  record, but no SRV service label of its own, so ``ws``/``wss`` given without a port go
  straight to A/AAAA on the default port (80, 443).
* Addresses: with ``nameservers``, A records first, then AAAA, each in answer order; without,
  the order ``getaddrinfo`` gives (the system's RFC 6724 sort, /etc/hosts included).

``timeout`` bounds the whole resolution, not each query: a silent nameserver makes
``resolve`` fail after ``timeout`` seconds, not after ``timeout`` times the number of queries.
(The blocking ``getaddrinfo`` cannot be interrupted; the asyncio driver stops waiting for it.)

``resolve_sync`` never imports asyncio, and dnspython is imported only when a DNS query is
made: an IP literal, or a host name with an explicit port and no ``nameservers``, resolves
without it (the one-shot ``sipalive check`` stays lean).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, TypeVar

from sipalive import clock
from sipalive.errors import LocalProtocolError, ResolveError

if TYPE_CHECKING:
    import random

    import dns.asyncresolver
    import dns.resolver

__all__ = [
    "DEFAULT_PORTS",
    "TRANSPORTS",
    "Srv",
    "Target",
    "order_srv",
    "resolve",
    "resolve_sync",
]

TRANSPORTS = ("udp", "tcp", "tls", "ws", "wss")

#: RFC 3261 §19.1.1 (5060, 5061 for TLS); RFC 6455 §1.7 for WebSocket (80, 443).
DEFAULT_PORTS = {"udp": 5060, "tcp": 5060, "tls": 5061, "ws": 80, "wss": 443}

_SECURE = frozenset({"tls", "wss"})

#: RFC 3263 §4.1 (D2U, D2T) and RFC 7118 (D2W). SCTP (D2S) is not a sipalive transport.
_NAPTR_SERVICES = {
    "SIP+D2U": "udp",
    "SIP+D2T": "tcp",
    "SIPS+D2T": "tls",
    "SIP+D2W": "ws",
    "SIPS+D2W": "wss",
}

#: RFC 3263 §4.2: "_sips" for TLS, whatever the scheme; "_sip" otherwise.
_SRV_PREFIX = {"udp": "_sip._udp", "tcp": "_sip._tcp", "tls": "_sips._tcp"}

_Kind = Literal["NAPTR", "SRV", "ADDR"]


@dataclass(frozen=True, slots=True)
class Target:
    """One place to send a request to, in the order to try them (RFC 3263 §4.3).

    ``host`` is the name to put in TLS SNI and to verify the certificate against: the SRV
    target, or the URI host when no SRV record was used, or the IP literal itself.
    """

    transport: str
    address: str
    port: int
    host: str


@dataclass(frozen=True, slots=True)
class Srv:
    """An SRV record (RFC 2782). ``target`` has no final dot; ``"."`` means "not here"."""

    priority: int
    weight: int
    port: int
    target: str


@dataclass(frozen=True, slots=True)
class _Naptr:
    order: int
    preference: int
    flags: str
    service: str
    regexp: str
    replacement: str


@dataclass(frozen=True, slots=True)
class _Lookup:
    """One question for a driver. ``ADDR`` is "the addresses of this name" (A and AAAA)."""

    kind: _Kind
    name: str


@dataclass(frozen=True, slots=True)
class _Answer:
    """What a driver found. ``error`` is None when the name exists and the answer was read."""

    naptr: tuple[_Naptr, ...] = ()
    srv: tuple[Srv, ...] = ()
    addresses: tuple[str, ...] = ()
    error: str | None = None
    nxdomain: bool = False
    expired: bool = False


_Steps = Generator[list[_Lookup], list[_Answer], list[Target]]

_NXDOMAIN = "NXDOMAIN (the name does not exist)"
_NO_RECORDS = "no records"


def order_srv(records: Iterable[Srv], rng: random.Random) -> list[Srv]:
    """Order SRV records for trying, RFC 2782 "Usage rules".

    Lowest priority first. Within a priority, repeatedly: put the weight-0 records first, sum
    the weights, draw a uniform integer in [0, sum] and take the first record whose running
    sum reaches it. The records are first put in a canonical order so that, for a given
    ``rng`` state, the result does not depend on the order the DNS server sent them in.
    """
    by_priority: dict[int, list[Srv]] = {}
    for record in sorted(records, key=lambda r: (r.priority, r.target, r.port, r.weight)):
        by_priority.setdefault(record.priority, []).append(record)
    ordered: list[Srv] = []
    for priority in sorted(by_priority):
        left = by_priority[priority]
        left.sort(key=lambda r: r.weight != 0)
        while left:
            pick = rng.randint(0, sum(r.weight for r in left))
            running = 0
            for index, record in enumerate(left):
                running += record.weight
                if running >= pick:
                    ordered.append(left.pop(index))
                    break
    return ordered


# -- the pure procedure ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Request:
    """The arguments, checked and normalised."""

    scheme: str
    host: str
    port: int | None
    transport: str | None
    supported: tuple[str, ...]

    @property
    def uri(self) -> str:
        return f"{self.scheme}:{self.host}"

    def default_transport(self) -> str:
        """RFC 3263 §4.1: "UDP for a SIP URI, and TCP for a SIPS URI" (TLS over TCP).

        §4.1 lets another transport be used "if the guidelines of SIP mandate it"; when
        the preferred one is not supported, the client's first usable one is taken.
        """
        preferred = "tls" if self.scheme == "sips" else "udp"
        if preferred in self.supported:
            return preferred
        for transport in self.supported:
            if self.scheme == "sip" or transport in _SECURE:
                return transport
        raise ResolveError(f"{self.uri}: no supported transport can carry a {self.scheme}: URI")


def _check(
    scheme: str, host: str, port: int | None, transport: str | None, supported: Sequence[str]
) -> _Request:
    scheme = scheme.lower()
    if scheme not in ("sip", "sips"):
        raise LocalProtocolError(f"cannot resolve a {scheme!r} URI: only sip and sips are SIP")
    for name in supported:
        if name not in TRANSPORTS:
            raise LocalProtocolError(f"unknown transport {name!r} in supported={supported!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or host == ".":
        raise LocalProtocolError(f"{scheme}: URI without a host")
    if port is not None and not 0 < port < 65536:
        raise LocalProtocolError(f"{scheme}:{host}: port {port} is out of range 1-65535")
    if transport is not None:
        transport = transport.lower()
        if scheme == "sips":
            if transport == "udp":
                raise ResolveError(f"sips:{host}: a SIPS URI needs TLS, which udp cannot carry")
            # RFC 3261 §26.2.2: in a SIPS URI, transport names what is under TLS.
            transport = {"tcp": "tls", "ws": "wss"}.get(transport, transport)
        if transport not in supported:
            raise ResolveError(
                f"{scheme}:{host}: transport {transport!r} is not supported"
                f" (supported: {', '.join(supported) or 'none'})"
            )
    return _Request(scheme, host, port, transport, tuple(supported))


def is_ip_literal(host: str) -> bool:
    """True for an IPv4 or IPv6 literal (brackets allowed): nothing to look up, ever."""
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return _literal(host) is not None


def _literal(host: str) -> str | None:
    """The canonical text of an IPv4 or IPv6 literal (zone kept), or None for a host name."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


def _bare(name: str) -> str:
    """A host name without its final dot, as SNI and /etc/hosts want it (RFC 6066 §3)."""
    return name[:-1] if name.endswith(".") and len(name) > 1 else name


class _Procedure:
    """RFC 3263 §4.1-§4.2 for a host name, as a generator of lookup batches.

    Answers are kept by lookup, so a name is asked once even when a NAPTR replacement and the
    no-NAPTR fallback name the same SRV record; ``notes`` says what every lookup gave, for the
    error message.
    """

    def __init__(self, request: _Request, rng: random.Random | None) -> None:
        self.request = request
        self.rng = rng
        self.answers: dict[_Lookup, _Answer] = {}
        self.notes: list[str] = []
        self.unasked: list[str] = []

    def fail(self) -> ResolveError:
        notes = list(self.notes)
        if self.unasked:
            notes.append(f"not asked, the time budget being spent: {', '.join(self.unasked)}")
        return ResolveError(f"{self.request.uri}: no usable target; tried {'; '.join(notes)}")

    def ask(self, lookups: Sequence[_Lookup]) -> Generator[list[_Lookup], list[_Answer], None]:
        todo = list(dict.fromkeys(q for q in lookups if q not in self.answers))
        if not todo:
            return
        answers = yield todo
        for lookup, answer in zip(todo, answers, strict=True):
            self.answers[lookup] = answer
            if answer.expired:
                self.unasked.append(_describe(lookup))
                continue
            self.notes.append(f"{_describe(lookup)}: {_outcome(lookup, answer)}")

    def steps(self) -> _Steps:
        request = self.request
        host = request.host
        if request.port is not None:
            # §4.1, §4.2: an explicit port means no NAPTR and no SRV, only A/AAAA.
            transport = request.transport or request.default_transport()
            return (yield from self.addresses(host, request.port, transport))

        if request.transport is not None:
            # §4.2: a transport but no port: SRV for that transport, else A/AAAA.
            transport = request.transport
            if transport in _SRV_PREFIX:
                found, targets = yield from self.services([(transport, _srv_name(transport, host))])
                if found:
                    return targets
            return (yield from self.addresses(host, DEFAULT_PORTS[transport], transport))

        # §4.1: neither transport nor port: NAPTR.
        naptr = _Lookup("NAPTR", host)
        yield from self.ask([naptr])
        answer = self.answers[naptr]
        services = self.naptr_services(answer.naptr)
        if services:
            found, targets = yield from self.services(services)
            if found:
                return targets
        if answer.nxdomain:
            self.notes.append("SRV not asked: nothing exists below a name that does not (RFC 8020)")
        else:
            # §4.1: no NAPTR: SRV for each supported transport, in the client's order.
            services = [
                (transport, _srv_name(transport, host))
                for transport in request.supported
                if transport in _SRV_PREFIX and (request.scheme == "sip" or transport in _SECURE)
            ]
            found, targets = yield from self.services(services)
            if found:
                return targets
        # §4.1, §4.2: no SRV: A/AAAA on the default port of the default transport.
        transport = request.default_transport()
        return (yield from self.addresses(host, DEFAULT_PORTS[transport], transport))

    def naptr_services(self, records: Sequence[_Naptr]) -> list[tuple[str, str]]:
        """RFC 3263 §4.1: keep the "s" records of SIP services we support, SIPS-only for sips:."""
        request = self.request
        usable: list[tuple[int, int, int, str, str]] = []
        for record in records:
            transport = _NAPTR_SERVICES.get(record.service.upper())
            if (
                transport is None
                or transport not in request.supported
                or (request.scheme == "sips" and not record.service.upper().startswith("SIPS+"))
                or record.flags.lower() != "s"
                or record.regexp
                or record.replacement == "."
            ):
                continue
            rank = request.supported.index(transport)
            usable.append((record.order, record.preference, rank, transport, record.replacement))
        if records and not usable:
            self.notes.append("NAPTR: no record for a supported SIP transport")
        return [(transport, name) for *_, transport, name in sorted(usable)]

    def services(
        self, services: Sequence[tuple[str, str]]
    ) -> Generator[list[_Lookup], list[_Answer], tuple[bool, list[Target]]]:
        """RFC 3263 §4.2: SRV records, ordered by RFC 2782, then the addresses of their targets.

        Returns whether any SRV record was found, and the targets. Found but no target means
        every target was "." (decidedly not available) or did not resolve: an error, not a
        reason to fall back to A/AAAA of the host.
        """
        lookups = [_Lookup("SRV", name) for _, name in services]
        yield from self.ask(lookups)
        if not any(self.answers[q].srv for q in lookups):
            return False, []
        if self.rng is None:
            import random

            self.rng = random.Random()
        chosen: list[tuple[str, Srv]] = []
        for (transport, _), lookup in zip(services, lookups, strict=True):
            records = self.answers[lookup].srv
            chosen.extend(
                (transport, srv) for srv in order_srv(records, self.rng) if srv.target != "."
            )
            if records and all(srv.target == "." for srv in records):
                self.notes.append(f"{lookup.name}: target '.', decidedly not available (RFC 2782)")
        yield from self.ask([_Lookup("ADDR", srv.target) for _, srv in chosen])
        targets: list[Target] = []
        for transport, srv in chosen:
            for address in self.answers[_Lookup("ADDR", srv.target)].addresses:
                targets.append(Target(transport, address, srv.port, srv.target))
        targets = list(dict.fromkeys(targets))
        if not targets:
            raise self.fail()
        return True, targets

    def addresses(self, name: str, port: int, transport: str) -> _Steps:
        """RFC 3263 §4.2: every address of the name, at one port, with one transport."""
        lookup = _Lookup("ADDR", name)
        yield from self.ask([lookup])
        targets = [
            Target(transport, address, port, _bare(name))
            for address in self.answers[lookup].addresses
        ]
        if not targets:
            raise self.fail()
        return list(dict.fromkeys(targets))


def _srv_name(transport: str, host: str) -> str:
    return f"{_SRV_PREFIX[transport]}.{_bare(host)}"


def _describe(lookup: _Lookup) -> str:
    return f"{'A/AAAA' if lookup.kind == 'ADDR' else lookup.kind} {lookup.name}"


def _outcome(lookup: _Lookup, answer: _Answer) -> str:
    if answer.error is not None:
        return answer.error
    count = len(answer.naptr) + len(answer.srv) + len(answer.addresses)
    if count == 0:
        return _NO_RECORDS
    if lookup.kind == "ADDR":
        return f"{count} address{'es' if count > 1 else ''}"
    return f"{count} record{'s' if count > 1 else ''}"


def _start(
    scheme: str,
    host: str,
    port: int | None,
    transport: str | None,
    supported: Sequence[str],
    *,
    rng: random.Random | None,
) -> list[Target] | _Procedure:
    """The targets of an IP literal (RFC 3263 §4.1, §4.2), or the procedure to run."""
    request = _check(scheme, host, port, transport, supported)
    address = _literal(request.host)
    if address is None:
        return _Procedure(request, rng)
    chosen = request.transport or request.default_transport()
    return [Target(chosen, address, request.port or DEFAULT_PORTS[chosen], address)]


# -- dnspython glue, shared by both drivers --------------------------------------------------


_AnyResolver = TypeVar("_AnyResolver", "dns.resolver.Resolver", "dns.asyncresolver.Resolver")


def _new_resolver(
    make: Callable[..., _AnyResolver], nameservers: list[tuple[str, int]] | None
) -> _AnyResolver:
    """A dnspython resolver (blocking or asyncio) for ``nameservers`` or the system's; no cache."""
    import dns.nameserver
    import dns.resolver

    try:
        resolver = make(configure=nameservers is None)
    except dns.resolver.NoResolverConfiguration as exc:
        raise ResolveError(f"no DNS resolver configured: {exc}") from exc
    if nameservers is not None:
        resolver.nameservers = [dns.nameserver.Do53Nameserver(ip, port) for ip, port in nameservers]
    resolver.cache = None
    return resolver


class _Lookups:
    """What both drivers share: the servers and the one deadline of the whole resolution."""

    def __init__(self, nameservers: list[tuple[str, int]] | None, timeout: float) -> None:
        self.nameservers = nameservers
        self.timeout = timeout
        self.deadline = clock.monotonic() + timeout

    def remaining(self) -> float:
        return self.deadline - clock.monotonic()


def _read(kind: _Kind, answer: dns.resolver.Answer) -> _Answer:
    import dns.rdtypes.IN.A
    import dns.rdtypes.IN.AAAA
    import dns.rdtypes.IN.NAPTR
    import dns.rdtypes.IN.SRV

    rdatas = list(answer.rrset) if answer.rrset is not None else []
    if kind == "NAPTR":
        return _Answer(
            naptr=tuple(
                _Naptr(
                    rd.order,
                    rd.preference,
                    rd.flags.decode("ascii", "replace"),
                    rd.service.decode("ascii", "replace"),
                    rd.regexp.decode("ascii", "replace"),
                    rd.replacement.to_text(omit_final_dot=True),
                )
                for rd in rdatas
                if isinstance(rd, dns.rdtypes.IN.NAPTR.NAPTR)
            )
        )
    if kind == "SRV":
        return _Answer(
            srv=tuple(
                Srv(rd.priority, rd.weight, rd.port, rd.target.to_text(omit_final_dot=True))
                for rd in rdatas
                if isinstance(rd, dns.rdtypes.IN.SRV.SRV)
            )
        )
    return _Answer(
        addresses=tuple(
            rd.address
            for rd in rdatas
            if isinstance(rd, dns.rdtypes.IN.A.A | dns.rdtypes.IN.AAAA.AAAA)
        )
    )


def _dns_failure(exc: Exception, timeout: float) -> _Answer:
    import dns.exception
    import dns.resolver

    if isinstance(exc, dns.resolver.NXDOMAIN):
        return _Answer(error=_NXDOMAIN, nxdomain=True)
    if isinstance(exc, dns.exception.Timeout):
        return _Answer(error=f"timeout (no answer within the {timeout:g} s budget)")
    if isinstance(exc, dns.resolver.NoNameservers):
        return _Answer(error=f"no nameserver gave an answer (SERVFAIL or REFUSED): {exc}")
    return _Answer(error=f"{type(exc).__name__}: {exc}")


def _merge_addresses(a: _Answer, aaaa: _Answer) -> _Answer:
    """A then AAAA. With no address at all, say what each query gave."""
    if a.addresses or aaaa.addresses:
        return _Answer(addresses=a.addresses + aaaa.addresses)
    if a.error == aaaa.error:
        return a
    return _Answer(error=f"A: {a.error or _NO_RECORDS}, AAAA: {aaaa.error or _NO_RECORDS}")


def _from_getaddrinfo(
    infos: Iterable[tuple[object, object, object, object, tuple[object, ...]]],
) -> _Answer:
    addresses = tuple(dict.fromkeys(str(info[4][0]) for info in infos))
    return _Answer(addresses=addresses)


def _gai_failure(exc: OSError) -> _Answer:
    missing = isinstance(exc, socket.gaierror) and exc.errno == socket.EAI_NONAME
    return _Answer(error=f"not found by getaddrinfo ({exc.strerror})" if missing else str(exc))


def _expired(timeout: float) -> _Answer:
    return _Answer(error=f"not asked, the {timeout:g} s budget being spent", expired=True)


_ADDRESS_FAMILIES = frozenset({socket.AF_INET, socket.AF_INET6})


# -- the blocking driver --------------------------------------------------------------------


class _SyncLookups(_Lookups):
    _resolver: dns.resolver.Resolver | None = None

    def resolver(self) -> dns.resolver.Resolver:
        if self._resolver is None:
            import dns.resolver

            self._resolver = _new_resolver(dns.resolver.Resolver, self.nameservers)
        return self._resolver

    def lookup(self, lookup: _Lookup) -> _Answer:
        if lookup.kind != "ADDR":
            return self.query(lookup.name, lookup.kind, lookup.kind)
        if self.nameservers is not None:
            return _merge_addresses(
                self.query(lookup.name, "A", "ADDR"), self.query(lookup.name, "AAAA", "ADDR")
            )
        if self.remaining() <= 0:
            return _expired(self.timeout)
        try:
            infos = socket.getaddrinfo(lookup.name, None, type=socket.SOCK_DGRAM)
        except OSError as exc:
            return _gai_failure(exc)
        return _from_getaddrinfo(info for info in infos if info[0] in _ADDRESS_FAMILIES)

    def query(self, name: str, rdtype: str, kind: _Kind) -> _Answer:
        remaining = self.remaining()
        if remaining <= 0:
            return _expired(self.timeout)
        resolver = self.resolver()
        import dns.exception
        import dns.name

        try:
            answer = resolver.resolve(
                dns.name.from_text(name), rdtype, lifetime=remaining, raise_on_no_answer=False
            )
        except (dns.exception.DNSException, OSError) as exc:
            return _dns_failure(exc, self.timeout)
        return _read(kind, answer)


def resolve_sync(
    scheme: str,
    host: str,
    port: int | None,
    transport: str | None,
    *,
    nameservers: list[tuple[str, int]] | None = None,
    timeout: float = 5.0,
    supported: tuple[str, ...] = ("udp", "tcp", "tls"),
    rng: random.Random | None = None,
) -> list[Target]:
    """Resolve a SIP or SIPS URI host to the targets to try, in order (RFC 3263 §4).

    ``host`` is a name or an IP literal (IPv6 with or without brackets); ``port`` and
    ``transport`` are None when the URI and the command line do not give them. With
    ``nameservers``, every query (A and AAAA included) goes to those ``(ip, port)`` servers;
    without, NAPTR and SRV go to the system's nameservers and addresses come from
    ``getaddrinfo``. ``timeout`` bounds the whole resolution. ``rng`` drives the RFC 2782
    weighted SRV selection. Blocking, and imports neither asyncio nor (for an IP literal)
    dnspython.

    Raises ResolveError when no usable target is found, naming every lookup and its outcome;
    LocalProtocolError on arguments no URI parser should have let through.
    """
    started = _start(scheme, host, port, transport, supported, rng=rng)
    if isinstance(started, list):
        return started
    lookups = _SyncLookups(nameservers, timeout)
    steps = started.steps()
    try:
        batch = next(steps)
        while True:
            batch = steps.send([lookups.lookup(lookup) for lookup in batch])
    except StopIteration as done:
        targets: list[Target] = done.value
        return targets


# -- the asyncio driver ---------------------------------------------------------------------


class _AsyncLookups(_Lookups):
    _resolver: dns.asyncresolver.Resolver | None = None

    def resolver(self) -> dns.asyncresolver.Resolver:
        if self._resolver is None:
            import dns.asyncresolver

            self._resolver = _new_resolver(dns.asyncresolver.Resolver, self.nameservers)
        return self._resolver

    async def lookup(self, lookup: _Lookup) -> _Answer:
        import asyncio

        if lookup.kind != "ADDR":
            return await self.query(lookup.name, lookup.kind, lookup.kind)
        if self.nameservers is not None:
            a, aaaa = await asyncio.gather(
                self.query(lookup.name, "A", "ADDR"), self.query(lookup.name, "AAAA", "ADDR")
            )
            return _merge_addresses(a, aaaa)
        remaining = self.remaining()
        if remaining <= 0:
            return _expired(self.timeout)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(remaining):
                infos = await loop.getaddrinfo(lookup.name, None, type=socket.SOCK_DGRAM)
        except TimeoutError:
            return _Answer(error=f"timeout (getaddrinfo, {self.timeout:g} s budget)")
        except OSError as exc:
            return _gai_failure(exc)
        return _from_getaddrinfo(info for info in infos if info[0] in _ADDRESS_FAMILIES)

    async def query(self, name: str, rdtype: str, kind: _Kind) -> _Answer:
        remaining = self.remaining()
        if remaining <= 0:
            return _expired(self.timeout)
        resolver = self.resolver()
        import dns.exception
        import dns.name

        try:
            answer = await resolver.resolve(
                dns.name.from_text(name), rdtype, lifetime=remaining, raise_on_no_answer=False
            )
        except (dns.exception.DNSException, OSError) as exc:
            return _dns_failure(exc, self.timeout)
        return _read(kind, answer)


async def resolve(
    scheme: str,
    host: str,
    port: int | None,
    transport: str | None,
    *,
    nameservers: list[tuple[str, int]] | None = None,
    timeout: float = 5.0,
    supported: tuple[str, ...] = ("udp", "tcp", "tls"),
    rng: random.Random | None = None,
) -> list[Target]:
    """The asyncio twin of :func:`resolve_sync`: same arguments, same order, same errors.

    The lookups of one step (the SRV query of every transport, the addresses of every SRV
    target, A and AAAA) run concurrently.
    """
    started = _start(scheme, host, port, transport, supported, rng=rng)
    if isinstance(started, list):
        return started
    import asyncio

    lookups = _AsyncLookups(nameservers, timeout)
    steps = started.steps()
    try:
        batch = next(steps)
        while True:
            answers = await asyncio.gather(*(lookups.lookup(lookup) for lookup in batch))
            batch = steps.send(list(answers))
    except StopIteration as done:
        targets: list[Target] = done.value
        return targets
