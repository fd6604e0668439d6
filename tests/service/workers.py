"""Client OS processes for the concurrency tests (importable, so multiprocessing's spawn can run them)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import nats


async def _hammer(url: str, requests: int, body: dict[str, Any]) -> list[dict[str, Any]]:
    nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=1, allow_reconnect=False)
    try:

        async def one() -> dict[str, Any]:
            try:
                msg = await nc.request("ledger.v1.validate", json.dumps(body).encode(), timeout=30)
            except Exception as exc:  # no answer: reported, and the test fails on it
                return {"ok": None, "error": type(exc).__name__}
            reply = json.loads(msg.data)
            reply["_error_header"] = (msg.headers or {}).get("Nats-Service-Error-Code")
            return dict(reply)

        return list(await asyncio.gather(*(one() for _ in range(requests))))
    finally:
        await nc.close()


def hammer(url: str, requests: int, body: dict[str, Any], barrier: Any, results: Any) -> None:
    """Wait for every sibling at the barrier, then send `requests` validates at once; put the replies."""
    barrier.wait(timeout=60)
    results.put(asyncio.run(_hammer(url, requests, body)))
