"""The request-reply wire protocol (v1): strict JSON request parsing and reply shapes.

Every reply is a JSON object with `ok`. A refusal or error is still a normal reply: `ok: false`, a stable
`code`, a human `message`, and structured fields; the `Nats-Service-Error(-Code)` headers say the same.
docs/protocol.md and docs/protocol/*.schema.json describe it for other languages.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, time
from enum import Enum
from json.encoder import encode_basestring_ascii
from typing import Any

from ledger.core.charges import AllocationRequest
from ledger.core.errors import InvalidRequest, LedgerError
from ledger.core.placement import SPREAD, check_labels, check_limit, check_policy
from ledger.core.resources import ResourceType, parse_resource
from ledger.core.results import Grant
from ledger.core.strict_json import InvalidJSON, escape_text, loads

_string = encode_basestring_ascii  # how json.dumps writes a str (ensure_ascii, its C encoder)

PREFIX = "ledger.v1"
MAX_REQUEST_BYTES = 64 * 1024  # far more than any request needs; NATS caps payloads at 1 MB anyway
MAX_EXCLUDED = 1000  # hosts a fleet search may be told to leave out

# Nats-Service-Error-Code values (HTTP-like, as the micro protocol suggests) for each stable code.
HEADER_CODES = {
    "invalid_request": "400",
    "invalid_config": "400",
    "not_found": "404",
    "unknown_host": "404",
    "conflict": "409",
    "insufficient_resources": "409",
    "unavailable": "503",
    "internal": "500",
}

_STR, _INT, _NUM, _BOOL, _OBJ, _ARR = "string", "integer", "number", "boolean", "object", "array"
# what is asked of a host (validate's amounts), and where to look for one (a fleet search)
_AMOUNTS = {
    "vcpus": _INT,
    "memory_bytes": _INT,
    "disk_bytes": _INT,
    "network_download_bps": _INT,
    "network_upload_bps": _INT,
    "disk_io_bps": _INT,
    "needs_gpu": _BOOL,
    "gpu_profile": _STR,
}
_SEARCH = {"labels": _OBJ, "exclude_hosts": _ARR, "policy": _STR}

# endpoint → {field: json type}; every field optional unless listed in REQUIRED.
FIELDS: dict[str, dict[str, str]] = {
    "validate": {"host": _STR, **_AMOUNTS, "idempotency_key": _STR, "ttl_seconds": _NUM},
    "release": {"reservation_id": _STR},
    "status": {"host": _STR, "resource": _STR, "allocations": _BOOL, "limit": _INT, "after": _STR},
    "can_allocate": {"host": _STR, "resource": _STR, "amount": _INT},
    "defaults": {"host": _STR, "vcpus": _INT},
    "image_pull_check": {"host": _STR},
    "hosts": {},
    "candidates": {**_AMOUNTS, **_SEARCH, "limit": _INT},
    "place": {**_AMOUNTS, **_SEARCH, "attempts": _INT, "idempotency_key": _STR, "ttl_seconds": _NUM},
    "running_instances": {"host": _STR},
    "reservation": {"reservation_id": _STR, "host": _STR, "idempotency_key": _STR},
}
REQUIRED: dict[str, frozenset[str]] = {
    "release": frozenset({"reservation_id"}),
    "can_allocate": frozenset({"resource", "amount"}),
    "defaults": frozenset({"vcpus"}),
}
ENDPOINTS = tuple(FIELDS)
_EXACT = {
    _STR: str,
    _INT: int,
    _NUM: float,
    _BOOL: bool,
    _OBJ: dict,
    _ARR: list,
}  # the Python type json.loads gives each


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return _BOOL
    if isinstance(value, int):
        return _INT
    if isinstance(value, float):
        return _NUM
    if isinstance(value, str):
        return _STR
    return "array" if isinstance(value, list) else "object"


def parse_request(endpoint: str, payload: bytes) -> dict[str, Any]:
    """The request body as a dict of known, well-typed fields, or InvalidRequest saying what is wrong (and
    no other exception, whatever the bytes). Which JSON is accepted at all is strict_json's rule."""
    if not payload or (payload.isspace() and len(payload) <= MAX_REQUEST_BYTES):
        body: Any = {}
    else:
        try:
            body = loads(payload, max_bytes=MAX_REQUEST_BYTES, name="request")
        except InvalidJSON as exc:
            top = exc.path[0] if exc.path else None
            raise InvalidRequest(exc.message, **({"field": top} if isinstance(top, str) else {})) from None
    if not isinstance(body, dict):
        raise InvalidRequest(f"request must be a JSON object, got {_json_type(body)}")
    known = FIELDS[endpoint]
    if not body.keys() <= known.keys():
        unknown = [_shorten(name) for name in sorted(body.keys() - known.keys())]
        listed = ", ".join(sorted(known)) or "none"
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise InvalidRequest(
            f"unknown field(s) {', '.join(unknown[:5])}{more} for {endpoint}; known: {listed}",
            field=unknown[0],
        )
    for name in REQUIRED.get(endpoint, ()):
        if body.get(name) is None:
            raise InvalidRequest(f"{name} is required", field=name)
    nulls = False
    for name, raw in body.items():
        wanted, kind = known[name], type(raw)
        if kind is _EXACT[wanted] or (kind is int and wanted == _NUM):
            continue  # the common case: loads has refused NUL, surrogates, NaN and numbers out of range
        if raw is None:
            nulls = True
            continue
        if wanted == _INT and kind is float and raw.is_integer():
            raise InvalidRequest(f"{name} must be a JSON integer (write {int(raw)}, not {raw!r})", field=name)
        raise InvalidRequest(f"{name} must be a JSON {wanted}, got {_json_type(raw)}", field=name)
    return {k: v for k, v in body.items() if v is not None} if nulls else body


