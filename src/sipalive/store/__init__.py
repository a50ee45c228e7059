"""Persistence: targets' state, transitions, RTT aggregates and the event outbox (SQLite)."""

from sipalive.store.sqlite import (
    SCHEMA_VERSION,
    OutboxRow,
    PruneResult,
    RttMinute,
    Store,
    StoreWriter,
    TargetRow,
    TransitionRow,
    iso8601,
)

__all__ = [
    "SCHEMA_VERSION",
    "OutboxRow",
    "PruneResult",
    "RttMinute",
    "Store",
    "StoreWriter",
    "TargetRow",
    "TransitionRow",
    "iso8601",
]
