"""The event contract: every type parses, every malformed event names its fault, and the published JSON
Schemas, the examples in docs/events.md and the parser all agree."""

from __future__ import annotations

import copy
import json
import re
from datetime import UTC, datetime, timedelta, timezone
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from ledger.core.capacity import MAX_VCPUS
from ledger.core.errors import InvalidRequest
from ledger.core.records import ImageRecord, InstanceRecord, OciCacheRecord, VolumeRecord
from ledger.core.resources import ResourceType, Source
from ledger.core.units import MAX_AMOUNT
from ledger.events import (
    EVENT_TYPES,
    MAX_EVENT_BYTES,
    HostCapacityRecord,
    InvalidEvent,
    make_event,
    parse_event,
    subject_for,
)
from ledger.events.contract import TIME_PATTERN

DOCS = Path(__file__).resolve().parents[2] / "docs"
T0 = datetime(2025, 6, 1, 10, 0, tzinfo=UTC)

INSTANCE = {
    "id": "inst-1",
    "name": "web-1",
    "state": "Running",
    "vcpus": 4,
    "memory_bytes": 8 * 2**30,
    "overlay_bytes": 20 * 10**9,
    "volume_overlay_bytes": 10**9,
    "volume_bytes": 100 * 10**9,
    "network_download_bps": 125_000_000,
    "network_upload_bps": 62_500_000,
    "disk_io_bps": 250_000_000,
    "gpu": "NVIDIA H100-20C",
    "reservation_id": "5b0c2d7e9f1a4e3b8c6d0a1b2c3d4e5f",
}
VOLUME = {"id": "vol-1", "name": "data", "size_bytes": 100 * 10**9, "attached_to": "inst-1"}
IMAGE = {"id": "sha256:9b1c", "name": "nginx:1.27", "size_bytes": 64 * 2**20}
OCI_CACHE = {"total_bytes": 5 * 2**30}
HOST_CAPACITY: dict[str, Any] = {
    "cpu": {"capacity": 64, "source": "detected"},
    "memory": {"capacity": 512 * 2**30, "source": "detected"},
    "disk": {"capacity": 0, "source": "undetected", "hint": "set DISK_LIMIT"},
    "network": {"capacity": 1_250_000_000, "source": "configured"},
    "disk_io": {"capacity": 1_000_000_000, "source": "default"},
    "gpu": {
        "mode": "vgpu",
        "total_slots": 4,
        "used_slots": 1,
        "profiles": [
            {"name": "NVIDIA H100-20C", "type_id": "nvidia-1061", "framebuffer_mb": 20480, "available": 3}
        ],
        "devices": [
            {
                "pci_address": "0000:00:06.0",
                "vendor_id": "10de",
                "device_id": "2335",
                "name": "NVIDIA H200",
                "driver": None,
                "available": False,
            }
        ],
    },
    "ratios": {"cpu": 2, "memory": 1.5},
}
DATA: dict[str, dict[str, Any]] = {
    "instance": INSTANCE,
    "volume": VOLUME,
    "image": IMAGE,
    "oci_cache": OCI_CACHE,
    "host": HOST_CAPACITY,
}
RECORD_CLASSES: dict[str, type[InstanceRecord] | type[VolumeRecord] | type[ImageRecord]] = {
    "instance": InstanceRecord,
    "volume": VolumeRecord,
    "image": ImageRecord,
}


def envelope(event_type: str = "instance.started", **changes: Any) -> dict[str, Any]:
    event = make_event(event_type, "h1", DATA[event_type.split(".", maxsplit=1)[0]], 7, id="evt-1", time=T0)
    event.update(changes)
    return event


def encode(event: Any) -> bytes:
    return json.dumps(event, allow_nan=False).encode()


def reason_for(payload: bytes, subject: str | None = None) -> str:
    with pytest.raises(InvalidEvent) as caught:
        parse_event(payload, subject)
    return caught.value.reason


