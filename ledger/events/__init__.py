"""Lifecycle events: the versioned contract (docs/events.md) and how each event maps onto the ledger."""

from __future__ import annotations

from ledger.events.contract import (
    EVENT_TYPES,
    MAX_EVENT_BYTES,
    SUBJECT_PREFIX,
    SUBJECT_WILDCARD,
    Event,
    HostCapacityRecord,
    InvalidEvent,
    make_event,
    parse_event,
    subject_for,
)

__all__ = [
    "EVENT_TYPES",
    "MAX_EVENT_BYTES",
    "SUBJECT_PREFIX",
    "SUBJECT_WILDCARD",
    "Event",
    "HostCapacityRecord",
    "InvalidEvent",
    "make_event",
    "parse_event",
    "subject_for",
]
