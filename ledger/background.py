"""Work `ledger serve` repeats in the background: on a thread, so the event loop never waits on the
database, every so many seconds until the service stops. A failed run is logged, and the next one tries
again: the database being down for a while must not end the service's upkeep."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


async def every(
    interval: float,
    stop: asyncio.Event,
    work: Callable[[], T],
    done: Callable[[T], None],
    *,
    what: str,
    log: logging.Logger,
) -> None:
    """Run `work` on a thread every `interval` seconds until `stop` is set, and hand what it returns to
    `done`; a run that raises is logged as `what` failing."""
    while True:
        try:
            await asyncio.wait_for(stop.wait(), interval)
            return
        except TimeoutError:
            pass
        try:
            result = await asyncio.to_thread(work)
        except Exception as exc:  # the database is down, say: the next run tries again
            log.warning("%s failed (%s: %s); trying again in %.0f s", what, type(exc).__name__, exc, interval)
            continue
        done(result)
