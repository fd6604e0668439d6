"""The sampling loop of `ledger agent` (and of `ledger serve` for its own host): every interval, ask which
instances are Running, sample them, publish one report. A round that fails (the ledger unreachable, NATS
reconnecting) is skipped with a log line, never retried: the next round is due soon anyway."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence

from nats.js import JetStreamContext

from ledger.bus.usage import ensure_usage_stream, publish_report
from ledger.core.errors import LedgerError
from ledger.core.results import InstanceUtilizationInfo
from ledger.core.usage import UsageReport
from ledger.usage.sampler import Sampler

log = logging.getLogger("ledger.usage")

RunningInstances = Callable[[], Awaitable[Sequence[InstanceUtilizationInfo]]]
# The JetStream of the connection in use now; raises Unavailable while there is none (the agent reconnects
# by itself, so its connection changes).
CurrentJetStream = Callable[[], JetStreamContext]


class SamplingLoop:
    """Samples and publishes every `interval_s` seconds until stopped."""

    def __init__(
        self, jetstream: CurrentJetStream, sampler: Sampler, running: RunningInstances, interval_s: float
    ) -> None:
        self.jetstream = jetstream
        self._stream_ready_on: JetStreamContext | None = None
        self.sampler = sampler
        self.running = running
        self.interval_s = interval_s
        self.published = 0
        self.instances_measured = 0
        self.instances_unmeasured = 0
        self.last_problem: str | None = None
        self.last_report: UsageReport | None = None  # the newest report (per-instance metrics read it)

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            started = loop.time()
            try:
                await self.round()
                self._fine()
            except LedgerError as exc:
                self._problem(exc.message)
            except Exception as exc:  # NATS reconnecting, a timeout: skip this round
                self._problem(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
            remaining = self.interval_s - (loop.time() - started)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(remaining, 0.0))

    async def round(self) -> None:
        """One sample of every Running instance, published."""
        js = self.jetstream()
        if js is not self._stream_ready_on:
            await ensure_usage_stream(js, owner=False)  # `ledger serve` sets its replicas
            self._stream_ready_on = js
        instances = await self.running()
        report = await asyncio.to_thread(self.sampler.sample, instances, self.interval_s)
        self.last_report = report
        await publish_report(js, report)
        self.published += 1
        self.instances_measured += len(report.instances)
        self.instances_unmeasured += len(report.unmeasured)

    def _problem(self, problem: str) -> None:
        if problem != self.last_problem:
            log.warning("usage sampling skipped a round: %s", problem)
        self.last_problem = problem

    def _fine(self) -> None:
        if self.last_problem is not None:
            log.info("usage sampling is back")
        self.last_problem = None
