"""Background retention for `ledger serve`: what the retention settings let go is pruned every
`prune_interval` seconds, in small batches on a thread, so admission never waits behind a big delete."""

from __future__ import annotations

import asyncio
import logging

from ledger.bus.jetstream import DUPLICATE_WINDOW_S
from ledger.config import Settings
from ledger.store.ledger import Ledger
from ledger.store.retention import Limits, Retention

log = logging.getLogger("ledger.retention")


async def prune_until(stop: asyncio.Event, ledger: Ledger, settings: Settings, consumer: str) -> None:
    """Prune every `settings.prune_interval` seconds until `stop` is set; a failed run is logged and the
    next one tries again."""
    retention = Retention(ledger.db, consumer=consumer, duplicate_window_s=DUPLICATE_WINDOW_S)
    limits = Limits.of(settings)
    while True:
        try:
            await asyncio.wait_for(stop.wait(), settings.prune_interval)
            return
        except TimeoutError:
            pass
        try:
            report = await asyncio.to_thread(retention.prune_once, limits)
        except Exception as exc:  # the database is down, say: the next run tries again
            log.warning(
                "pruning failed (%s: %s); trying again in %.0f s",
                type(exc).__name__,
                exc,
                settings.prune_interval,
            )
            continue
        if report.total:
            log.info("pruned %d rows", report.total, extra=report.to_dict())
