"""The monitor's HTTP server: :func:`make_app` over a :class:`~sipalive.http.view.MonitorView`.

Endpoints (all GET; times in JSON are ISO 8601 UTC ``2024-05-01T12:00:00.123Z``, RTTs seconds):

``/metrics``
    Prometheus text (format 0.0.4), see :mod:`sipalive.http.metrics`.
``/probe?target=sip:...&module=udp|tcp|tls|ws|wss``
    One on-demand probe, blackbox_exporter style (``probe_success``, ``probe_duration_seconds``,
    ``probe_sip_status_code``, ``probe_phase_duration_seconds{phase}``). Its timeout is the
    ``X-Prometheus-Scrape-Timeout-Seconds`` header less :data:`SCRAPE_TIMEOUT_OFFSET` (but
    at least half of it), so the answer arrives before Prometheus gives up; 10 s without the
    header. No module lets the engine choose (RFC 3263). A missing or bad target, module or
    header is a 400 with the reason as text.
``/api/targets?state=&q=&group=&limit=&offset=``
    The targets (every :class:`~sipalive.http.view.TargetView` field; ``since`` and
    ``last_probe_at`` as ISO 8601). ``state`` takes one state or a comma-separated list,
    ``q`` a case-insensitive substring of the name, URI or group, ``group`` a group name.
``/api/targets/{name}``
    One target, or a 404 ``{"error": ...}``.
``/api/targets/{name}/history?limit=``
    Its transitions, oldest first, each exactly ``{at, from, to, cause, rtt_s}``.
``/api/targets/{name}/rtt?hours=24``
    Its RTT per minute: ``{at, count, min_s, max_s, mean_s}``, oldest first. A row covers
    ``rtt_bucket(qualify_frequency)`` (:mod:`sipalive.qualify.history`): one minute for a
    target probed more often than every 24 s, 5 minutes at 60 s, up to 15.
``/api/events?after=ID&limit=N``
    Transitions of all targets with an id above ``after``, oldest first (at most ``limit``,
    100 by default, 1000 at most): ``{id, target, at, from, to, cause, rtt_s}``. Poll with the
    last id seen.
``/api/summary``
    Targets per state and the engine's numbers, with ``last_event_id`` to start polling from.
``/api/contacts``
    The contacts registered with the monitor's registrar (``[registrar]``), by AOR and
    contact: ``{aor, contact, source, transport, expires_at, state, rtt_s, user_agent,
    registered_at}``, ``source`` the "host:port" requests to it go to, ``rtt_s`` the last
    qualify's. An empty list when there are none, or no registrar.
``/`` and ``/targets/{name}``
    The status page and a target's page (:mod:`sipalive.http.page`).

Authentication. With ``token`` set, every endpoint (``/metrics`` too) wants
``Authorization: Bearer <token>`` and answers 401 with ``WWW-Authenticate: Bearer`` otherwise.
So that the page can be opened in a browser, HTTP Basic with the token as the password (any
user name) is accepted too: the 401 also offers ``Basic``, and the browser asks for it once.
Tokens are compared as SHA-256 digests with :func:`hmac.compare_digest`: constant time, and
the length of the token is not leaked either.

Large answers (``/metrics``, ``/api/targets``, ``/``) walk the targets in chunks and yield to
the event loop between chunks, then stream their pieces: at 100k targets the probe loop is
never held for more than a few milliseconds.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import hashlib
import hmac
import math
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import msgspec
from aiohttp import web
from multidict import CIMultiDict

from sipalive import clock
from sipalive.errors import ParseError
from sipalive.http import page
from sipalive.http.metrics import CHUNK, CONTENT_TYPE, LineCache, render_metrics, render_probe
from sipalive.http.view import (
    STATES,
    ContactView,
    MonitorView,
    RttMinuteView,
    TargetSample,
    TargetView,
    TransitionView,
    contacts_of,
)
from sipalive.sip.uri import TRANSPORTS, parse_uri
from sipalive.store.sqlite import iso8601

SCRAPE_TIMEOUT_HEADER = "X-Prometheus-Scrape-Timeout-Seconds"
SCRAPE_TIMEOUT_OFFSET = 0.5
DEFAULT_PROBE_TIMEOUT = 10.0
MAX_EVENTS = 1000
MAX_HISTORY = 10000
MAX_HOURS = 31 * 24.0
STREAM_YIELD_BYTES = 1 << 20
# Work between two yields to the loop stays under a few milliseconds at these sizes.
JSON_CHUNK = 250
ROWS_CHUNK = 100

VIEW = web.AppKey[MonitorView]("view")
TOKEN_DIGEST = web.AppKey("token_digest", bytes)

T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(slots=True)
class Scrapes:
    """What one ``/metrics`` remembers for the next: how long it took, the lines it wrote."""

    last_render_s: float | None = None
    lines: LineCache = field(default_factory=LineCache)


SCRAPES = web.AppKey("scrapes", Scrapes)

# JSON shapes (the Contract's names; "from" is a keyword, hence the renames). No cycles are
# possible, so they stay out of the garbage collector: 100k of them would otherwise set off a
# full collection in the middle of /api/targets (measured: ~100 ms with the loop held).


class TargetJSON(msgspec.Struct, gc=False):
    name: str
    uri: str
    group: str | None
    transport: str | None
    state: str
    since: str
    rtt_s: float | None
    srtt_s: float | None
    rttvar_s: float | None
    rtt_min_s: float | None
    rtt_max_s: float | None
    rtt_p50_s: float | None
    rtt_p90_s: float | None
    rtt_p99_s: float | None
    probes: int
    successes: int
    failures: int
    timeouts: int
    transport_errors: int
    last_status: int | None
    last_error: str | None
    last_probe_at: str | None
    qualify_frequency: float
    recent_rtts: tuple[float, ...]


class TransitionJSON(msgspec.Struct, gc=False):
    at: str
    from_: str = msgspec.field(name="from")
    to: str
    cause: str
    rtt_s: float | None


class EventJSON(msgspec.Struct, gc=False):
    id: int | None
    target: str
    at: str
    from_: str = msgspec.field(name="from")
    to: str
    cause: str
    rtt_s: float | None


class RttMinuteJSON(msgspec.Struct, gc=False):
    at: str
    count: int
    min_s: float
    max_s: float
    mean_s: float


class SummaryJSON(msgspec.Struct, gc=False):
    targets: int
    counts: dict[str, int]
    in_flight: int
    probes_total: dict[str, int]
    scheduler_lag_p99_s: float | None
    started_at: str
    last_event_id: int


class ContactJSON(msgspec.Struct, gc=False):
    aor: str
    contact: str
    source: str
    transport: str
    expires_at: str
    state: str
    rtt_s: float | None
    user_agent: str | None
    registered_at: str


def contact_json(c: ContactView) -> ContactJSON:
    return ContactJSON(
        aor=c.aor,
        contact=c.contact,
        source=c.source,
        transport=c.transport,
        expires_at=iso8601(c.expires_at),
        state=c.state,
        rtt_s=c.rtt_s,
        user_agent=c.user_agent,
        registered_at=iso8601(c.registered_at),
    )


def target_json(t: TargetView) -> TargetJSON:
    return TargetJSON(
        name=t.name,
        uri=t.uri,
        group=t.group,
        transport=t.transport,
        state=t.state,
        since=iso8601(t.since),
        rtt_s=t.rtt_s,
        srtt_s=t.srtt_s,
        rttvar_s=t.rttvar_s,
        rtt_min_s=t.rtt_min_s,
        rtt_max_s=t.rtt_max_s,
        rtt_p50_s=t.rtt_p50_s,
        rtt_p90_s=t.rtt_p90_s,
        rtt_p99_s=t.rtt_p99_s,
        probes=t.probes,
        successes=t.successes,
        failures=t.failures,
        timeouts=t.timeouts,
        transport_errors=t.transport_errors,
        last_status=t.last_status,
        last_error=t.last_error,
        last_probe_at=iso8601(t.last_probe_at) if t.last_probe_at is not None else None,
        qualify_frequency=t.qualify_frequency,
        recent_rtts=t.recent_rtts,
    )


def transition_json(h: TransitionView) -> TransitionJSON:
    return TransitionJSON(
        at=iso8601(h.at), from_=h.from_state, to=h.to_state, cause=h.cause, rtt_s=h.rtt_s
    )


def event_json(h: TransitionView) -> EventJSON:
    return EventJSON(
        id=h.id,
        target=h.target,
        at=iso8601(h.at),
        from_=h.from_state,
        to=h.to_state,
        cause=h.cause,
        rtt_s=h.rtt_s,
    )


def rtt_minute_json(m: RttMinuteView) -> RttMinuteJSON:
    return RttMinuteJSON(
        at=iso8601(m.minute_start), count=m.count, min_s=m.min_s, max_s=m.max_s, mean_s=m.mean_s
    )


_encoder = msgspec.json.Encoder()


def json_response(value: object, status: int = 200) -> web.Response:
    return web.Response(body=_encoder.encode(value), status=status, content_type="application/json")


class BadRequest(Exception):
    """A query parameter or header the caller got wrong; the message says which and why."""


def json_error(status: int, message: str) -> web.Response:
    return json_response({"error": message}, status)


def probe_timeout(header: str | None) -> float:
    """The time a probe may take within a scrape whose timeout ``header`` announces."""
    if header is None:
        return DEFAULT_PROBE_TIMEOUT
    try:
        scrape = float(header)
    except ValueError:
        raise BadRequest(f"{SCRAPE_TIMEOUT_HEADER} is not a number: {header!r}") from None
    if not math.isfinite(scrape) or scrape <= 0:
        raise BadRequest(f"{SCRAPE_TIMEOUT_HEADER} must be a positive number: {header!r}")
    return max(scrape - SCRAPE_TIMEOUT_OFFSET, scrape / 2)


def _number(query: Mapping[str, str], key: str, default: float, low: float, high: float) -> float:
    text = query.get(key)
    if text is None or text == "":
        return default
    try:
        value = float(text)
    except ValueError:
        raise BadRequest(f"{key} is not a number: {text!r}") from None
    if not low <= value <= high:
        raise BadRequest(f"{key} must be between {low:g} and {high:g}: {text!r}")
    return value


def _integer(query: Mapping[str, str], key: str, default: int, low: int, high: int) -> int:
    value = _number(query, key, default, low, high)
    if value != int(value):
        raise BadRequest(f"{key} must be an integer: {query[key]!r}")
    return int(value)


@dataclass(frozen=True, slots=True)
class TargetFilter:
    """Which targets a query selects: any of ``states``, a substring ``q``, a ``group``."""

    states: frozenset[str] | None = None
    q: str | None = None
    group: str | None = None

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> TargetFilter:
        states = None
        if query.get("state"):
            states = frozenset(s.strip().lower() for s in query["state"].split(","))
            unknown = sorted(states - set(STATES))
            if unknown:
                raise BadRequest(f"unknown state {unknown[0]!r} (expected {', '.join(STATES)})")
        return cls(states, query.get("q", "").strip().lower() or None, query.get("group") or None)

    def __call__(self, t: TargetView) -> bool:
        if self.states is not None and t.state not in self.states:
            return False
        if self.group is not None and t.group != self.group:
            return False
        q = self.q
        return (
            q is None
            or q in t.name.lower()
            or q in t.uri.lower()
            or (t.group is not None and q in t.group.lower())
        )


async def chunks(items: Sequence[T], size: int = CHUNK) -> AsyncIterator[Sequence[T]]:
    """``items`` in slices of ``size``, yielding to the event loop after each."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
        await asyncio.sleep(0)


