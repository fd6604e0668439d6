"""BusyPoll: after a reply the event loop keeps polling for at most its window, only while the process has
nothing on a thread, and not at all with a window of 0 or once stopped. A fake clock drives the window;
`idle()` is asked once per loop iteration spent polling, so its calls count them."""

from __future__ import annotations

import asyncio

from ledger.bus.busy_poll import BusyPoll


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Idle:
    """The `idle` callback: counts how often the poller asked (once per polling iteration)."""

    def __init__(self) -> None:
        self.calls = 0
        self.busy = False

    def __call__(self) -> bool:
        self.calls += 1
        return not self.busy


async def iterations(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_the_loop_polls_through_the_window_then_stops() -> None:
    clock, idle = Clock(), Idle()
    poll = BusyPoll(0.001, idle, clock)
    poll.after_reply()
    await iterations(20)
    assert poll.polling and idle.calls >= 19  # one poll per loop iteration: the loop never slept
    clock.now += 0.002
    await iterations(2)
    assert not poll.polling
    calls = idle.calls
    await iterations(20)
    assert idle.calls == calls


async def test_a_reply_extends_the_window() -> None:
    clock, idle = Clock(), Idle()
    poll = BusyPoll(0.001, idle, clock)
    poll.after_reply()
    clock.now += 0.0008
    poll.after_reply()
    clock.now += 0.0008  # past the first window, inside the second
    await iterations(3)
    assert poll.polling
    clock.now += 0.0003
    await iterations(2)
    assert not poll.polling


async def test_polling_stops_as_soon_as_work_is_on_a_thread() -> None:
    idle = Idle()
    poll = BusyPoll(10.0, idle, Clock())
    poll.after_reply()
    await iterations(3)
    assert poll.polling
    idle.busy = True  # e.g. an event batch applied on a thread: do not fight it for the GIL
    await iterations(2)
    assert not poll.polling


async def test_a_window_of_zero_never_polls() -> None:
    idle = Idle()
    poll = BusyPoll(0.0, idle, Clock())
    poll.after_reply()
    await iterations(5)
    assert not poll.polling and idle.calls == 0


async def test_stop_ends_polling_and_later_replies_do_not_restart_it() -> None:
    idle = Idle()
    poll = BusyPoll(10.0, idle, Clock())
    poll.after_reply()
    await iterations(3)
    poll.stop()
    await iterations(2)
    assert not poll.polling
    poll.after_reply()
    await iterations(3)
    assert not poll.polling


def test_a_window_left_open_by_a_closed_loop_does_not_block_the_next_loop() -> None:
    idle = Idle()
    poll = BusyPoll(10.0, idle, Clock())

    async def reply_and_leave() -> None:
        poll.after_reply()

    asyncio.run(reply_and_leave())  # the loop closes with the window open
    asyncio.run(reply_and_leave())
    calls = idle.calls

    async def reply_and_watch() -> None:
        poll.after_reply()
        await iterations(5)

    asyncio.run(reply_and_watch())
    assert idle.calls >= calls + 4
