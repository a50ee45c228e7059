"""The monitor's configuration: TOML in, typed and validated settings out.

Every mistake is a :class:`~sipalive.errors.ConfigError` whose ``where`` names the file and
the key path (``monitor.toml: targets[3].qualify_timeout``) and whose ``reason`` says what
is wrong; nothing is silently ignored, so an unknown key is an error with a "did you mean".

Layout (the contract of issue 3)::

    [http]                        listen = "127.0.0.1:8060", token / token_env (bearer auth)
    [storage]                     path = "var/sipalive.db", retention_days = 30
    [defaults]                    any target setting
    [groups.NAME]                 any target setting; a target joins with group = "NAME"
    [[targets]]                   name, uri, group?, any target setting
    [[webhooks]]                  url, secret / secret_env (HMAC key for the receiver)
    [[exec]]                      command = ["/path/to/handler", "arg", ...]
    [registrar]                   listen = ["udp:127.0.0.1:5060", "tcp:127.0.0.1:5060"],
                                  users = "FILE", and the settings below (optional table)

A target's effective settings are, from weakest to strongest: the built-in defaults below,
``[defaults]``, its group, the target itself. A group a target names must exist (an empty
``[groups.NAME]`` table is enough), so a misspelt group cannot silently drop settings.

Target settings (Asterisk's names where Asterisk has the setting), with built-in defaults:

=========================== ========= =======================================================
qualify_frequency           60 s      seconds between probes; 0 = not qualified (NonQualified)
qualify_timeout             3 s       the whole probe, DNS included
qualify_2xx_only            false     only a 2xx answer counts as reachable
t1                          0.5 s     RFC 3261 T1 (UDP retransmission base)
retransmits                 absent    UDP retransmissions; absent = until the timeout
expect_codes                absent    answers that count as reachable: ["2xx", "404"] or
                                      "200,404"; absent = any final response
lagged_rtt                  absent    RTT above which a reachable peer is Lagged
fail_threshold              1         consecutive failures before Unreachable (Asterisk: 1)
recover_threshold           1         consecutive successes before Reachable
unreachable_frequency       10 s      probe interval while Unreachable (chan_sip re-probed
                                      down peers every 10 s); never above qualify_frequency
                                      unless set explicitly
transport                   absent    udp, tcp, tls, ws, wss; absent = the URI's
                                      ;transport=, else RFC 3263
from_uri, user_agent        absent    the prober's own
auth_username               absent    digest credentials answering a 401/407 to OPTIONS,
auth_password[_env]         absent    the password inline or from an environment variable
keep_alive_mode             "none"    UDP keep-alives: "crlf", "stun" or "none"
keep_alive_interval         25 s      UDP keep-alive interval (jittered to 80-100%)
crlf_ping_interval          0         TCP/TLS RFC 5626 CRLFCRLF ping interval; 0 = off
                                      (over ws/wss: the WebSocket Ping interval)
crlf_pong_timeout           10 s      no CRLF (or WebSocket) pong within this: flow failed
ws_path                     "/"       resource path of a ws/wss target (RFC 7118)
tcp_keepalive_enable        false     kernel TCP keep-alive (Asterisk transport names and
tcp_keepalive_idle_time     30 s      defaults); whole seconds
tcp_keepalive_interval_time 10 s
tcp_keepalive_probe_count   5
tcp_user_timeout            absent    TCP_USER_TIMEOUT in milliseconds (a bare number is ms)
tls_ca                      absent    CA file or directory; absent = the system's
tls_insecure                false     skip certificate verification
tls_cert, tls_key           absent    client certificate (the key may be in the cert file)
=========================== ========= =======================================================

With a ``[registrar]`` table the monitor is a registrar too (issue 4): it accepts REGISTER
with digest authentication on the ``listen`` addresses (``udp:`` or ``tcp:HOST:PORT``; the
port defaults to 5060), qualifies every registered contact through the flow its REGISTER came
on, and shows the contacts in its API, metrics and page. Its settings, with defaults:

=========================== ========= =======================================================
listen                      required  a list of "udp:HOST:PORT" and "tcp:HOST:PORT"
users                       required  who may register: a file of user:password lines
                                      (# comments; keep it chmod 600)
realm                       sipalive  digest realm
digest_algorithms           both      challenges offered, preferred first: ["SHA-256",
                                      "MD5"] (RFC 8760) or "SHA-256,MD5"
qualify_frequency           60 s      OPTIONS to every contact this often; 0 = never
qualify_timeout             3 s       the whole probe
remove_unavailable          false     drop the binding (and close its connection) of a
                                      contact gone unreachable, as Asterisk does
min_expires                 60 s      a shorter registration is refused (423)
max_expires                 3600 s    a longer one is shortened
flow_timer                  absent    Flow-Timer (RFC 5626) in the 200 to REGISTERs that
                                      use outbound or offer keep-alives (Via keep)
flow_timer_always           false     send the Flow-Timer in every 200
db                          next to   SQLite file keeping the bindings across restarts;
                            storage   default: NAME-registrar.db beside [storage] path
=========================== ========= =======================================================

The registrar's settings are read at start only: SIGHUP leaves them as they are (and says so).

Durations are numbers of seconds or strings with a unit: ``"150ms"``, ``"2s"``, ``"1m"``,
``"1h"`` (also ``us`` and ``min``). Paths are taken relative to the working directory.
Secrets (passwords, the HTTP token, webhook secrets) are :class:`Secret` values that never
show in a repr or an error message.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

from sipalive.errors import ConfigError, LocalProtocolError, ParseError
from sipalive.keepalive.tcp import TcpKeepaliveOptions
from sipalive.sip.digest import ALGORITHMS as DIGEST_ALGORITHMS
from sipalive.sip.registrar import RegistrarConfig as RegistrarRules
from sipalive.sip.uri import TRANSPORTS, SipUri, parse_host_port, parse_uri

TomlValue = str | int | float | bool | list[str]
TargetTable = dict[str, TomlValue]
"""One ``[[targets]]`` table as importers build it: name, uri, group?, settings."""


class Secret:
    """A password or token: compares and hashes by value, never prints it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash((Secret, self._value))


