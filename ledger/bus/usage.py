"""Usage over NATS: samplers publish one report per host and interval on `ledger.usage.<host>`, and the
service stores them (`UsageIngest`), summarises them hourly and prunes them.

Usage is lossy by design, so nothing here ever waits on or retries for a single report: a report that is
malformed, late or impossible is dropped, counted by reason and logged (at most one line a reason a
minute), and acknowledged like any other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from ledger.bus.jetstream import (
    USAGE_DURABLE,
    USAGE_STREAM,
    ensure_stream,
    usage_consumer_config,
    usage_stream_config,
    usage_subject,
)
from ledger.core.errors import LedgerError
from ledger.core.usage import InvalidUsage, UsageReport, parse_report
from ledger.store.ledger import Ledger

log = logging.getLogger("ledger.usage")

BATCH = 200
ROLLUP_INTERVAL_S = 60.0  # how often the hourly summaries are brought up to date
PRUNE_INTERVAL_S = 3600.0
LOG_EVERY_S = 60.0
START_RETRY_S = 2.0


class DropLog:
    """Counts dropped reports by reason; logs the first of a reason, then at most one line a minute."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.counts: Counter[str] = Counter()
        self._unlogged: Counter[str] = Counter()
        self._last: dict[str, float] = {}
        self._clock = clock

    def drop(self, reason: str, detail: str = "", count: int = 1) -> None:
        self.counts[reason] += count
        self._unlogged[reason] += count
        now = self._clock()
        if now - self._last.get(reason, -LOG_EVERY_S) >= LOG_EVERY_S:
            log.warning(
                "usage dropped (%s) x%d%s", reason, self._unlogged[reason], f": {detail}" if detail else ""
            )
            self._unlogged[reason] = 0
            self._last[reason] = now


async def publish_report(js: JetStreamContext, report: UsageReport, timeout: float = 2.0) -> None:
    """Publish one report; JetStream's acknowledgement says the stream has it."""
    await js.publish(usage_subject(report.host), report.to_json(), timeout=timeout)


async def ensure_usage_stream(js: JetStreamContext, replicas: int = 1, *, owner: bool = True) -> None:
    """The usage stream: created if missing; updated only by its owner, `ledger serve` (see ensure_stream)."""
    await ensure_stream(js, usage_stream_config(replicas), owner=owner)


class UsageIngest:
    """The service's side: fetch reports in batches, store them, keep the hourly summaries current."""

    def __init__(self, nc: Client, ledger: Ledger, *, retention_days: float, replicas: int = 1) -> None:
        self.js = nc.jetstream()
        self.ledger = ledger
        self.retention_days = retention_days
        self.replicas = replicas
        self.drops = DropLog()
        self.stored = 0
        self._sub: Any = None

    async def start(self) -> None:
        await ensure_usage_stream(self.js, self.replicas)
        try:
            await self.js.consumer_info(USAGE_STREAM, USAGE_DURABLE)
        except NotFoundError:
            await self.js.add_consumer(USAGE_STREAM, usage_consumer_config())
        self._sub = await self.js.pull_subscribe_bind(durable=USAGE_DURABLE, stream=USAGE_STREAM)

    async def close(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def run(self, stop: asyncio.Event) -> None:
        """Until `stop`: store what arrives; every ROLLUP_INTERVAL_S bring the summaries up to date. Then
        unsubscribe (a pull subscription left open makes the connection's drain wait out its timeout)."""
        try:
            if await self._started(stop):
                await self._loop(stop)
        finally:
            await self.close()

    async def _started(self, stop: asyncio.Event) -> bool:
        """Bind the usage consumer, retrying while NATS or JetStream is unavailable (usage waits; the
        ledger does not): False if `stop` came first."""
        problem = None
        while self._sub is None and not stop.is_set():
            try:
                await self.start()
            except Exception as exc:  # NATS reconnecting, JetStream not answering yet
                if problem is None:
                    log.warning("usage ingest not started, retrying every %.0f s: %s", START_RETRY_S, exc)
                problem = exc
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), START_RETRY_S)
        if problem is not None and self._sub is not None:
            log.info("usage ingest started")
        return self._sub is not None

    async def _loop(self, stop: asyncio.Event) -> None:
        next_rollup = time.monotonic() + ROLLUP_INTERVAL_S
        next_prune = time.monotonic()
        while not stop.is_set():
            try:
                msgs = await self._sub.fetch(BATCH, timeout=1.0)
            except (TimeoutError, NatsTimeoutError):
                msgs = []
            except Exception as exc:  # NATS reconnecting: usage waits, nothing else does
                log.debug("usage fetch failed: %s", exc)
                await asyncio.sleep(1.0)
                msgs = []
            if msgs:
                await self.handle(msgs)
            now = time.monotonic()
            if now >= next_rollup:
                await self._maintain(prune=now >= next_prune)
                next_rollup = now + ROLLUP_INTERVAL_S
                if now >= next_prune:
                    next_prune = now + PRUNE_INTERVAL_S

    async def handle(self, msgs: Sequence[Msg]) -> None:
        """Store a fetched batch in one transaction and acknowledge it, whatever it held."""
        reports = []
        for msg in msgs:
            try:
                reports.append(parse_report(msg.data))
            except InvalidUsage as bad:
                self.drops.drop(bad.reason, bad.detail)
        if reports:
            try:
                result = await asyncio.to_thread(self.ledger.usage.ingest, reports)
            except LedgerError as exc:  # the database is down: these samples are lost, by design
                self.drops.drop("database_unavailable", exc.message, len(reports))
            else:
                self.stored += result.measured + result.unmeasured
                for reason, count in result.dropped.items():
                    self.drops.drop(reason, count=count)
        for msg in msgs:
            with contextlib.suppress(Exception):
                await msg.ack()

    async def _maintain(self, *, prune: bool) -> None:
        try:
            await asyncio.to_thread(self.ledger.usage.roll_up)
            if prune:
                await asyncio.to_thread(self.ledger.usage.prune, self.retention_days)
        except LedgerError as exc:
            log.warning("usage summaries not updated: %s", exc.message)
