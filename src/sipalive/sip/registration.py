"""A SIP registration client (RFC 3261 §10.2) that keeps a UA reachable behind NAT, as a pure
machine driven by ``now``: responses and flow news in, events and octets to send out.

::

    start ──► REGISTERING ──2xx──► REGISTERED ──refresh due──► REGISTERING (refresh)
                │  401/407: again with credentials (RFC 8760 digest)
                │  423: again with Min-Expires (§10.2.8)
                │  2xx naming another received/rport (RFC 3581): again with that Contact
                │
                ├─ final failure ─────────► BACKOFF ──wait over──► REGISTERING
                ├─ flow failure (timeout, transport error, keep-alive failure)
                │      └──► CONNECTING (NewFlowNeeded) ──flow_ready──► REGISTERING
                └─ bad credentials, 403, 404... before the first success ──► FAILED
    stop ──► UNREGISTERING (Expires: 0 for our own Contact only) ──final/timeout──► STOPPED

Choices where the RFCs leave room:

* **Refresh at half the granted lifetime.** RFC 3261 §10.2.4 only says to refresh before
  expiry. Half leaves as much time again for retries (with the back-off below) before the
  registrar drops the binding, which a refresh "30 s before" does not survive on UDP, where
  one transaction alone may take 32 s. The ``register`` keep-alive refreshes sooner, every
  jittered keep-alive interval.
* **Flow recovery, RFC 5626 §4.5.** A flow that fails under a live registration (keep-alive
  failure, REGISTER timeout, transport error) is replaced at once: ``NewFlowNeeded``, then a
  REGISTER on the new flow. Each failed attempt after that (and any failure before the first
  success) waits ``min(max, base * 2**consecutive_failures)`` times a random 50-100%. This UA
  has a single flow, so every failure is "all flows failed" and the base is 30 s by default
  (the 90 s base of §4.5 is for UAs with flows left); both are configurable.
* **Fatal or not.** Before the first success, a definitive refusal (credentials rejected,
  403, 404, other 4xx but 408/423/429/480, 6xx) ends the machine in FAILED: a mistake in the
  configuration will not fix itself. After a success the same answers are retried with
  back-off, since a long-running UA should ride out a registrar that is being reconfigured.
* **Credentials.** The last challenge is reused pre-emptively on refreshes, ``nc`` counting
  up (RFC 7616 §3.4). A challenge answering a request that carried credentials from the
  challenge just before it means the password is wrong, unless it says ``stale=true``. The
  password appears in no event, no repr and no exception.
* **Public address.** The top Via of a 2xx carries ``received``/``rport`` (RFC 3581); when
  they name another address than the Contact's, the Contact is rewritten and registered again
  (at most three times in a row, against a registrar that reports a new address each time).
  Without RFC 5626 outbound, that REGISTER also removes the old Contact (``expires=0``);
  with it (``instance_id`` set), the registrar replaces the binding by instance and reg-id.
* **Keep-alive interval.** A ``Flow-Timer`` header (RFC 5626 §4.4.1) or a ``keep=N`` on the
  top Via (RFC 6223 §4.4) in a 2xx gives the most time the registrar allows between
  keep-alives: the UA must send them "at least as often", so the interval used is the smaller
  of its own and the registrar's (``KeepaliveInterval`` says when that changes).

:class:`OptionsKeepalive` is the ``options`` keep-alive (OPTIONS to the registrar, a timeout
means the flow failed), and :func:`answer` builds the stateless final responses the UA sends
to inbound requests (INVITE, BYE, CANCEL).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum

from sipalive.errors import ConfigError, LocalProtocolError, ParseError
from sipalive.sip.build import USER_AGENT, format_host, make_options, make_request
from sipalive.sip.digest import ALGORITHMS, Challenge, authorization
from sipalive.sip.grammar import format_params, is_digits, param_value, split_top_level
from sipalive.sip.headers import Headers, parse_name_addr
from sipalive.sip.message import Request, Response
from sipalive.sip.transaction import (
    ClientTransaction,
    Completed,
    TimerConfig,
    TransactionResult,
    Transmit,
)
from sipalive.sip.uri import DEFAULT_PORTS, parse_uri

Address = tuple[str, int]

MAX_REWRITES = 3
"""Contact rewrites in a row (RFC 3581 address learning) before the address is taken as is."""

MAX_STALE = 2
"""``stale=true`` challenges in a row answered before giving up (a registrar whose nonces
expire at once would otherwise loop)."""

_TRANSPORTS = ("udp", "tcp", "tls")


def jittered(interval: float, rand: Callable[[], float]) -> float:
    """80-100% of ``interval`` (RFC 5626 §4.4), ``rand`` returning a number in [0, 1]."""
    r = rand()
    if not 0.0 <= r <= 1.0:
        raise LocalProtocolError(f"rand() returned {r!r}, outside [0, 1]")
    return interval * (0.8 + 0.2 * r)


# -- configuration -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RegistrationConfig:
    """What to register, where, and how to recover. Checked on construction (ConfigError).

    ``registrar_uri`` is the Request-URI (RFC 3261 §10.2: the registrar's domain, e.g.
    ``sip:example.com``); ``aor`` goes in To and From; ``user`` is the Contact's user part
    and, unless ``auth_user`` says otherwise, the digest username. ``refresh_every`` (the
    ``register`` keep-alive) refreshes at most that long apart (jittered 80-100%).
    ``instance_id`` (``urn:uuid:...``) turns on RFC 5626 outbound: ``+sip.instance``,
    ``reg-id=1``, ``;ob`` and ``Supported: outbound``. ``keep`` adds RFC 6223 ``;keep`` to
    the Via, offering keep-alives.
    """

    registrar_uri: str
    aor: str
    user: str
    transport: str = "udp"
    password: str | None = field(default=None, repr=False)
    auth_user: str | None = None
    expires: int = 3600
    instance_id: str | None = None
    keep: bool = True
    rewrite_contact: bool = True
    refresh_every: float | None = None
    backoff_base: float = 30.0
    backoff_max: float = 1800.0
    timers: TimerConfig = field(default_factory=TimerConfig)
    user_agent: str | None = USER_AGENT

    def __post_init__(self) -> None:
        for name, uri in (("registrar", self.registrar_uri), ("aor", self.aor)):
            try:
                parse_uri(uri)
            except ParseError as exc:
                raise ConfigError(name, exc.reason) from exc
        if self.transport not in _TRANSPORTS:
            raise ConfigError("transport", f"expected udp, tcp or tls, got {self.transport!r}")
        if not self.user or any(c in self.user for c in ' \t\r\n<>@";'):
            raise ConfigError("user", f"not a usable SIP user name: {self.user!r}")
        if not 1 <= self.expires <= 2**31 - 1:
            raise ConfigError("expires", f"must be 1..2147483647 seconds, got {self.expires}")
        if self.refresh_every is not None and not self.refresh_every > 0:
            raise ConfigError("refresh_every", f"must be > 0, got {self.refresh_every}")
        if not self.backoff_base > 0:
            raise ConfigError("backoff_base", f"must be > 0, got {self.backoff_base}")
        if not self.backoff_max >= self.backoff_base:
            raise ConfigError("backoff_max", f"must be >= backoff_base ({self.backoff_base})")
        if self.instance_id is not None and not self.instance_id.startswith("urn:"):
            raise ConfigError("instance_id", f"not a URN (urn:uuid:...): {self.instance_id!r}")


# -- events --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendRequest:
    """Send ``data`` to the registrar on the current flow (``retransmission`` 0: first copy)."""

    data: bytes
    retransmission: int = 0


@dataclass(frozen=True, slots=True)
class NewFlowNeeded:
    """Open a new flow to the registrar (RFC 5626 §4.5), then call ``flow_ready``."""

    reason: str


@dataclass(frozen=True, slots=True)
class Registered:
    """A binding is in place: the first time, or with a new Contact."""

    expires: int
    contact: str
    public_addr: Address | None
    refresh_in: float


@dataclass(frozen=True, slots=True)
class Refreshed:
    expires: int
    contact: str
    refresh_in: float


@dataclass(frozen=True, slots=True)
class FlowRecovered:
    """Registered again on a new flow, ``down_for`` seconds after the flow failed."""

    down_for: float
    expires: int
    contact: str
    refresh_in: float


@dataclass(frozen=True, slots=True)
class RegistrationFailed:
    """The registrar refused (or the attempt failed); ``fatal``: the machine gave up,
    else it tries again in ``retry_in`` seconds."""

    status: int
    reason: str
    retry_in: float | None
    fatal: bool = False


@dataclass(frozen=True, slots=True)
class FlowFailed:
    """The flow to the registrar failed; a new one is formed in ``retry_in`` seconds."""

    reason: str
    retry_in: float


@dataclass(frozen=True, slots=True)
class PublicAddressChanged:
    """RFC 3581: the registrar sees us at ``new``; the Contact is rewritten and registered."""

    old: Address
    new: Address


@dataclass(frozen=True, slots=True)
class KeepaliveInterval:
    """The registrar asks for keep-alives at most ``interval`` seconds apart
    (``source``: "Flow-Timer" or "keep")."""

    interval: float
    source: str


@dataclass(frozen=True, slots=True)
class RegistrationExpired:
    """The binding's lifetime ran out before a refresh succeeded."""

    contact: str