@cache
def schema_json(event_type: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((DOCS / "events" / f"{event_type}.schema.json").read_text())
    return loaded


@cache
def schema(event_type: str) -> Draft202012Validator:
    return Draft202012Validator(schema_json(event_type))


def doc_examples() -> list[dict[str, Any]]:
    text = (DOCS / "events.md").read_text()
    return [json.loads(block) for block in re.findall(r"```json\n(.*?)```", text, re.DOTALL)]


# ---- every type ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_every_type_parses_from_its_subject(event_type: str) -> None:
    event = parse_event(encode(envelope(event_type)), subject_for("h1", event_type))

    assert (event.id, event.type, event.host, event.time, event.version) == ("evt-1", event_type, "h1", T0, 7)
    kind = event_type.split(".", maxsplit=1)[0]
    assert event.data == DATA[kind]
    if kind in RECORD_CLASSES:
        assert event.record == RECORD_CLASSES[kind].from_dict(DATA[kind])
    elif kind == "oci_cache":
        assert event.record == OciCacheRecord(total_bytes=5 * 2**30)


def test_host_capacity_record_holds_capacities_ratios_and_gpu() -> None:
    record = parse_event(encode(envelope("host.capacity"))).record

    assert isinstance(record, HostCapacityRecord)
    assert record.capacities[ResourceType.CPU].capacity == 64
    assert record.capacities[ResourceType.DISK].source is Source.UNDETECTED
    assert record.capacities[ResourceType.DISK].hint == "set DISK_LIMIT"
    assert record.ratios == {ResourceType.CPU: 2.0, ResourceType.MEMORY: 1.5}
    assert record.gpu is not None and record.gpu.to_dict() == HOST_CAPACITY["gpu"]


def test_host_capacity_takes_discoverys_shape_without_gpu_or_ratios() -> None:
    data = {k: v for k, v in HOST_CAPACITY.items() if k not in ("gpu", "ratios")}
    record = parse_event(encode(envelope("host.capacity", data={**data, "gpu": None}))).record

    assert isinstance(record, HostCapacityRecord)
    assert record.gpu is None and record.ratios == {}


@pytest.mark.parametrize("event_type", [t for t in EVENT_TYPES if t.endswith(".deleted")])
def test_a_delete_may_carry_only_the_id(event_type: str) -> None:
    event = parse_event(encode(envelope(event_type, data={"id": "x-1"})))

    assert getattr(event.record, "id", None) == "x-1"


def test_missing_amounts_mean_zero_and_integral_numbers_are_integers() -> None:
    event = parse_event(
        b'{"id":"e","type":"instance.created","host":"h1","time":"2025-06-01T10:00:00Z",'
        b'"version":1e0,"data":{"id":"i","state":"Created","vcpus":2.0}}'
    )

    assert event.version == 1
    assert event.record == InstanceRecord(id="i", state="Created", vcpus=2)


def test_time_keeps_its_offset_and_fraction() -> None:
    event = parse_event(encode(envelope(time="2025-06-01T14:00:00.123456789+02:00")))

    assert event.time == datetime(2025, 6, 1, 14, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2)))


# ---- malformed events ------------------------------------------------------------------------------------


