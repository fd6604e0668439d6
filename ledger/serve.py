"""`ledger serve`: one process that migrates the database, registers its host, applies events and answers
requests, on the embedded default (SQLite + an embedded NATS server) or on a real NATS and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import signal
from pathlib import Path

from nats.aio.client import Client
from prometheus_client import CollectorRegistry

from ledger.bus.connect import connect
from ledger.bus.consumer import EventConsumer
from ledger.bus.embedded import EmbeddedNats
from ledger.bus.protocol import ENDPOINTS
from ledger.bus.service import LedgerService
from ledger.bus.usage import UsageIngest
from ledger.config import EMBEDDED_BUSY_POLL_US, Settings, mask_url
from ledger.core.errors import Unavailable
from ledger.local import open_ledger, refresh_host
from ledger.observe.events import EventMetrics
from ledger.observe.observer import Observer
from ledger.observe.requests import RequestMetrics
from ledger.observe.serving import ServeObservation
from ledger.observe.usage import HourlyUsed, IngestedUsage, SampledUsage
from ledger.pruning import prune_until, sweep_until
from ledger.store.ledger import Ledger
from ledger.usage.reporting import SamplingLoop
from ledger.usage.sampler import Sampler

log = logging.getLogger("ledger.serve")

RUNTIME_FILE = "serve.json"  # in the data dir: where the running service's NATS is, for other commands


def runtime_path(settings: Settings) -> Path:
    return settings.data_dir / RUNTIME_FILE


def write_runtime_file(settings: Settings, url: str, metrics_url: str | None = None) -> None:
    """serve.json: readable by its owner only, and with any password in the URL masked (a reader that needs
    credentials has them in its own configuration). `metrics_url` is where /metrics is really served
    (LEDGER_METRICS_ADDR may ask for any free port), or null when metrics are off."""
    path = runtime_path(settings)
    text = json.dumps(
        {"pid": os.getpid(), "nats_url": mask_url(url), "host": settings.host_id, "metrics_url": metrics_url}
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        os.fchmod(fd, 0o600)  # an older file keeps its mode through O_TRUNC
        file.write(text)


def running_nats_url(settings: Settings) -> str | None:
    """The NATS URL of a `ledger serve` running on this data dir, if one is."""
    try:
        info = json.loads(runtime_path(settings).read_text())
        os.kill(int(info["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    url = info.get("nats_url")
    return str(url) if url else None


class Stopping:
    """Why the service stops: a signal (a clean exit, 0) or a failure that ends it (raised as Unavailable)."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.failure: str | None = None

    def request(self) -> None:
        self.event.set()

    def fail(self, reason: str) -> None:
        self.failure = self.failure or reason
        self.event.set()


async def serve(settings: Settings, *, root: Path = Path("/")) -> int:
    """Run until SIGTERM or SIGINT, then drain: in-flight requests are answered, the event batch in hand is
    committed and acked, and the process exits 0."""
    embedded: EmbeddedNats | None = None
    url = settings.nats_url
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if not url:
        embedded = EmbeddedNats(settings.data_dir / "nats", port=settings.nats_port or -1)
        url = await asyncio.to_thread(embedded.start)
    ledger = None
    observer = None
    try:
        # Bound once the embedded server holds the data dir: a second serve on the same dir is told that one
        # runs already, not that the metrics port is taken. Until the service is up, /readyz says starting.
        observer = Observer.start(settings.metrics_addr)
        ledger = await asyncio.to_thread(open_ledger, settings)
        await asyncio.to_thread(refresh_host, ledger, settings, root)
        return await _serve_ledger(ledger, settings, url, observer, embedded=embedded is not None)
    finally:
        with contextlib.suppress(OSError):
            runtime_path(settings).unlink()
        if observer is not None:
            await asyncio.to_thread(observer.stop)
        if ledger is not None:
            ledger.close()
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)