@dataclass(frozen=True, slots=True)
class Unregistered:
    """``stop`` is done. ``status`` is the registrar's answer (None: nothing was sent)."""

    status: int | None
    reason: str


Event = (
    SendRequest
    | NewFlowNeeded
    | Registered
    | Refreshed
    | FlowRecovered
    | RegistrationFailed
    | FlowFailed
    | PublicAddressChanged
    | KeepaliveInterval
    | RegistrationExpired
    | Unregistered
)


class RegistrationState(Enum):
    IDLE = "idle"
    REGISTERING = "registering"
    REGISTERED = "registered"
    BACKOFF = "backoff"
    CONNECTING = "connecting"
    UNREGISTERING = "unregistering"
    STOPPED = "stopped"
    FAILED = "failed"


def _fatal_before_success(status: int) -> bool:
    return (400 <= status < 500 and status not in (408, 423, 429, 480)) or status >= 600


def _leading_int(value: str | None) -> int | None:
    """``"120"`` or ``"120;duration=30"`` (Retry-After, RFC 3261 §20.33) -> 120."""
    if value is None:
        return None
    head = value.strip().split(";", 1)[0].split("(", 1)[0].strip()
    return int(head) if is_digits(head) and len(head) <= 10 else None


# -- the machine ---------------------------------------------------------------------------