def test_an_oversized_payload_is_refused_before_it_is_read() -> None:
    payload = b" " * MAX_EVENT_BYTES + encode(envelope())
    assert reason_for(payload) == f"event is {len(payload)} bytes, over the limit of {MAX_EVENT_BYTES} bytes"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b'{"id": "\xff"}', "event is not UTF-8: invalid byte at offset 8"),
        (b"", "event is not JSON: Expecting value at line 1 column 1"),
        (b'{"id": ', "event is not JSON: Expecting value at line 1 column 8"),
        (b'{"version": NaN}', "event is not JSON: NaN is not a JSON value (event.version)"),
        (b'{"version": 1e400}', "event.version is out of range: 1e400 is beyond the largest 64-bit float"),
        (
            b'{"version": 1e1000000}',
            "event.version is out of range: 1e1000000 is beyond the largest 64-bit float",
        ),
        (
            b'{"version": 1' + b"0" * 40 + b"}",
            "event.version is an integer of 41 digits; at most 30 are accepted",
        ),
        (b'{"id": "a", "id": "b"}', "event is not JSON: key 'id' appears twice in one object"),
        (
            b'{"data": {"id": "a", "id": "b"}}',
            "event is not JSON: key 'id' appears twice in one object (event.data)",
        ),
        (b"[" * 100_000, "event is not JSON: nested more than 32 levels deep"),
        (b"[]", "event must be a JSON object, got array"),
        (b'"event"', "event must be a JSON object, got string"),
    ],
)
def test_undecodable_payloads_say_why(payload: bytes, reason: str) -> None:
    assert reason_for(payload) == reason


def _without(name: str) -> dict[str, Any]:
    event = envelope()
    del event[name]
    return event


ENVELOPE_CASES: list[tuple[dict[str, Any], str]] = [
    (_without("host"), "event is missing field(s) host"),
    (
        envelope(extra=1),
        "event has unknown field(s) extra; the envelope holds id, type, host, time, version, data",
    ),
    (envelope(id=""), "event.id must be 1 to 255 printable ASCII characters"),
    (envelope(id="evt 1"), "event.id must be 1 to 255 printable ASCII characters"),
    (envelope(id="e" * 256), "event.id is longer than 255 characters"),
    (envelope(id=7), "event.id must be a string, got number"),
    (envelope(type="instance.exploded"), "event.type 'instance.exploded' is not a known event type; known: "),
    (envelope(type=None), "event.type must be a string, got null"),
    (envelope(host=""), "event.host must be a NATS subject token"),
    (envelope(host="h.1"), "event.host must be a NATS subject token"),
    (envelope(host="h*"), "event.host must be a NATS subject token"),
    (envelope(host="h>"), "event.host must be a NATS subject token"),
    (envelope(host="h 1"), "event.host must be a NATS subject token"),
    (envelope(host="h1\n"), "event.host must be a NATS subject token"),
    (envelope(host="h" * 256), "event.host is longer than 255 characters"),
    (envelope(time="2025-06-01T10:00:00"), "event.time must be an RFC 3339 timestamp with a UTC offset"),
    (envelope(time="2025-06-01 10:00:00Z"), "event.time must be an RFC 3339 timestamp with a UTC offset"),
    (envelope(time="yesterday"), "event.time must be an RFC 3339 timestamp"),
    (envelope(time="2025-02-30T10:00:00Z"), "event.time '2025-02-30T10:00:00Z' is not a real date and time"),
    (envelope(time=1717236000), "event.time must be a string, got number"),
    (envelope(version=-1), "event.version cannot be negative, got -1"),
    (envelope(version="3"), "event.version must be a whole number, got string '3'"),
    (envelope(version=1.5), "event.version must be a whole number, got number 1.5"),
    (envelope(version=True), "event.version must be a whole number, got boolean True"),
    (envelope(version=MAX_AMOUNT + 1), f"event.version is too large: {MAX_AMOUNT + 1} exceeds {MAX_AMOUNT}"),
    (envelope(data=[]), "event.data must be a JSON object, got array"),
]


@pytest.mark.parametrize(("event", "reason"), ENVELOPE_CASES)
def test_a_bad_envelope_names_the_field(event: dict[str, Any], reason: str) -> None:
    assert reason_for(encode(event)).startswith(reason)


def _data(kind: str, **changes: Any) -> dict[str, Any]:
    return {**DATA[kind], **changes}