async def stream(
    request: web.Request, pieces: Sequence[bytes | memoryview], content_type: str
) -> web.StreamResponse:
    """Send ``pieces`` as one body (with its length), piece by piece, minding back-pressure."""
    response = web.StreamResponse(headers={"Content-Type": content_type})
    response.content_length = sum(map(len, pieces))
    await response.prepare(request)
    if request.method != "HEAD":
        unyielded = 0
        for piece in pieces:
            await response.write(piece)
            # write() only yields when the socket pushes back; a fast reader never does.
            unyielded += len(piece)
            if unyielded >= STREAM_YIELD_BYTES:
                unyielded = 0
                await asyncio.sleep(0)
    await response.write_eof()
    return response


async def count_states(targets: Sequence[TargetSample]) -> dict[str, int]:
    counts = dict.fromkeys(STATES, 0)
    async for chunk in chunks(targets):
        for t in chunk:
            counts[t.state] = counts.get(t.state, 0) + 1
    return counts


# Authentication.


def _credential(authorization: str | None) -> str | None:
    """The token a client offers: a Bearer token, or the password of HTTP Basic."""
    if authorization is None:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer":
        return value.strip()
    if scheme == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[2]
    return None


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    expected = request.app[TOKEN_DIGEST]
    if expected:
        offered = _credential(request.headers.get("Authorization"))
        if offered is None or not hmac.compare_digest(_digest(offered), expected):
            bearer = 'Bearer realm="sipalive"'
            if offered is not None:
                bearer += ', error="invalid_token"'
            headers = CIMultiDict(
                [("WWW-Authenticate", bearer), ("WWW-Authenticate", 'Basic realm="sipalive"')]
            )
            text = "401: a bearer token is required\n"
            return web.Response(status=401, text=text, headers=headers)
    return await handler(request)


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Cache-Control", "no-store")
    response.headers.setdefault("Referrer-Policy", "no-referrer")