class Registration:
    """One AOR registered through one flow. ``rand`` returns a number in [0, 1] (back-off
    and jitter); ``rand_token`` a fresh random token (Call-ID, tags, branches, cnonce)."""

    def __init__(
        self,
        config: RegistrationConfig,
        *,
        rand: Callable[[], float],
        rand_token: Callable[[], str],
    ) -> None:
        self.config = config
        self._rand = rand
        self._token = rand_token
        self.state = RegistrationState.IDLE
        self._call_id = f"{rand_token()}@sipalive"
        self._from_tag = rand_token()
        self._cseq = 0
        self._expires = config.expires
        self._local: Address = ("0.0.0.0", 0)
        self._contact_addr: Address = self._local
        self.public_addr: Address | None = None
        self._txn: ClientTransaction | None = None
        self._unregistering = False
        self._bound: list[str] = []  # Contact URIs the registrar holds for us, as far as known
        self._maybe_bound = False  # a first REGISTER went out: the registrar may hold it
        self._until = 0.0
        self._refresh_at = 0.0
        self._retry_at = 0.0
        # (proxy?, realm) -> the last challenge and its nonce count: a registrar's 401 and an
        # outbound proxy's 407 may both need answering
        self._challenges: dict[tuple[bool, str], tuple[Challenge, int]] = {}
        self._fresh: set[tuple[bool, str]] = set()  # answered in the request just sent
        self._stale = 0
        self._failures = 0
        self._recovering = False
        self._down_since: float | None = None
        self._flow_ok = False
        self._announce = True
        self._ever_registered = False
        self._rewrites = 0
        self.advised_interval: float | None = None

    # -- what callers read -----------------------------------------------------------------

    @property
    def contact(self) -> str:
        """The Contact URI registered (or being registered) now."""
        host, port = self._contact_addr
        uri = f"sip:{self.config.user}@{format_host(host)}:{port}"
        if self.config.transport != "udp":
            uri += f";transport={self.config.transport}"
        if self.config.instance_id is not None:
            uri += ";ob"  # RFC 5626 §5.4
        return uri

    @property
    def bound(self) -> bool:
        return bool(self._bound)

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    # -- inputs ----------------------------------------------------------------------------

    def start(self, now: float, local: Address | None = None) -> list[Event]:
        """Begin. With ``local`` (the local address of a flow already open: Via sent-by and
        Contact) the first REGISTER goes out at once; without, ``NewFlowNeeded`` comes first."""
        if self.state is not RegistrationState.IDLE:
            raise LocalProtocolError("registration already started")
        if local is None:
            self.state = RegistrationState.CONNECTING
            return [NewFlowNeeded("start")]
        self._local = self._contact_addr = local
        self._flow_ok = True
        return self._send_register(now)

    def flow_ready(self, local: Address, now: float) -> list[Event]:
        """The new flow asked for by ``NewFlowNeeded`` is up, with local address ``local``."""
        self._flow_ok = True
        if local != self._local:
            self._local = self._contact_addr = local
            self.public_addr = None
            self._rewrites = 0
        if self.state is RegistrationState.CONNECTING:
            return self._send_register(now)
        if self.state is RegistrationState.UNREGISTERING and self._txn is None:
            return self._send_unregister(now)
        return []

    def flow_failed(self, reason: str, now: float) -> list[Event]:
        """The flow is dead: keep-alive failure, connection lost, connect failed, send error."""
        state = self.state
        if state in (RegistrationState.IDLE, RegistrationState.STOPPED, RegistrationState.FAILED):
            return []
        if self._txn is not None:
            return self._drive(self._txn.transport_error(now, reason), now)
        if state is RegistrationState.UNREGISTERING:
            return self._finish_unregister(503, reason)
        if state is RegistrationState.BACKOFF:
            self._flow_ok = False
            return []
        return self._flow_failure(reason, now)

    def receive_response(self, response: Response, now: float) -> list[Event]:
        """A response from the registrar; one that is not ours is ignored."""
        txn = self._txn
        if txn is None or response.call_id != self._call_id or not txn.matches(response):
            return []
        return self._drive(txn.receive_response(response, now), now)

    def stop(self, now: float) -> list[Event]:
        """Remove our binding (REGISTER with Expires: 0 for our own Contact, never ``*``)."""
        if self.state in (
            RegistrationState.STOPPED,
            RegistrationState.FAILED,
            RegistrationState.UNREGISTERING,
        ):
            return []
        if self._maybe_bound and self.contact not in self._bound:
            self._bound.append(self.contact)
        self._txn = None
        self._unregistering = True
        self.state = RegistrationState.UNREGISTERING
        if not self._bound:
            return self._finish_unregister(None, "no binding to remove")
        if not self._flow_ok:
            return [NewFlowNeeded("un-register")]
        return self._send_unregister(now)

    def get_timer(self) -> float | None:
        deadlines: list[float] = []
        if self._txn is not None and (t := self._txn.get_timer()) is not None:
            deadlines.append(t)
        if self._bound and not self._unregistering:
            deadlines.append(self._until)
        if self.state is RegistrationState.REGISTERED:
            deadlines.append(self._refresh_at)
        elif self.state is RegistrationState.BACKOFF:
            deadlines.append(self._retry_at)
        return min(deadlines) if deadlines else None

    def handle_timer(self, now: float) -> list[Event]:
        events: list[Event] = []
        txn = self._txn
        if txn is not None and (t := txn.get_timer()) is not None and now >= t:
            events += self._drive(txn.handle_timer(now), now)
        if self._bound and not self._unregistering and now >= self._until:
            events.append(RegistrationExpired(self._bound[0]))
            self._bound = []
            self._maybe_bound = False
            self._announce = True
        if self.state is RegistrationState.REGISTERED and now >= self._refresh_at:
            events += self._send_register(now)
        elif self.state is RegistrationState.BACKOFF and now >= self._retry_at:
            events += self._attempt(now)
        return events

    # -- requests --------------------------------------------------------------------------

    def _attempt(self, now: float) -> list[Event]:
        if self._flow_ok:
            return self._send_register(now)
        self.state = RegistrationState.CONNECTING
        return [NewFlowNeeded("registration retry")]

    def _contact_value(self, uri: str, expires: int | None) -> str:
        params: list[tuple[str, str | None]] = []
        if self.config.instance_id is not None:
            # RFC 5626 §4.2: the instance and the flow it registers
            params += [("reg-id", "1"), ("+sip.instance", f'"<{self.config.instance_id}>"')]
        if expires is not None:
            params.append(("expires", str(expires)))
        return f"<{uri}>{format_params(tuple(params))}"

    def _send_register(self, now: float) -> list[Event]:
        contact = self.contact
        contacts = [self._contact_value(contact, None)]
        if self.config.instance_id is None:
            # without outbound nothing replaces an old Contact: remove it in the same request
            contacts += [self._contact_value(uri, 0) for uri in self._bound if uri != contact]
        self.state = RegistrationState.REGISTERING
        self._maybe_bound = True
        return self._send(now, contacts, self._expires)

    def _send_unregister(self, now: float) -> list[Event]:
        contacts = [self._contact_value(uri, None) for uri in self._bound]
        return self._send(now, contacts, 0)

    def _send(self, now: float, contacts: list[str], expires: int) -> list[Event]:
        cfg = self.config
        self._cseq += 1
        extra: list[tuple[str, str]] = [("Contact", c) for c in contacts]
        extra.append(("Expires", str(expires)))
        if cfg.instance_id is not None:
            extra.append(("Supported", "outbound, path"))
        if cfg.password is not None:
            for key, (challenge, nc) in self._challenges.items():
                self._challenges[key] = (challenge, nc + 1)
                extra.append(
                    authorization(
                        challenge,
                        username=cfg.auth_user or cfg.user,
                        password=cfg.password,
                        method="REGISTER",
                        uri=cfg.registrar_uri,
                        cnonce=self._token(),
                        nc=nc + 1,
                    )
                )
        request = make_request(
            "REGISTER",
            cfg.registrar_uri,
            transport=cfg.transport,
            local=self._local,
            branch=self._token(),
            from_uri=cfg.aor,
            from_tag=self._from_tag,
            call_id=self._call_id,
            cseq=self._cseq,
            to_uri=cfg.aor,
            user_agent=cfg.user_agent,
            extra=extra,
        )
        if cfg.keep:
            headers = request.headers.copy()
            headers.set("Via", f"{request.headers.get('Via')};keep")  # RFC 6223 §4.2
            request = Request(request.method, request.uri, headers)
        self._txn = ClientTransaction(request, reliable=cfg.transport != "udp", timers=cfg.timers)
        return self._drive(self._txn.start(now), now)

    def _drive(self, txn_events: Sequence[object], now: float) -> list[Event]:
        events: list[Event] = []
        for event in txn_events:
            if isinstance(event, Transmit):
                events.append(SendRequest(event.data, event.retransmission))
            elif isinstance(event, Completed):
                self._txn = None
                events += self._on_result(event.result, now)
        return events

    # -- outcomes --------------------------------------------------------------------------

    def _on_result(self, result: TransactionResult, now: float) -> list[Event]:
        fresh, self._fresh = self._fresh, set()
        response = result.response
        if self._unregistering:
            if response is not None and response.status in (401, 407):
                retry = self._take_challenge(response, fresh)
                if isinstance(retry, Challenge):
                    return self._send_unregister(now)
            detail = result.reason if result.error is None else result.error
            return self._finish_unregister(result.status, detail)
        if response is None:
            self._maybe_bound = bool(self._bound)
            what = "timed out" if result.status == 408 else f"failed: {result.error}"
            return self._flow_failure(f"REGISTER {what}", now)
        status = response.status
        if 200 <= status < 300:
            return self._on_success(response, now)
        self._maybe_bound = bool(self._bound)
        if status in (401, 407):
            outcome = self._take_challenge(response, fresh)
            if isinstance(outcome, Challenge):
                return self._send_register(now)
            return self._registration_failed(status, outcome, now, auth=True)
        if status == 423:
            minimum = _leading_int(response.headers.get("Min-Expires"))
            if minimum is not None and minimum > self._expires:
                self._expires = minimum  # RFC 3261 §10.2.8
                return self._send_register(now)
        retry_after = _leading_int(response.headers.get("Retry-After"))
        return self._registration_failed(status, response.reason, now, retry_after=retry_after)

    def _take_challenge(self, response: Response, fresh: set[tuple[bool, str]]) -> Challenge | str:
        """The challenge to answer next, or why there is none."""
        if self.config.password is None:
            return "the registrar asks for credentials and no password was given"
        proxy = response.status == 407
        name = "Proxy-Authenticate" if proxy else "WWW-Authenticate"
        offered: list[str] = []
        chosen: Challenge | None = None
        for value in response.headers.get_fields(name):
            try:
                challenge = Challenge.parse(value, proxy=proxy)
            except ParseError:
                continue
            offered.append(challenge.algorithm)
            usable = challenge.algorithm in ALGORITHMS and (
                not challenge.qop or "auth" in challenge.qop
            )
            if usable:
                chosen = challenge  # RFC 8760 §2.4: the topmost one we support
                break
        if chosen is None:
            what = ", ".join(offered) or "none that parses"
            return f"no supported digest challenge (MD5 or SHA-256, qop=auth); offered: {what}"
        key = (proxy, chosen.realm)
        if key in fresh and not chosen.stale:
            who = "proxy" if proxy else "registrar"
            return f"authentication failed: the {who} rejected the credentials"
        self._stale = self._stale + 1 if chosen.stale else 0
        if self._stale > MAX_STALE:
            return f"{self._stale} stale nonces in a row"
        self._challenges[key] = (chosen, 0)
        self._fresh = {key}
        return chosen

    def _on_success(self, response: Response, now: float) -> list[Event]:
        events: list[Event] = []
        self._flow_ok = True
        self._stale = 0
        events += self._learn_interval(response)
        public = self._public_address(response)
        self.public_addr = public
        granted = self._granted_expires(response)
        if granted <= 0:
            self._bound = []
            return events + self._registration_failed(
                response.status, "the registrar granted no time to the binding", now
            )
        self._bound = [self.contact]
        self._until = now + granted
        if (
            self.config.rewrite_contact
            and public is not None
            and public != self._contact_addr
            and self._rewrites < MAX_REWRITES
        ):
            self._rewrites += 1
            events.append(PublicAddressChanged(self._contact_addr, public))
            self._contact_addr = public
            self._announce = True
            return events + self._send_register(now)
        self._rewrites = 0
        refresh_in = granted / 2
        every = self._register_interval()
        if every is not None:
            refresh_in = min(refresh_in, jittered(every, self._rand))
        self._refresh_at = now + refresh_in
        self.state = RegistrationState.REGISTERED
        contact = self.contact
        if self._recovering and self._ever_registered and self._down_since is not None:
            events.append(FlowRecovered(now - self._down_since, granted, contact, refresh_in))
        elif self._announce:
            events.append(Registered(granted, contact, public, refresh_in))
        else:
            events.append(Refreshed(granted, contact, refresh_in))
        self._ever_registered = True
        self._announce = False
        self._recovering = False
        self._down_since = None
        self._failures = 0
        return events

    def _register_interval(self) -> float | None:
        every = self.config.refresh_every
        if every is None:
            return None
        return every if self.advised_interval is None else min(every, self.advised_interval)

    def _learn_interval(self, response: Response) -> list[Event]:
        advised: tuple[float, str] | None = None
        flow_timer = _leading_int(response.headers.get("Flow-Timer"))
        if flow_timer is not None and flow_timer > 0:
            advised = (float(flow_timer), "Flow-Timer")
        keep = param_value(response.vias[0].params, "keep") if response.vias else None
        seconds = int(keep) if keep is not None and is_digits(keep) and len(keep) <= 10 else 0
        if seconds > 0 and (advised is None or seconds < advised[0]):
            advised = (float(seconds), "keep")
        if advised is None or advised[0] == self.advised_interval:
            return []
        self.advised_interval = advised[0]
        return [KeepaliveInterval(*advised)]

    def _public_address(self, response: Response) -> Address | None:
        """RFC 3581 §4: ``received`` (or the sent-by host) and ``rport`` of our Via."""
        if not response.vias:
            return None
        via = response.vias[0]
        rport = via.rport
        if via.received is None and rport is None:
            return None
        host = via.received or via.host
        port = rport or via.port or DEFAULT_PORTS[self.config.transport]
        return (host, port)

    def _granted_expires(self, response: Response) -> int:
        """RFC 3261 §10.2.4: our Contact's ``expires``, else Expires, else what we asked."""
        ours = self.contact
        for value in response.headers.get_all("Contact"):
            try:
                addr = parse_name_addr(value, "Contact")
            except ParseError:
                continue
            if self._is_ours(addr.uri, addr.params, ours):
                expires = _leading_int(param_value(addr.params, "expires"))
                if expires is not None:
                    return expires
        header = _leading_int(response.headers.get("Expires"))
        return self._expires if header is None else header

    def _is_ours(self, uri: str, params: tuple[tuple[str, str | None], ...], ours: str) -> bool:
        instance = self.config.instance_id
        if instance is not None:
            value = param_value(params, "+sip.instance")
            if value is not None:
                return value.strip('"').strip("<>") == instance
        return _uri_key(uri) == _uri_key(ours)

    def _registration_failed(
        self,
        status: int,
        reason: str,
        now: float,
        *,
        auth: bool = False,
        retry_after: int | None = None,
    ) -> list[Event]:
        if auth:
            self._challenges.clear()
        if not self._ever_registered and (auth or _fatal_before_success(status)):
            self.state = RegistrationState.FAILED
            return [RegistrationFailed(status, reason, None, fatal=True)]
        self._failures += 1
        delay = self._backoff()
        if retry_after is not None:
            delay = min(self.config.backoff_max, max(delay, float(retry_after)))
        self.state = RegistrationState.BACKOFF
        self._retry_at = now + delay
        if not self._bound:
            self._announce = True
        return [RegistrationFailed(status, reason, delay)]

    def _flow_failure(self, reason: str, now: float) -> list[Event]:
        self._flow_ok = False
        self._txn = None
        if self._down_since is None:
            self._down_since = now
        immediate = self._failures == 0 and not self._recovering and bool(self._bound)
        self._recovering = True
        if immediate:
            self.state = RegistrationState.CONNECTING
            return [FlowFailed(reason, 0.0), NewFlowNeeded(reason)]
        self._failures += 1
        delay = self._backoff()
        self.state = RegistrationState.BACKOFF
        self._retry_at = now + delay
        return [FlowFailed(reason, delay)]

    def _backoff(self) -> float:
        """RFC 5626 §4.5: min(max-time, base-time * 2^consecutive-failures), times 50-100%."""
        cfg = self.config
        wait = min(cfg.backoff_max, cfg.backoff_base * 2.0 ** min(self._failures, 62))
        r = self._rand()
        if not 0.0 <= r <= 1.0:
            raise LocalProtocolError(f"rand() returned {r!r}, outside [0, 1]")
        return wait * (0.5 + 0.5 * r)

    def _finish_unregister(self, status: int | None, reason: str) -> list[Event]:
        self.state = RegistrationState.STOPPED
        self._txn = None
        if status is not None and 200 <= status < 300:
            self._bound = []
        self._maybe_bound = False
        return [Unregistered(status, reason)]