RECORD_CASES: list[tuple[str, dict[str, Any], str]] = [
    (
        "instance.started",
        _data("instance", vcpus=-2),
        "event.data: instance.vcpus cannot be negative, got -2",
    ),
    ("instance.started", _data("instance", vcpus=MAX_VCPUS + 1), "event.data: instance.vcpus is too large"),
    (
        "instance.started",
        _data("instance", memory_bytes="8GiB"),
        "event.data: instance.memory_bytes must be a whole",
    ),
    (
        "instance.started",
        _data("instance", vcpus=None),
        "event.data: instance.vcpus cannot be null",
    ),
    (
        "instance.started",
        _data("instance", cores=2),
        "event.data: instance record has unknown field(s) cores",
    ),
    ("instance.started", {"id": "i"}, "event.data: instance.state is required"),
    ("instance.started", _data("instance", state=""), "event.data: instance.state cannot be empty"),
    ("instance.started", _data("instance", state="S" * 33), "event.data: instance.state is longer than 32"),
    ("instance.started", _data("instance", id=5), "event.data: instance.id must be a string, got int"),
    (
        "instance.started",
        _data("instance", reservation_id="r" * 65),
        "event.data: instance.reservation_id is",
    ),
    ("instance.deleted", {"id": "i", "vcpus": -1}, "event.data: instance.vcpus cannot be negative, got -1"),
    ("instance.deleted", {}, "event.data: instance.id is required"),
    (
        "volume.resized",
        _data("volume", size_bytes=-1),
        "event.data: volume.size_bytes cannot be negative, got -1",
    ),
    (
        "volume.attached",
        _data("volume", attached_to=3),
        "event.data: volume.attached_to must be a string, got int",
    ),
    ("image.pulled", _data("image", digest="x"), "event.data: image record has unknown field(s) digest"),
    (
        "oci_cache.measured",
        {"total_bytes": -5},
        "event.data: oci_cache.total_bytes cannot be negative, got -5",
    ),
    ("oci_cache.measured", {"total_bytes": None}, "event.data: oci_cache.total_bytes cannot be null"),
    ("host.capacity", _data("host", cpu=None), "event.data.cpu must be a JSON object, got null"),
    (
        "host.capacity",
        {k: v for k, v in HOST_CAPACITY.items() if k != "disk"},
        "event.data is missing field(s) disk",
    ),
    ("host.capacity", _data("host", gpus=[]), "event.data has unknown field(s) gpus"),
    (
        "host.capacity",
        _data("host", cpu={"capacity": -1, "source": "detected"}),
        "event.data.cpu.capacity cannot be",
    ),
    (
        "host.capacity",
        _data("host", cpu={"capacity": 1, "source": "guessed"}),
        "event.data.cpu.source must be one of",
    ),
    ("host.capacity", _data("host", cpu={"capacity": 1}), "event.data.cpu is missing field(s) source"),
    (
        "host.capacity",
        _data("host", ratios={"cpu": 0}),
        "event.data.ratios.cpu must be a finite number greater than 0",
    ),
    ("host.capacity", _data("host", ratios={"gpu": 2}), "event.data.ratios has unknown field(s) gpu"),
    (
        "host.capacity",
        _data("host", ratios={"cpu": "4"}),
        "event.data.ratios.cpu must be a number, got string",
    ),
    (
        "host.capacity",
        _data("host", gpu={"mode": "mig", "total_slots": 1, "used_slots": 0}),
        "event.data.gpu.mode",
    ),
    (
        "host.capacity",
        _data("host", gpu={"mode": "vgpu", "total_slots": 1}),
        "event.data.gpu is missing field(s)",
    ),
    (
        "host.capacity",
        _data("host", gpu={**HOST_CAPACITY["gpu"], "profiles": [{"name": "p"}]}),
        "event.data.gpu.profiles[0] is missing field(s) available, framebuffer_mb, type_id",
    ),
    (
        "host.capacity",
        _data(
            "host",
            gpu={**HOST_CAPACITY["gpu"], "devices": [{**HOST_CAPACITY["gpu"]["devices"][0], "available": 1}]},
        ),
        "event.data.gpu.devices[0].available must be true or false, got number",
    ),
]


