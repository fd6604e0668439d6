"""What `ledger agent` exports: its publishes, its last discovery and publish, whether NATS is connected and
whether a snapshot is waiting to go out."""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge

PUBLISHED, FAILED = "ok", "failed"


class AgentMetrics:
    """`ledger_agent_*`; the agent calls the methods, the gauges of its state read it at scrape time."""

    def __init__(
        self, registry: CollectorRegistry, *, connected: Callable[[], bool], waiting: Callable[[], bool]
    ) -> None:
        self._publishes = Counter(
            "ledger_agent_publishes",
            "host.capacity publishes, by outcome (ok: the stream acknowledged it; failed: retried later)",
            ["outcome"],
            registry=registry,
        )
        self._discoveries = Counter(
            "ledger_agent_discoveries",
            "Discovery runs, by outcome (ok, or failed: nothing was published)",
            ["outcome"],
            registry=registry,
        )
        self._last_discovery = Gauge(
            "ledger_agent_last_discovery_timestamp_seconds",
            "When discovery last ran successfully (Unix time)",
            registry=registry,
        )
        self._last_publish = Gauge(
            "ledger_agent_last_publish_timestamp_seconds",
            "When a host.capacity was last acknowledged by the stream (Unix time)",
            registry=registry,
        )
        Gauge(
            "ledger_agent_nats_connected", "1 while the agent has a connection to NATS", registry=registry
        ).set_function(lambda: float(connected()))
        Gauge(
            "ledger_agent_snapshot_waiting",
            "1 while a snapshot waits to be published (NATS down, or the stream not taking it)",
            registry=registry,
        ).set_function(lambda: float(waiting()))
        for outcome in (PUBLISHED, FAILED):
            self._publishes.labels(outcome)
            self._discoveries.labels(outcome)

    def discovered(self, ok: bool) -> None:
        self._discoveries.labels(PUBLISHED if ok else FAILED).inc()
        if ok:
            self._last_discovery.set(time.time())

    def published(self, ok: bool) -> None:
        self._publishes.labels(PUBLISHED if ok else FAILED).inc()
        if ok:
            self._last_publish.set(time.time())