def _shorten(text: str, limit: int = 64) -> str:
    """A name from the request as a message may quote it: a refusal does not echo a huge request back."""
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


@dataclass(frozen=True, slots=True)
class ValidateRequest:
    host: str | None
    allocation: AllocationRequest
    idempotency_key: str | None
    ttl_seconds: float | None

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> ValidateRequest:
        allocation = allocation_request(body)
        return cls(body.get("host"), allocation, body.get("idempotency_key"), body.get("ttl_seconds"))


def allocation_request(body: Mapping[str, Any]) -> AllocationRequest:
    """The amounts a validate, candidates or place request asks for."""
    return AllocationRequest(
        vcpus=body.get("vcpus", 0),
        memory_bytes=body.get("memory_bytes", 0),
        disk_bytes=body.get("disk_bytes", 0),
        network_download_bps=body.get("network_download_bps"),  # absent: charged the default
        network_upload_bps=body.get("network_upload_bps"),
        disk_io_bps=body.get("disk_io_bps"),
        needs_gpu=body.get("needs_gpu", False),
        gpu_profile=body.get("gpu_profile"),
    )


@dataclass(frozen=True, slots=True)
class SearchRequest:
    """Where a candidates or place request looks: labels every host must carry, hosts to leave out, the
    policy that ranks them, and how many to return (candidates) or try (place)."""

    labels: dict[str, str]
    exclude_hosts: tuple[str, ...]
    policy: str
    limit: int

    @classmethod
    def from_body(cls, body: Mapping[str, Any], *, count: str, default: int, maximum: int) -> SearchRequest:
        exclude = body.get("exclude_hosts", [])
        if not all(isinstance(host, str) for host in exclude) or len(exclude) > MAX_EXCLUDED:
            raise InvalidRequest(
                f"exclude_hosts must be a list of at most {MAX_EXCLUDED} host ids (strings)",
                field="exclude_hosts",
            )
        return cls(
            labels=check_labels(body.get("labels", {})),
            exclude_hosts=tuple(exclude),
            policy=check_policy(body.get("policy", SPREAD)),
            limit=check_limit(body.get(count, default), count, maximum),
        )


def resource_field(body: Mapping[str, Any]) -> ResourceType | None:
    name = body.get("resource")
    if name is None:
        return None
    try:
        return parse_resource(name)
    except ValueError as exc:
        raise InvalidRequest(str(exc), field="resource") from None


def ok(data: Mapping[str, Any]) -> bytes:
    return json.dumps({"ok": True, **data}, separators=(",", ":")).encode()