@pytest.mark.parametrize(("event_type", "data", "reason"), RECORD_CASES)
def test_a_bad_record_names_the_field(event_type: str, data: dict[str, Any], reason: str) -> None:
    assert reason_for(encode(envelope(event_type, data=data))).startswith(reason)


def test_invalid_events_are_invalid_requests_with_the_field() -> None:
    with pytest.raises(InvalidEvent) as caught:
        parse_event(encode(envelope(data=_data("instance", vcpus=-2))))

    assert isinstance(caught.value, InvalidRequest)
    assert caught.value.to_dict()["code"] == "invalid_request"
    assert caught.value.details == {"field": "data.vcpus"}


def _with_text(path: tuple[str | int, ...], text: str) -> dict[str, Any]:
    """The host.capacity or instance envelope with the string at `path` replaced."""
    event = copy.deepcopy(envelope("host.capacity" if len(path) > 2 else "instance.started"))
    container: Any = event
    for step in path[:-1]:
        container = container[step]
    container[path[-1]] = text
    return event


UNFIT_TEXT: list[tuple[tuple[str | int, ...], str]] = [
    (("id",), "evt-1"),
    (("host",), "h1"),
    (("data", "id"), "inst-1"),
    (("data", "name"), "web-1"),
    (("data", "state"), "Running"),
    (("data", "gpu"), "NVIDIA H100-20C"),
    (("data", "reservation_id"), "5b0c"),
    (("data", "gpu", "devices", 0, "name"), "NVIDIA H200"),
]


@pytest.mark.parametrize(("path", "good"), UNFIT_TEXT)
@pytest.mark.parametrize(("bad", "says"), [("\x00", "a NUL character"), ("\ud800", "an unpaired surrogate")])
def test_nul_or_an_unpaired_surrogate_anywhere_is_refused_naming_the_field(
    path: tuple[str | int, ...], good: str, bad: str, says: str
) -> None:
    """PostgreSQL text cannot hold NUL and no UTF-8 encoder can write a surrogate: refused on every
    engine alike, from the wire and from make_event."""
    field = ".".join(str(p) for p in path).replace(".0.", "[0].")
    event = _with_text(path, f"{good[:2]}{bad}{good[2:]}")
    payload = json.dumps(event).encode()  # a surrogate as the escape \ud800, NUL as \u0000
    expected = f"event.{field} contains {says}"

    with pytest.raises(InvalidEvent) as caught:
        parse_event(payload)
    assert caught.value.reason.startswith(expected)
    assert caught.value.details == {"field": field}
    with pytest.raises(InvalidEvent) as built:
        make_event(event["type"], event["host"], event["data"], 7, id=event["id"], time=T0)
    assert built.value.reason == caught.value.reason
    caught.value.reason.encode("utf-8")
    assert "\x00" not in caught.value.reason


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b'{"id": "a\\u0000b"}', "event.id contains a NUL character (\\u0000)"),
        (b'{"data": {"a\\udfffb": 1}}', "event.data has a key that contains an unpaired surrogate (\\udfff)"),
        (b'{"data": {"name": "\\udc00\\ud800"}}', "event.data.name contains an unpaired surrogate (\\udc00)"),
    ],
)
def test_unfit_text_is_refused_before_any_field_check(payload: bytes, reason: str) -> None:
    assert reason_for(payload).startswith(reason)


def test_a_paired_surrogate_escape_is_one_character_and_accepted() -> None:
    event = parse_event(encode(envelope(data=_data("instance", name="web \U0001f600"))))
    assert event.data["name"] == "web \U0001f600"


@pytest.mark.parametrize(
    "subject",
    ["ledger.events.h2.instance.started", "ledger.events.h1.instance.stopped", "ledger.events.h1", "other"],
)
def test_an_event_on_the_wrong_subject_is_refused(subject: str) -> None:
    assert reason_for(encode(envelope()), subject) == (
        f"subject {subject!r} does not match the event's host and type: "
        "expected 'ledger.events.h1.instance.started'"
    )


