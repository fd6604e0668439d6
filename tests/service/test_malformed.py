"""Malformed requests get `invalid_request` (or `unknown_host`) refusals, never a traceback or a repr, and the
service stays up and answers a good request after each one."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator

import pytest
from nats.aio.client import Client

from ledger.bus.connect import connect
from ledger.bus.protocol import MAX_REQUEST_BYTES
from tests.service.helpers import ServeProcess, raw, refusal_of, reply_of, serve_env, unique

HOST = unique("bad")
NATS_MAX_PAYLOAD = 1024 * 1024

CASES: list[tuple[str, str, bytes, str]] = [
    # (id, endpoint, payload, expected code)
    ("not-json", "validate", b"this is not json", "invalid_request"),
    ("truncated-json", "validate", b'{"vcpus": 1', "invalid_request"),
    ("not-utf8", "validate", b'{"vcpus": 1, "host": "\xff\xfe"}', "invalid_request"),
    ("json-array", "validate", b"[1, 2, 3]", "invalid_request"),
    ("json-string", "status", b'"status"', "invalid_request"),
    ("json-null", "validate", b"null", "invalid_request"),
    ("deeply-nested", "validate", b"[" * 100_000 + b"]" * 100_000, "invalid_request"),
    ("nan", "validate", b'{"vcpus": 1, "ttl_seconds": NaN}', "invalid_request"),
    ("infinity", "validate", b'{"vcpus": 1, "ttl_seconds": Infinity}', "invalid_request"),
    ("huge-number", "validate", b'{"vcpus": 1, "ttl_seconds": 1e400}', "invalid_request"),
    ("vcpus-string", "validate", b'{"vcpus": "2"}', "invalid_request"),
    ("vcpus-float", "validate", b'{"vcpus": 1.5}', "invalid_request"),
    ("vcpus-bool", "validate", b'{"vcpus": true}', "invalid_request"),
    ("vcpus-negative", "validate", b'{"vcpus": -1}', "invalid_request"),
    ("vcpus-huge", "validate", b'{"vcpus": 1000000000000}', "invalid_request"),
    (
        "memory-over-int64",
        "validate",
        b'{"vcpus": 1, "memory_bytes": 9223372036854775808}',
        "invalid_request",
    ),
    ("digits-over-python-limit", "validate", b'{"vcpus": 1' + b"0" * 5000 + b"}", "invalid_request"),
    ("needs-gpu-int", "validate", b'{"vcpus": 1, "needs_gpu": 1}', "invalid_request"),
    ("host-int", "validate", b'{"vcpus": 1, "host": 7}', "invalid_request"),
    ("host-object", "status", b'{"host": {"a": 1}}', "invalid_request"),
    ("unknown-field", "validate", b'{"vcpus": 1, "cpus": 1}', "invalid_request"),
    ("unknown-field-hosts", "hosts", b'{"all": true}', "invalid_request"),
    ("unknown-host", "validate", b'{"vcpus": 1, "host": "no-such-host"}', "unknown_host"),
    ("unknown-host-defaults", "defaults", b'{"vcpus": 1, "host": "no-such-host"}', "unknown_host"),
    ("unknown-resource", "status", b'{"resource": "bananas"}', "invalid_request"),
    ("unknown-resource-can", "can_allocate", b'{"resource": "bananas", "amount": 1}', "invalid_request"),
    ("can-allocate-negative", "can_allocate", b'{"resource": "cpu", "amount": -1}', "invalid_request"),
    ("can-allocate-missing", "can_allocate", b'{"resource": "cpu"}', "invalid_request"),
    ("can-allocate-float", "can_allocate", b'{"resource": "cpu", "amount": 1.5}', "invalid_request"),
    ("defaults-negative", "defaults", b'{"vcpus": -4}', "invalid_request"),
    ("defaults-missing", "defaults", b"{}", "invalid_request"),
    ("ttl-huge", "validate", b'{"vcpus": 1, "ttl_seconds": 1e300}', "invalid_request"),
    ("ttl-zero", "validate", b'{"vcpus": 1, "ttl_seconds": 0}', "invalid_request"),
    ("ttl-negative", "validate", b'{"vcpus": 1, "ttl_seconds": -5}', "invalid_request"),
    (
        "idempotency-key-long",
        "validate",
        json.dumps({"vcpus": 1, "idempotency_key": "k" * 300}).encode(),
        "invalid_request",
    ),
    ("idempotency-key-empty", "validate", b'{"vcpus": 1, "idempotency_key": ""}', "invalid_request"),
    ("release-missing", "release", b"{}", "invalid_request"),
    ("release-empty-id", "release", b'{"reservation_id": ""}', "invalid_request"),
    ("release-id-int", "release", b'{"reservation_id": 5}', "invalid_request"),
    (
        "over-request-limit",
        "validate",
        b'{"vcpus": 1, "host": "' + b"h" * (MAX_REQUEST_BYTES + 10) + b'"}',
        "invalid_request",
    ),
    (
        "just-under-1mb",
        "validate",
        b'{"vcpus": 1, "idempotency_key": "' + b"k" * (NATS_MAX_PAYLOAD - 4096) + b'"}',
        "invalid_request",
    ),
]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    data_dir = tmp_path_factory.mktemp("malformed")
    process = ServeProcess(data_dir, serve_env(data_dir, HOST))
    try:
        process.start()
        yield process
        assert process.stop() == 0, process.log()
        assert "Traceback" not in process.log()
    finally:
        process.kill()


@pytest.fixture
async def nc(served: ServeProcess) -> AsyncIterator[Client]:
    client = await connect(served.nats_url, name="malformed-test", reconnect_forever=False)
    yield client
    await client.close()


async def _still_serving(nc: Client, served: ServeProcess) -> None:
    assert served.process is not None and served.process.poll() is None
    good = reply_of(await raw(nc, "validate", {"vcpus": 1, "memory_bytes": 1024}))
    assert good["ok"] is True and good["host"] == HOST and good["status"] == "held", good
    released = reply_of(await raw(nc, "release", {"reservation_id": good["reservation_id"]}))
    assert released["ok"] is True and released["status"] == "released", released


@pytest.mark.parametrize(("endpoint", "payload", "code"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_malformed_request_is_refused_cleanly(
    nc: Client, served: ServeProcess, endpoint: str, payload: bytes, code: str
) -> None:
    assert len(payload) < NATS_MAX_PAYLOAD
    reply = refusal_of(await raw(nc, endpoint, payload), code, "400" if code == "invalid_request" else "404")
    assert len(reply["message"]) < 2048, "a refusal must not echo a huge request back"
    await _still_serving(nc, served)


async def test_a_burst_of_garbage_then_good_requests(nc: Client, served: ServeProcess) -> None:
    """All the bad requests at once, interleaved with good ones: each gets its own right answer."""
    bad = [raw(nc, endpoint, payload) for _, endpoint, payload, _ in CASES]
    good = [raw(nc, "status", {"resource": "cpu"}) for _ in range(len(CASES))]
    replies = await asyncio.gather(*bad, *good)
    for (_, _, _, code), msg in zip(CASES, replies[: len(CASES)], strict=True):
        assert reply_of(msg)["code"] == code
    for msg in replies[len(CASES) :]:
        assert reply_of(msg)["ok"] is True
    stats = json.loads((await nc.request("$SRV.STATS.ledger", b"", timeout=5)).data)
    assert all(e["num_errors"] == 0 for e in stats["endpoints"])
    await _still_serving(nc, served)


async def test_refusals_never_write(nc: Client, served: ServeProcess) -> None:
    """A refused validate holds nothing: pending is unchanged by a batch of bad validates."""
    before = reply_of(await raw(nc, "status", {"resource": "cpu"}))
    await asyncio.gather(*(raw(nc, "validate", p) for _, e, p, _ in CASES if e == "validate"))
    after = reply_of(await raw(nc, "status", {"resource": "cpu"}))
    assert after["pending"] == before["pending"] == 0
