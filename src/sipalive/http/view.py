"""What the HTTP layer reads from the monitor engine (and what tests fake).

The engine implements ``MonitorView``; the HTTP code never touches engine internals. Times are
wall-clock epoch seconds (floats); RTTs are seconds. State names are the Contract's lower-case
strings: unknown, reachable, lagged, unreachable, nonqualified.

A view whose monitor runs a registrar (``[registrar]``) also implements ``RegistrarView``;
:func:`contacts_of` reads the contacts of any view (None: no registrar).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol, runtime_checkable

STATES = ("unknown", "reachable", "lagged", "unreachable", "nonqualified")


@dataclass(frozen=True, slots=True)
class TargetView:
    name: str
    uri: str
    group: str | None
    transport: str | None  # "udp" | "tcp" | "tls" | "ws" | "wss" or None (RFC 3263 decides)
    state: str  # one of STATES
    since: float  # time of the last transition (or of the first load)
    rtt_s: float | None  # last RTT
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
    last_status: int | None  # status of the last final response (or 408/503 synthetic)
    last_error: str | None
    last_probe_at: float | None
    qualify_frequency: float
    recent_rtts: tuple[float, ...] = ()  # last samples, oldest first, for a sparkline


class TargetSample(NamedTuple):
    """What ``/metrics`` and the state counts read of a target: a tuple, cheap enough to make
    for 100k targets at every scrape (a full :class:`TargetView` sorts the RTT window)."""

    name: str
    state: str
    rtt_s: float | None
    srtt_s: float | None
    successes: int
    failures: int
    timeouts: int
    transport_errors: int

    @classmethod
    def of(cls, t: TargetView) -> TargetSample:
        return cls(
            t.name, t.state, t.rtt_s, t.srtt_s, t.successes, t.failures, t.timeouts,
            t.transport_errors,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class TransitionView:
    id: int | None
    target: str
    at: float
    from_state: str
    to_state: str
    cause: str
    rtt_s: float | None


@dataclass(frozen=True, slots=True)
class RttMinuteView:
    minute_start: float
    count: int
    min_s: float
    max_s: float
    mean_s: float


@dataclass(frozen=True, slots=True)
class ProbeReport:
    """One on-demand probe (blackbox_exporter style)."""

    success: bool
    duration_s: float
    status: int | None
    reason: str
    phases: dict[str, float] = field(default_factory=dict)  # resolve, connect, tls, response
    error: str | None = None
    transport: str | None = None
    address: str | None = None


@dataclass(frozen=True, slots=True)
class EngineStats:
    targets: int
    in_flight: int
    probes_total: dict[str, int]  # by result: "success", "failure", "timeout", "transport_error"
    scheduler_lag_p99_s: float | None
    started_at: float
    last_event_id: int = 0  # id of the newest transition: where the status page starts polling


class MonitorView(Protocol):
    def targets(self) -> Sequence[TargetView]: ...

    def samples(self) -> Sequence[TargetSample]:
        """The targets in the order of :meth:`targets`, as :meth:`TargetSample.of` makes them."""
        ...

    def target(self, name: str) -> TargetView | None: ...

    def history(self, name: str, limit: int = 1000) -> list[TransitionView]: ...

    def events(self, after_id: int = 0, limit: int = 100) -> list[TransitionView]: ...

    def rtt_series(self, name: str, since: float, until: float) -> list[RttMinuteView]: ...

    def stats(self) -> EngineStats: ...

    async def probe(self, uri: str, module: str | None, timeout: float) -> ProbeReport: ...


@dataclass(frozen=True, slots=True)
class ContactView:
    """A contact registered with the monitor's registrar. ``source`` is where requests to it
    go ("host:port": the NAT binding over UDP, the peer of the kept connection over TCP);
    ``state`` one of STATES, from qualifying it through that flow."""

    aor: str
    contact: str
    source: str
    transport: str
    expires_at: float
    state: str
    rtt_s: float | None
    user_agent: str | None
    registered_at: float


@runtime_checkable
class RegistrarView(Protocol):
    def contacts(self) -> Sequence[ContactView] | None:
        """The registered contacts, or None when no registrar runs."""
        ...


def contacts_of(view: MonitorView) -> Sequence[ContactView] | None:
    """The contacts of ``view``; None when it has no registrar."""
    return view.contacts() if isinstance(view, RegistrarView) else None
