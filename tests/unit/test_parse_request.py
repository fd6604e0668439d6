"""parse_request's checks on each field's value, including the ones its fast path for well-typed fields
must still make: NUL characters, non-finite numbers, nulls, whole floats where an integer is due."""

from __future__ import annotations

from typing import Any

import pytest

from ledger.bus.protocol import parse_request
from ledger.core.errors import InvalidRequest


@pytest.mark.parametrize(
    ("payload", "field", "says"),
    [
        (b'{"host": "a\\u0000b"}', "host", "NUL"),
        (b'{"idempotency_key": "\\u0000"}', "idempotency_key", "NUL"),
        (b'{"ttl_seconds": 1e999}', "ttl_seconds", "finite"),
        (b'{"ttl_seconds": -1e999}', "ttl_seconds", "finite"),
        (b'{"ttl_seconds": NaN}', None, "not a JSON number"),
        (b'{"vcpus": 1e999}', "vcpus", "integer"),
        (b'{"vcpus": true}', "vcpus", "integer"),
        (b'{"needs_gpu": 0}', "needs_gpu", "boolean"),
        (b'{"vcpus": "1"}', "vcpus", "integer"),
    ],
)
def test_a_bad_value_is_refused_naming_its_field(payload: bytes, field: str | None, says: str) -> None:
    with pytest.raises(InvalidRequest, match=says) as caught:
        parse_request("validate", payload)
    assert caught.value.details.get("field") == field


@pytest.mark.parametrize(
    ("payload", "parsed"),
    [
        (b'{"vcpus": 2, "host": "h", "needs_gpu": false}', {"vcpus": 2, "host": "h", "needs_gpu": False}),
        (b'{"vcpus": 2.0, "ttl_seconds": 30}', {"vcpus": 2, "ttl_seconds": 30}),
        (b'{"ttl_seconds": 2.5, "gpu_profile": null}', {"ttl_seconds": 2.5}),
        (b'{"host": null, "idempotency_key": null}', {}),
        (b"", {}),
    ],
)
def test_good_values_parse_with_nulls_dropped_and_whole_floats_made_integers(
    payload: bytes, parsed: dict[str, Any]
) -> None:
    body = parse_request("validate", payload)
    assert body == parsed
    assert all(type(body[k]) is type(v) for k, v in parsed.items())
