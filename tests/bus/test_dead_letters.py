"""Malformed and impossible events published to the real stream are dead-lettered with a precise reason and
acked (never retried, never blocking): the good events after them are applied."""

from __future__ import annotations

import json
from typing import Any

from nats.aio.client import Client

from ledger.bus.jetstream import DURABLE, STREAM
from ledger.events import make_event
from ledger.store.ledger import Ledger
from tests.bus.helpers import RunningConsumer, payload, processed_ids, publish_in_order, subject, wait_for

HOST = "h-dl"
GOOD = {"id": "i-1", "name": "vm", "state": "Running", "vcpus": 2, "memory_bytes": 2**30}


def _envelope(**changes: Any) -> dict[str, Any]:
    e = make_event("instance.started", HOST, GOOD, 1)
    e.update(changes)
    return e


def _bad_cases() -> list[tuple[str, str, bytes, str]]:
    """(name, subject, payload, the reason's expected text)."""
    s = f"ledger.events.{HOST}.instance.started"
    data_neg = {**GOOD, "vcpus": -2}
    no_time = _envelope()
    del no_time["time"]
    padded = _envelope(padding="x" * 1_000_000)
    mismatch = _envelope()
    # PostgreSQL text cannot hold NUL and no encoder can write a lone surrogate: on SQLite the first would
    # once have been applied. Both engines must give the same answer: a dead letter.
    nul_id = payload(_envelope(id="nul-id")).replace(b'"i-1"', b'"i\\u0000-1"')
    surrogate_id = payload(_envelope(id="surrogate-id")).replace(b'"i-1"', b'"i\\ud800-1"')
    return [
        ("NUL in an id", s, nul_id, "event.data.id contains a NUL character"),
        ("surrogate in an id", s, surrogate_id, "event.data.id contains an unpaired surrogate"),
        ("malformed", s, b'{"id": "x", "type": ', "event is not JSON: Expecting value at line 1 column 21"),
        ("not utf-8", s, b"\xff\xfe{}", "event is not UTF-8: invalid byte at offset 0"),
        (
            "version string",
            s,
            payload(_envelope(version="3")),
            "event.version must be a whole number, got string '3'",
        ),
        (
            "unknown type",
            f"ledger.events.{HOST}.instance.exploded",
            payload(_envelope(type="instance.exploded")),
            "event.type 'instance.exploded' is not a known event type",
        ),
        (
            "negative",
            s,
            payload(_envelope(data=data_neg)),
            "event.data: instance.vcpus cannot be negative, got -2",
        ),
        ("missing", s, payload(no_time), "event is missing field(s) time"),
        ("near 1 MB", s, payload(padded), "event has unknown field(s) padding"),
        (
            "wrong subject",
            "ledger.events.other-host.instance.started",
            payload(mismatch),
            "subject 'ledger.events.other-host.instance.started' does not match the event's host and type: "
            f"expected 'ledger.events.{HOST}.instance.started'",
        ),
        (
            "impossible date",
            s,
            payload(_envelope(time="2025-02-30T00:00:00Z")),
            "is not a real date and time",
        ),
        ("not an object", s, b"[1, 2]", "event must be a JSON object, got array"),
    ]


async def test_bad_events_are_dead_lettered_with_their_reason_and_good_ones_still_apply(
    nc: Client, fresh_db_url: str
) -> None:
    cases = _bad_cases()
    assert 990_000 < len(cases[8][2]) < 2**20
    good = [
        make_event("host.capacity", HOST, json.loads(json.dumps(_capacity())), 1),
        make_event("instance.created", HOST, {**GOOD, "state": "Created"}, 1),
        make_event("instance.started", HOST, GOOD, 2),
    ]
    js = nc.jetstream()
    ledger = Ledger.open(fresh_db_url, migrate=False)
    try:
        async with RunningConsumer(nc, ledger, batch_size=4) as running:
            for n, (_, subj, body, _) in enumerate(cases):
                await js.publish(subj, body, headers={"Nats-Msg-Id": f"bad-{n}"})
            await publish_in_order(js, good)
            total = len(cases) + len(good)
            await wait_for(lambda: running.consumer.handled >= total, 30, "every message handled")
        letters = sorted(ledger.letters.page(), key=lambda d: d.stream_seq or 0)
        assert len(letters) == len(cases)
        assert letters[0].payload.count(b"\\u0000") == 1  # the escape really went out as sent
        for seq, ((name, subj, body, reason), letter) in enumerate(zip(cases, letters, strict=True), 1):
            assert reason in letter.reason, f"{name}: {letter.reason!r}"
            assert letter.stream_seq == seq and letter.subject == subj and letter.payload == body, name
            assert letter.host_id == subj.split(".")[2], name
        assert [o.outcome for o in running.outcomes] == ["dead_letter"] * len(cases) + ["applied"] * len(good)
        assert sorted(processed_ids(ledger)) == sorted(e["id"] for e in good)
        assert ledger.full_status(HOST).resources  # the good events landed
        assert [a.instance_id for a in ledger.full_status(HOST).allocations] == ["i-1"]
        assert ledger.stream_position(DURABLE) == total
        info = await js.consumer_info(STREAM, DURABLE)
        assert info.num_ack_pending == 0 and info.num_redelivered == 0  # terminated, not retried
        assert info.ack_floor.stream_seq == total
        assert ledger.drift() == []
    finally:
        ledger.close()


def _capacity() -> dict[str, Any]:
    from tests.bus.helpers import HOST_CAPACITY

    return HOST_CAPACITY


async def test_a_payload_over_the_nats_limit_is_refused_at_publish(nc: Client) -> None:
    """Over 1 MiB never reaches the stream (the server's max_payload), so the contract's own size check
    cannot be reached through NATS."""
    import pytest
    from nats.errors import MaxPayloadError

    from ledger.bus.jetstream import ensure_stream, stream_config

    js = nc.jetstream()
    await ensure_stream(js, stream_config())
    big = payload(_envelope(padding="x" * (2**20)))
    with pytest.raises(MaxPayloadError):
        await js.publish(subject(_envelope()), big)
