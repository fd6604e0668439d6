"""flush() must not return before the server has every command written ahead of it (see
ledger/bus/ordered_client.py for the nats-py 2.16 behaviour this guards against)."""

from __future__ import annotations

import asyncio

from nats.aio.msg import Msg
from nats.errors import NoRespondersError, TimeoutError

from ledger.bus.connect import connect
from ledger.bus.embedded import EmbeddedNats

MESSAGES = 2_000


async def test_flush_returns_only_after_the_server_has_every_publish(nats_server: EmbeddedNats) -> None:
    publisher = await connect(nats_server.url, name="ordered-publisher", reconnect_forever=False)
    listener = await connect(nats_server.url, name="ordered-listener", reconnect_forever=False)
    try:
        for attempt in range(5):
            subject = f"ordered.{attempt}"
            sub = await listener.subscribe(subject)  # no callback: messages wait in its queue, counted
            await listener.flush()
            for i in range(MESSAGES):
                await publisher.publish(subject, str(i).encode())
            await publisher.flush()
            # The server routed every publish before answering the publisher's PING; the listener's
            # PING is answered after them, so by its PONG every message has been read.
            await listener.flush()
            assert sub.pending_msgs == MESSAGES, f"attempt {attempt}: {sub.pending_msgs} of {MESSAGES}"
            await sub.unsubscribe()
    finally:
        await publisher.close()
        await listener.close()


async def test_requests_racing_a_drain_are_answered_or_see_no_responders(nats_server: EmbeddedNats) -> None:
    """The shape of a graceful stop: callers keep asking while the responder drains its subscription. A
    request the server routed to it before the UNSUB must be answered; one routed after finds no responder.
    None may vanish (a timeout), which is what a PING overtaking the UNSUB causes."""
    service = await connect(nats_server.url, name="ordered-service", reconnect_forever=False)
    caller = await connect(nats_server.url, name="ordered-caller", reconnect_forever=False)
    try:

        async def answer(msg: Msg) -> None:
            await msg.respond(msg.data)

        sub = await service.subscribe("ordered.requests", queue="ordered", cb=answer)
        await service.flush()
        outcomes: list[str] = []
        draining = asyncio.Event()

        async def ask(worker: int) -> None:
            for i in range(10_000):
                try:
                    await caller.request("ordered.requests", f"{worker}-{i}".encode(), timeout=3)
                    outcomes.append("answered")
                except NoRespondersError:
                    outcomes.append("no responders")
                    return
                except TimeoutError:
                    outcomes.append("lost")
                    return
                if i == 20:
                    draining.set()

        askers = [asyncio.create_task(ask(worker)) for worker in range(64)]
        await draining.wait()
        await asyncio.wait_for(sub.drain(), 10)
        await asyncio.gather(*askers)
        assert outcomes.count("lost") == 0, f"{outcomes.count('lost')} requests vanished"
        assert outcomes.count("answered") > 64 * 20
    finally:
        await service.close()
        await caller.close()
