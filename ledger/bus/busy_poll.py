"""Keep the event loop polling for a moment after a reply instead of sleeping in epoll.

A caller that sends one request at a time sends the next one a round trip after our reply; a process that
slept meanwhile wakes with cold caches, which can cost as much as the request itself. So after a reply the
loop polls for a bounded window, as Linux's `net.core.busy_poll` does for sockets: at most that much CPU per
reply (docs/protocol.md, "One after another"). It polls only while `idle()` says nothing is running on a
thread, which must not have to fight a spinning loop for the GIL.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class BusyPoll:
    """After `after_reply`, runs the loop without sleeping for up to `seconds` while `idle()` holds."""

    def __init__(
        self, seconds: float, idle: Callable[[], bool], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.seconds = seconds
        self._idle = idle
        self._clock = clock
        self._until = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop being kept awake, if any

    @property
    def polling(self) -> bool:
        """Whether the loop is being kept awake right now."""
        return self._loop is not None

    def after_reply(self) -> None:
        """Start (or extend) the window; a no-op when the window is 0."""
        if self.seconds <= 0:
            return
        self._until = self._clock() + self.seconds
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # not polling, or a loop that closed while it was
            self._loop = loop
            loop.call_soon(self._poll, loop)

    def stop(self) -> None:
        """No more polling, from now on (the service is stopping)."""
        self.seconds = 0
        self._until = 0.0

    def _poll(self, loop: asyncio.AbstractEventLoop) -> None:
        # a ready callback makes the loop poll its sockets with a zero timeout instead of sleeping
        if loop is not self._loop:
            return
        if self._idle() and self._clock() < self._until:
            loop.call_soon(self._poll, loop)
        else:
            self._loop = None
