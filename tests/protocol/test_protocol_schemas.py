"""The request-reply protocol's three descriptions agree: docs/protocol.md (its examples), the JSON Schemas
in docs/protocol/, and the service (`ledger.bus.protocol` and a real LedgerService answering over NATS)."""

from __future__ import annotations

import ast
import asyncio
import copy
import json
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator, FormatChecker
from nats.aio.client import Client

from ledger.bus.connect import connect
from ledger.bus.embedded import EmbeddedNats
from ledger.bus.protocol import ENDPOINTS, FIELDS, HEADER_CODES, REQUIRED, parse_request
from ledger.bus.service import QUEUE_GROUP, SERVICE_NAME, LedgerService
from ledger.core.errors import InvalidRequest, Unavailable
from ledger.core.gpu import GPUStatus, PassthroughDevice
from ledger.core.records import ImageRecord, InstanceRecord
from ledger.core.resources import Capacity, ResourceType, Source
from ledger.store.ledger import Ledger

DOCS = Path(__file__).resolve().parents[2] / "docs"
PROTOCOL = DOCS / "protocol"
GIB = 2**30
MAX_AMOUNT = 2**63 - 1


# ---- the schemas -----------------------------------------------------------------------------------------


@cache
def schema_json(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((PROTOCOL / f"{name}.schema.json").read_text())
    return loaded


def _closed(schema: Any) -> Any:
    """The schema with every object that declares properties closed: the tests' stricter reading, so a
    field the service sends but the schema does not declare fails here (clients ignore unknown fields)."""
    if isinstance(schema, dict):
        out = {k: _closed(v) for k, v in schema.items()}
        if "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_closed(v) for v in schema]
    return schema


@cache
def validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(schema_json(name), format_checker=FormatChecker())


@cache
def strict_validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(_closed(copy.deepcopy(schema_json(name))), format_checker=FormatChecker())


def assert_valid(name: str, instance: Any) -> None:
    errors = [e.message for e in strict_validator(name).iter_errors(instance)]
    assert not errors, f"{name}: {errors} in {json.dumps(instance)}"


def schema_accepts(endpoint: str, body: Any) -> bool:
    return validator(f"{endpoint}.request").is_valid(body)


SCHEMA_NAMES = sorted(
    [f"{e}.request" for e in ENDPOINTS] + [f"{e}.reply" for e in ENDPOINTS] + ["error.reply"]
)


def test_the_schema_files_are_exactly_one_request_and_reply_per_endpoint_plus_error() -> None:
    on_disk = sorted(p.name.removesuffix(".schema.json") for p in PROTOCOL.glob("*.schema.json"))
    assert on_disk == SCHEMA_NAMES


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_every_schema_is_valid_draft_2020_12_with_a_v1_id(name: str) -> None:
    schema = schema_json(name)
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert "/v1/" in schema["$id"] and schema["$id"].endswith(f"/{name}.schema.json")


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_request_schemas_list_the_parsers_fields_types_and_required_fields(endpoint: str) -> None:
    schema = schema_json(f"{endpoint}.request")
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == set(FIELDS[endpoint])
    assert set(schema["required"]) == set(REQUIRED.get(endpoint, ()))
    for name, wanted in FIELDS[endpoint].items():
        prop = schema["properties"][name]
        types = prop["type"] if isinstance(prop["type"], list) else [prop["type"]]
        required = name in REQUIRED.get(endpoint, ())
        # parse_request treats null as absent: optional fields accept it, required ones do not
        assert sorted(types) == sorted([wanted] if required else [wanted, "null"]), name
        if "enum" in prop:
            assert (None in prop["enum"]) is not required, name


def test_amounts_are_whole_non_negative_and_bounded() -> None:
    props = schema_json("validate.request")["properties"]
    for name in ("vcpus", "memory_bytes", "disk_bytes", "network_download_bps", "network_upload_bps"):
        assert props[name]["minimum"] == 0
        assert props[name]["maximum"] == (1_000_000 if name == "vcpus" else MAX_AMOUNT)
    assert props["disk_io_bps"]["maximum"] == MAX_AMOUNT
    assert schema_json("can_allocate.request")["properties"]["amount"]["minimum"] == 0
    assert schema_json("defaults.request")["properties"]["vcpus"]["minimum"] == 0


def test_error_codes_are_the_services_codes_with_their_header_codes() -> None:
    codes = schema_json("error.reply")["properties"]["code"]["enum"]
    assert set(codes) <= set(HEADER_CODES)
    table = dict(re.findall(r"^\| `([a-z_]+)` \| `(\d{3})` \|", (DOCS / "protocol.md").read_text(), re.M))
    assert table == {code: HEADER_CODES[code] for code in codes}


# ---- the examples in docs/protocol.md --------------------------------------------------------------------


@dataclass(frozen=True)
class Example:
    schema: str
    body: Any


@dataclass(frozen=True)
class Command:
    endpoint: str
    body: Any
    answer: Example  # the next example after the command: the reply it got


def _doc() -> str:
    return (DOCS / "protocol.md").read_text()


def doc_examples() -> list[Example]:
    text = _doc()
    blocks = list(re.finditer(r"(?:<!-- schema: ([\w.]+) -->\n)?```json\n(.*?)```", text, re.S))
    unmarked = [m.group(2)[:60] for m in blocks if m.group(1) is None]
    assert not unmarked, f"every JSON example names its schema (<!-- schema: NAME -->): {unmarked}"
    return [Example(m.group(1), json.loads(m.group(2))) for m in blocks if m.group(1) != "none"]


def doc_commands() -> list[Command]:
    text = _doc()
    commands = []
    for m in re.finditer(r"^nats req ledger\.v1\.(\w+) '([^']*)'", text, re.M):
        following = re.search(r"<!-- schema: ([\w.]+) -->\n```json\n(.*?)```", text[m.end() :], re.S)
        assert following, m.group(0)
        body = json.loads(m.group(2)) if m.group(2).strip() else {}
        answer = Example(following.group(1), json.loads(following.group(2)))
        commands.append(Command(m.group(1), body, answer))
    return commands


def test_every_example_validates_against_its_schema() -> None:
    examples = doc_examples()
    for example in examples:
        assert example.schema in SCHEMA_NAMES, example.schema
        assert_valid(example.schema, example.body)
    shown = {e.schema for e in examples}
    assert {f"{e}.reply" for e in ENDPOINTS} | {"error.reply"} <= shown
    codes = {e.body["code"] for e in examples if e.schema == "error.reply"}
    assert {"insufficient_resources", "invalid_request", "unknown_host", "conflict", "not_found"} <= codes


def test_every_nats_req_example_is_valid_unless_its_reply_says_invalid_request() -> None:
    commands = doc_commands()
    assert {c.endpoint for c in commands} == set(ENDPOINTS)
    assert any(c.body == {"vcpus": 2, "memory_bytes": 2147483648} for c in commands)
    for command in commands:
        refused = command.answer.schema == "error.reply" and command.answer.body["code"] == "invalid_request"
        assert schema_accepts(command.endpoint, command.body) is not refused, command
        assert command.answer.schema in {f"{command.endpoint}.reply", "error.reply"}, command
        assert_parse_agrees(command.endpoint, command.body, expect_reject=refused, ranges=True)


def test_the_python_example_compiles_and_uses_the_client() -> None:
    blocks = re.findall(r"```python\n(.*?)```", _doc(), re.S)
    assert blocks
    for block in blocks:
        ast.parse(block)
    assert any("LedgerClient" in block for block in blocks)


def test_the_doc_names_the_subjects_queue_group_and_service() -> None:
    text = _doc()
    assert f"Queue group | `{QUEUE_GROUP}`" in text
    assert f"named `{SERVICE_NAME}`" in text
    for endpoint in ENDPOINTS:
        assert f"`ledger.v1.{endpoint}`" in text
        assert f"### {endpoint}\n" in text
    for discovery in (
        "$SRV.PING",
        "$SRV.INFO",
        "$SRV.STATS",
        "Nats-Service-Error-Code",
        "Nats-Service-Error`",
    ):
        assert discovery in text


# ---- the parser and the schemas accept the same bodies ---------------------------------------------------


def assert_parse_agrees(endpoint: str, body: Any, *, expect_reject: bool, ranges: bool = False) -> None:
    """parse_request (types, unknown and required fields) plus, with `ranges`, the amount checks the
    handlers apply before touching the database."""
    try:
        parsed = parse_request(endpoint, json.dumps(body).encode())
        if ranges:
            _range_checks(endpoint, parsed)
    except InvalidRequest:
        assert expect_reject, f"{endpoint} refused {body}"
    else:
        assert not expect_reject, f"{endpoint} accepted {body}"


def _range_checks(endpoint: str, body: dict[str, Any]) -> None:
    from ledger.bus.protocol import (
        SearchRequest,
        ValidateRequest,
        allocation_request,
        reservation_lookup,
        resource_field,
    )

    if endpoint == "validate":
        ValidateRequest.from_body(body)
    if endpoint in {"status", "can_allocate"}:
        resource_field(body)
    if endpoint == "reservation":
        reservation_lookup(body)
    if endpoint in {"candidates", "place"}:
        allocation_request(body)
        count = "limit" if endpoint == "candidates" else "attempts"
        SearchRequest.from_body(body, count=count, default=1, maximum=1000)


# (endpoint, body): near-valid bodies whose fault is one of shape, which parse_request alone must judge
SHAPE_CASES: list[tuple[str, Any]] = [
    ("validate", {}),
    ("validate", {"vcpus": 2, "memory_bytes": 2 * GIB, "needs_gpu": False, "ttl_seconds": 30}),
    ("validate", {"vcpus": 2, "ttl_seconds": 1.5, "host": None, "gpu_profile": None}),
    ("validate", {"vcpu": 2}),
    ("validate", {"vcpus": "2"}),
    ("validate", {"vcpus": 2.5}),
    ("validate", {"vcpus": True}),
    ("validate", {"needs_gpu": 1}),
    ("validate", {"host": 7}),
    ("validate", {"ttl_seconds": "30"}),
    ("validate", {"idempotency_key": ["a"]}),
    ("validate", []),
    ("validate", "vcpus"),
    ("release", {"reservation_id": "abc"}),
    ("release", {}),
    ("release", {"reservation_id": None}),
    ("release", {"reservation_id": 5}),
    ("release", {"reservation_id": "abc", "host": "h1"}),
    ("status", {}),
    ("status", {"resource": "cpu", "allocations": False, "host": "h1"}),
    ("status", {"resource": None, "allocations": None}),
    ("status", {"allocations": "yes"}),
    ("status", {"resources": "cpu"}),
    ("can_allocate", {"resource": "cpu", "amount": 1}),
    ("can_allocate", {"resource": "cpu"}),
    ("can_allocate", {"amount": 1}),
    ("can_allocate", {"resource": "cpu", "amount": None}),
    ("can_allocate", {"resource": "cpu", "amount": 1.5}),
    ("can_allocate", {"resource": "cpu", "amount": "1"}),
    ("defaults", {"vcpus": 4}),
    ("defaults", {}),
    ("defaults", {"vcpus": "4"}),
    ("defaults", {"vcpus": 4, "resource": "cpu"}),
    ("image_pull_check", {}),
    ("image_pull_check", {"host": None}),
    ("image_pull_check", {"host": "h1", "force": True}),
    ("hosts", {}),
    ("hosts", {"host": "h1"}),
]

# near-valid bodies whose fault is a range or a name, which the handlers judge after parsing (live test)
RANGE_CASES: list[tuple[str, Any]] = [
    ("validate", {"vcpus": 1_000_000}),
    ("validate", {"vcpus": 1_000_001}),
    ("validate", {"vcpus": -1}),
    ("validate", {"memory_bytes": MAX_AMOUNT}),
    ("validate", {"memory_bytes": MAX_AMOUNT + 1}),
    ("validate", {"disk_io_bps": -5}),
    ("validate", {"ttl_seconds": 86400}),
    ("validate", {"ttl_seconds": 86400.5}),
    ("validate", {"ttl_seconds": 0}),
    ("validate", {"ttl_seconds": -1}),
    ("validate", {"idempotency_key": ""}),
    ("validate", {"idempotency_key": "k" * 255}),
    ("validate", {"idempotency_key": "k" * 256}),
    ("release", {"reservation_id": ""}),
    ("status", {"resource": "gpu"}),
    ("status", {"resource": "disk_io"}),
    ("can_allocate", {"resource": "bandwidth", "amount": 1}),
    ("can_allocate", {"resource": "memory", "amount": -1}),
    ("can_allocate", {"resource": "memory", "amount": 0}),
    ("defaults", {"vcpus": 0}),
    ("defaults", {"vcpus": -1}),
    ("defaults", {"vcpus": 1_000_000}),
]

# Where the code and the schemas disagree today (see docs/protocol.md "Requests"); strict, so a fix shows.
# Cases where the code once disagreed with the schemas (now fixed; kept so they stay fixed).
FORMER_DIVERGENCES: list[tuple[str, Any, str]] = [
    (
        "defaults",
        {"vcpus": 1_000_001},
        "the schema caps vcpus at 1,000,000 as validate does; the defaults handler only refuses negatives",
    ),
]


@pytest.mark.parametrize(("endpoint", "body"), SHAPE_CASES)
def test_parse_request_accepts_exactly_what_the_schema_accepts(endpoint: str, body: Any) -> None:
    assert_parse_agrees(endpoint, body, expect_reject=not schema_accepts(endpoint, body))


@pytest.mark.parametrize(
    ("endpoint", "body"),
    [pytest.param(e, b, id=r[:40]) for e, b, r in FORMER_DIVERGENCES],
)
def test_the_service_agrees_with_the_schema_where_it_once_did_not(
    endpoint: str, body: Any, service_verdicts: dict[str, bool]
) -> None:
    assert service_verdicts[json.dumps([endpoint, body])] == schema_accepts(endpoint, body)


def test_an_empty_body_is_an_empty_object() -> None:
    assert parse_request("hosts", b"") == {}
    assert schema_accepts("hosts", {})


# ---- a real service ---------------------------------------------------------------------------------------


def _capacities(cpu: int, memory: int, disk: int) -> dict[ResourceType, Capacity]:
    return {
        ResourceType.CPU: Capacity(cpu, Source.CONFIGURED),
        ResourceType.MEMORY: Capacity(memory, Source.DETECTED),
        ResourceType.DISK: Capacity(disk, Source.DETECTED),
        ResourceType.NETWORK: Capacity(1_250_000_000, Source.CONFIGURED),
        ResourceType.DISK_IO: Capacity(1_000_000_000, Source.DEFAULT),
    }


@dataclass
class Live:
    nc: Client
    ledger: Ledger
    service: LedgerService

    async def ask(self, endpoint: str, body: Any) -> tuple[dict[str, Any], dict[str, str]]:
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        msg = await self.nc.request(f"ledger.v1.{endpoint}", payload, timeout=10)
        reply: dict[str, Any] = json.loads(msg.data)
        return reply, dict(msg.headers or {})


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    opened = Ledger.open(f"sqlite:///{tmp_path / 'ledger.db'}")
    opened.register_host("h1", _capacities(16, 64 * GIB, 1000 * GIB), {})
    opened.register_host("small", _capacities(2, 4 * GIB, 4 * GIB), {})
    opened.register_host("images", _capacities(2, 4 * GIB, 100 * GIB), {})
    gpu = GPUStatus(
        mode="passthrough",
        total_slots=1,
        used_slots=0,
        devices=(PassthroughDevice("0000:00:06.0", "10de", "20b5", "A100", "nvidia", True),),
    )
    opened.register_host("gpu", _capacities(8, 32 * GIB, 500 * GIB), {}, gpu)
    yield opened
    opened.close()


@pytest.fixture
async def live(tmp_path: Path, ledger: Ledger) -> AsyncIterator[Live]:
    server = EmbeddedNats(tmp_path / "nats")
    url = await asyncio.to_thread(server.start)
    nc = await connect(url, name="protocol-test")
    service = LedgerService(nc, ledger, default_host="h1")
    await service.start()
    try:
        yield Live(nc, ledger, service)
    finally:
        await service.stop()
        await nc.close()
        await asyncio.to_thread(server.stop)


@pytest.fixture
async def service_verdicts(live: Live) -> dict[str, bool]:
    """For every near-valid body: whether the live service took it (anything but invalid_request)."""
    verdicts = {}
    for endpoint, body in [*SHAPE_CASES, *RANGE_CASES, *((e, b) for e, b, _ in FORMER_DIVERGENCES)]:
        reply, _ = await live.ask(endpoint, body)
        verdicts[json.dumps([endpoint, body])] = reply["ok"] or reply["code"] != "invalid_request"
    return verdicts


async def test_the_service_refuses_exactly_what_the_schemas_refuse(service_verdicts: dict[str, bool]) -> None:
    disagree = [
        (endpoint, body)
        for endpoint, body in [*SHAPE_CASES, *RANGE_CASES]
        if service_verdicts[json.dumps([endpoint, body])] != schema_accepts(endpoint, body)
    ]
    assert disagree == []


def check_reply(endpoint: str, reply: dict[str, Any], headers: dict[str, str]) -> None:
    if reply["ok"]:
        assert_valid(f"{endpoint}.reply", reply)
        assert "Nats-Service-Error" not in headers
    else:
        assert_valid("error.reply", reply)
        assert headers["Nats-Service-Error-Code"] == HEADER_CODES[reply["code"]]
        assert headers["Nats-Service-Error"] == reply["message"]
    for key in ("expires_at", "created_at", "ended_at"):
        if reply.get(key):
            assert datetime.fromisoformat(reply[key]).tzinfo is not None


async def ask(live: Live, endpoint: str, body: Any, expect: str = "ok") -> dict[str, Any]:
    """One request to the live service; its reply must validate and have the expected outcome."""
    reply, headers = await live.ask(endpoint, body)
    check_reply(endpoint, reply, headers)
    assert ("ok" if reply["ok"] else reply["code"]) == expect, reply
    return reply


KEYED = {"vcpus": 2, "memory_bytes": 2 * GIB, "idempotency_key": "vm-42", "ttl_seconds": 300}


async def test_validate_replies_and_refusals_match_the_schemas(live: Live) -> None:
    grant = await ask(live, "validate", {"vcpus": 2, "memory_bytes": 2 * GIB})
    assert (grant["status"], grant["replayed"], grant["idempotency_key"]) == ("held", False, None)
    first = await ask(live, "validate", KEYED)
    again = await ask(live, "validate", KEYED)
    assert again["reservation_id"] == first["reservation_id"] and again["replayed"] is True
    conflict = await ask(live, "validate", {"vcpus": 4, "idempotency_key": "vm-42"}, "conflict")
    assert conflict["reservation_id"] == first["reservation_id"]
    refusal = await ask(live, "validate", {"vcpus": 64}, "insufficient_resources")
    assert (refusal["resource"], refusal["requested"], refusal["pending"], refusal["host"]) == (
        "cpu",
        64,
        4,
        "h1",
    )
    await ask(live, "validate", {"disk_bytes": 8 * GIB, "host": "small"}, "insufficient_resources")
    await ask(live, "validate", {"vcpus": 1, "needs_gpu": True}, "insufficient_resources")
    await ask(live, "validate", {"vcpus": 1, "needs_gpu": True, "host": "gpu"})
    gpu_full = await ask(
        live, "validate", {"vcpus": 1, "needs_gpu": True, "host": "gpu"}, "insufficient_resources"
    )
    assert gpu_full["resource"] == "gpu"
    await ask(live, "validate", {"vcpus": 1, "host": "nope"}, "unknown_host")
    await ask(live, "validate", {"vcpu": 1}, "invalid_request")
    await ask(live, "validate", b"not json", "invalid_request")
    await ask(live, "validate", b"[1]", "invalid_request")
    await ask(live, "validate", b"x" * (65 * 1024), "invalid_request")


async def test_release_replies_follow_the_reservation_lifecycle(live: Live) -> None:
    grant = await ask(live, "validate", {"vcpus": 2, "memory_bytes": 2 * GIB})
    released = await ask(live, "release", {"reservation_id": grant["reservation_id"]})
    assert (released["status"], released["instance_id"]) == ("released", None)
    assert (await ask(live, "release", {"reservation_id": grant["reservation_id"]}))["status"] == "released"

    first = await ask(live, "validate", KEYED)
    record = InstanceRecord(
        id="inst-42",
        state="Created",
        name="vm-42",
        vcpus=2,
        memory_bytes=2 * GIB,
        reservation_id=first["reservation_id"],
    )
    live.ledger.apply_instance("h1", record, version=1)
    consumed = await ask(live, "release", {"reservation_id": first["reservation_id"]})
    assert (consumed["status"], consumed["instance_id"]) == ("consumed", "inst-42")
    replay = await ask(live, "validate", KEYED)
    assert (replay["status"], replay["replayed"]) == ("consumed", True)

    brief = await ask(live, "validate", {"vcpus": 1, "ttl_seconds": 0.2})
    await asyncio.sleep(0.4)
    assert (await ask(live, "release", {"reservation_id": brief["reservation_id"]}))["status"] == "expired"
    await ask(live, "release", {"reservation_id": "0" * 32}, "not_found")
    await ask(live, "release", {"reservation_id": ""}, "invalid_request")

    one = await ask(live, "status", {"resource": "cpu"})
    assert (one["type"], one["allocated"], one["pending"]) == ("cpu", 2, 0)
    full = await ask(live, "status", {})
    assert [a["instance_id"] for a in full["allocations"]] == ["inst-42"]


async def test_status_and_check_replies_match_the_schemas(live: Live) -> None:
    await ask(live, "validate", {"vcpus": 1, "needs_gpu": True, "host": "gpu"})
    assert (await ask(live, "status", {"allocations": False}))["allocations"] == []
    with_gpu = await ask(live, "status", {"host": "gpu"})
    assert with_gpu["gpu"]["pending_slots"] == 1
    await ask(live, "status", {"host": "gpu", "resource": "disk_io"})
    await ask(live, "status", {"resource": "gpu"}, "invalid_request")
    await ask(live, "status", {"host": "nope"}, "unknown_host")

    assert (await ask(live, "can_allocate", {"resource": "memory", "amount": GIB}))["can_allocate"] is True
    assert (await ask(live, "can_allocate", {"resource": "cpu", "amount": 10**6}))["can_allocate"] is False
    await ask(live, "can_allocate", {"resource": "cpu", "amount": -1}, "invalid_request")

    defaults = await ask(live, "defaults", {"vcpus": 2})
    assert defaults["network_download_bps"] == 1_250_000_000 * 2 // 16
    await ask(live, "defaults", {"vcpus": -1}, "invalid_request")

    await ask(live, "image_pull_check", {})
    small = await ask(live, "image_pull_check", {"host": "small"}, "insufficient_resources")
    assert small["resource"] == "disk"
    live.ledger.apply_image("images", ImageRecord(id="img-1", name="ubuntu", size_bytes=30 * GIB), version=1)
    await ask(live, "image_pull_check", {"host": "images"}, "insufficient_resources")

    assert (await ask(live, "hosts", b""))["hosts"] == ["gpu", "h1", "images", "small"]
    await ask(live, "hosts", {"host": "h1"}, "invalid_request")


async def test_unavailable_and_internal_errors_have_the_error_shape(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    def down(body: dict[str, Any]) -> dict[str, Any]:
        raise Unavailable("database unavailable: connection refused")

    def bug(body: dict[str, Any]) -> dict[str, Any]:
        raise ZeroDivisionError("a bug")

    monkeypatch.setitem(live.service._handlers, "hosts", down)
    monkeypatch.setitem(live.service._handlers, "status", bug)
    reply, headers = await live.ask("hosts", {})
    check_reply("hosts", reply, headers)
    assert (reply["code"], headers["Nats-Service-Error-Code"]) == ("unavailable", "503")
    reply, headers = await live.ask("status", {})
    check_reply("status", reply, headers)
    assert reply == {
        "ok": False,
        "code": "internal",
        "message": "internal error; see the ledger service's log",
    }
    assert "ZeroDivisionError" not in json.dumps(reply)


async def test_the_service_is_discoverable_as_documented(live: Live) -> None:
    msg = await live.nc.request(f"$SRV.INFO.{SERVICE_NAME}", b"", timeout=5)
    info = json.loads(msg.data)
    assert info["name"] == SERVICE_NAME
    assert {(e["subject"], e["queue_group"]) for e in info["endpoints"]} == {
        (f"ledger.v1.{e}", QUEUE_GROUP) for e in ENDPOINTS
    }
    documented = next(b for b in _all_json_blocks() if b.get("type") == "io.nats.micro.v1.info_response")
    assert [e["subject"] for e in documented["endpoints"]] == [e["subject"] for e in info["endpoints"]]
    assert documented["description"] == info["description"]


def _all_json_blocks() -> list[Any]:
    return [json.loads(b) for b in re.findall(r"```json\n(.*?)```", _doc(), re.S)]