# Handlers.


async def metrics(request: web.Request) -> web.StreamResponse:
    scrapes = request.app[SCRAPES]
    start = clock.monotonic()
    body = render_metrics(
        request.app[VIEW], previous_render_s=scrapes.last_render_s, cache=scrapes.lines
    )
    response = web.StreamResponse(headers={"Content-Type": CONTENT_TYPE})
    response.enable_chunked_encoding()  # its length is known only at its end
    await response.prepare(request)
    if request.method != "HEAD":
        async for piece in body:  # made as it is sent: the whole body never exists at once
            await response.write(piece)
    await response.write_eof()
    scrapes.last_render_s = clock.monotonic() - start
    return response


async def probe(request: web.Request) -> web.Response:
    target = request.query.get("target", "").strip()
    module = request.query.get("module", "").strip().lower() or None
    try:
        if not target:
            raise BadRequest("missing target (?target=sip:... or sips:...)")
        try:
            parse_uri(target)
        except ParseError as exc:
            raise BadRequest(f"bad target {target!r}: {exc}") from None
        if module is not None and module not in TRANSPORTS:
            raise BadRequest(f"unknown module {module!r} (expected {', '.join(TRANSPORTS)})")
        timeout = probe_timeout(request.headers.get(SCRAPE_TIMEOUT_HEADER))
    except BadRequest as exc:
        return web.Response(status=400, text=f"{exc}\n")
    report = await request.app[VIEW].probe(target, module, timeout)
    return web.Response(text=render_probe(report), headers={"Content-Type": CONTENT_TYPE})


