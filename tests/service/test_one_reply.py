"""Every request gets exactly one reply: regression tests for the defects a review found.

Each request here is sent on its own inbox, so a second reply (or none) shows; the service must then still
answer a good validate, and no second reply may have come by the time it has. The refusals must be
`invalid_request` with the field at fault, a JSON body that validates against error.reply.schema.json, and
ASCII `Nats-Service-Error` headers, never `internal`, a Python repr or silence.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from ledger.bus.connect import connect
from ledger.bus.embedded import EmbeddedNats
from ledger.bus.protocol import HEADER_CODES, MAX_ERROR_DESCRIPTION
from ledger.bus.service import DEFAULT_STATUS_LIMIT, LedgerService
from ledger.core.records import InstanceRecord
from ledger.core.resources import Capacity, ResourceType, Source
from ledger.store.ledger import Ledger
from tests.protocol.test_protocol_schemas import assert_valid
from tests.service.helpers import LEAKS

HOST = "h1"
CROWDED = "crowded"  # the host with 10,000 active instances
CROWD = 10_000
MAX_PAGE = 10_000  # the largest `limit` (status.request.schema.json)
SMALL_MAX_PAYLOAD = 128 * 1024  # a NATS server that carries less than a default page of 1,000 instances
GIB = 2**30
REPLY_TIMEOUT = 10.0


def _capacities() -> dict[ResourceType, Capacity]:
    return {
        ResourceType.CPU: Capacity(16, Source.CONFIGURED),
        ResourceType.MEMORY: Capacity(64 * GIB, Source.CONFIGURED),
        ResourceType.DISK: Capacity(1000 * GIB, Source.CONFIGURED),
        ResourceType.NETWORK: Capacity(1_250_000_000, Source.CONFIGURED),
        ResourceType.DISK_IO: Capacity(1_000_000_000, Source.DEFAULT),
    }


def _new_database(path: Path, *, crowd: int = 0) -> str:
    """A SQLite ledger with HOST and CROWDED registered, CROWDED running `crowd` instances."""
    url = f"sqlite:///{path}"
    ledger = Ledger.open(url)
    try:
        ledger.register_host(HOST, _capacities(), {})
        ledger.register_host(CROWDED, _capacities(), {})
        with ledger.batch([CROWDED]):
            for n in range(crowd):
                record = InstanceRecord(id=f"inst-{n:05d}", state="Running", name=f"vm-{n}", vcpus=0)
                ledger.apply_instance(CROWDED, record, version=1, action="created")
    finally:
        ledger.close()
    return url


# ---- a live service ---------------------------------------------------------------------------------------


@dataclass
class Live:
    nc: Client
    ledger: Ledger
    service: LedgerService


@asynccontextmanager
async def _serve(url: str, nats_dir: Path, extra_args: list[str] | None = None) -> AsyncIterator[Live]:
    ledger = Ledger.open(url, migrate=False)
    server = EmbeddedNats(nats_dir, extra_args=extra_args)
    nats_url = await asyncio.to_thread(server.start)
    nc = await connect(nats_url, name="one-reply-test", reconnect_forever=False)
    service = LedgerService(nc, ledger, default_host=HOST)
    await service.start()
    try:
        yield Live(nc, ledger, service)
    finally:
        await service.stop()
        await nc.close()
        await asyncio.to_thread(server.stop)
        try:
            assert ledger.drift() == [], "running totals drifted from the recomputed sums"
        finally:
            ledger.close()


@pytest.fixture
async def live(tmp_path: Path) -> AsyncIterator[Live]:
    async with _serve(_new_database(tmp_path / "ledger.db"), tmp_path / "nats") as served:
        yield served


@pytest.fixture(scope="module")
def crowded_database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Built once (about a second): tests only read it, apart from validates they release again."""
    yield _new_database(tmp_path_factory.mktemp("crowded") / "ledger.db", crowd=CROWD)


@pytest.fixture
async def crowded(tmp_path: Path, crowded_database: str) -> AsyncIterator[Live]:
    async with _serve(crowded_database, tmp_path / "nats") as served:
        yield served