async def _usage_jobs(
    nc: Client, ledger: Ledger, settings: Settings, registry: CollectorRegistry
) -> list[UsageIngest | SamplingLoop]:
    """Storing the usage samplers report, and (unless turned off) sampling this host's own VMs; with
    their metrics."""
    ingest = UsageIngest(
        nc, ledger, retention_days=settings.retention_usage_days, replicas=settings.stream_replicas
    )
    # started by its own run(), retrying: NATS going away during start-up must not stop the ledger
    registry.register(IngestedUsage(lambda: ingest.stored, lambda: ingest.drops.counts))
    if not settings.serve_samples_usage:
        return [ingest]
    host = settings.host_id
    js = nc.jetstream()
    sampling = SamplingLoop(
        lambda: js,
        Sampler(host),
        lambda: asyncio.to_thread(ledger.running_instances, host),
        settings.usage_interval,
    )
    registry.register(SampledUsage(lambda: sampling.last_report))
    return [ingest, sampling]


async def _serve_ledger(
    ledger: Ledger, settings: Settings, url: str, observer: Observer, *, embedded: bool
) -> int:
    stopping = Stopping()
    nc = await connect(
        url,
        settings,
        name=f"ledger-serve-{settings.host_id}",
        on_closed=lambda: stopping.fail(f"the connection to NATS at {mask_url(url)} closed for good"),
    )
    events = EventMetrics(observer.registry)
    consumer = EventConsumer(nc, ledger, metrics=events, replicas=settings.stream_replicas)
    busy_poll_us = settings.busy_poll_us
    if busy_poll_us is None:
        busy_poll_us = EMBEDDED_BUSY_POLL_US if embedded else 0
    await consumer.start()
    service = LedgerService(
        nc,
        ledger,
        default_host=settings.host_id,
        max_image_storage=settings.max_image_storage,
        disk_io_burst_multiplier=settings.disk_io_burst_multiplier,
        busy_poll_s=busy_poll_us / 1e6,
        background_idle=lambda: not consumer.applying,
        metrics=RequestMetrics(observer.registry, ENDPOINTS),
    )
    await service.start()
    observation = ServeObservation(observer, settings.database_url, events, used=HourlyUsed(ledger.clock))
    observation.watch(
        consumer,
        nats_connected=lambda: nc.is_connected,
        nats_url=mask_url(url),
        stopping=stopping.event.is_set,
    )
    # Start-up objects (SQLAlchemy metadata, compiled statements, modules) live as long as the process:
    # keep them out of the cyclic collector's full passes, which otherwise stall the loop for ms.
    gc.freeze()
    # before serve.json says the service is up: a SIGTERM from then on (a supervisor, a test) stops it
    # cleanly instead of killing it with its nats-server left behind
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.request)
    write_runtime_file(settings, url, observer.metrics_url)
    log.info(
        "serving host %s",
        settings.host_id,
        extra={
            "host": settings.host_id,
            "database": mask_url(settings.database_url),
            "nats": mask_url(url),
            "nats_embedded": embedded,
            "busy_poll_us": busy_poll_us,
            "metrics": observer.metrics_url,
            "event_loop": type(asyncio.get_running_loop()).__module__.split(".")[0],
        },
    )
    consuming = asyncio.create_task(consumer.run(stopping.event))
    background = [
        asyncio.create_task(prune_until(stopping.event, ledger, settings, consumer.durable)),
        asyncio.create_task(sweep_until(stopping.event, ledger, settings)),
        asyncio.create_task(observation.refresh_until(stopping.event, consumer.lag)),
        *(
            asyncio.create_task(job.run(stopping.event))
            for job in await _usage_jobs(nc, ledger, settings, observer.registry)
        ),
    ]
    await stopping.event.wait()
    log.info("stopping: answering in-flight requests and finishing the current event batch")
    await service.stop()
    await consuming
    await asyncio.gather(*background)
    observation.close()
    await consumer.close()
    try:
        await nc.drain()
    except Exception:  # NATS is down or reconnecting: nothing can be flushed; close what is left
        with contextlib.suppress(Exception):
            await nc.close()
    if stopping.failure:
        raise Unavailable(f"{stopping.failure}; stopped")
    log.info("stopped cleanly", extra={"events_handled": consumer.handled})
    return 0