async def api_targets(request: web.Request) -> web.StreamResponse:
    try:
        keep = TargetFilter.from_query(request.query)
        offset = _integer(request.query, "offset", 0, 0, 2**31)
        limit = _integer(request.query, "limit", 2**31, 0, 2**31)
    except BadRequest as exc:
        return json_error(400, str(exc))
    selected: list[TargetView] = []
    async for chunk in chunks(request.app[VIEW].targets()):
        selected += filter(keep, chunk)
    selected = selected[offset : offset + limit]
    return await stream(request, await json_array(selected, target_json), "application/json")


async def json_array(
    items: Sequence[T], to_json: Callable[[T], object]
) -> list[bytes | memoryview]:
    """``items`` as the pieces of one JSON array, encoded in chunks between yields."""
    pieces: list[bytes | memoryview] = [b"["]
    async for chunk in chunks(items, JSON_CHUNK):
        if len(pieces) > 1:
            pieces.append(b",")
        pieces.append(memoryview(_encoder.encode([to_json(item) for item in chunk]))[1:-1])
    pieces.append(b"]")
    return pieces


async def api_contacts(request: web.Request) -> web.StreamResponse:
    contacts = contacts_of(request.app[VIEW]) or ()
    return await stream(request, await json_array(contacts, contact_json), "application/json")


def _known(request: web.Request) -> TargetView:
    name = request.match_info["name"]
    target = request.app[VIEW].target(name)
    if target is None:
        raise web.HTTPNotFound(
            text=_encoder.encode({"error": f"no target named {name!r}"}).decode(),
            content_type="application/json",
        )
    return target


async def api_target(request: web.Request) -> web.Response:
    return json_response(target_json(_known(request)))


async def api_history(request: web.Request) -> web.Response:
    target = _known(request)
    try:
        limit = _integer(request.query, "limit", 1000, 1, MAX_HISTORY)
    except BadRequest as exc:
        return json_error(400, str(exc))
    history = sorted(request.app[VIEW].history(target.name, limit), key=lambda h: h.at)
    return json_response([transition_json(h) for h in history])


async def api_rtt(request: web.Request) -> web.Response:
    target = _known(request)
    try:
        hours = _number(request.query, "hours", 24.0, 1 / 60, MAX_HOURS)
    except BadRequest as exc:
        return json_error(400, str(exc))
    now = clock.wall()
    series = request.app[VIEW].rtt_series(target.name, now - hours * 3600, now)
    return json_response([rtt_minute_json(m) for m in series])