@pytest.fixture
async def small_payload(tmp_path: Path) -> AsyncIterator[Live]:
    """A NATS server whose max_payload (128 KiB) is below a default status page of this host's 1,500."""
    config = tmp_path / "nats.conf"
    config.write_text(f"max_payload: {SMALL_MAX_PAYLOAD}\n")
    url = _new_database(tmp_path / "ledger.db", crowd=1500)
    async with _serve(url, tmp_path / "nats", ["-c", str(config)]) as served:
        assert served.nc.max_payload == SMALL_MAX_PAYLOAD
        yield served


# ---- one request, one reply --------------------------------------------------------------------------------


class Sent:
    """A request published with its own reply inbox, so that every reply it gets can be counted."""

    def __init__(self, sub: Subscription, endpoint: str, payload: bytes) -> None:
        self.sub, self.endpoint, self.payload = sub, endpoint, payload

    @classmethod
    async def publish(cls, nc: Client, endpoint: str, payload: bytes) -> Sent:
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        await nc.publish(f"ledger.v1.{endpoint}", payload, reply=inbox)
        return cls(sub, endpoint, payload)

    async def reply(self) -> Msg:
        try:
            msg = await self.sub.next_msg(timeout=REPLY_TIMEOUT)
        except TimeoutError:
            raise AssertionError(
                f"no reply within {REPLY_TIMEOUT} s to {self.endpoint} {self.payload!r}"
            ) from None
        status = (msg.headers or {}).get("Status")
        assert status is None, f"NATS status {status} (no responders?) for {self.endpoint} {self.payload!r}"
        return msg

    async def no_second_reply(self, nc: Client) -> None:
        await nc.flush()
        extra = self.sub.pending_msgs
        await self.sub.unsubscribe()
        assert extra == 0, f"{extra} more replies to {self.endpoint} {self.payload!r}"


async def good_validate(nc: Client, host: str = HOST) -> dict[str, Any]:
    """A normal validate is granted and released again (so the tests leave nothing held)."""
    sent = await Sent.publish(
        nc, "validate", json.dumps({"vcpus": 1, "memory_bytes": GIB, "host": host}).encode()
    )
    grant = ok_reply(await sent.reply(), "validate")
    assert grant["status"] == "held", grant
    await sent.no_second_reply(nc)
    released = await Sent.publish(
        nc, "release", json.dumps({"reservation_id": grant["reservation_id"]}).encode()
    )
    assert ok_reply(await released.reply(), "release")["status"] == "released"
    await released.no_second_reply(nc)
    return grant


async def one_reply(nc: Client, endpoint: str, payload: bytes) -> Msg:
    """The one reply `payload` gets; afterwards the service still grants a normal validate, and by the time
    it has, no second reply to `payload` has come."""
    sent = await Sent.publish(nc, endpoint, payload)
    msg = await sent.reply()
    await good_validate(nc)
    await sent.no_second_reply(nc)
    return msg


def _body(msg: Msg) -> tuple[str, dict[str, Any]]:
    assert msg.data, "an empty reply body"
    text = msg.data.decode("utf-8")
    for leak in LEAKS:
        assert leak not in text, f"reply leaks {leak!r}: {text}"
    reply = json.loads(text)
    assert isinstance(reply, dict), text
    return text, reply


def ok_reply(msg: Msg, endpoint: str) -> dict[str, Any]:
    text, reply = _body(msg)
    assert reply.get("ok") is True, text
    assert_valid(f"{endpoint}.reply", reply)
    assert "Nats-Service-Error" not in (msg.headers or {}), msg.headers
    return reply


def refusal(msg: Msg, code: str, field: str | None = None) -> dict[str, Any]:
    """`ok: false` with `code` (and `field`), valid against error.reply.schema.json, with the micro error
    headers present, ASCII, on one line, and saying what the body says."""
    text, reply = _body(msg)
    assert reply.get("ok") is False, text
    assert_valid("error.reply", reply)
    assert reply["code"] == code, text
    if field is not None:
        assert reply.get("field") == field, text
    headers = msg.headers or {}
    assert headers.get("Nats-Service-Error-Code") == HEADER_CODES[code], headers
    description = headers.get("Nats-Service-Error", "")
    assert description and description.isascii() and description.isprintable(), headers
    assert len(description) <= MAX_ERROR_DESCRIPTION, headers
    if reply["message"].isascii():
        assert reply["message"].startswith(description.removesuffix("..."))
    for leak in LEAKS:
        assert leak not in description, f"header leaks {leak!r}: {description}"
    return reply