def grant_reply(grant: Grant) -> bytes:
    """`ok(grant.to_dict())`, byte for byte (a test holds them equal), from one format instead of a dict
    and a JSON encoder walk: every validate reply goes through here."""
    key = "null" if grant.idempotency_key is None else _string(grant.idempotency_key)
    c = grant.charge
    defaulted = ",".join(_string(name) for name in c.defaulted)
    return (
        f'{{"ok":true,"reservation_id":{_string(grant.reservation_id)},"host":{_string(grant.host_id)},'
        f'"status":{_string(grant.status)},"expires_at":{_string(grant.expires_at.isoformat())},'
        f'"idempotency_key":{key},"replayed":{"true" if grant.replayed else "false"},'
        f'"charged":{{"vcpus":{c.vcpus},"memory_bytes":{c.memory_bytes},"disk_bytes":{c.disk_bytes},'
        f'"network_download_bps":{c.network_download_bps},"network_upload_bps":{c.network_upload_bps},'
        f'"disk_io_bps":{c.disk_io_bps},"gpu":{c.gpu}}},"defaulted":[{defaulted}]}}'
    ).encode()


def error_reply(error: LedgerError) -> tuple[str, str, bytes]:
    """What the service sends for `error`: the Nats-Service-Error-Code and Nats-Service-Error header values
    and the body. Sendable whatever the error holds: the body is ASCII JSON with `ok: false`, `code`,
    `message` and the details (NUL and unpaired surrogates escaped; a value JSON cannot hold becomes a
    string, never an object's repr); the description is the message on one ASCII line of at most
    MAX_ERROR_DESCRIPTION characters."""
    message = escape_text(error.message)
    reply: dict[str, Any] = {"ok": False, "code": error.code, "message": message}
    for name, value in error.details.items():
        reply.setdefault(escape_text(name), _plain(value, 0))
    body = json.dumps(reply, separators=(",", ":"), allow_nan=False).encode()
    return HEADER_CODES.get(error.code, "500"), _description(message), body


def refusal(error: LedgerError) -> bytes:
    return error_reply(error)[2]


MAX_ERROR_DESCRIPTION = 1024  # what the micro protocol allows in Nats-Service-Error
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _description(message: str) -> str:
    text = _CONTROL.sub(" ", message.encode("ascii", "backslashreplace").decode("ascii"))
    if len(text) <= MAX_ERROR_DESCRIPTION:
        return text
    return f"{text[: MAX_ERROR_DESCRIPTION - 3]}..."


def _plain(value: Any, depth: int) -> Any:
    """`value` as JSON holds it, for an error's details."""
    if isinstance(value, Enum):
        value = value.value
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):  # json.dumps cannot write an integer of 4,300 digits
        return int(value) if value.bit_length() <= 128 else f"an integer of {value.bit_length()} bits"
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return escape_text(str.__str__(value))
    if isinstance(value, bytes | bytearray):
        return escape_text(value.decode("utf-8", "backslashreplace"))
    if depth >= 8:  # deep, or a cycle: no error needs more
        return "..."
    if isinstance(value, Mapping):
        return {escape_text(_text(k)): _plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v, depth + 1) for v in value]
    if isinstance(value, date | time):
        return value.isoformat()
    return _text(value)


def _text(value: Any) -> str:
    """`str(value)`, or its type's name where that would be a default repr (`<Foo object at 0x...>`)."""
    if isinstance(value, str):
        return str.__str__(value)
    try:
        text = str(value)
    except Exception:  # a __str__ that fails must not stop the reply
        return type(value).__name__
    return type(value).__name__ if text == object.__repr__(value) else escape_text(text)


def reservation_lookup(body: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """`reservation`'s (reservation_id, idempotency_key): exactly one of them is given."""
    by_id, key = body.get("reservation_id"), body.get("idempotency_key")
    if by_id is not None and key is not None:
        raise InvalidRequest("give reservation_id or idempotency_key, not both", field="idempotency_key")
    if by_id is None and key is None:
        raise InvalidRequest(
            "reservation_id is required, or idempotency_key (with host; default: this service's host)",
            field="reservation_id",
        )
    return by_id, key