async def api_events(request: web.Request) -> web.Response:
    try:
        after = _integer(request.query, "after", 0, 0, 2**63)
        limit = _integer(request.query, "limit", 100, 1, MAX_EVENTS)
    except BadRequest as exc:
        return json_error(400, str(exc))
    return json_response([event_json(e) for e in request.app[VIEW].events(after, limit)])


async def api_summary(request: web.Request) -> web.Response:
    view = request.app[VIEW]
    counts = await count_states(view.samples())
    stats = view.stats()
    return json_response(
        SummaryJSON(
            targets=stats.targets,
            counts=counts,
            in_flight=stats.in_flight,
            probes_total=stats.probes_total,
            scheduler_lag_p99_s=stats.scheduler_lag_p99_s,
            started_at=iso8601(stats.started_at),
            last_event_id=stats.last_event_id,
        )
    )


def _html(text: str, nonce: str, status: int = 200) -> web.Response:
    csp = (
        f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
        "img-src 'self' data:; connect-src 'self'; form-action 'self'; base-uri 'none'; "
        "frame-ancestors 'none'"
    )
    return web.Response(
        text=text,
        status=status,
        content_type="text/html",
        headers={"Content-Security-Policy": csp},
    )


async def index(request: web.Request) -> web.Response:
    view = request.app[VIEW]
    query = request.query
    state = query.get("state", "").lower()
    selected = page.IndexQuery(
        state=state if state in STATES else None,
        q=query.get("q", "").strip() or None,
        group=query.get("group") or None,
        page=max(1, _integer_or(query.get("page"), 1)),
    )
    keep = TargetFilter(
        frozenset([selected.state]) if selected.state else None,
        selected.q.lower() if selected.q else None,
        selected.group,
    )
    counts = dict.fromkeys(STATES, 0)
    buckets: dict[str, list[TargetView]] = {s: [] for s in page.ORDER}
    async for chunk in chunks(view.targets()):
        for t in chunk:
            counts[t.state] = counts.get(t.state, 0) + 1
            if keep(t):
                buckets.setdefault(t.state, []).append(t)
    ordered = [t for bucket in buckets.values() for t in bucket]
    last_page = max(1, math.ceil(len(ordered) / page.PAGE_SIZE))
    selected = dataclasses.replace(selected, page=min(selected.page, last_page))
    first = (selected.page - 1) * page.PAGE_SIZE
    shown = ordered[first : first + page.PAGE_SIZE]
    now = clock.wall()
    rows = [page.rows(chunk, now) async for chunk in chunks(shown, ROWS_CHUNK)]
    nonce = secrets.token_urlsafe(16)
    text = page.index_page(
        selected,
        counts,
        len(ordered),
        len(shown),
        "".join(rows),
        nonce,
        view.stats().last_event_id,
        page.contacts_section(contacts_of(view) or (), now),
    )
    return _html(text, nonce)


def _integer_or(text: str | None, default: int) -> int:
    try:
        return int(text) if text else default
    except ValueError:
        return default


async def target_page(request: web.Request) -> web.Response:
    view = request.app[VIEW]
    name = request.match_info["name"]
    nonce = secrets.token_urlsafe(16)
    target = view.target(name)
    if target is None:
        return _html(page.not_found(name, nonce), nonce, status=404)
    hours = min(max(_integer_or(request.query.get("hours"), 24), 1), int(MAX_HOURS))
    now = clock.wall()
    history = sorted(view.history(name), key=lambda h: h.at)
    series = view.rtt_series(name, now - hours * 3600, now)
    text = page.target_page(target, history, series, now, hours, nonce, view.stats().last_event_id)
    return _html(text, nonce)


def make_app(view: MonitorView, *, token: str | None = None) -> web.Application:
    """The HTTP application over ``view``; with ``token``, every request must carry it."""
    if token is not None and not token:
        raise ValueError("the HTTP token must not be empty")
    app = web.Application(middlewares=[authenticate])
    app[VIEW] = view
    app[TOKEN_DIGEST] = _digest(token) if token else b""
    app[SCRAPES] = Scrapes()
    app.on_response_prepare.append(security_headers)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/probe", probe)
    app.router.add_get("/api/targets", api_targets)
    app.router.add_get("/api/targets/{name}", api_target)
    app.router.add_get("/api/targets/{name}/history", api_history)
    app.router.add_get("/api/targets/{name}/rtt", api_rtt)
    app.router.add_get("/api/events", api_events)
    app.router.add_get("/api/summary", api_summary)
    app.router.add_get("/api/contacts", api_contacts)
    app.router.add_get("/", index)
    app.router.add_get("/targets/{name}", target_page)
    return app
