"""Keep the event loop polling for a moment after a reply instead of sleeping in epoll.

A caller that sends validates one after another sends the next one about a NATS round trip after it read
the reply. If the service's process sleeps meanwhile, waking it costs more than the request's own work: the
thread is rescheduled and its caches have gone cold (on a 2-core VM an admission that takes 0.1 ms back to
back takes 0.2 ms after a 0.3 ms sleep). Polling for a bounded window after each reply, as Linux's
`net.core.busy_poll` does for sockets, trades at most that window of CPU per reply for a much shorter round
trip at concurrency 1 (bench/rpc.py measures both). It polls only while the service has nothing in flight:
a database call running on a thread must not have to fight a spinning loop for the GIL.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class BusyPoll:
    """After `after_reply`, runs the loop without sleeping for up to `seconds` while `idle()` holds."""

    def __init__(self, seconds: float, idle: Callable[[], bool]) -> None:
        self.seconds = seconds
        self._idle = idle
        self._until = 0.0
        self._polling = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def after_reply(self) -> None:
        """Start (or extend) the window; a no-op when the window is 0."""
        if self.seconds <= 0:
            return
        self._until = time.monotonic() + self.seconds
        if not self._polling:
            self._polling = True
            self._loop = asyncio.get_running_loop()
            self._loop.call_soon(self._poll)

    @property
    def polling(self) -> bool:
        return self._polling

    def _poll(self) -> None:
        # a ready callback makes the loop poll its sockets with a zero timeout instead of sleeping
        assert self._loop is not None
        if self._idle() and time.monotonic() < self._until:
            self._loop.call_soon(self._poll)
        else:
            self._polling = False