@dataclass(frozen=True, slots=True)
class TargetSettings:
    """The effective settings of one target (see the module docstring for each field).

    Durations are float seconds, except the kernel's whole-second TCP keep-alive times and
    ``tcp_user_timeout`` in milliseconds. Targets with equal settings share one instance.
    """

    qualify_frequency: float = 60.0
    qualify_timeout: float = 3.0
    qualify_2xx_only: bool = False
    t1: float = 0.5
    retransmits: int | None = None
    expect_codes: tuple[str, ...] | None = None
    lagged_rtt: float | None = None
    fail_threshold: int = 1
    recover_threshold: int = 1
    unreachable_frequency: float = 10.0
    transport: str | None = None
    from_uri: str | None = None
    user_agent: str | None = None
    ws_path: str = "/"
    auth_username: str | None = None
    auth_password: Secret | None = None
    keep_alive_mode: str = "none"
    keep_alive_interval: float = 25.0
    crlf_ping_interval: float = 0.0
    crlf_pong_timeout: float = 10.0
    tcp_keepalive_enable: bool = False
    tcp_keepalive_idle_time: int = 30
    tcp_keepalive_interval_time: int = 10
    tcp_keepalive_probe_count: int = 5
    tcp_user_timeout: int | None = None
    tls_ca: str | None = None
    tls_insecure: bool = False
    tls_cert: str | None = None
    tls_key: str | None = None

    @property
    def expect_code_ranges(self) -> tuple[tuple[int, int], ...] | None:
        """``expect_codes`` as inclusive ``(lo, hi)`` ranges: "2xx" is (200, 299)."""
        if self.expect_codes is None:
            return None
        return tuple(
            (int(c[0]) * 100, int(c[0]) * 100 + 99) if c.endswith("xx") else (int(c), int(c))
            for c in self.expect_codes
        )

    @property
    def tcp_keepalive(self) -> TcpKeepaliveOptions:
        return TcpKeepaliveOptions(
            enable=self.tcp_keepalive_enable,
            idle_time=self.tcp_keepalive_idle_time,
            interval_time=self.tcp_keepalive_interval_time,
            probe_count=self.tcp_keepalive_probe_count,
            user_timeout_ms=self.tcp_user_timeout,
        )


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    uri: str
    """As written in the file (stripped); ``sip_uri`` is the parsed form."""
    sip_uri: SipUri
    group: str | None
    settings: TargetSettings

    @property
    def transport(self) -> str | None:
        """The ``transport`` setting, else the URI's ``;transport=``, else None (RFC 3263)."""
        return self.settings.transport or self.sip_uri.transport


