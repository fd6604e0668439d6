"""What the event consumer did: events by outcome, how long each fetched batch took, and how far the durable
consumer is behind the stream (read from JetStream every few seconds, never during a scrape)."""

from __future__ import annotations

import time
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# applied | stale | duplicate | dead_letter are the consumer's outcomes; retry: naked for redelivery because
# the database was unavailable; conflict: naked because a concurrent transaction conflicted (a deadlock
# another replica's batch was part of), which is no outage
OUTCOMES = ("applied", "stale", "duplicate", "dead_letter", "retry", "conflict")
# one event applies in well under a millisecond; a batch of 128 on PostgreSQL in tens of milliseconds
BATCH_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class EventMetrics:
    """`ledger_events_total`, `ledger_event_batch_duration_seconds` and the lag gauges."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._events = Counter(
            "ledger_events",
            "Lifecycle events this process handled, by outcome (applied, stale, duplicate, dead_letter; "
            "retry: handed back for redelivery because the database was unavailable; conflict: handed back "
            "because a concurrent transaction conflicted)",
            ["outcome"],
            registry=registry,
        )
        self._batch = Histogram(
            "ledger_event_batch_duration_seconds",
            "Time to apply one fetched batch of events in one transaction and acknowledge it",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self._pending = Gauge(
            "ledger_events_pending",
            "Events in the stream the durable consumer has not delivered yet (the lag), from JetStream",
            registry=registry,
        )
        self._ack_pending = Gauge(
            "ledger_events_ack_pending",
            "Events delivered to the durable consumer and not acknowledged yet, from JetStream",
            registry=registry,
        )
        self._lag_read = Gauge(
            "ledger_events_lag_read_timestamp_seconds",
            "When the lag gauges were last read from JetStream (Unix time); 0 until the first read",
            registry=registry,
        )
        self._children = {outcome: self._events.labels(outcome) for outcome in OUTCOMES}

    def batch(self, seconds: float, outcomes: Iterable[str]) -> None:
        """One fetched batch handled in `seconds`, with each message's outcome."""
        self._batch.observe(seconds)
        for outcome in outcomes:
            child = self._children.get(outcome)
            if child is None:
                child = self._children[outcome] = self._events.labels(outcome)
            child.inc()

    def lag(self, pending: int, ack_pending: int) -> None:
        """What JetStream says the durable consumer has still to deliver and to see acknowledged."""
        self._pending.set(pending)
        self._ack_pending.set(ack_pending)
        self._lag_read.set(time.time())