# ---- lone surrogates, in a key and in a value ----------------------------------------------------------


async def test_a_key_with_a_lone_surrogate_escape_is_invalid_request(live: Live) -> None:
    reply = refusal(await one_reply(live.nc, "validate", b'{"a\\udfffb":1}'), "invalid_request")
    assert reply["field"] == "a\\udfffb", reply  # the key as its escape, which JSON and UTF-8 can carry
    assert "unpaired surrogate" in reply["message"], reply


@pytest.mark.parametrize(
    ("endpoint", "payload", "field"),
    [
        ("status", b'{"host":"\\ud800"}', "host"),
        ("release", b'{"reservation_id":"\\ud800"}', "reservation_id"),
        ("release", b'{"reservation_id":"abc\\udfff"}', "reservation_id"),
        ("validate", b'{"vcpus":1,"host":"\\ud800"}', "host"),
        ("validate", b'{"vcpus":1,"idempotency_key":"vm-\\udbff"}', "idempotency_key"),
        ("validate", b'{"vcpus":1,"needs_gpu":true,"gpu_profile":"\\udc00"}', "gpu_profile"),
        ("status", b'{"after":"\\ud800"}', "after"),
        ("status", b'{"resource":"\\ud800"}', "resource"),
        ("can_allocate", b'{"resource":"cpu","amount":1,"host":"\\ude00"}', "host"),
        ("defaults", b'{"vcpus":1,"host":"\\ud800x"}', "host"),
        ("image_pull_check", b'{"host":"\\ud800"}', "host"),
        ("status", b'{"host":"a\\u0000b"}', "host"),
        ("release", b'{"reservation_id":"\\u0000"}', "reservation_id"),
        ("candidates", b'{"vcpus":1,"exclude_hosts":["\\udfff"]}', "exclude_hosts"),
        ("place", b'{"vcpus":1,"labels":{"zone":"\\ud800"}}', "labels"),
        ("place", b'{"vcpus":1,"labels":{"\\ud800":"a"}}', "labels"),
    ],
)
async def test_a_lone_surrogate_or_nul_in_a_value_is_invalid_request_naming_the_field(
    live: Live, endpoint: str, payload: bytes, field: str
) -> None:
    reply = refusal(await one_reply(live.nc, endpoint, payload), "invalid_request", field)
    assert "surrogate" in reply["message"] or "NUL" in reply["message"], reply


async def test_a_surrogate_pair_is_one_character_and_welcome(live: Live) -> None:
    payload = b'{"vcpus":1,"idempotency_key":"vm-\\ud83d\\ude00"}'
    grant = ok_reply(await one_reply(live.nc, "validate", payload), "validate")
    assert grant["idempotency_key"] == "vm-\U0001f600"
    again = ok_reply(await one_reply(live.nc, "validate", payload), "validate")
    assert (again["reservation_id"], again["replayed"]) == (grant["reservation_id"], True)
    release = json.dumps({"reservation_id": grant["reservation_id"]}).encode()
    ok_reply(await one_reply(live.nc, "release", release), "release")


GOOD = json.dumps({"vcpus": 1, "memory_bytes": GIB}).encode()
BURST = 20