def _uri_key(uri: str) -> tuple[str, str, str, int, str] | str:
    """What makes two Contact URIs the same binding here (RFC 3261 §19.1.4, loosely: the
    registrar may echo a Contact with parameters of its own added)."""
    try:
        parsed = parse_uri(uri)
    except ParseError:
        return uri
    transport = parsed.transport or "udp"
    port = parsed.port or DEFAULT_PORTS.get(transport, 5060)
    return (parsed.scheme, parsed.user or "", parsed.host.lower(), port, transport)


# -- the "options" keep-alive --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeepaliveAnswered:
    """The registrar answered the OPTIONS keep-alive (any final status proves the flow)."""

    status: int
    rtt: float


@dataclass(frozen=True, slots=True)
class KeepaliveFailed:
    reason: str


OptionsEvent = SendRequest | KeepaliveAnswered | KeepaliveFailed


class OptionsKeepalive:
    """An OPTIONS to the registrar every jittered interval (80-100%); a transaction that
    times out or fails at the transport means the flow failed. One in flight at a time."""

    def __init__(
        self,
        uri: str,
        *,
        transport: str,
        from_uri: str,
        interval: float,
        timers: TimerConfig,
        rand: Callable[[], float],
        rand_token: Callable[[], str],
        user_agent: str | None = USER_AGENT,
    ) -> None:
        if not interval > 0:
            raise LocalProtocolError(f"keep-alive interval must be positive, got {interval!r}")
        self.uri = uri
        self.transport = transport
        self.from_uri = from_uri
        self.interval = interval
        self.timers = timers
        self._rand = rand
        self._token = rand_token
        self.user_agent = user_agent
        self._local: Address = ("0.0.0.0", 0)
        self._next: float | None = None
        self._txn: ClientTransaction | None = None
        self._call_id = ""
        self._cseq = 0

    @property
    def running(self) -> bool:
        return self._next is not None or self._txn is not None

    def start(self, now: float, local: Address) -> None:
        self._local = local
        self._txn = None
        self._next = now + jittered(self.interval, self._rand)

    def stop(self) -> None:
        self._next = None
        self._txn = None

    def set_interval(self, interval: float, now: float) -> None:
        if not interval > 0:
            raise LocalProtocolError(f"keep-alive interval must be positive, got {interval!r}")
        self.interval = interval
        if self._next is not None:
            self._next = now + jittered(interval, self._rand)

    def get_timer(self) -> float | None:
        if self._txn is not None:
            return self._txn.get_timer()
        return self._next

    def handle_timer(self, now: float) -> list[OptionsEvent]:
        txn = self._txn
        if txn is not None:
            due = txn.get_timer()
            return self._drive(txn.handle_timer(now), now) if due is not None and now >= due else []
        if self._next is None or now < self._next:
            return []
        self._next = now + jittered(self.interval, self._rand)
        self._cseq += 1
        self._call_id = f"{self._token()}@sipalive"
        request = make_options(
            self.uri,
            transport=self.transport,
            local=self._local,
            branch=self._token(),
            from_tag=self._token(),
            call_id=self._call_id,
            cseq=self._cseq,
            from_uri=self.from_uri,
            user_agent=self.user_agent,
        )
        self._txn = ClientTransaction(request, reliable=self.transport != "udp", timers=self.timers)
        return self._drive(self._txn.start(now), now)

    def receive_response(self, response: Response, now: float) -> list[OptionsEvent]:
        txn = self._txn
        if txn is None or response.call_id != self._call_id or not txn.matches(response):
            return []
        return self._drive(txn.receive_response(response, now), now)

    def _drive(self, txn_events: Sequence[object], now: float) -> list[OptionsEvent]:
        events: list[OptionsEvent] = []
        for event in txn_events:
            if isinstance(event, Transmit):
                events.append(SendRequest(event.data, event.retransmission))
            elif isinstance(event, Completed):
                self._txn = None
                result = event.result
                if result.response is not None:
                    events.append(KeepaliveAnswered(result.status, result.rtt_first or 0.0))
                else:
                    self._next = None
                    what = "timed out" if result.status == 408 else f"failed: {result.error}"
                    events.append(KeepaliveFailed(f"OPTIONS keep-alive {what}"))
        return events


