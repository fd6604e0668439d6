"""`ledger serve`'s background upkeep of the database: what the retention settings let go is pruned every
`prune_interval` seconds, in small batches, so admission never waits behind a big delete; holds past their
TTL are ended every `sweep_interval` seconds on hosts nothing else locks, so fleet searches, which read
hosts without locking them, see that room again."""

from __future__ import annotations

import asyncio
import logging

from ledger.background import every
from ledger.bus.jetstream import DUPLICATE_WINDOW_S
from ledger.config import Settings
from ledger.store.ledger import Ledger
from ledger.store.retention import Limits, PruneReport, Retention

log = logging.getLogger("ledger.retention")
SWEEP_BATCH = 500  # hosts swept per run at most: each in a short transaction of its own


async def prune_until(stop: asyncio.Event, ledger: Ledger, settings: Settings, consumer: str) -> None:
    """Prune every `settings.prune_interval` seconds until `stop` is set."""
    retention = Retention(ledger.db, consumer=consumer, duplicate_window_s=DUPLICATE_WINDOW_S)
    limits = Limits.of(settings)

    def pruned(report: PruneReport) -> None:
        if report.total:
            log.info("pruned %d rows", report.total, extra=report.to_dict())

    await every(
        settings.prune_interval,
        stop,
        lambda: retention.prune_once(limits),
        pruned,
        what="pruning",
        log=log,
    )


async def sweep_until(stop: asyncio.Event, ledger: Ledger, settings: Settings) -> None:
    """End holds past their TTL every `settings.sweep_interval` seconds until `stop` is set."""

    def swept(hosts: int) -> None:
        if hosts:
            log.debug("ended the expired holds of %d hosts", hosts)

    await every(
        settings.sweep_interval,
        stop,
        lambda: ledger.sweep_due(SWEEP_BATCH),
        swept,
        what="sweeping expired holds",
        log=log,
    )
