"""The event contract, version 1: one JSON envelope per lifecycle change, carrying the entity's full record.

Parsing is strict so that a bad event is dead-lettered with a reason a publisher can act on, instead of being
half-applied or retried forever. docs/events.md explains the contract to publishers and
docs/events/*.schema.json state it in JSON Schema; tests/events holds the schemas and this parser to agreeing.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ledger.core.errors import InvalidRequest
from ledger.core.gpu import PASSTHROUGH, VGPU, GPUProfile, GPUStatus, PassthroughDevice
from ledger.core.placement import check_labels
from ledger.core.records import MAX_ID_LENGTH, ImageRecord, InstanceRecord, OciCacheRecord, VolumeRecord
from ledger.core.resources import DELETED_STATE, HOST_ID_FORBIDDEN, Capacity, ResourceType, Source
from ledger.core.strict_json import InvalidJSON, check_strings, loads
from ledger.core.units import MAX_AMOUNT

CONTRACT_VERSION = 1
MAX_EVENT_BYTES = 2**20
SUBJECT_PREFIX = "ledger.events"
SUBJECT_WILDCARD = f"{SUBJECT_PREFIX}.>"  # what the stream captures

# Limits narrower than the records' own, because the store's columns are narrower (ledger/store/models.py):
# a longer value would fail inside the transaction on PostgreSQL and be retried instead of dead-lettered.
MAX_INT32 = 2**31 - 1
MAX_STATE_LENGTH = 32
MAX_RESERVATION_ID_LENGTH = 64

INSTANCE_ACTIONS = ("created", "started", "paused", "resumed", "stopped", "standby", "resized", "deleted")
VOLUME_ACTIONS = ("created", "attached", "detached", "resized", "deleted")
IMAGE_ACTIONS = ("pulled", "deleted")

EVENT_TYPES: tuple[str, ...] = (
    *(f"instance.{a}" for a in INSTANCE_ACTIONS),
    *(f"volume.{a}" for a in VOLUME_ACTIONS),
    *(f"image.{a}" for a in IMAGE_ACTIONS),
    "oci_cache.measured",
    "host.capacity",
)
ENVELOPE_FIELDS = ("id", "type", "host", "time", "version", "data")

_RECORDS: dict[str, type[InstanceRecord | VolumeRecord | ImageRecord | OciCacheRecord]] = {
    "instance": InstanceRecord,
    "volume": VolumeRecord,
    "image": ImageRecord,
    "oci_cache": OciCacheRecord,
}

# RFC 3339 with an upper-case T and Z and at most nanoseconds; the schemas carry the same pattern.
TIME_PATTERN = (
    r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
    r"T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?"
    r"(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"
)
_TIME = re.compile(TIME_PATTERN)
# A host is one NATS subject token; an event id is also a Nats-Msg-Id header value: printable ASCII only.
HOST_FORBIDDEN = HOST_ID_FORBIDDEN
ID_FORBIDDEN = r"[^!-~]"
_HOST_FORBIDDEN = re.compile(HOST_FORBIDDEN)
_ID_FORBIDDEN = re.compile(ID_FORBIDDEN)


class InvalidEvent(InvalidRequest):
    """The event is malformed or impossible; it is dead-lettered with this reason and never retried."""

    @property
    def reason(self) -> str:
        return self.message


@dataclass(frozen=True, slots=True)
class HostCapacityRecord:
    """A remote host's discovered capacities (discovery's HostCapacities.to_dict), ratios and labels."""

    capacities: Mapping[ResourceType, Capacity]
    ratios: Mapping[ResourceType, float]
    gpu: GPUStatus | None
    labels: Mapping[str, str] = field(default_factory=dict)


EventRecord = InstanceRecord | VolumeRecord | ImageRecord | OciCacheRecord | HostCapacityRecord


@dataclass(frozen=True, slots=True)
class Event:
    """A parsed, valid event: the envelope, the typed record, and the data exactly as received."""

    id: str
    type: str
    host: str
    time: datetime
    version: int
    record: EventRecord
    data: Mapping[str, Any]

    @property
    def kind(self) -> str:
        return self.type.split(".", 1)[0]

    @property
    def action(self) -> str:
        return self.type.split(".", 1)[1]


def subject_for(host: str, event_type: str) -> str:
    """The subject an event is published on: `ledger.events.<host>.<kind>.<action>`."""
    _check_host(host)
    _check_type(event_type)
    return f"{SUBJECT_PREFIX}.{host}.{event_type}"


def make_event(
    event_type: str,
    host: str,
    record: Mapping[str, Any],
    version: int,
    id: str | None = None,
    time: datetime | None = None,
) -> dict[str, Any]:
    """An envelope ready for `json.dumps`, validated here so a publisher learns of a mistake at once
    rather than from the dead-letter table."""
    when = datetime.now(UTC) if time is None else time
    if when.tzinfo is None or when.utcoffset() is None:
        raise InvalidEvent("event.time must be timezone-aware", field="time")
    envelope: dict[str, Any] = {
        "id": uuid.uuid4().hex if id is None else id,
        "type": event_type,
        "host": host,
        "time": when.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "version": version,
        "data": dict(record),
    }
    parse_envelope(envelope)
    return envelope


def parse_event(payload: bytes, subject: str | None = None) -> Event:
    """The event in `payload`, or InvalidEvent saying precisely what is wrong with it.

    When `subject` is given it must be the one `subject_for` derives from the envelope, so a consumer
    filtering by subject never applies an event that claims another host or type.
    """
    try:
        value = loads(payload, max_bytes=MAX_EVENT_BYTES, integral_floats=True, name="event", prefix="event.")
    except InvalidJSON as exc:
        raise _invalid(exc) from None
    event = _parse_envelope(value)  # loads has checked every string
    if subject is not None:
        expected = subject_for(event.host, event.type)
        if subject != expected:
            raise InvalidEvent(
                f"subject {subject!r} does not match the event's host and type: expected {expected!r}",
                field="subject",
            )
    return event


def parse_envelope(value: Any) -> Event:
    """The event in a JSON value built in Python (a publisher's, `make_event`'s): the checks `parse_event`
    makes after decoding, with every string held to what `loads` would accept."""
    try:
        check_strings(value, name="event", prefix="event.")
    except InvalidJSON as exc:
        raise _invalid(exc) from None
    return _parse_envelope(value)


def _invalid(error: InvalidJSON) -> InvalidEvent:
    return InvalidEvent(error.message, **({} if error.field is None else {"field": error.field}))


def _parse_envelope(value: Any) -> Event:
    if not isinstance(value, Mapping):
        raise InvalidEvent(f"event must be a JSON object, got {_json_type(value)}")
    unknown = sorted(set(value) - set(ENVELOPE_FIELDS))
    if unknown:
        raise InvalidEvent(
            f"event has unknown field(s) {', '.join(unknown)}; "
            f"the envelope holds {', '.join(ENVELOPE_FIELDS)}",
            field=unknown[0],
        )
    missing = [name for name in ENVELOPE_FIELDS if name not in value]
    if missing:
        raise InvalidEvent(f"event is missing field(s) {', '.join(missing)}", field=missing[0])
    event_id = _check_id(value["id"])
    event_type = _check_type(value["type"])
    host = _check_host(value["host"])
    when = _check_time(value["time"])
    version = _whole(value["version"], "version", MAX_AMOUNT)
    data = value["data"]
    if not isinstance(data, Mapping):
        raise InvalidEvent(f"event.data must be a JSON object, got {_json_type(data)}", field="data")
    record = _parse_host_capacity(data) if event_type == "host.capacity" else _parse_record(event_type, data)
    return Event(event_id, event_type, host, when, version, record, data)


# ---- envelope fields ---------------------------------------------------------------------------------


def _check_id(value: Any) -> str:
    text = _string(value, "id", MAX_ID_LENGTH)
    if not text or _ID_FORBIDDEN.search(text):
        raise InvalidEvent(
            f"event.id must be 1 to {MAX_ID_LENGTH} printable ASCII characters without spaces "
            f"(it is also the Nats-Msg-Id header), got {text!r}",
            field="id",
        )
    return text


def _check_type(value: Any) -> str:
    text = _string(value, "type", 64)
    if text not in EVENT_TYPES:
        raise InvalidEvent(
            f"event.type {text!r} is not a known event type; known: {', '.join(EVENT_TYPES)}", field="type"
        )
    return text


def _check_host(value: Any) -> str:
    text = _string(value, "host", 255)
    if not text or _HOST_FORBIDDEN.search(text):
        raise InvalidEvent(
            f"event.host must be a NATS subject token: 1 to 255 characters without '.', '*', '>' or "
            f"whitespace, got {text!r}",
            field="host",
        )
    return text


def _check_time(value: Any) -> datetime:
    text = _string(value, "time", 64)
    if not _TIME.fullmatch(text):
        raise InvalidEvent(
            "event.time must be an RFC 3339 timestamp with a UTC offset, like 2025-01-31T12:00:00Z, "
            f"got {text!r}",
            field="time",
        )
    try:
        return datetime.fromisoformat(text)
    except ValueError as exc:  # the pattern admits 2025-02-30; the calendar does not
        raise InvalidEvent(f"event.time {text!r} is not a real date and time: {exc}", field="time") from None


# ---- records -----------------------------------------------------------------------------------------


def _parse_record(
    event_type: str, data: Mapping[str, Any]
) -> InstanceRecord | VolumeRecord | ImageRecord | OciCacheRecord:
    kind, action = event_type.split(".", 1)
    cls = _RECORDS[kind]
    for name, raw in data.items():
        # The records read null as "missing"; the contract allows null only where a value may be absent.
        optional = cls.OPTIONAL_TEXT | cls.OPTIONAL_AMOUNTS
        if raw is None and name not in optional and name in cls.__dataclass_fields__:
            raise InvalidEvent(f"event.data: {kind}.{name} cannot be null", field=f"data.{name}")
    if cls is InstanceRecord and action == "deleted" and "state" not in data:
        data = {**data, "state": DELETED_STATE}
    try:
        record = cls.from_dict(data)
    except InvalidRequest as exc:
        name = exc.details.get("field", "")
        raise InvalidEvent(f"event.data: {exc.message}", field=f"data.{name}") from None
    if isinstance(record, InstanceRecord):
        _check_instance_limits(record)
    return record


def _check_instance_limits(record: InstanceRecord) -> None:
    if len(record.state) > MAX_STATE_LENGTH:
        raise InvalidEvent(
            f"event.data: instance.state is longer than {MAX_STATE_LENGTH} characters", field="data.state"
        )
    if record.reservation_id is not None and len(record.reservation_id) > MAX_RESERVATION_ID_LENGTH:
        raise InvalidEvent(
            f"event.data: instance.reservation_id is longer than {MAX_RESERVATION_ID_LENGTH} characters",
            field="data.reservation_id",
        )


_CAPACITY_FIELDS = frozenset({"capacity", "source", "hint"})
_HOST_CAPACITY_FIELDS = frozenset({*(r.value for r in ResourceType), "gpu", "ratios", "labels"})


def _parse_host_capacity(data: Mapping[str, Any]) -> HostCapacityRecord:
    _fields(data, "data", required=frozenset(r.value for r in ResourceType), known=_HOST_CAPACITY_FIELDS)
    ratios = _ratios(data.get("ratios", {}))
    found = {r: _capacity(data[r.value], f"data.{r.value}") for r in ResourceType}
    try:
        labels = check_labels(data.get("labels", {}), "data.labels")
    except InvalidRequest as exc:
        raise InvalidEvent(f"event.{exc.message}", field="data.labels") from None
    return HostCapacityRecord(found, ratios, _gpu(data.get("gpu"), "data.gpu"), labels)


def _capacity(value: Any, where: str) -> Capacity:
    obj = _object(value, where)
    _fields(obj, where, required=frozenset({"capacity", "source"}), known=_CAPACITY_FIELDS)
    amount = _whole(obj["capacity"], f"{where}.capacity", MAX_AMOUNT)
    source = _string(obj["source"], f"{where}.source", 16)
    if source not in {s.value for s in Source}:
        raise InvalidEvent(
            f"event.{where}.source must be one of {', '.join(s.value for s in Source)}, got {source!r}",
            field=f"{where}.source",
        )
    hint = obj.get("hint")
    if hint is not None:
        hint = _string(hint, f"{where}.hint", None)
    return Capacity(amount, Source(source), hint)


def _ratios(value: Any) -> dict[ResourceType, float]:
    obj = _object(value, "data.ratios")
    _fields(obj, "data.ratios", required=frozenset(), known=frozenset(r.value for r in ResourceType))
    ratios = {}
    for name, raw in obj.items():
        where = f"data.ratios.{name}"
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise InvalidEvent(f"event.{where} must be a number, got {_json_type(raw)}", field=where)
        if not (raw > 0 and math.isfinite(raw)):
            raise InvalidEvent(
                f"event.{where} must be a finite number greater than 0, got {raw}", field=where
            )
        ratios[ResourceType(name)] = float(raw)
    return ratios


_GPU_FIELDS = frozenset({"mode", "total_slots", "used_slots", "profiles", "devices"})
_PROFILE_FIELDS = frozenset({"name", "type_id", "framebuffer_mb", "available"})
_DEVICE_FIELDS = frozenset({"pci_address", "vendor_id", "device_id", "name", "driver", "available"})


def _gpu(value: Any, where: str) -> GPUStatus | None:
    if value is None:
        return None
    obj = _object(value, where)
    _fields(obj, where, required=frozenset({"mode", "total_slots", "used_slots"}), known=_GPU_FIELDS)
    mode = _string(obj["mode"], f"{where}.mode", 16)
    if mode not in (VGPU, PASSTHROUGH):
        raise InvalidEvent(
            f"event.{where}.mode must be {VGPU!r} or {PASSTHROUGH!r}, got {mode!r}", field=f"{where}.mode"
        )
    profiles = tuple(
        GPUProfile(
            name=_string(p["name"], f"{w}.name", 255),
            type_id=_string(p["type_id"], f"{w}.type_id", 255),
            framebuffer_mb=_whole(p["framebuffer_mb"], f"{w}.framebuffer_mb", MAX_AMOUNT),
            available=_whole(p["available"], f"{w}.available", MAX_INT32),
        )
        for w, p in _items(obj.get("profiles", []), f"{where}.profiles", _PROFILE_FIELDS)
    )
    devices = tuple(
        PassthroughDevice(
            pci_address=_string(d["pci_address"], f"{w}.pci_address", 255),
            vendor_id=_string(d["vendor_id"], f"{w}.vendor_id", 255),
            device_id=_string(d["device_id"], f"{w}.device_id", 255),
            name=_string(d["name"], f"{w}.name", 255),
            driver=None if d["driver"] is None else _string(d["driver"], f"{w}.driver", 255),
            available=_boolean(d["available"], f"{w}.available"),
        )
        for w, d in _items(obj.get("devices", []), f"{where}.devices", _DEVICE_FIELDS)
    )
    return GPUStatus(
        mode=mode,
        total_slots=_whole(obj["total_slots"], f"{where}.total_slots", MAX_INT32),
        used_slots=_whole(obj["used_slots"], f"{where}.used_slots", MAX_INT32),
        profiles=profiles,
        devices=devices,
    )


def _items(value: Any, where: str, known: frozenset[str]) -> list[tuple[str, Mapping[str, Any]]]:
    """Each object of a JSON array, with its path, checked to hold exactly the `known` fields."""
    if not isinstance(value, list):
        raise InvalidEvent(f"event.{where} must be an array, got {_json_type(value)}", field=where)
    items = []
    for index, item in enumerate(value):
        path = f"{where}[{index}]"
        obj = _object(item, path)
        _fields(obj, path, required=known, known=known)
        items.append((path, obj))
    return items


# ---- JSON values -------------------------------------------------------------------------------------


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object" if isinstance(value, Mapping) else type(value).__name__


def _object(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidEvent(f"event.{where} must be a JSON object, got {_json_type(value)}", field=where)
    return value


def _fields(obj: Mapping[str, Any], where: str, *, required: frozenset[str], known: frozenset[str]) -> None:
    unknown = sorted(set(obj) - known)
    if unknown:
        raise InvalidEvent(
            f"event.{where} has unknown field(s) {', '.join(unknown)}; "
            f"known fields: {', '.join(sorted(known))}",
            field=f"{where}.{unknown[0]}",
        )
    missing = sorted(required - set(obj))
    if missing:
        raise InvalidEvent(
            f"event.{where} is missing field(s) {', '.join(missing)}", field=f"{where}.{missing[0]}"
        )


def _string(value: Any, where: str, max_length: int | None) -> str:
    if not isinstance(value, str):
        raise InvalidEvent(f"event.{where} must be a string, got {_json_type(value)}", field=where)
    if max_length is not None and len(value) > max_length:
        raise InvalidEvent(f"event.{where} is longer than {max_length} characters", field=where)
    return value


def _whole(value: Any, where: str, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidEvent(
            f"event.{where} must be a whole number, got {_json_type(value)} {value!r}", field=where
        )
    if value < 0:
        raise InvalidEvent(f"event.{where} cannot be negative, got {value}", field=where)
    if value > maximum:
        raise InvalidEvent(f"event.{where} is too large: {value} exceeds {maximum}", field=where)
    return value


def _boolean(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidEvent(f"event.{where} must be true or false, got {_json_type(value)}", field=where)
    return value