# ---- subjects and make_event -----------------------------------------------------------------------------


def test_subjects_put_the_host_before_the_type() -> None:
    assert subject_for("h1", "instance.started") == "ledger.events.h1.instance.started"
    assert subject_for("gpu-7", "oci_cache.measured") == "ledger.events.gpu-7.oci_cache.measured"


@pytest.mark.parametrize(
    ("host", "event_type"), [("h.1", "host.capacity"), ("h1", "host.exploded"), ("", "image.pulled")]
)
def test_subject_for_refuses_what_no_consumer_would_accept(host: str, event_type: str) -> None:
    with pytest.raises(InvalidEvent):
        subject_for(host, event_type)


def test_make_event_fills_a_unique_id_and_the_current_time() -> None:
    first, second = (make_event("image.pulled", "h1", IMAGE, 1) for _ in range(2))

    assert first["id"] != second["id"]
    assert first["time"].endswith("Z")
    assert abs(datetime.fromisoformat(first["time"]) - datetime.now(UTC)) < timedelta(minutes=1)


def test_make_event_refuses_what_the_consumer_would_dead_letter() -> None:
    with pytest.raises(InvalidEvent, match=r"image\.size_bytes cannot be negative"):
        make_event("image.pulled", "h1", {**IMAGE, "size_bytes": -1}, 1)
    with pytest.raises(InvalidEvent, match="must be timezone-aware"):
        make_event("image.pulled", "h1", IMAGE, 1, time=datetime(2025, 1, 1))


# ---- schemas and docs ------------------------------------------------------------------------------------


def test_there_is_one_valid_schema_per_type() -> None:
    files = {p.name.removesuffix(".schema.json") for p in (DOCS / "events").glob("*.schema.json")}

    assert files == set(EVENT_TYPES)
    for event_type in EVENT_TYPES:
        Draft202012Validator.check_schema(schema_json(event_type))
        assert schema_json(event_type)["properties"]["time"]["pattern"] == TIME_PATTERN


@pytest.mark.parametrize("kind", ["instance", "volume", "image"])
def test_schemas_list_exactly_the_records_fields(kind: str) -> None:
    fields = set(RECORD_CLASSES[kind].__dataclass_fields__)
    for event_type in (t for t in EVENT_TYPES if t.startswith(f"{kind}.")):
        assert set(schema_json(event_type)["properties"]["data"]["properties"]) == fields


def test_docs_give_one_example_per_type() -> None:
    assert sorted(e["type"] for e in doc_examples()) == sorted(EVENT_TYPES)


@pytest.mark.parametrize("example", doc_examples(), ids=lambda e: str(e["type"]))
def test_each_example_validates_and_parses(example: dict[str, Any]) -> None:
    schema(example["type"]).validate(example)
    event = parse_event(encode(example), subject_for(example["host"], example["type"]))
    assert event.data == example["data"]


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_the_schemas_accept_what_make_event_builds(event_type: str) -> None:
    schema(event_type).validate(envelope(event_type))


# ---- the schemas and the parser agree --------------------------------------------------------------------

INTERESTING_STRINGS = [
    "",
    "h1",
    "h.1",
    "h 1",
    "Running",
    "Stopped",
    "detected",
    "guessed",
    "vgpu",
    "passthrough",
    "2025-06-01T10:00:00Z",
    "2025-06-01T10:00:00.5+05:30",
    "2025-06-01T10:00:00Z\n",
    "2025-06-01T10:00:00",
    "2025-02-30T10:00:00Z",
    "0000-01-01T00:00:00Z",
    "2025-06-01T24:00:00Z",
    "x" * 33,
    "x" * 65,
    "x" * 256,
    "é",
    *EVENT_TYPES,
]
FIELD_NAMES = [
    "id",
    "type",
    "host",
    "time",
    "version",
    "data",
    "extra",
    "state",
    "vcpus",
    "gpu",
    "ratios",
    "hint",
]
NUMBERS = [-1, 0, 1, MAX_VCPUS, MAX_VCPUS + 1, 2**31 - 1, 2**31, MAX_AMOUNT, MAX_AMOUNT + 1]
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-3, max_value=2**64),
    st.sampled_from(NUMBERS),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.sampled_from(INTERESTING_STRINGS),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=5,
)


