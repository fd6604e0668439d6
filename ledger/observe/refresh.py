"""The gauges that are read every few seconds rather than at scrape time: the consumer's lag (a JetStream
request, which only the event loop can make) and the record counts (database work, done on a thread). A
failed read keeps the last values; `ledger_events_lag_read_timestamp_seconds` says how old the lag is."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from ledger.observe.database import ObserveDatabase, describe
from ledger.observe.events import EventMetrics
from ledger.observe.records import RecordCounts, RecordsCollector, count_records

log = logging.getLogger("ledger.observe")

INTERVAL_S = 5.0  # well inside Prometheus's usual 15 s scrape interval
Lag = Callable[[], Awaitable[tuple[int, int]]]  # (not yet delivered, delivered and not acknowledged)


class Refresher:
    """Reads the lag and the record counts until told to stop."""

    def __init__(
        self, lag: Lag, events: EventMetrics, db: ObserveDatabase, records: RecordsCollector
    ) -> None:
        self._lag = lag
        self._events = events
        self._db = db
        self._records = records

    async def run(self, stop: asyncio.Event, interval: float = INTERVAL_S) -> None:
        """Refresh now and every `interval` seconds until `stop` is set."""
        while not stop.is_set():
            await self.refresh()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)

    async def refresh(self) -> None:
        try:
            pending, ack_pending = await self._lag()
        except Exception as exc:  # NATS down or slow: /readyz says so; keep the last values meanwhile
            log.debug("cannot read the consumer's lag: %s", exc or type(exc).__name__)
        else:
            self._events.lag(pending, ack_pending)
        try:
            self._records.counts = await asyncio.to_thread(self._count)
        except Exception as exc:  # the database is down: the capacity scrape reports it
            log.debug("cannot count records: %s", describe(exc))

    def _count(self) -> RecordCounts:
        with self._db.read() as conn:
            return count_records(conn)
