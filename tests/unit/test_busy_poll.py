"""BusyPoll: after a reply the event loop keeps polling (burning CPU) for at most its window, only while the
service is idle, and not at all with a window of 0."""

from __future__ import annotations

import asyncio
import time

from ledger.bus.busy_poll import BusyPoll


async def _cpu_while_sleeping(seconds: float) -> float:
    """CPU this thread used while the loop had nothing to do but wait `seconds`."""
    start = time.thread_time()
    await asyncio.sleep(seconds)
    return time.thread_time() - start


async def test_the_loop_polls_instead_of_sleeping_for_the_window_then_sleeps() -> None:
    poll = BusyPoll(0.2, idle=lambda: True)
    poll.after_reply()
    assert poll.polling
    spun = await _cpu_while_sleeping(0.1)  # inside the window: the loop never sleeps
    assert poll.polling
    assert spun > 0.03, f"the loop slept: {spun * 1000:.1f} ms of CPU in 100 ms"
    await asyncio.sleep(0.15)  # the window is over
    assert not poll.polling
    idle = await _cpu_while_sleeping(0.1)
    assert idle < spun / 3, f"still polling after the window: {idle * 1000:.1f} ms of CPU in 100 ms"


async def test_a_reply_extends_the_window() -> None:
    poll = BusyPoll(0.06, idle=lambda: True)
    poll.after_reply()
    await asyncio.sleep(0.04)
    poll.after_reply()
    await asyncio.sleep(0.04)  # 80 ms after the first reply, 40 ms after the second
    assert poll.polling
    await asyncio.sleep(0.06)
    assert not poll.polling


async def test_polling_stops_as_soon_as_the_service_has_work_in_flight() -> None:
    busy = False
    poll = BusyPoll(10.0, idle=lambda: not busy)
    poll.after_reply()
    await asyncio.sleep(0)
    assert poll.polling
    busy = True  # e.g. a database call on a thread: do not fight it for the GIL
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert not poll.polling


async def test_a_window_of_zero_never_polls() -> None:
    poll = BusyPoll(0.0, idle=lambda: True)
    poll.after_reply()
    assert not poll.polling
    assert await _cpu_while_sleeping(0.1) < 0.02
