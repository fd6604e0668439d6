"""Requests that are answered in groups: parsed on arrival, queued, and taken a group at a time.

One transaction (or one search) then serves the whole group, so a busy service does less work per request
the more requests wait: validate's group commit and place's shared search both queue here.
"""

from __future__ import annotations

import asyncio
from typing import Generic, TypeVar

Item = TypeVar("Item")


class GroupQueue(Generic[Item]):
    """Waiting requests, oldest first. At most `limit` wait: `put` then waits for room, so the endpoint
    stops taking messages and NATS buffers them."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._items: list[Item] = []
        self._queued = asyncio.Event()  # something waits
        self._room = asyncio.Event()  # fewer than `limit` wait
        self._room.set()
        self._idle = asyncio.Event()  # nothing waits and no group is being answered
        self._idle.set()

    async def put(self, item: Item) -> None:
        while len(self._items) >= self.limit:
            self._room.clear()
            await self._room.wait()
        self._items.append(item)
        self._idle.clear()
        self._queued.set()

    async def take(self, most: int) -> list[Item]:
        """The oldest `most` (at least one: waits for it). Call `answered()` once they are."""
        await self._queued.wait()
        group, self._items = self._items[:most], self._items[most:]
        if not self._items:
            self._queued.clear()
        self._room.set()
        return group

    def answered(self) -> bool:
        """A group taken has been answered; whether nothing else waits (the queue is idle again)."""
        if self._items:
            return False
        self._idle.set()
        return True

    @property
    def idle(self) -> bool:
        return self._idle.is_set()

    async def wait_idle(self) -> None:
        await self._idle.wait()
