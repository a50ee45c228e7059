"""A registrar (RFC 3261 §10.3) as a pure machine: REGISTER requests and ``now`` in, responses
to send and binding events out. No sockets, no clock: ``now`` is wall-clock seconds (epoch),
passed in, because bindings and nonces must mean the same after a restart.

What :meth:`Registrar.receive` does with a REGISTER, in the order of §10.3:

1. *Retransmission* (UDP): a request whose top Via branch and sent-by were answered less than
   64*T1 ago gets the same response again and changes nothing (the server transaction of
   §17.2.2, kept as a bounded cache of answers).
2. *Require* (§8.2.2.3): anything but ``outbound`` is refused with 420.
3. *To* must be a sip/sips URI with a user part, else 404. The AOR is its canonical form
   ``sip:user@host`` (step 5: no port, no parameters, host in lower case).
4. *Authentication* (§22, RFC 7616, RFC 8760): a 401 offers one challenge per configured
   algorithm (SHA-256 then MD5 by default, the preferred first), ``qop="auth"``. A nonce is
   ``hex(now) + salt + HMAC-SHA-256(secret, hex(now):salt:realm)`` with a random salt per
   challenge: nothing is stored per nonce, and a nonce older than ``nonce_ttl`` (or made with
   another secret) whose digest is otherwise right is answered with a new challenge marked
   ``stale=true``, as is a nonce count that does not grow (a replay; the last count of the
   most recent nonces is remembered). Wrong credentials get a plain 401.
5. *Authorization* (step 4): the digest user must be the AOR's user, else 403.
6. *Contacts* (steps 6-7): ``*`` needs ``Expires: 0`` and no other Contact (else 400) and
   removes every binding; a contact's lifetime is its ``expires`` parameter, else the Expires
   header, else ``default_expires``; a lifetime below ``min_expires`` refuses the whole request
   with 423 and ``Min-Expires``; above ``max_expires`` it is shortened. A binding with the
   same Call-ID and a CSeq not higher than the one stored refuses the request (400): nothing
   is changed unless everything can be.
7. *200 OK* (step 8) lists every current contact of the AOR with its remaining ``expires``.

Choices where the RFCs leave room:

* **Binding identity.** A contact registered with RFC 5626 outbound (``+sip.instance`` and
  ``reg-id``, ``Supported: outbound``) is identified by instance and reg-id: a new Contact
  URI from the same instance replaces the old one. Any other contact by its URI (scheme,
  user, host, port and transport; other parameters do not make it another binding).
* **The flow.** Each binding records the :class:`Flow` its REGISTER came on: the transport,
  the packet's source address (the NAT binding, whatever Via says: received/rport) and, over
  TCP/TLS, the connection. Requests to the contact go back that way (RFC 5626 §5.3), which is
  what reaches a UA behind NAT.
* **Flow-Timer** (RFC 5626 §4.4.1): with ``flow_timer`` set, a 2xx carries it when the
  REGISTER asks for keep-alive advice: it uses outbound (``reg-id``, or ``;ob`` in a Contact
  URI) or offers keep-alives (RFC 6223 ``keep`` on its Via), or always with
  ``flow_timer_always``. An outbound registration also gets ``Require: outbound`` (§6).
* **Users** come from a file of ``user:password`` lines (:meth:`Users.parse`). Plain
  passwords, not HA1 hashes, because the HA1 differs per algorithm: an MD5 HA1 cannot answer
  a SHA-256 challenge. Neither the passwords nor anything derived from them appear in an
  event, a repr or an error.
* **Bounds.** ``max_contacts`` per AOR (403 beyond), ``max_bindings`` in all (503 with
  Retry-After), the answer cache and the nonce-count table have fixed sizes.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from sipalive.errors import ConfigError, LocalProtocolError, ParseError
from sipalive.sip.digest import ALGORITHMS, Challenge, Credentials
from sipalive.sip.grammar import has_param, is_digits, param_value
from sipalive.sip.headers import NameAddr, parse_name_addr
from sipalive.sip.message import Request
from sipalive.sip.registration import answer
from sipalive.sip.uri import DEFAULT_PORTS, parse_uri

Address = tuple[str, int]

TIMER_J = 32.0
"""RFC 3261 §17.2.2: how long a UDP server transaction answers retransmissions (64*T1)."""

ANSWER_CACHE = 4096
"""Answers kept for retransmissions, at most."""

NONCE_COUNTS = 4096
"""Nonces whose last nonce count is remembered (replay check), at most."""

SUPPORTED = ("outbound",)

REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    420: "Bad Extension",
    423: "Interval Too Brief",
    503: "Service Unavailable",
}

_MAX_DELTA = 2**32 - 1
_SALT = 16
_HEX = frozenset("0123456789abcdef")


# -- configuration -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RegistrarConfig:
    """How the registrar answers. Checked on construction (ConfigError names the field).

    ``min_expires`` / ``max_expires`` bound a binding's lifetime (423 below, shortened above);
    ``default_expires`` applies when the REGISTER names none. ``flow_timer`` (s) is the
    Flow-Timer advertised (None: never); ``flow_timer_always`` sends it on every 2xx, not only
    to REGISTERs that ask. ``algorithms`` are offered in this order. ``nonce_ttl`` is how long
    a nonce is good for.
    """

    realm: str = "sipalive"
    min_expires: int = 60
    max_expires: int = 3600
    default_expires: int = 3600
    flow_timer: int | None = None
    flow_timer_always: bool = False
    algorithms: tuple[str, ...] = ("SHA-256", "MD5")
    nonce_ttl: float = 300.0
    max_contacts: int = 10
    max_bindings: int = 100_000
    server: str | None = "sipalive/0.1"

    def __post_init__(self) -> None:
        if not self.realm or any(c in self.realm for c in '"\\\r\n'):
            raise ConfigError("realm", f"must be non-empty, without quotes: {self.realm!r}")
        for name in ("min_expires", "max_expires", "default_expires"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int)
                or not 1 <= value <= _MAX_DELTA
            ):
                raise ConfigError(name, f"must be 1..{_MAX_DELTA} seconds, got {value!r}")
        if self.max_expires < self.min_expires:
            raise ConfigError("max_expires", f"must be >= min_expires ({self.min_expires})")
        if not self.min_expires <= self.default_expires <= self.max_expires:
            raise ConfigError(
                "default_expires",
                f"must be within min_expires..max_expires, got {self.default_expires}",
            )
        if self.flow_timer is not None and not 1 <= self.flow_timer <= _MAX_DELTA:
            raise ConfigError("flow_timer", f"must be >= 1 second, got {self.flow_timer!r}")
        if self.flow_timer_always and self.flow_timer is None:
            raise ConfigError("flow_timer_always", "needs flow_timer")
        if not self.algorithms or any(a not in ALGORITHMS for a in self.algorithms):
            raise ConfigError(
                "algorithms", f"one or more of {', '.join(ALGORITHMS)}, got {self.algorithms!r}"
            )
        if len(set(self.algorithms)) != len(self.algorithms):
            raise ConfigError("algorithms", f"each at most once, got {self.algorithms!r}")
        if not (self.nonce_ttl > 0 and math.isfinite(self.nonce_ttl)):
            raise ConfigError("nonce_ttl", f"must be > 0 seconds, got {self.nonce_ttl!r}")
        for name in ("max_contacts", "max_bindings"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ConfigError(name, f"must be an integer >= 1, got {value!r}")


class Users:
    """Who may register: user name -> password. The passwords appear in no repr."""

    __slots__ = ("_passwords",)

    def __init__(self, passwords: Mapping[str, str]) -> None:
        self._passwords = dict(passwords)

    @classmethod
    def parse(cls, text: str, where: str = "users") -> Users:
        """``user:password`` lines. The password is the rest of the line after the first
        colon, verbatim (it may hold colons, ``#`` and spaces). Blank lines and lines whose
        first non-blank character is ``#`` are skipped. An error names ``where`` and the line
        number, never the line's text (it may hold a password)."""
        passwords: dict[str, str] = {}
        for number, raw in enumerate(text.split("\n"), 1):
            line = raw.rstrip("\r")
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            user, sep, password = line.partition(":")
            user = user.strip()
            place = f"{where}:{number}"
            if not sep:
                raise ConfigError(place, "expected user:password")
            if not user or any(c in user for c in ' \t<>@";:,'):
                raise ConfigError(place, "not a usable SIP user name")
            if not password:
                raise ConfigError(place, f"empty password for {user}")
            if user in passwords:
                raise ConfigError(place, f"user {user} is listed twice")
            passwords[user] = password
        return cls(passwords)

    def password(self, user: str) -> str | None:
        return self._passwords.get(user)

    def __contains__(self, user: object) -> bool:
        return user in self._passwords

    def __len__(self) -> int:
        return len(self._passwords)

    def __repr__(self) -> str:
        return f"Users({len(self._passwords)} users)"


# -- bindings ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Flow:
    """The way a REGISTER came in, and so the way back to its contacts.

    ``source`` is the packet's source address (for UDP: the NAT binding to send to);
    ``local`` the address it arrived at; ``connection`` the TCP/TLS connection's id, which the
    caller assigns (> 0), or 0 for UDP and for a connection that is gone (after a restart)."""

    transport: str
    source: Address
    local: Address
    connection: int = 0


@dataclass(frozen=True, slots=True)
class Binding:
    """One contact of one AOR (RFC 3261 §10.3). ``key`` identifies it within the AOR.

    ``expires_at`` and ``registered_at`` are wall-clock seconds; ``call_id``/``cseq`` order
    the REGISTERs that touch it (§10.3 step 7)."""

    aor: str
    key: str
    contact: str
    expires_at: float
    call_id: str
    cseq: int
    flow: Flow
    instance: str | None = None
    reg_id: int | None = None
    q: str | None = None
    user_agent: str | None = None
    registered_at: float = 0.0

    def remaining(self, now: float) -> int:
        """Whole seconds left, as a 200's ``expires`` parameter says it."""
        return max(0, math.ceil(self.expires_at - now - 1e-9))

    def contact_value(self, now: float) -> str:
        """The Contact header value listing this binding in a 200 (step 8)."""
        params = f";expires={self.remaining(now)}"
        if self.q is not None:
            params += f";q={self.q}"
        if self.instance is not None and self.reg_id is not None:
            params += f';+sip.instance="<{self.instance}>";reg-id={self.reg_id}'
        return f"<{self.contact}>{params}"


# -- events --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendResponse:
    """Send ``data`` back: on the connection the request came on, or over UDP to ``dest``."""

    data: bytes
    dest: Address
    status: int


@dataclass(frozen=True, slots=True)
class BindingAdded:
    binding: Binding


@dataclass(frozen=True, slots=True)
class BindingRefreshed:
    """A REGISTER renewed ``binding``; ``previous`` is what it replaced (flow, contact and
    expiry may all have changed)."""

    binding: Binding
    previous: Binding


class RemoveCause:
    UNREGISTERED = "unregistered"  # expires=0 for this contact
    WILDCARD = "wildcard"  # Contact: *
    UNAVAILABLE = "unavailable"  # qualify found it unreachable (remove_unavailable)


@dataclass(frozen=True, slots=True)
class BindingRemoved:
    binding: Binding
    cause: str  # a RemoveCause constant, or the caller's own


@dataclass(frozen=True, slots=True)
class BindingExpired:
    binding: Binding


@dataclass(frozen=True, slots=True)
class RegisterRejected:
    """A REGISTER was refused for a reason worth a log line (a bare challenge is not one)."""

    status: int
    aor: str | None
    source: Address
    transport: str
    detail: str


Event = (
    SendResponse
    | BindingAdded
    | BindingRefreshed
    | BindingRemoved
    | BindingExpired
    | RegisterRejected
)


@dataclass(frozen=True, slots=True)
class _Refusal:
    status: int
    extra: tuple[tuple[str, str], ...] = ()
    detail: str | None = None  # None: not worth a RegisterRejected (a plain challenge)


@dataclass(frozen=True, slots=True)
class _Change:
    key: str
    contact: NameAddr
    expires: int
    instance: str | None
    reg_id: int | None


# -- the machine ---------------------------------------------------------------------------


class Registrar:
    """Bindings of every AOR, and the REGISTER processing that changes them.

    ``secret`` keys the nonces (keep it across restarts and nonces stay good);
    ``rand_token`` returns a fresh random token (hex digits, 16 are used) salting each nonce;
    ``tag_key`` keys the To tags of the responses."""

    def __init__(
        self,
        config: RegistrarConfig,
        users: Users,
        *,
        secret: bytes,
        rand_token: Callable[[], str],
        tag_key: bytes = b"",
    ) -> None:
        if len(secret) < 16:
            raise LocalProtocolError("the nonce secret must be at least 16 octets")
        self.config = config
        self.users = users
        self._secret = secret
        self._token = rand_token
        self._tag_key = tag_key
        self._aors: dict[str, dict[str, Binding]] = {}
        self._count = 0
        self._connections: dict[int, int] = {}  # connection id -> bindings using it
        self._heap: list[tuple[float, int, str, str]] = []
        self._seq = 0
        self._answers: dict[tuple[str, str, int, Address], tuple[float, SendResponse]] = {}
        self._nonce_counts: dict[str, int] = {}

    # -- what callers read -----------------------------------------------------------------

    def __len__(self) -> int:
        return self._count

    def binding(self, aor: str, key: str) -> Binding | None:
        return self._aors.get(aor, {}).get(key)

    def bindings(self, aor: str | None = None) -> list[Binding]:
        if aor is not None:
            return list(self._aors.get(aor, {}).values())
        return [b for contacts in self._aors.values() for b in contacts.values()]

    def uses_connection(self, connection: int) -> bool:
        """Whether a binding still reaches its contact over this connection."""
        return self._connections.get(connection, 0) > 0

    def get_timer(self) -> float | None:
        """When the next binding expires (wall clock), or None."""
        heap = self._heap
        while heap:
            when, _, aor, key = heap[0]
            current = self.binding(aor, key)
            if current is not None and current.expires_at == when:
                return when
            self._pop()
        return None

    def handle_timer(self, now: float) -> list[Event]:
        events: list[Event] = []
        while (when := self.get_timer()) is not None and when <= now:
            _, _, aor, key = self._pop()
            binding = self._drop(aor, key)
            if binding is not None:
                events.append(BindingExpired(binding))
        return events

    # -- inputs ----------------------------------------------------------------------------

    def restore(self, bindings: Iterable[Binding], now: float) -> list[Event]:
        """Take back the bindings a store kept. Those past their expiry come back as
        :class:`BindingExpired` (for the store to delete); the rest are in place, silently."""
        events: list[Event] = []
        for binding in bindings:
            if binding.expires_at <= now:
                events.append(BindingExpired(binding))
            elif self.binding(binding.aor, binding.key) is None:
                self._put(binding)
        return events

    def remove(self, aor: str, key: str, cause: str) -> list[Event]:
        """Drop a binding for the caller's reason (e.g. qualify found it unreachable)."""
        binding = self._drop(aor, key)
        return [] if binding is None else [BindingRemoved(binding, cause)]

    def receive(self, request: Request, flow: Flow, now: float) -> list[Event]:
        """Process one REGISTER that came on ``flow``: the answer first, then what changed."""
        if request.method != "REGISTER":
            raise LocalProtocolError(f"a registrar takes REGISTER, not {request.method}")
        cache_key = None
        if flow.transport == "udp":
            top = request.vias[0]
            cache_key = (top.branch or "", top.host.lower(), top.port or 0, flow.source)
            cached = self._answers.get(cache_key)
            if cached is not None and cached[0] > now:
                return [cached[1]]
        events: list[Event] = []
        aor, outcome = self._process(request, flow, now, events)
        if isinstance(outcome, _Refusal):
            status, extra = outcome.status, outcome.extra
            if outcome.detail is not None:
                events.append(
                    RegisterRejected(status, aor, flow.source, flow.transport, outcome.detail)
                )
        else:
            status, extra = 200, outcome
        send = self._respond(request, flow, status, extra)
        if cache_key is not None:
            self._remember(cache_key, send, now)
        return [send, *events]

    # -- processing ------------------------------------------------------------------------

    def _process(
        self, request: Request, flow: Flow, now: float, events: list[Event]
    ) -> tuple[str | None, _Refusal | tuple[tuple[str, str], ...]]:
        try:
            required = [
                opt
                for value in request.headers.get_all("Require")
                if (opt := value.strip()) and opt.lower() not in SUPPORTED
            ]
            supported = {
                v.strip().lower()
                for name in ("Supported", "Require")
                for v in request.headers.get_all(name)
            }
        except ParseError as exc:
            return None, _Refusal(400, detail=exc.reason)
        if required:
            unsupported = ", ".join(required)
            return None, _Refusal(420, (("Unsupported", unsupported),), f"requires {unsupported}")
        try:
            to = parse_uri(request.to.uri)
        except ParseError as exc:
            return None, _Refusal(404, detail=f"To is not a SIP AOR: {exc.reason}")
        if to.user is None:
            return None, _Refusal(404, detail="To has no user part")
        aor = f"sip:{to.user}@{to.host.lower()}"
        user = self._authenticate(request, now)
        if isinstance(user, _Refusal):
            return aor, user
        if user != to.user:
            return aor, _Refusal(403, detail=f"user {user} may not register {aor}")
        values = request.headers.get_all("Contact")
        try:
            header = _delta(request.headers.get("Expires"), "Expires")
        except ParseError as exc:
            return aor, _Refusal(400, detail=exc.reason)
        outbound = False
        if any(v.strip() == "*" for v in values):
            refusal = self._wildcard(request, aor, values, header)
            if refusal is not None:
                return aor, refusal
            self._remove_all(aor, events)
        elif values:
            changes = self._changes(request, aor, values, header, "outbound" in supported)
            if isinstance(changes, _Refusal):
                return aor, changes
            self._apply(request, flow, aor, changes, now, events)
            outbound = any(c.reg_id is not None for c in changes)
        return aor, self._ok_headers(request, aor, outbound, now)

    def _authenticate(self, request: Request, now: float) -> str | _Refusal:
        """The authenticated user name, or the answer refusing the request."""
        cfg = self.config
        credentials = None
        for value in request.headers.get_fields("Authorization"):
            try:
                parsed = Credentials.parse(value)
            except ParseError as exc:
                return _Refusal(400, detail=f"malformed Authorization: {exc.reason}")
            if parsed.realm == cfg.realm:
                credentials = parsed
                break
        if credentials is None:
            return self._challenge(now, stale=False, detail=None)
        name = credentials.username
        password = self.users.password(name)
        if password is None:
            return self._challenge(now, stale=False, detail=f"unknown user {name}")
        if credentials.algorithm not in cfg.algorithms:
            return self._challenge(
                now, stale=False, detail=f"algorithm {credentials.algorithm} not offered"
            )
        if not credentials.verify(password, "REGISTER"):
            return self._challenge(now, stale=False, detail=f"wrong password for user {name}")
        if credentials.uri != request.uri:
            return _Refusal(400, detail="the Authorization uri is not the Request-URI")
        made = self._nonce_time(credentials.nonce)
        if made is None or abs(now - made) > cfg.nonce_ttl:
            return self._challenge(now, stale=True, detail=None)
        if credentials.qop is not None:
            nc = credentials.nc.lower()
            if len(nc) != 8 or not _HEX.issuperset(nc):
                return _Refusal(400, detail="bad nonce count")
            count = int(nc, 16)
            last = self._nonce_counts.pop(credentials.nonce, None)
            if last is not None and count <= last:
                return self._challenge(now, stale=True, detail=None)
            self._nonce_counts[credentials.nonce] = count
            if len(self._nonce_counts) > NONCE_COUNTS:
                del self._nonce_counts[next(iter(self._nonce_counts))]
        return name

    def _changes(
        self,
        request: Request,
        aor: str,
        values: list[str],
        header: int | None,
        outbound: bool,
    ) -> list[_Change] | _Refusal:
        """What the Contacts ask for, checked in full before anything changes."""
        cfg = self.config
        changes: list[_Change] = []
        for value in values:
            try:
                contact = parse_name_addr(value, "Contact")
                uri = parse_uri(contact.uri)
                asked = _delta(param_value(contact.params, "expires"), "Contact expires")
            except ParseError as exc:
                return _Refusal(400, detail=exc.reason)
            expires = asked if asked is not None else header
            if expires is None:
                expires = cfg.default_expires
            if 0 < expires < cfg.min_expires:
                return _Refusal(
                    423,
                    (("Min-Expires", str(cfg.min_expires)),),
                    f"{expires}s is below Min-Expires {cfg.min_expires}s",
                )
            expires = min(expires, cfg.max_expires)
            instance = param_value(contact.params, "+sip.instance")
            if instance is not None:
                instance = instance.strip('"').strip("<>") or None
            reg_id_text = param_value(contact.params, "reg-id")
            reg_id = None
            if outbound and instance is not None and reg_id_text is not None:
                if not is_digits(reg_id_text) or len(reg_id_text) > 9:
                    return _Refusal(400, detail=f"bad reg-id {reg_id_text!r}")
                reg_id = int(reg_id_text)
            transport = uri.transport or ("tls" if uri.scheme == "sips" else "udp")
            port = uri.port or DEFAULT_PORTS.get(transport, 5060)
            if reg_id is not None:
                key = f"<{instance}>;reg-id={reg_id}"
            else:
                key = f"{uri.scheme}:{uri.user or ''}@{uri.host.lower()}:{port};{transport}"
            changes.append(_Change(key, contact, expires, instance, reg_id))
        if sum(1 for c in changes if c.reg_id is not None) > 1:
            # RFC 5626 §6: a REGISTER registers one flow
            return _Refusal(400, detail="more than one Contact with reg-id")
        current = self._aors.get(aor, {})
        for change in changes:
            old = current.get(change.key)
            if old is not None and old.call_id == request.call_id and request.cseq.seq <= old.cseq:
                return _Refusal(400, detail=f"CSeq {request.cseq.seq} not above {old.cseq}")
        after = set(current)
        for change in changes:
            if change.expires == 0:
                after.discard(change.key)
            else:
                after.add(change.key)
        new = after - set(current)
        if new and len(after) > cfg.max_contacts:
            return _Refusal(403, detail=f"more than {cfg.max_contacts} contacts for {aor}")
        if self._count + len(new) > cfg.max_bindings:
            return _Refusal(503, (("Retry-After", "60"),), "the binding table is full")
        return changes

    def _wildcard(
        self, request: Request, aor: str, values: list[str], header: int | None
    ) -> _Refusal | None:
        """§10.3 step 6: ``Contact: *`` with ``Expires: 0`` removes every binding, provided
        none of them was made in this Call-ID with a CSeq as high."""
        if len(values) != 1 or header != 0:
            return _Refusal(400, detail="Contact * needs Expires: 0 and no other Contact")
        current = self._aors.get(aor, {})
        for old in current.values():
            if old.call_id == request.call_id and request.cseq.seq <= old.cseq:
                return _Refusal(400, detail=f"CSeq {request.cseq.seq} not above {old.cseq}")
        return None

    def _apply(
        self,
        request: Request,
        flow: Flow,
        aor: str,
        changes: list[_Change],
        now: float,
        events: list[Event],
    ) -> None:
        current = self._aors.get(aor, {})
        user_agent = request.headers.get("User-Agent")
        for change in changes:
            old = current.get(change.key)
            if change.expires == 0:
                if old is not None:
                    self._drop(aor, change.key)
                    events.append(BindingRemoved(old, RemoveCause.UNREGISTERED))
                continue
            q = param_value(change.contact.params, "q")
            binding = Binding(
                aor=aor,
                key=change.key,
                contact=change.contact.uri,
                expires_at=now + change.expires,
                call_id=request.call_id,
                cseq=request.cseq.seq,
                flow=flow,
                instance=change.instance,
                reg_id=change.reg_id,
                q=q,
                user_agent=user_agent,
                registered_at=now if old is None else old.registered_at,
            )
            if old is not None:
                self._drop(aor, change.key)
            self._put(binding)
            events.append(BindingAdded(binding) if old is None else BindingRefreshed(binding, old))

    def _remove_all(self, aor: str, events: list[Event]) -> None:
        for binding in list(self._aors.get(aor, {}).values()):
            self._drop(aor, binding.key)
            events.append(BindingRemoved(binding, RemoveCause.WILDCARD))

    def _ok_headers(
        self, request: Request, aor: str, outbound: bool, now: float
    ) -> tuple[tuple[str, str], ...]:
        headers: list[tuple[str, str]] = [
            ("Contact", b.contact_value(now)) for b in self._aors.get(aor, {}).values()
        ]
        headers.append(("Date", http_date(now)))
        cfg = self.config
        if outbound:
            headers.append(("Require", "outbound"))
        if cfg.flow_timer is not None and (
            cfg.flow_timer_always or outbound or _asks_keepalive(request)
        ):
            headers.append(("Flow-Timer", str(cfg.flow_timer)))
        headers.append(("Supported", ", ".join(SUPPORTED)))
        return tuple(headers)

    # -- digest ----------------------------------------------------------------------------

    def nonce(self, now: float) -> str:
        stamp = f"{max(0, int(now)):08x}"
        salt = self._token()[:_SALT]
        if len(salt) != _SALT or not _HEX.issuperset(salt):
            raise LocalProtocolError(f"rand_token() must give {_SALT} hex digits or more")
        return stamp + salt + self._mac(stamp, salt)

    def _mac(self, stamp: str, salt: str) -> str:
        text = f"{stamp}:{salt}:{self.config.realm}".encode()
        return hmac.new(self._secret, text, hashlib.sha256).hexdigest()[:32]

    def _nonce_time(self, nonce: str) -> int | None:
        """When we made ``nonce``, or None if we did not (another secret, or garbage)."""
        head, mac = nonce[:-32], nonce[-32:]
        stamp, salt = head[:-_SALT], head[-_SALT:]
        if not 8 <= len(stamp) <= 12 or not _HEX.issuperset(head) or len(salt) != _SALT:
            return None
        if not hmac.compare_digest(self._mac(stamp, salt), mac):
            return None
        return int(stamp, 16)

    def challenges(self, now: float, stale: bool = False) -> list[str]:
        """The WWW-Authenticate values of a 401: one per algorithm, preferred first."""
        nonce = self.nonce(now)
        return [
            Challenge(self.config.realm, nonce, algorithm, ("auth",), stale=stale).header()
            for algorithm in self.config.algorithms
        ]

    def _challenge(self, now: float, *, stale: bool, detail: str | None) -> _Refusal:
        extra = tuple(("WWW-Authenticate", value) for value in self.challenges(now, stale))
        return _Refusal(401, extra, detail)

    # -- the table -------------------------------------------------------------------------

    def _put(self, binding: Binding) -> None:
        self._aors.setdefault(binding.aor, {})[binding.key] = binding
        self._count += 1
        conn = binding.flow.connection
        if conn:
            self._connections[conn] = self._connections.get(conn, 0) + 1
        self._seq += 1
        heapq.heappush(self._heap, (binding.expires_at, self._seq, binding.aor, binding.key))
        if len(self._heap) > 2 * self._count + 1024:
            self._heap = [
                e for e in self._heap if (b := self.binding(e[2], e[3])) and b.expires_at == e[0]
            ]
            heapq.heapify(self._heap)

    def _pop(self) -> tuple[float, int, str, str]:
        return heapq.heappop(self._heap)

    def _drop(self, aor: str, key: str) -> Binding | None:
        contacts = self._aors.get(aor)
        if contacts is None:
            return None
        binding = contacts.pop(key, None)
        if binding is None:
            return None
        if not contacts:
            del self._aors[aor]
        self._count -= 1
        conn = binding.flow.connection
        if conn:
            left = self._connections.get(conn, 0) - 1
            if left > 0:
                self._connections[conn] = left
            else:
                self._connections.pop(conn, None)
        return binding

    # -- answers ---------------------------------------------------------------------------

    def _respond(
        self,
        request: Request,
        flow: Flow,
        status: int,
        extra: tuple[tuple[str, str], ...],
    ) -> SendResponse:
        fields = list(extra)
        if self.config.server:
            fields.append(("Server", self.config.server))
        data, dest = answer(
            request,
            status,
            REASONS[status],
            source=flow.source,
            transport=flow.transport,
            tag_key=self._tag_key,
            extra=tuple(fields),
        )
        return SendResponse(data, dest, status)

    def _remember(self, key: tuple[str, str, int, Address], send: SendResponse, now: float) -> None:
        answers = self._answers
        answers.pop(key, None)
        answers[key] = (now + TIMER_J, send)
        while answers:
            first = next(iter(answers))
            if len(answers) <= ANSWER_CACHE and answers[first][0] > now:
                break
            del answers[first]


# -- helpers -------------------------------------------------------------------------------


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _delta(value: str | None, what: str) -> int | None:
    """A delta-seconds value (RFC 3261 §20.19, §20.10), capped at 2**32-1; None if absent."""
    if value is None:
        return None
    text = value.strip()
    if not is_digits(text):
        raise ParseError(f"bad {what}: {text[:20]!r}")
    significant = text.lstrip("0") or "0"
    return _MAX_DELTA if len(significant) > 10 else min(int(significant), _MAX_DELTA)


def _asks_keepalive(request: Request) -> bool:
    """The REGISTER offers keep-alives (RFC 6223 ``keep`` on its Via) or names an outbound
    Contact URI (RFC 5626 ``;ob``)."""
    if has_param(request.vias[0].params, "keep"):
        return True
    for value in request.headers.get_all("Contact"):
        try:
            contact = parse_name_addr(value, "Contact")
            if has_param(parse_uri(contact.uri).params, "ob"):
                return True
        except ParseError:
            continue
    return False


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def http_date(now: float) -> str:
    """RFC 3261 §20.17 Date (RFC 1123 form, GMT) for wall-clock seconds ``now``."""
    t = datetime.fromtimestamp(int(now), UTC)
    return (
        f"{_DAYS[t.weekday()]}, {t.day:02d} {_MONTHS[t.month - 1]} {t.year} "
        f"{t.hour:02d}:{t.minute:02d}:{t.second:02d} GMT"
    )
