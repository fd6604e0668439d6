"""What `ledger serve` exports besides its request and event metrics: the ledger's state per host and
resource (read at scrape time), the record counts and the consumer's lag (refreshed every few seconds),
and the readiness checks: database reachable, NATS connected, consumer running, not stopping."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from prometheus_client import Gauge

from ledger.observe.capacity import CapacityCollector, UsedSource
from ledger.observe.database import ObserveDatabase
from ledger.observe.events import EventMetrics
from ledger.observe.observer import Observer
from ledger.observe.records import RecordsCollector
from ledger.observe.refresh import Lag, Refresher


class Consumer(Protocol):
    """What readiness and the lag gauges need of the event consumer."""

    def health(self) -> str | None: ...

    async def lag(self) -> tuple[int, int]: ...


class ServeObservation:
    """The serve-specific collectors and checks on `observer` (see the module docstring)."""

    def __init__(
        self,
        observer: Observer,
        database_url: str,
        events: EventMetrics,
        used: UsedSource | None = None,
    ) -> None:
        """`used`: where `ledger_used` comes from once usage is stored (see capacity.UsedSource)."""
        self.observer = observer
        self.events = events
        self.db = ObserveDatabase(database_url)
        self.records = RecordsCollector()
        observer.registry.register(CapacityCollector(self.db, used))
        observer.registry.register(self.records)

    def watch(
        self,
        consumer: Consumer,
        *,
        nats_connected: Callable[[], bool],
        nats_url: str,
        stopping: Callable[[], bool],
    ) -> None:
        """Readiness from here on is the four checks; `nats_url` is masked by the caller."""
        registry, readiness = self.observer.registry, self.observer.readiness
        Gauge(
            "ledger_nats_connected", "1 while the service has a connection to NATS", registry=registry
        ).set_function(lambda: float(nats_connected()))
        Gauge(
            "ledger_consumer_running",
            "1 while the event consumer's fetch loop runs and its last fetch worked",
            registry=registry,
        ).set_function(lambda: float(consumer.health() is None))
        readiness.add("database", self.db.probe)
        readiness.add(
            "nats", lambda: None if nats_connected() else f"not connected to {nats_url} (reconnecting)"
        )
        readiness.add("consumer", consumer.health)
        readiness.add("service", lambda: "stopping: draining in-flight requests" if stopping() else None)

    async def refresh_until(self, stop: asyncio.Event, lag: Lag) -> None:
        """Keep the lag and record counts fresh until `stop` is set (see refresh.py)."""
        await Refresher(lag, self.events, self.db, self.records).run(stop)

    def close(self) -> None:
        self.db.close()
