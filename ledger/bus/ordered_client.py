"""A nats-py client whose flush() means what it says: every command written before it has reached the server.

nats-py 2.16's `flush()` writes its PING straight to the socket, ahead of the commands still waiting in the
client's buffer (publishes, SUB, UNSUB), so its PONG proves nothing about them. Seen here (server trace):
a flush after 1,000 publishes returned before the server had the first one, and `Subscription.drain()`
(UNSUB, flush, wait for the queue) finished while the server still routed requests to the subscription,
which the client then dropped unanswered. Queuing the PING behind the buffer restores the order.

nats-py has no public way to do this, so `_send_ping` is overridden with its private `_pongs`,
`_send_command` and `_flush_pending`. pyproject.toml pins nats-py to the versions this was checked with, and
tests/unit/test_nats_private_api.py fails, saying what to re-check, when any of them changes.
"""

from __future__ import annotations

import asyncio
from typing import Any

from nats.aio.client import PING_PROTO, Client


class OrderedFlushClient(Client):
    """nats-py's Client, with the PING of flush(), rtt() and the keep-alive sent after what is buffered;
    it also remembers whether it is being closed on purpose (so a lost connection can be told apart)."""

    closing_on_purpose = False

    async def close(self) -> None:
        self.closing_on_purpose = True
        await super().close()

    async def drain(self) -> None:
        self.closing_on_purpose = True
        await super().drain()

    async def _send_ping(self, future: asyncio.Future[Any] | None = None) -> None:
        if future is None:
            future = asyncio.get_running_loop().create_future()
        self._pongs.append(future)
        await self._send_command(PING_PROTO)
        await self._flush_pending()