@dataclass(frozen=True, slots=True)
class HttpConfig:
    host: str
    port: int
    token: Secret | None = None

    @property
    def listen(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class StorageConfig:
    path: str = "var/sipalive.db"
    retention_days: int = 30


@dataclass(frozen=True, slots=True)
class Webhook:
    url: str
    secret: Secret | None = None


@dataclass(frozen=True, slots=True)
class ExecHook:
    command: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ListenAddress:
    """One address the registrar listens on."""

    transport: str  # udp | tcp
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.transport}:{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class RegistrarSection:
    """The ``[registrar]`` table (see the module docstring for each field)."""

    listen: tuple[ListenAddress, ...]
    users: str
    db: str
    realm: str = "sipalive"
    digest_algorithms: tuple[str, ...] = ("SHA-256", "MD5")
    qualify_frequency: float = 60.0
    qualify_timeout: float = 3.0
    remove_unavailable: bool = False
    min_expires: int = 60
    max_expires: int = 3600
    flow_timer: int | None = None
    flow_timer_always: bool = False


@dataclass(frozen=True, slots=True)
class MonitorConfig:
    source: str
    http: HttpConfig
    storage: StorageConfig
    targets: tuple[Target, ...]
    webhooks: tuple[Webhook, ...] = ()
    exec_hooks: tuple[ExecHook, ...] = ()
    registrar: RegistrarSection | None = None


DEFAULT_LISTEN = ("127.0.0.1", 8060)

# ---------------------------------------------------------------------------------------------
# Value parsers: each takes the TOML value and returns the typed one, or raises _Invalid.


class _Invalid(Exception):
    """A value is wrong; the caller knows where. ``sub`` extends the key path (``[2]``)."""

    def __init__(self, reason: str, sub: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.sub = sub


_Parser = Callable[[object], object]

_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DURATION_HELP = 'expected a duration: seconds as a number, or a string like "150ms", "2s", "1m"'


def _kind(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return "a date/time"


def _show(value: object) -> str:
    text = repr(value) if isinstance(value, str | int | float) else _kind(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _seconds(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _Invalid(f"{_DURATION_HELP}, got {_show(value)}")
    if isinstance(value, str):
        match = _DURATION.fullmatch(value.strip().lower())
        scale = _UNITS.get(match.group(2) or "s") if match else None
        if match is None or scale is None:
            raise _Invalid(f"{_DURATION_HELP}, got {_show(value)}")
        return float(match.group(1)) * scale
    if not math.isfinite(value) or value < 0:
        raise _Invalid(f"{_DURATION_HELP}, got {_show(value)}")
    return float(value)


def _duration(low: float, high: float, *, zero: bool = False) -> _Parser:
    """Seconds in ``(low, high]``, or ``[low, high]`` when ``zero`` allows 0 (= off)."""

    def parse(value: object) -> float:
        seconds = _seconds(value)
        if (seconds > low or (zero and seconds == low)) and seconds <= high:
            return seconds
        bound = f"from {low:g}" if zero else f"more than {low:g}"
        reason = f"must be {bound} to {high:g} seconds, got {_show(value)}"
        if isinstance(value, int | float) and low < value / 1000 <= high:
            reason += f' (a bare number is seconds; for milliseconds write "{value}ms")'
        raise _Invalid(reason)

    return parse


def _integer(low: int, high: int) -> _Parser:
    def parse(value: object) -> int:
        # bool is an int subclass, and "fail_threshold = true" is a mistake worth catching.
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid(f"expected an integer, got {_show(value)}")
        if not low <= value <= high:
            raise _Invalid(f"must be from {low} to {high}, got {value}")
        return value

    return parse


def _whole_seconds(low: int, high: int) -> _Parser:
    """The kernel's TCP keep-alive times: an integer, or a duration of whole seconds."""
    check = _integer(low, high)

    def parse(value: object) -> int:
        if isinstance(value, str):
            seconds = _seconds(value)
            if seconds != int(seconds):
                raise _Invalid(f"must be a whole number of seconds, got {_show(value)}")
            value = int(seconds)
        return cast(int, check(value))

    return parse


def _milliseconds(low: int, high: int) -> _Parser:
    """An integer of milliseconds, or a duration string (``"30s"``)."""
    check = _integer(low, high)

    def parse(value: object) -> int:
        if isinstance(value, str):
            value = round(_seconds(value) * 1000)
        return cast(int, check(value))

    return parse


def _boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(f"expected true or false, got {_show(value)}")
    return value


def _choice(*options: str) -> _Parser:
    def parse(value: object) -> str:
        if not isinstance(value, str) or value.strip().lower() not in options:
            raise _Invalid(f"expected one of {', '.join(options)}, got {_show(value)}")
        return value.strip().lower()

    return parse


def _text(value: object, *, max_len: int = 256) -> str:
    if not isinstance(value, str):
        raise _Invalid(f"expected a string, got {_show(value)}")
    if not value.strip():
        raise _Invalid("must not be empty")
    if len(value) > max_len:
        raise _Invalid(f"longer than {max_len} characters")
    # Header values go on the wire as they are: a CR or LF would inject a header.
    if _CONTROL.search(value):
        raise _Invalid(f"must not contain control characters, got {_show(value)}")
    return value


def _sip_uri(value: object) -> SipUri:
    text = _text(value, max_len=1024)
    try:
        uri = parse_uri(text)
    except ParseError as exc:
        raise _Invalid(f"not a usable sip: or sips: URI ({exc.reason})") from None
    if uri.password is not None:
        raise _Invalid("a password in the URI would be shown everywhere; use auth_password")
    if uri.transport is not None and uri.transport not in TRANSPORTS:
        raise _Invalid(f"unknown ;transport={uri.transport} (expected {', '.join(TRANSPORTS)})")
    return uri


def _from_uri(value: object) -> str:
    return str(_sip_uri(value))


def _expect_codes(value: object) -> tuple[str, ...]:
    items: list[tuple[object, str]]
    if isinstance(value, str):
        items = [(part.strip(), "") for part in value.split(",")]
    elif isinstance(value, list):
        items = [(item, f"[{i}]") for i, item in enumerate(value)]
    else:
        raise _Invalid(
            f'expected a list like ["2xx", "404"] or a string like "200,404", got {_show(value)}'
        )
    if not items:
        raise _Invalid("must list at least one code")
    codes: list[str] = []
    for item, sub in items:
        code = str(item).strip().lower() if isinstance(item, str | int) else ""
        if isinstance(item, bool) or not re.fullmatch(r"[2-6](xx|\d\d)", code):
            raise _Invalid(
                f'expected a final status code like "404" or a class like "2xx", got {_show(item)}',
                sub,
            )
        if code not in codes:
            codes.append(code)
    return tuple(codes)


def _existing_path(*, directory_ok: bool) -> _Parser:
    def parse(value: object) -> str:
        path = _text(value, max_len=4096)
        if not (os.path.isfile(path) or (directory_ok and os.path.isdir(path))):
            raise _Invalid(f"no such {'file or directory' if directory_ok else 'file'}: {path!r}")
        return path

    return parse


def _secret(value: object) -> Secret:
    # The value itself never goes into a message.
    if not isinstance(value, str):
        raise _Invalid(f"expected a string, got {_kind(value)}")
    return Secret(value)


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NAME = re.compile(r"[A-Za-z0-9._@+:~-]{1,128}")
_NAME_HELP = "1 to 128 of the characters A-Z a-z 0-9 . _ @ + : ~ -"

_SETTINGS: dict[str, _Parser] = {
    "qualify_frequency": _duration(0, 86400, zero=True),
    "qualify_timeout": _duration(0, 300),
    "qualify_2xx_only": _boolean,
    "t1": _duration(0, 60),
    "retransmits": _integer(0, 100),
    "expect_codes": _expect_codes,
    "lagged_rtt": _duration(0, 300),
    "fail_threshold": _integer(1, 1000),
    "recover_threshold": _integer(1, 1000),
    "unreachable_frequency": _duration(0, 86400),
    "transport": _choice(*TRANSPORTS),
    "from_uri": _from_uri,
    "user_agent": _text,
    "ws_path": _text,
    "auth_username": _text,
    "auth_password": _secret,
    "auth_password_env": _secret,  # resolved by _parse_layer
    "keep_alive_mode": _choice("crlf", "stun", "none"),
    "keep_alive_interval": _duration(0, 86400),
    "crlf_ping_interval": _duration(0, 86400, zero=True),
    "crlf_pong_timeout": _duration(0, 300),
    "tcp_keepalive_enable": _boolean,
    # Ranges are checked by TcpKeepaliveOptions, the one place that knows the kernel's limits.
    "tcp_keepalive_idle_time": _whole_seconds(-(2**31), 2**31 - 1),
    "tcp_keepalive_interval_time": _whole_seconds(-(2**31), 2**31 - 1),
    "tcp_keepalive_probe_count": _integer(-(2**31), 2**31 - 1),
    "tcp_user_timeout": _milliseconds(-(2**31), 2**31 - 1),
    "tls_ca": _existing_path(directory_ok=True),
    "tls_insecure": _boolean,
    "tls_cert": _existing_path(directory_ok=False),
    "tls_key": _existing_path(directory_ok=False),
}
SETTING_NAMES = tuple(_SETTINGS)
"""Every key a target, group or ``[defaults]`` may set, in documentation order."""

_FIELDS = tuple(f.name for f in fields(TargetSettings))
_make_settings = cast("Callable[..., TargetSettings]", TargetSettings)
_TARGET_KEYS = ("name", "uri", "group", *SETTING_NAMES)
_TOP_KEYS = ("http", "storage", "defaults", "groups", "targets", "webhooks", "exec", "registrar")

# ---------------------------------------------------------------------------------------------
# Tables and layers

_Origin = tuple[object, str]
"""A setting's value and the key path it came from ("" for a built-in default)."""
_Layer = dict[str, _Origin]

_BUILTIN: _Layer = {f.name: (f.default, "") for f in fields(TargetSettings)}
_BUILTIN["unreachable_frequency"] = (None, "")  # follows qualify_frequency unless set


class _Context:
    def __init__(self, source: str, env: Mapping[str, str]) -> None:
        self.source = source
        self.env = env
        self.settings_cache: dict[tuple[object, ...], TargetSettings] = {}
        self.target_cache: dict[tuple[object, ...], TargetSettings] = {}

    def error(self, path: str, reason: str) -> ConfigError:
        return ConfigError(f"{self.source}: {path}" if path else self.source, reason)


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _key(name: str) -> str:
    return name if _BARE_KEY.fullmatch(name) else _toml_string(name)


def _unknown(key: str, allowed: Sequence[str], what: str) -> str:
    reason = f"unknown key in {what}"
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    if close:
        return f"{reason}; did you mean {close[0]!r}?"
    return f"{reason}; expected one of: {', '.join(allowed)}"


def _table(value: object, path: str, ctx: _Context, what: str) -> dict[str, object]:
    if not isinstance(value, dict):
        raise ctx.error(path, f"must be a table ({what}), got {_kind(value)}")
    return value


def _array_of_tables(value: object, path: str, ctx: _Context, header: str) -> list[object]:
    if not isinstance(value, list):
        raise ctx.error(path, f"must be an array of tables ({header}), got {_kind(value)}")
    return value


def _parse_value(parser: _Parser, value: object, path: str, ctx: _Context) -> object:
    try:
        return parser(value)
    except _Invalid as exc:
        raise ctx.error(path + exc.sub, exc.reason) from None


def _resolve_env(name_value: object, path: str, ctx: _Context) -> Secret:
    if not isinstance(name_value, str) or not _ENV_NAME.fullmatch(name_value):
        raise ctx.error(path, f"expected an environment variable name, got {_show(name_value)}")
    value = ctx.env.get(name_value)
    if value is None:
        raise ctx.error(path, f"environment variable {name_value} is not set")
    return Secret(value)


def _parse_layer(
    table: Mapping[str, object], prefix: str, ctx: _Context, what: str, extra: Sequence[str] = ()
) -> _Layer:
    """Validate the settings of one table; ``extra`` keys are left to the caller."""
    layer: _Layer = {}
    for key, value in table.items():
        path = prefix + _key(key)
        if key in extra:
            continue
        if key in ("name", "uri", "group"):
            raise ctx.error(path, f"only a [[targets]] table has a {key}, not {what}")
        parser = _SETTINGS.get(key)
        if parser is None:
            raise ctx.error(path, _unknown(key, (*extra, *SETTING_NAMES), what))
        if key == "auth_password_env":
            if "auth_password" in table:
                raise ctx.error(path, "set auth_password or auth_password_env, not both")
            layer["auth_password"] = (_resolve_env(value, path, ctx), path)
        else:
            layer[key] = (_parse_value(parser, value, path, ctx), path)
    return layer


def _specific(*origins: _Origin) -> str:
    """The key path of the most specific origin: a target beats a group beats [defaults]."""

    def rank(path: str) -> int:
        if not path:
            return 0
        if path.startswith("defaults."):
            return 1
        return 2 if path.startswith("groups.") else 3

    return max((o[1] for o in origins), key=rank)


def _where(origin: _Origin) -> str:
    return origin[1] or "the built-in default"


def _settings(eff: _Layer, target: str, ctx: _Context) -> TargetSettings:
    """Resolve and cross-check the merged layers; equal settings are shared."""
    frequency = cast(float, eff["qualify_frequency"][0])
    if eff["unreachable_frequency"][0] is None:
        down = min(10.0, frequency) if frequency > 0 else 10.0
        eff = {**eff, "unreachable_frequency": (down, "")}
    values = tuple(eff[name][0] for name in _FIELDS)
    settings = ctx.settings_cache.get(values)
    if settings is None:
        _cross_check(eff, target, ctx)
        settings = _make_settings(*values)
        ctx.settings_cache[values] = settings
    return settings


def _cross_check(eff: _Layer, target: str, ctx: _Context) -> None:
    def value(name: str) -> Any:
        return eff[name][0]

    def fail(path: str, reason: str) -> ConfigError:
        return ctx.error(path, f"{reason} (for target {target!r})")

    user, password = eff["auth_username"], eff["auth_password"]
    if (user[0] is None) != (password[0] is None):
        present = user if password[0] is None else password
        missing = "auth_password or auth_password_env" if password[0] is None else "auth_username"
        raise fail(present[1], f"needs {missing} as well")
    codes = value("expect_codes")
    if value("qualify_2xx_only") and codes and any(c[0] != "2" for c in codes):
        path = _specific(eff["expect_codes"], eff["qualify_2xx_only"])
        raise fail(
            path,
            f"expect_codes {list(codes)} contradicts qualify_2xx_only = true "
            f"({_where(eff['qualify_2xx_only'])})",
        )
    lagged, timeout = value("lagged_rtt"), value("qualify_timeout")
    if lagged is not None and lagged >= timeout:
        path = _specific(eff["lagged_rtt"], eff["qualify_timeout"])
        raise fail(
            path,
            f"lagged_rtt ({lagged:g} s) must be less than qualify_timeout "
            f"({timeout:g} s, {_where(eff['qualify_timeout'])})",
        )
    ping, pong = value("crlf_ping_interval"), value("crlf_pong_timeout")
    if ping and pong >= ping:
        path = _specific(eff["crlf_ping_interval"], eff["crlf_pong_timeout"])
        raise fail(
            path,
            f"crlf_pong_timeout ({pong:g} s) must be less than crlf_ping_interval "
            f"({ping:g} s), or pings would overlap",
        )
    if value("tls_key") is not None and value("tls_cert") is None:
        raise fail(eff["tls_key"][1], "tls_key needs tls_cert")
    keepalive_keys = {
        "enable": "tcp_keepalive_enable",
        "idle_time": "tcp_keepalive_idle_time",
        "interval_time": "tcp_keepalive_interval_time",
        "probe_count": "tcp_keepalive_probe_count",
        "user_timeout_ms": "tcp_user_timeout",
    }
    try:
        TcpKeepaliveOptions(**{field: value(key) for field, key in keepalive_keys.items()})
    except ConfigError as exc:
        key = keepalive_keys.get(exc.where, "tcp_keepalive_enable")
        raise fail(_where(eff[key]), exc.reason) from None


def _check_transport(origin: _Origin, uri: SipUri, uri_path: str, ctx: _Context) -> None:
    transport = cast(str | None, origin[0])
    if transport is not None and uri.transport is not None and transport != uri.transport:
        raise ctx.error(origin[1], f"{transport!r} contradicts ;transport={uri.transport} in {uri}")
    effective = transport or uri.transport
    if uri.scheme == "sips" and effective in ("udp", "tcp", "ws"):
        path = origin[1] if transport else uri_path
        raise ctx.error(path, f"a sips: URI needs tls or wss, not {effective} ({uri})")


def _parse_target(
    table: Mapping[str, object],
    prefix: str,
    ctx: _Context,
    base: Callable[[str | None, str], _Layer],
) -> Target:
    """One target; ``base(group, path)`` gives the merged layers below it."""
    for key in ("name", "uri"):
        if key not in table:
            raise ctx.error(prefix + key, f"missing: every target needs a {key}")
    name = table["name"]
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ctx.error(prefix + "name", f"expected {_NAME_HELP}, got {_show(name)}")
    uri = cast(SipUri, _parse_value(_sip_uri, table["uri"], prefix + "uri", ctx))
    group = table.get("group")
    if group is not None and (not isinstance(group, str) or not _NAME.fullmatch(group)):
        raise ctx.error(prefix + "group", f"expected {_NAME_HELP}, got {_show(group)}")
    own = _parse_layer(table, prefix, ctx, "a [[targets]] table", extra=("name", "uri", "group"))
    below = base(group, prefix + "group")
    _check_transport(own.get("transport", below["transport"]), uri, prefix + "uri", ctx)
    # Most targets only add a group or a transport: resolve each combination once.
    combination = (group, *((k, v[0]) for k, v in own.items()))
    settings = ctx.target_cache.get(combination)
    if settings is None:
        settings = ctx.target_cache[combination] = _settings({**below, **own}, name, ctx)
    return Target(name, cast(str, table["uri"]).strip(), uri, group, settings)


def _parse_targets(doc: Mapping[str, object], ctx: _Context) -> tuple[Target, ...]:
    defaults = {**_BUILTIN}
    if "defaults" in doc:
        table = _table(doc["defaults"], "defaults", ctx, "[defaults]")
        defaults.update(_parse_layer(table, "defaults.", ctx, "[defaults]"))
    groups: dict[str, _Layer] = {}
    raw_groups = _table(doc.get("groups", {}), "groups", ctx, "[groups.NAME] tables")
    for group_name, group_value in raw_groups.items():
        path = f"groups.{_key(group_name)}"
        if not _NAME.fullmatch(group_name):
            raise ctx.error(path, f"a group name is {_NAME_HELP}")
        what = f"[groups.{_key(group_name)}]"
        layer = _parse_layer(_table(group_value, path, ctx, what), path + ".", ctx, what)
        groups[group_name] = {**defaults, **layer}

    def base(group: str | None, path: str) -> _Layer:
        if group is None:
            return defaults
        layer = groups.get(group)
        if layer is None:
            close = difflib.get_close_matches(group, list(groups), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else " (add a [groups.NAME] table)"
            raise ctx.error(path, f"no group {group!r} is defined{hint}")
        return layer

    targets: list[Target] = []
    first_path: dict[str, str] = {}
    raw_targets = _array_of_tables(doc.get("targets", []), "targets", ctx, "[[targets]]")
    for i, item in enumerate(raw_targets):
        prefix = f"targets[{i}]"
        table = _table(item, prefix, ctx, "[[targets]]")
        target = _parse_target(table, prefix + ".", ctx, base)
        if target.name in first_path:
            raise ctx.error(
                prefix + ".name",
                f"duplicate target name {target.name!r} (first at {first_path[target.name]})",
            )
        first_path[target.name] = prefix + ".name"
        targets.append(target)
    return tuple(targets)


def _check_keys(
    table: Mapping[str, object], allowed: Sequence[str], prefix: str, ctx: _Context, what: str
) -> None:
    for key in table:
        if key not in allowed:
            raise ctx.error(prefix + _key(key), _unknown(key, allowed, what))


def _optional_secret(
    table: Mapping[str, object], key: str, prefix: str, ctx: _Context
) -> Secret | None:
    env_key = key + "_env"
    if key in table and env_key in table:
        raise ctx.error(prefix + env_key, f"set {key} or {env_key}, not both")
    if env_key in table:
        return _resolve_env(table[env_key], prefix + env_key, ctx)
    if key in table:
        return cast(Secret, _parse_value(_secret, table[key], prefix + key, ctx))
    return None


def _parse_http(doc: Mapping[str, object], ctx: _Context) -> HttpConfig:
    table = _table(doc.get("http", {}), "http", ctx, "[http]")
    _check_keys(table, ("listen", "token", "token_env"), "http.", ctx, "[http]")
    host, port = DEFAULT_LISTEN
    if "listen" in table:
        listen = table["listen"]
        if not isinstance(listen, str):
            raise ctx.error("http.listen", f'expected "host:port", got {_show(listen)}')
        try:
            host, parsed_port = parse_host_port(listen.strip(), "listen address")
        except ParseError as exc:
            raise ctx.error("http.listen", f'expected "host:port": {exc.reason}') from None
        if parsed_port is None:
            raise ctx.error("http.listen", f'missing port: expected "host:port", got {listen!r}')
        port = parsed_port
    return HttpConfig(host, port, _optional_secret(table, "token", "http.", ctx))


def _parse_storage(doc: Mapping[str, object], ctx: _Context) -> StorageConfig:
    table = _table(doc.get("storage", {}), "storage", ctx, "[storage]")
    _check_keys(table, ("path", "retention_days"), "storage.", ctx, "[storage]")
    default = StorageConfig()
    path = default.path
    if "path" in table:
        path = cast(str, _parse_value(_text, table["path"], "storage.path", ctx))
    days = default.retention_days
    if "retention_days" in table:
        days = cast(
            int,
            _parse_value(
                _integer(1, 36500), table["retention_days"], "storage.retention_days", ctx
            ),
        )
    return StorageConfig(path, days)


def _parse_webhooks(doc: Mapping[str, object], ctx: _Context) -> tuple[Webhook, ...]:
    hooks: list[Webhook] = []
    for i, item in enumerate(
        _array_of_tables(doc.get("webhooks", []), "webhooks", ctx, "[[webhooks]]")
    ):
        prefix = f"webhooks[{i}]."
        table = _table(item, prefix[:-1], ctx, "[[webhooks]]")
        _check_keys(table, ("url", "secret", "secret_env"), prefix, ctx, "[[webhooks]]")
        if "url" not in table:
            raise ctx.error(prefix + "url", "missing: every webhook needs a url")
        url = cast(str, _parse_value(_text, table["url"], prefix + "url", ctx))
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ctx.error(prefix + "url", f"expected an http:// or https:// URL, got {url!r}")
        hooks.append(Webhook(url, _optional_secret(table, "secret", prefix, ctx)))
    return tuple(hooks)


def _parse_exec(doc: Mapping[str, object], ctx: _Context) -> tuple[ExecHook, ...]:
    hooks: list[ExecHook] = []
    for i, item in enumerate(_array_of_tables(doc.get("exec", []), "exec", ctx, "[[exec]]")):
        prefix = f"exec[{i}]."
        table = _table(item, prefix[:-1], ctx, "[[exec]]")
        _check_keys(table, ("command",), prefix, ctx, "[[exec]]")
        command = table.get("command")
        if not isinstance(command, list) or not command:
            raise ctx.error(
                prefix + "command",
                f'expected a non-empty list like ["/path/to/handler", "arg"], got {_show(command)}',
            )
        for j, arg in enumerate(command):
            if not isinstance(arg, str) or (j == 0 and not arg.strip()):
                raise ctx.error(f"{prefix}command[{j}]", f"expected a string, got {_show(arg)}")
        hooks.append(ExecHook(tuple(cast(list[str], command))))
    return tuple(hooks)


_LISTEN_HELP = 'expected "udp:HOST:PORT" or "tcp:HOST:PORT"'


def _listen_address(value: object) -> ListenAddress:
    if not isinstance(value, str):
        raise _Invalid(f"{_LISTEN_HELP}, got {_show(value)}")
    transport, sep, rest = value.strip().partition(":")
    transport = transport.lower()
    if transport in ("tls", "ws", "wss"):
        raise _Invalid(
            f"the monitor's registrar listens on udp and tcp only, not {transport} "
            "(sipalive respond --registrar offers tls)"
        )
    if not sep or transport not in ("udp", "tcp"):
        raise _Invalid(f"{_LISTEN_HELP}, got {_show(value)}")
    try:
        host, port = parse_host_port(rest, "listen address")
    except ParseError as exc:
        raise _Invalid(f"{_LISTEN_HELP}: {exc.reason}") from None
    return ListenAddress(transport, host, 5060 if port is None else port)


def _listen_list(value: object) -> tuple[ListenAddress, ...]:
    if not isinstance(value, list) or not value:
        raise _Invalid(f'expected a non-empty list like ["udp:127.0.0.1:5060"], got {_show(value)}')
    addresses: list[ListenAddress] = []
    for i, item in enumerate(value):
        try:
            address = _listen_address(item)
        except _Invalid as exc:
            raise _Invalid(exc.reason, f"[{i}]") from None
        if address in addresses:
            raise _Invalid(f"{address} is listed twice", f"[{i}]")
        addresses.append(address)
    return tuple(addresses)


def _algorithms(value: object) -> tuple[str, ...]:
    items: list[tuple[object, str]]
    if isinstance(value, str):
        items = [(part.strip(), "") for part in value.split(",")]
    elif isinstance(value, list):
        items = [(item, f"[{i}]") for i, item in enumerate(value)]
    else:
        raise _Invalid(f'expected a list like ["SHA-256", "MD5"], got {_show(value)}')
    if not items:
        raise _Invalid("must list at least one algorithm")
    names: list[str] = []
    for item, sub in items:
        name = item.strip().upper() if isinstance(item, str) else ""
        if name not in DIGEST_ALGORITHMS:
            raise _Invalid(
                f"expected one of {', '.join(DIGEST_ALGORITHMS)}, got {_show(item)}", sub
            )
        if name in names:
            raise _Invalid(f"{name} is listed twice", sub)
        names.append(name)
    return tuple(names)


def _realm(value: object) -> str:
    realm = _text(value)
    if '"' in realm or "\\" in realm:
        raise _Invalid(f"must not contain quotes or backslashes, got {_show(value)}")
    return realm


def _registrar_db_default(storage: StorageConfig) -> str:
    """``NAME-registrar.db`` in the directory of the monitor's own database."""
    path = Path(storage.path)
    return str(path.with_name(f"{path.stem}-registrar.db"))


_REGISTRAR_VALUES: dict[str, _Parser] = {
    "listen": _listen_list,
    "users": _existing_path(directory_ok=False),
    "realm": _realm,
    "digest_algorithms": _algorithms,
    "qualify_frequency": _duration(0, 86400, zero=True),
    "qualify_timeout": _duration(0, 300),
    "remove_unavailable": _boolean,
    "min_expires": _whole_seconds(1, 2**32 - 1),
    "max_expires": _whole_seconds(1, 2**32 - 1),
    "flow_timer": _whole_seconds(1, 2**32 - 1),
    "flow_timer_always": _boolean,
    "db": lambda value: _text(value, max_len=4096),
}
REGISTRAR_KEYS = tuple(_REGISTRAR_VALUES)
"""Every key of the ``[registrar]`` table, in documentation order."""
_make_section = cast("Callable[..., RegistrarSection]", RegistrarSection)


def _parse_registrar(
    doc: Mapping[str, object], storage: StorageConfig, ctx: _Context
) -> RegistrarSection | None:
    if "registrar" not in doc:
        return None
    table = _table(doc["registrar"], "registrar", ctx, "[registrar]")
    _check_keys(table, REGISTRAR_KEYS, "registrar.", ctx, "[registrar]")
    for key in ("listen", "users"):
        if key not in table:
            raise ctx.error(f"registrar.{key}", f"missing: [registrar] needs {key}")
    values = {
        key: _parse_value(_REGISTRAR_VALUES[key], value, f"registrar.{key}", ctx)
        for key, value in table.items()
    }
    values.setdefault("db", _registrar_db_default(storage))
    section = _make_section(**values)
    if section.max_expires < section.min_expires:
        if "max_expires" in table:
            raise ctx.error(
                "registrar.max_expires",
                f"must be at least min_expires ({section.min_expires} s)",
            )
        raise ctx.error(
            "registrar.min_expires",
            f"must not exceed max_expires ({section.max_expires} s, the default)",
        )
    # The registrar's own checks (flow_timer_always needs flow_timer), so that a file is
    # refused here rather than at start; its field names are the keys' (algorithms, whose
    # is not, are checked above).
    try:
        RegistrarRules(
            realm=section.realm,
            min_expires=section.min_expires,
            max_expires=section.max_expires,
            default_expires=section.min_expires,
            flow_timer=section.flow_timer,
            flow_timer_always=section.flow_timer_always,
            algorithms=section.digest_algorithms,
        )
    except ConfigError as exc:
        raise ctx.error(f"registrar.{exc.where}", exc.reason) from None
    return section


# ---------------------------------------------------------------------------------------------
# Entry points


def parse_config(
    text: str, source_name: str, *, env: Mapping[str, str] | None = None
) -> MonitorConfig:
    """Parse and validate a config; ``source_name`` heads every error's ``where``.

    ``env`` supplies the ``*_env`` secrets (default: the process environment).
    """
    ctx = _Context(source_name, os.environ if env is None else env)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        match = re.search(r"\s*\(at (line \d+, column \d+|end of document)\)$", message)
        where = f"{source_name}: {match.group(1)}" if match else source_name
        detail = message[: match.start()] if match else message
        raise ConfigError(where, f"TOML syntax error: {detail}") from None
    _check_keys(doc, _TOP_KEYS, "", ctx, "the top level")
    http = _parse_http(doc, ctx)
    storage = _parse_storage(doc, ctx)
    return MonitorConfig(
        source=source_name,
        http=http,
        storage=storage,
        targets=_parse_targets(doc, ctx),
        webhooks=_parse_webhooks(doc, ctx),
        exec_hooks=_parse_exec(doc, ctx),
        registrar=_parse_registrar(doc, storage, ctx),
    )


def load_config(
    path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None
) -> MonitorConfig:
    """Read and validate the config file at ``path`` (errors name it as given)."""
    source = os.fspath(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(source, f"cannot read: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(source, f"not UTF-8 (byte {exc.start})") from None
    return parse_config(text, source, env=env)


def check_target(table: Mapping[str, object], source: str) -> None:
    """Validate one target table on its own (built-in defaults, no group lookup).

    Importers call it so that a bad value is reported against their input, as in
    ``pjsip.conf:12: qualify_timeout``.
    """
    ctx = _Context(source, os.environ)
    _parse_target(table, "", ctx, lambda group, path: _BUILTIN)


# ---------------------------------------------------------------------------------------------
# Writing targets


def _toml_string(text: str) -> str:
    out = ['"']
    for char in text:
        if char in ('"', "\\"):
            out.append("\\" + char)
        elif ord(char) < 32 or ord(char) == 127:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def _toml_value(value: TomlValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise LocalProtocolError(f"cannot write {value!r} to a config")
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    return "[" + ", ".join(_toml_string(item) for item in value) + "]"


def dump_targets_toml(targets: Sequence[Mapping[str, TomlValue]], header: str = "") -> str:
    """A config holding these targets (and an empty ``[groups.NAME]`` per group used).

    ``header`` becomes leading comment lines. Keys are written in a fixed order: name,
    uri, group, then the settings in documentation order.
    """
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    groups = sorted({str(t["group"]) for t in targets if "group" in t})
    for group in groups:
        lines += ["", f"[groups.{_key(group)}]"]
    for target in targets:
        unknown = [key for key in target if key not in _TARGET_KEYS]
        if unknown:
            raise LocalProtocolError(f"not target keys: {', '.join(unknown)}")
        lines += ["", "[[targets]]"]
        lines += [f"{key} = {_toml_value(target[key])}" for key in _TARGET_KEYS if key in target]
    return "\n".join(lines).lstrip("\n") + "\n"
