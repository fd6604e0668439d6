"""CLI calls through a running service (when --nats-url or LEDGER_NATS_URL is set), not the database."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from typing import TypeVar

from ledger.client import LedgerClient
from ledger.config import Settings

T = TypeVar("T")


def via_service(settings: Settings, call: Callable[[LedgerClient], Awaitable[T]]) -> T:
    """Run one client call against the service at settings.nats_url; Ctrl-C ends it (KeyboardInterrupt).

    Ctrl-C races the call instead of cancelling it: nats-py swallows a cancellation that lands while a
    publish is still flushing, and the command would then wait out the request timeout."""

    async def run() -> T:
        assert settings.nats_url is not None
        interrupted = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGINT, interrupted.set)
        client = await LedgerClient.connect(  # checks the URL
            settings.nats_url, settings, timeout=settings.request_timeout, reconnect_forever=False
        )
        answer = asyncio.ensure_future(call(client))
        stop = asyncio.ensure_future(interrupted.wait())
        try:
            await asyncio.wait((answer, stop), return_when=asyncio.FIRST_COMPLETED)
            if not answer.done():
                answer.cancel()
                raise KeyboardInterrupt
            return answer.result()
        finally:
            stop.cancel()
            if interrupted.is_set():
                await client.nc.close()  # nothing to drain: the answer is no longer wanted
            else:
                await client.close()

    return asyncio.run(run())