# -- stateless answers to inbound requests -------------------------------------------------


def answer(
    request: Request,
    status: int,
    reason: str,
    *,
    source: Address,
    transport: str,
    tag_key: bytes = b"",
    extra: tuple[tuple[str, str], ...] = (),
) -> tuple[bytes, Address]:
    """A final response to ``request`` and where to send it over UDP (RFC 3261 §18.2.2).

    The top Via gets ``received`` (and ``rport``, RFC 3581 §4) as §18.2.1 says; the To tag is
    derived from Call-ID and From tag (keyed), so a retransmitted request gets the same tag
    and the UA keeps no state (RFC 3261 §8.2.6.2).
    """
    if request.method == "ACK":
        raise LocalProtocolError("an ACK is never answered")
    via_fields = request.headers.get_fields("via")
    top = request.vias[0]
    dest = source
    first = split_top_level(via_fields[0])
    if transport == "udp" or top.has_rport or top.host != source[0]:
        params = [(k, v) for k, v in top.params if k.lower() not in ("received", "rport")]
        params.append(("received", source[0]))
        if top.has_rport:
            params.append(("rport", str(source[1])))
        elif transport == "udp":
            dest = (source[0], top.port or 5060)
        sent_by = format_host(top.host) + ("" if top.port is None else f":{top.port}")
        first[0] = f"SIP/2.0/{top.transport} {sent_by}{format_params(tuple(params))}"
    fields: list[tuple[str, str]] = [("Via", ", ".join(first))]
    fields += [("Via", value) for value in via_fields[1:]]
    to = str(request.to)
    if request.to.tag is None:
        digest = hashlib.blake2s(digest_size=6, key=tag_key[:32])
        digest.update(request.call_id.encode("utf-8", "surrogateescape"))
        digest.update((request.from_.tag or "").encode("utf-8", "surrogateescape"))
        to += f";tag={digest.hexdigest()}"
    fields += [
        ("From", str(request.from_)),
        ("To", to),
        ("Call-ID", request.call_id),
        ("CSeq", str(request.cseq)),
        *extra,
        ("Content-Length", "0"),
    ]
    return Response(status, reason, Headers(fields)).encode(), dest
