"""The qualify domain, pure: no sockets, no clock, randomness passed in.

* :mod:`~sipalive.qualify.state`: settings (Asterisk's names) and the peer state machine
  with hysteresis: UNKNOWN, REACHABLE, LAGGED, UNREACHABLE, NONQUALIFIED.
* :mod:`~sipalive.qualify.rtt`: RFC 6298 smoothed RTT and variance, Karn's rule, percentiles.
* :mod:`~sipalive.qualify.schedule`: one deadline calendar (5-ms buckets) for every target,
  first probes spread by a hash of the name, +-10% jitter, a bounded in-flight set.
* :mod:`~sipalive.qualify.history`: bounded rings of transitions and failures, per-minute
  RTT aggregates.
* :mod:`~sipalive.qualify.target`: all of the above for one target.
"""

from sipalive.qualify.history import (
    MinuteAggregate,
    ProbeFailure,
    Ring,
    RttMinuteAggregator,
    TargetHistory,
    rtt_bucket,
)
from sipalive.qualify.rtt import KarnInput, RttEstimator, RttSnapshot, nearest_rank
from sipalive.qualify.schedule import JITTER, Due, Scheduler, spread_fraction
from sipalive.qualify.state import (
    PeerState,
    ProbeOutcome,
    ProbeResultLike,
    QualifyCounters,
    QualifySettings,
    QualifyState,
    Transition,
    TransitionCause,
)
from sipalive.qualify.target import QualifyTarget

__all__ = [
    "JITTER",
    "Due",
    "KarnInput",
    "MinuteAggregate",
    "PeerState",
    "ProbeFailure",
    "ProbeOutcome",
    "ProbeResultLike",
    "QualifyCounters",
    "QualifySettings",
    "QualifyState",
    "QualifyTarget",
    "Ring",
    "RttEstimator",
    "RttMinuteAggregator",
    "RttSnapshot",
    "Scheduler",
    "TargetHistory",
    "Transition",
    "TransitionCause",
    "nearest_rank",
    "rtt_bucket",
    "spread_fraction",
]
