"""Publishing lifecycle events to JetStream: the event id is the `Nats-Msg-Id`, and retries reuse it, so a
retry after a lost acknowledgement is deduplicated by the stream (and by the ledger after that)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from typing import Any

from nats.js import JetStreamContext
from nats.js.api import PubAck

from ledger.core.errors import Unavailable
from ledger.events.contract import parse_envelope, subject_for

log = logging.getLogger("ledger.publish")


async def publish_event(
    js: JetStreamContext,
    envelope: Mapping[str, Any],
    *,
    retries: int = 5,
    timeout: float = 5.0,
    backoff: float = 0.2,
) -> PubAck:
    """Validate and publish one event envelope; raises InvalidEvent for a bad one, Unavailable when the
    stream cannot be reached after `retries` attempts."""
    event = parse_envelope(envelope)
    subject = subject_for(event.host, event.type)
    payload = json.dumps(envelope, separators=(",", ":")).encode()
    headers = {"Nats-Msg-Id": event.id}
    last: Exception | None = None
    for attempt in range(retries + 1):
        try:
            return await js.publish(subject, payload, timeout=timeout, headers=headers)
        except Exception as exc:  # timeout, no responders, reconnecting: retry with the same message id
            last = exc
            if attempt < retries:
                await asyncio.sleep(backoff * 2**attempt)
    raise Unavailable(f"could not publish event {event.id} to {subject}: {last or 'no answer'}")