@pytest.mark.parametrize("position", [0, BURST // 2, BURST - 1])
@pytest.mark.parametrize(
    ("bad", "code", "field"),
    [
        pytest.param(b'{"a\\udfffb":1}', "invalid_request", "a\\udfffb", id="surrogate-key"),
        pytest.param(b'{"vcpus":1,"host":"\\ud800"}', "invalid_request", "host", id="surrogate-host"),
        pytest.param(
            b'{"vcpus":1,"idempotency_key":"\\udfff"}',
            "invalid_request",
            "idempotency_key",
            id="surrogate-key-value",
        ),
        pytest.param(
            b'{"vcpus":1,"ttl_seconds":' + b"9" * 401 + b"}", "invalid_request", "ttl_seconds", id="ttl-401"
        ),
        pytest.param(b'{"vcpus":1,"host":"nope"}', "unknown_host", None, id="unknown-host-in-the-group"),
    ],
)
async def test_one_bad_validate_in_a_burst_of_good_ones_spoils_none_of_them(
    live: Live, bad: bytes, code: str, field: str | None, position: int
) -> None:
    payloads = [GOOD] * (BURST - 1)
    payloads.insert(position, bad)
    sent = [await Sent.publish(live.nc, "validate", payload) for payload in payloads]  # all in flight at once
    replies = await asyncio.gather(*(s.reply() for s in sent))
    grants = [ok_reply(msg, "validate") for i, msg in enumerate(replies) if i != position]
    assert [g["status"] for g in grants] == ["held"] * (BURST - 1)
    assert len({g["reservation_id"] for g in grants}) == BURST - 1
    refusal(replies[position], code, field)
    await good_validate(live.nc)
    for s in sent:
        await s.no_second_reply(live.nc)
    cpu = ok_reply(await one_reply(live.nc, "status", b'{"resource":"cpu"}'), "status")
    assert cpu["pending"] == BURST - 1, cpu
    for grant in grants:
        released = json.dumps({"reservation_id": grant["reservation_id"]}).encode()
        assert ok_reply(await one_reply(live.nc, "release", released), "release")["status"] == "released"


# ---- numbers ----------------------------------------------------------------------------------------------

DIGITS_401 = b"1" * 401


@pytest.mark.parametrize(
    ("endpoint", "payload", "field"),
    [
        ("validate", b'{"vcpus":1,"ttl_seconds":' + DIGITS_401 + b"}", "ttl_seconds"),
        ("validate", b'{"ttl_seconds":-' + DIGITS_401 + b"}", "ttl_seconds"),
        ("validate", b'{"vcpus":' + DIGITS_401 + b"}", "vcpus"),
        ("validate", b'{"memory_bytes":' + DIGITS_401 + b"}", "memory_bytes"),
        ("can_allocate", b'{"resource":"cpu","amount":' + DIGITS_401 + b"}", "amount"),
        ("defaults", b'{"vcpus":' + DIGITS_401 + b"}", "vcpus"),
        ("status", b'{"limit":' + DIGITS_401 + b"}", "limit"),
        ("candidates", b'{"limit":' + DIGITS_401 + b"}", "limit"),
        ("place", b'{"vcpus":1,"attempts":' + DIGITS_401 + b"}", "attempts"),
    ],
)
async def test_a_401_digit_number_is_invalid_request_naming_the_field(
    live: Live, endpoint: str, payload: bytes, field: str
) -> None:
    msg = await one_reply(live.nc, endpoint, payload)
    reply = refusal(msg, "invalid_request", field)
    assert "401 digits" in reply["message"], reply
    assert DIGITS_401.decode() not in msg.data.decode(), "a refusal must not echo a huge number back"


@pytest.mark.parametrize(
    ("endpoint", "payload", "field", "hint"),
    [
        ("validate", b'{"vcpus":2.0}', "vcpus", "write 2,"),
        ("validate", b'{"vcpus":1,"memory_bytes":1e3}', "memory_bytes", "write 1000,"),
        ("can_allocate", b'{"resource":"cpu","amount":0.0}', "amount", "write 0,"),
        ("defaults", b'{"vcpus":4.0}', "vcpus", "write 4,"),
        ("status", b'{"limit":10.0}', "limit", "write 10,"),
    ],
)
async def test_a_float_literal_for_an_integer_is_invalid_request(
    live: Live, endpoint: str, payload: bytes, field: str, hint: str
) -> None:
    reply = refusal(await one_reply(live.nc, endpoint, payload), "invalid_request", field)
    assert hint in reply["message"], reply


@pytest.mark.parametrize(
    ("endpoint", "payload", "field"),
    [
        ("validate", b'{"vcpus":1,"vcpus":64}', "vcpus"),
        ("validate", b'{"vcpus":1,"vcpus":1}', "vcpus"),
        ("release", b'{"reservation_id":"a","reservation_id":"b"}', "reservation_id"),
        ("status", b'{"host":{"a":1,"a":2}}', "host"),
        ("hosts", b'{"x":1,"x":1}', "x"),
    ],
)
async def test_a_repeated_key_is_invalid_request(
    live: Live, endpoint: str, payload: bytes, field: str
) -> None:
    reply = refusal(await one_reply(live.nc, endpoint, payload), "invalid_request", field)
    assert "twice" in reply["message"], reply


@pytest.mark.parametrize(
    "payload",
    [
        b'{"allocations":false,"limit":-1}',
        b'{"allocations":false,"limit":10001}',
        b'{"resource":"cpu","limit":-1}',
        b'{"resource":"cpu","limit":' + b"9" * 30 + b"}",
    ],
)
async def test_a_limit_out_of_range_is_refused_even_where_no_page_is_listed(
    live: Live, payload: bytes
) -> None:
    """status.request.schema.json allows a `limit` from 0 to 10,000 whatever the other fields say, and
    docs/protocol.md refuses a negative or too large amount: the service must not answer `ok` to these."""
    refusal(await one_reply(live.nc, "status", payload), "invalid_request", "limit")


# ---- status of a host with 10,000 instances ----------------------------------------------------------------


def _status_request(**body: Any) -> bytes:
    return json.dumps({"host": CROWDED, **body}).encode()


async def test_a_status_without_limit_is_a_page_of_the_default_size(crowded: Live) -> None:
    msg = await one_reply(crowded.nc, "status", _status_request())
    status = ok_reply(msg, "status")
    assert len(status["allocations"]) == DEFAULT_STATUS_LIMIT
    assert status["allocations_total"] == CROWD
    assert status["allocations_next"] == status["allocations"][-1]["instance_id"] == "inst-00999"
    assert len(msg.data) < crowded.nc.max_payload


async def test_paging_with_limit_and_after_walks_every_instance_exactly_once(crowded: Live) -> None:
    seen: list[str] = []
    after: str | None = None
    pages = 0
    while True:
        msg = await one_reply(crowded.nc, "status", _status_request(limit=3000, after=after))
        page = ok_reply(msg, "status")
        pages += 1
        assert page["allocations_total"] == CROWD
        seen += [a["instance_id"] for a in page["allocations"]]
        after = page["allocations_next"]
        if after is None:
            break
        assert after == seen[-1]
    assert pages == 4
    assert seen == sorted(seen) and len(seen) == len(set(seen)) == CROWD


async def test_the_largest_limit_is_answered_with_the_page_or_how_to_page(crowded: Live) -> None:
    msg = await one_reply(crowded.nc, "status", _status_request(limit=MAX_PAGE))
    assert len(msg.data) <= crowded.nc.max_payload
    _, reply = _body(msg)
    if reply["ok"]:
        status = ok_reply(msg, "status")
        assert len(status["allocations"]) == CROWD and status["allocations_next"] is None
    else:
        refused = refusal(msg, "invalid_request", "limit")
        assert "`limit`" in refused["message"] and "`after`" in refused["message"], refused


async def test_a_status_without_allocations_answers_quickly(crowded: Live) -> None:
    await one_reply(crowded.nc, "status", _status_request(allocations=False))  # warm: connections, statements
    started = time.perf_counter()
    sent = await Sent.publish(crowded.nc, "status", _status_request(allocations=False))
    msg = await sent.reply()
    elapsed = time.perf_counter() - started
    status = ok_reply(msg, "status")
    assert (status["allocations"], status["allocations_total"]) == ([], CROWD)
    assert len(msg.data) < 2048
    assert elapsed < 1.0, f"{elapsed:.3f} s for a status without its allocations"
    await good_validate(crowded.nc, CROWDED)
    await sent.no_second_reply(crowded.nc)


async def test_a_page_over_the_servers_max_payload_is_refused_saying_how_to_page(small_payload: Live) -> None:
    nc = small_payload.nc
    too_big = await one_reply(nc, "status", _status_request())
    assert len(too_big.data) < SMALL_MAX_PAYLOAD
    refused = refusal(too_big, "invalid_request", "limit")
    assert "`limit`" in refused["message"] and "`after`" in refused["message"], refused
    assert str(SMALL_MAX_PAYLOAD) in refused["message"], refused

    seen: list[str] = []
    after: str | None = None
    while True:
        page = ok_reply(await one_reply(nc, "status", _status_request(limit=400, after=after)), "status")
        seen += [a["instance_id"] for a in page["allocations"]]
        if (after := page["allocations_next"]) is None:
            break
    assert seen == sorted(set(seen)) and len(seen) == page["allocations_total"] == 1500
