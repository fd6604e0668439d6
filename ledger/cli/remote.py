"""CLI calls through a running service (when --nats-url or LEDGER_NATS_URL is set), not the database."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from ledger.client import LedgerClient
from ledger.config import Settings

T = TypeVar("T")


def via_service(settings: Settings, call: Callable[[LedgerClient], Awaitable[T]]) -> T:
    """Run one client call against the service at settings.nats_url."""

    async def run() -> T:
        assert settings.nats_url is not None
        client = await LedgerClient.connect(  # checks the URL
            settings.nats_url, settings, timeout=settings.request_timeout, reconnect_forever=False
        )
        try:
            return await call(client)
        finally:
            await client.close()

    return asyncio.run(run())
