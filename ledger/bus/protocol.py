"""The request-reply wire protocol (v1): strict JSON request parsing and reply shapes.

Every reply is a JSON object with `ok`. A refusal or error is still a normal reply: `ok: false`, a stable
`code`, a human `message`, and structured fields; the `Nats-Service-Error(-Code)` headers say the same.
docs/protocol.md and docs/protocol/*.schema.json describe it for other languages.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii
from typing import Any

from ledger.core.capacity import AllocationRequest
from ledger.core.errors import InvalidRequest, LedgerError
from ledger.core.resources import ResourceType, parse_resource
from ledger.store.results import Grant

_string = encode_basestring_ascii  # how json.dumps writes a str (ensure_ascii, its C encoder)

PREFIX = "ledger.v1"
MAX_REQUEST_BYTES = 64 * 1024  # far more than any request needs; NATS caps payloads at 1 MB anyway

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

_STR, _INT, _NUM, _BOOL = "string", "integer", "number", "boolean"

# endpoint → {field: json type}; every field optional unless listed in REQUIRED.
FIELDS: dict[str, dict[str, str]] = {
    "validate": {
        "host": _STR,
        "vcpus": _INT,
        "memory_bytes": _INT,
        "disk_bytes": _INT,
        "network_download_bps": _INT,
        "network_upload_bps": _INT,
        "disk_io_bps": _INT,
        "needs_gpu": _BOOL,
        "gpu_profile": _STR,
        "idempotency_key": _STR,
        "ttl_seconds": _NUM,
    },
    "release": {"reservation_id": _STR},
    "status": {"host": _STR, "resource": _STR, "allocations": _BOOL},
    "can_allocate": {"host": _STR, "resource": _STR, "amount": _INT},
    "defaults": {"host": _STR, "vcpus": _INT},
    "image_pull_check": {"host": _STR},
    "hosts": {},
}
REQUIRED: dict[str, frozenset[str]] = {
    "release": frozenset({"reservation_id"}),
    "can_allocate": frozenset({"resource", "amount"}),
    "defaults": frozenset({"vcpus"}),
}
ENDPOINTS = tuple(FIELDS)
_EXACT = {_STR: str, _INT: int, _NUM: float, _BOOL: bool}  # the Python type json.loads gives each
_PLAIN = (int, bool)  # those need no check beyond their type


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
    """The request body as a dict of known, well-typed fields, or InvalidRequest saying what is wrong."""
    if len(payload) > MAX_REQUEST_BYTES:
        raise InvalidRequest(f"request is {len(payload)} bytes, over the limit of {MAX_REQUEST_BYTES}")
    if not payload.strip():
        body: Any = {}
    else:
        try:
            body = json.loads(payload.decode("utf-8"), parse_constant=_reject_constant)
        except UnicodeDecodeError:
            raise InvalidRequest("request is not UTF-8") from None
        except ValueError as exc:
            raise InvalidRequest(f"request is not JSON: {exc}") from None
        except RecursionError:
            raise InvalidRequest("request is not JSON: nested too deeply") from None
    if not isinstance(body, dict):
        raise InvalidRequest(f"request must be a JSON object, got {_json_type(body)}")
    known = FIELDS[endpoint]
    if not body.keys() <= known.keys():
        unknown = sorted(body.keys() - known.keys())
        listed = ", ".join(sorted(known)) or "none"
        raise InvalidRequest(
            f"unknown field(s) {', '.join(unknown)} for {endpoint}; known: {listed}", field=unknown[0]
        )
    for name in REQUIRED.get(endpoint, ()):
        if body.get(name) is None:
            raise InvalidRequest(f"{name} is required", field=name)
    nulls = False
    for name, raw in list(body.items()):
        wanted, kind = known[name], type(raw)
        if kind is _EXACT[wanted] and (
            kind in _PLAIN or (kind is str and "\x00" not in raw) or (kind is float and math.isfinite(raw))
        ):
            continue  # the common case: exactly the type asked for, and a value it allows
        if raw is None:
            nulls = True
            continue
        got, value = _json_type(raw), raw
        if wanted == _INT and got == _NUM and math.isfinite(raw) and raw == int(raw):
            body[name] = value = int(raw)  # JSON (and JSON Schema) call 2.0 an integer
            got = _INT
        if got != wanted and not (wanted == _NUM and got == _INT):
            raise InvalidRequest(f"{name} must be a JSON {wanted}, got {got}", field=name)
        if wanted == _NUM and not math.isfinite(value):
            raise InvalidRequest(f"{name} must be a finite number", field=name)
        if wanted == _STR and "\x00" in value:
            raise InvalidRequest(f"{name} must not contain NUL characters", field=name)
    return {k: v for k, v in body.items() if v is not None} if nulls else body


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


@dataclass(frozen=True, slots=True)
class ValidateRequest:
    host: str | None
    allocation: AllocationRequest
    idempotency_key: str | None
    ttl_seconds: float | None

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> ValidateRequest:
        allocation = AllocationRequest(
            vcpus=body.get("vcpus", 0),
            memory_bytes=body.get("memory_bytes", 0),
            disk_bytes=body.get("disk_bytes", 0),
            network_download_bps=body.get("network_download_bps", 0),
            network_upload_bps=body.get("network_upload_bps", 0),
            disk_io_bps=body.get("disk_io_bps", 0),
            needs_gpu=body.get("needs_gpu", False),
            gpu_profile=body.get("gpu_profile"),
        )
        return cls(body.get("host"), allocation, body.get("idempotency_key"), body.get("ttl_seconds"))


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
    return (
        f'{{"ok":true,"reservation_id":{_string(grant.reservation_id)},"host":{_string(grant.host_id)},'
        f'"status":{_string(grant.status)},"expires_at":{_string(grant.expires_at.isoformat())},'
        f'"idempotency_key":{key},"replayed":{"true" if grant.replayed else "false"}}}'
    ).encode()


def refusal(error: LedgerError) -> bytes:
    return json.dumps({"ok": False, **error.to_dict()}, separators=(",", ":"), default=str).encode()