def _near(value: Any) -> st.SearchStrategy[Any]:
    """A value of the same JSON type, so that many mutated events are still valid and both sides accept."""
    if isinstance(value, bool):
        return st.booleans()
    if isinstance(value, int):
        return st.sampled_from(NUMBERS) | st.integers(min_value=0, max_value=10**6)
    if isinstance(value, str):
        return st.sampled_from(INTERESTING_STRINGS) | st.text(max_size=12)
    if value is None:
        return st.none() | st.text(max_size=12)
    return json_values


def _slots(value: Any, found: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    """Every (container, key) in a JSON value, so a mutation can reach any depth."""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else []
    for key, child in items:
        found.append((value, key))
        _slots(child, found)
    return found


def _holds_nul(value: Any) -> bool:
    """NUL in a key or string: valid JSON Schema text, but PostgreSQL text cannot hold it (docs/events.md)."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_holds_nul(k) or _holds_nul(v) for k, v in value.items())
    return isinstance(value, list) and any(_holds_nul(v) for v in value)


def _instance_disk_fits(event: dict[str, Any]) -> bool:
    """The other rule a JSON Schema cannot express (docs/events.md): an instance's overlay, volume overlay
    and volume bytes add up to at most 2⁶³−1, as its disk in reports is their sum."""
    data = event.get("data")
    if not str(event.get("type", "")).startswith("instance.") or not isinstance(data, dict):
        return True
    parts = [data.get(k, 0) for k in ("overlay_bytes", "volume_overlay_bytes", "volume_bytes")]
    if not all(isinstance(p, int) and not isinstance(p, bool) for p in parts):
        return True  # the schema refuses it anyway
    return sum(parts) <= MAX_AMOUNT


def _is_real_date(event: dict[str, Any]) -> bool:
    """The one check docs/events.md says a JSON Schema cannot express: the time names a real instant."""
    try:
        datetime.fromisoformat(event["time"])
    except ValueError:
        return False
    return True


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event_type=st.sampled_from(EVENT_TYPES), data=st.data())
def test_schemas_and_parser_agree_on_near_valid_events(event_type: str, data: st.DataObject) -> None:
    event = copy.deepcopy(envelope(event_type))
    for _ in range(data.draw(st.integers(min_value=1, max_value=3))):
        container, key = data.draw(st.sampled_from(_slots(event, [])))
        action = data.draw(st.sampled_from(["near", "near", "set", "delete", "add"]))
        if action == "near":
            container[key] = data.draw(_near(container[key]))
        elif action == "set":
            container[key] = data.draw(json_values)
        elif action == "delete" and isinstance(container, dict):
            del container[key]
        elif isinstance(container, dict):
            container[data.draw(st.sampled_from(FIELD_NAMES))] = data.draw(json_values)
    payload = encode(event)
    assume(len(payload) <= MAX_EVENT_BYTES)

    kind = event.get("type")
    valid = isinstance(kind, str) and kind in EVENT_TYPES and schema(kind).is_valid(event)
    expected = valid and _is_real_date(event) and not _holds_nul(event) and _instance_disk_fits(event)
    try:
        parse_event(payload)
        accepted = True
    except InvalidEvent:
        accepted = False
    assert accepted == expected, f"schema says {expected}, parser says {accepted}"


def test_a_null_bandwidth_is_left_unstated_like_a_missing_one() -> None:
    """Null means absent, as in requests: the ledger charges it the default (ledger.core.charges)."""
    event = parse_event(encode(envelope("instance.started", data=_data("instance", disk_io_bps=None))))
    assert isinstance(event.record, InstanceRecord) and event.record.disk_io_bps is None
