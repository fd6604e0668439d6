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

from sqlalchemy.engine import make_url

from ledger.bus.connect import connect
from ledger.bus.consumer import EventConsumer
from ledger.bus.embedded import EmbeddedNats
from ledger.bus.service import LedgerService
from ledger.config import EMBEDDED_BUSY_POLL_US, Settings
from ledger.local import open_ledger, refresh_host
from ledger.pruning import prune_until

log = logging.getLogger("ledger.serve")

RUNTIME_FILE = "serve.json"  # in the data dir: where the running service's NATS is, for other commands


def runtime_path(settings: Settings) -> Path:
    return settings.data_dir / RUNTIME_FILE


def running_nats_url(settings: Settings) -> str | None:
    """The NATS URL of a `ledger serve` running on this data dir, if one is."""
    try:
        info = json.loads(runtime_path(settings).read_text())
        os.kill(int(info["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    url = info.get("nats_url")
    return str(url) if url else None


def _safe_url(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


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
    try:
        ledger = await asyncio.to_thread(open_ledger, settings)
        await asyncio.to_thread(refresh_host, ledger, settings, root)
        nc = await connect(url, settings, name=f"ledger-serve-{settings.host_id}")
        consumer = EventConsumer(nc, ledger)
        busy_poll_us = settings.busy_poll_us
        if busy_poll_us is None:
            busy_poll_us = EMBEDDED_BUSY_POLL_US if embedded is not None else 0
        await consumer.start()
        service = LedgerService(
            nc,
            ledger,
            default_host=settings.host_id,
            max_image_storage=settings.max_image_storage,
            disk_io_burst_multiplier=settings.disk_io_burst_multiplier,
            busy_poll_s=busy_poll_us / 1e6,
            background_idle=lambda: not consumer.applying,
        )
        await service.start()
        # Start-up objects (SQLAlchemy metadata, compiled statements, modules) live as long as the process:
        # keep them out of the cyclic collector's full passes, which otherwise stall the loop for ms.
        gc.freeze()
        runtime_path(settings).write_text(
            json.dumps({"pid": os.getpid(), "nats_url": url, "host": settings.host_id})
        )
        log.info(
            "serving host %s",
            settings.host_id,
            extra={
                "host": settings.host_id,
                "database": _safe_url(settings.database_url),
                "nats": url,
                "nats_embedded": embedded is not None,
                "busy_poll_us": busy_poll_us,
                "event_loop": type(asyncio.get_running_loop()).__module__.split(".")[0],
            },
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        consuming = asyncio.create_task(consumer.run(stop))
        pruning = asyncio.create_task(prune_until(stop, ledger, settings, consumer.durable))
        await stop.wait()
        log.info("stopping: answering in-flight requests and finishing the current event batch")
        await service.stop()
        await consuming
        await pruning
        await consumer.close()
        try:
            await nc.drain()
        except Exception:  # NATS is down or reconnecting: nothing can be flushed; close what is left
            with contextlib.suppress(Exception):
                await nc.close()
        log.info("stopped cleanly", extra={"events_handled": consumer.handled})
        return 0
    finally:
        with contextlib.suppress(OSError):
            runtime_path(settings).unlink()
        if ledger is not None:
            ledger.close()
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
