"""A MonitorView without an engine: targets, transitions and probe answers set by the test.

``FakeView.transition`` moves a target to another state the way the engine would: a new
frozen ``TargetView``, a transition with the next event id. ``probe`` records what it was
asked (``probe_calls``) and answers ``probe_report``. ``contacts`` answers ``contact_list``
(None by default: no registrar).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from sipalive.http.view import (
    STATES,
    ContactView,
    EngineStats,
    ProbeReport,
    RttMinuteView,
    TargetSample,
    TargetView,
    TransitionView,
)

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z

# A few RTT shapes for the sparklines, shared so that 100k targets are quick to make.
SPARKS = [
    tuple(0.004 + 0.003 * k + 0.002 * math.sin(j / 2 + k) + 0.004 * (j % 7 == k) for j in range(30))
    for k in range(8)
]


def make_target(
    name: str, state: str = "reachable", *, i: int = 0, now: float = T0, **fields: object
) -> TargetView:
    """A plausible target; ``i`` varies the numbers, ``fields`` overrides any of them."""
    rtt = 0.005 + (i % 97) / 1000 if state in ("reachable", "lagged") else None
    values: dict[str, object] = {
        "name": name,
        "uri": f"sip:{name.replace(' ', '-')}@192.0.2.{i % 250 + 1}:5060",
        "group": f"pop-{i % 4}",
        "transport": "udp",
        "state": state,
        "since": now - 60 * (i % 1000) - 7,
        "rtt_s": rtt,
        "srtt_s": rtt,
        "rttvar_s": 0.001 if rtt is not None else None,
        "rtt_min_s": 0.004 if rtt is not None else None,
        "rtt_max_s": 0.120 if rtt is not None else None,
        "rtt_p50_s": rtt,
        "rtt_p90_s": rtt,
        "rtt_p99_s": rtt,
        "probes": 1000 + i,
        "successes": 990 + i,
        "failures": 10,
        "timeouts": 6,
        "transport_errors": 3,
        "last_status": 200 if rtt is not None else 408,
        "last_error": None if rtt is not None else "timeout",
        "last_probe_at": now - 5,
        "qualify_frequency": 60.0,
        "recent_rtts": SPARKS[i % len(SPARKS)] if rtt is not None else (),
    }
    values.update(fields)
    return TargetView(**values)  # type: ignore[arg-type]


class FakeView:
    def __init__(self, targets: Sequence[TargetView] = (), now: float = T0) -> None:
        self.now = now
        self._targets: dict[str, TargetView] = {t.name: t for t in targets}
        self._list: list[TargetView] | None = None
        self.transitions: list[TransitionView] = []
        self.series: dict[str, list[RttMinuteView]] = {}
        self.probe_calls: list[tuple[str, str | None, float]] = []
        self.probe_report = ProbeReport(
            success=True,
            duration_s=0.0123,
            status=200,
            reason="OK",
            phases={"resolve": 0.001, "connect": 0.002, "response": 0.0093},
            transport="udp",
            address="192.0.2.1:5060",
        )
        self.contact_list: list[ContactView] | None = None
        self.stats_value = EngineStats(
            targets=0,
            in_flight=3,
            probes_total={"success": 10, "failure": 2, "timeout": 1, "transport_error": 1},
            scheduler_lag_p99_s=0.0042,
            started_at=T0 - 3600,
        )

    @classmethod
    def many(cls, n: int, now: float = T0) -> FakeView:
        """``n`` targets, a tenth unreachable and a few in each other state."""
        states = ["reachable"] * 14 + ["unreachable"] * 2 + ["lagged", "unknown", "nonqualified"]
        targets = [
            make_target(f"peer-{i:06d}", states[i % len(states)], i=i, now=now) for i in range(n)
        ]
        return cls(targets, now)

    def fill_series(self, name: str, until: float, hours: float = 24) -> None:
        """Per-minute RTT for ``hours`` before ``until``: a daily swell, a peak, one gap."""
        start = (until - hours * 3600) // 60 * 60
        minutes = []
        for k in range(int(hours * 60)):
            at = start + 60 * k
            if 600 <= k < 690:  # an hour and a half without answers
                continue
            mean = 0.012 + 0.006 * math.sin(k / 180) + (0.03 if 1000 <= k < 1010 else 0)
            minutes.append(RttMinuteView(at, 1, mean * 0.8, mean * 1.35, mean))
        self.series[name] = minutes

    def add(self, target: TargetView) -> None:
        self._targets[target.name] = target
        self._list = None

    def transition(
        self, name: str, to_state: str, cause: str = "timeout", rtt_s: float | None = None
    ) -> TransitionView:
        assert to_state in STATES
        old = self._targets[name]
        self.now += 1
        event = TransitionView(
            len(self.transitions) + 1, name, self.now, old.state, to_state, cause, rtt_s
        )
        self.transitions.append(event)
        self.add(dataclasses.replace(old, state=to_state, since=self.now, rtt_s=rtt_s))
        return event

    # MonitorView

    def targets(self) -> Sequence[TargetView]:
        if self._list is None:
            self._list = list(self._targets.values())
        return self._list

    def samples(self) -> Sequence[TargetSample]:
        return [TargetSample.of(t) for t in self.targets()]

    def target(self, name: str) -> TargetView | None:
        return self._targets.get(name)

    def history(self, name: str, limit: int = 1000) -> list[TransitionView]:
        return [t for t in self.transitions if t.target == name][-limit:]

    def events(self, after_id: int = 0, limit: int = 100) -> list[TransitionView]:
        return [t for t in self.transitions if t.id is not None and t.id > after_id][:limit]

    def rtt_series(self, name: str, since: float, until: float) -> list[RttMinuteView]:
        return [m for m in self.series.get(name, []) if since <= m.minute_start < until]

    def stats(self) -> EngineStats:
        last = self.transitions[-1].id if self.transitions else 0
        return dataclasses.replace(
            self.stats_value, targets=len(self._targets), last_event_id=last or 0
        )

    async def probe(self, uri: str, module: str | None, timeout: float) -> ProbeReport:
        self.probe_calls.append((uri, module, timeout))
        return self.probe_report

    def contacts(self) -> list[ContactView] | None:
        return self.contact_list
