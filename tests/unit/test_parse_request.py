"""parse_request: whatever the bytes, a dict of known, well-typed fields or an InvalidRequest naming the field
at fault, and never another exception. Integers are integer literals (`2`, not `2.0`); NUL, unpaired
surrogates, repeated keys, NaN, numbers out of range and deep nesting are refused."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.bus.protocol import FIELDS, MAX_REQUEST_BYTES, error_reply, parse_request
from ledger.core.errors import InvalidRequest
from tests.unit.hostile_json import any_text, json_objects, json_texts

ALL_FIELDS = sorted({name for fields in FIELDS.values() for name in fields})


def refused(payload: bytes, endpoint: str = "validate") -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        parse_request(endpoint, payload)
    return caught.value


@pytest.mark.parametrize(
    ("payload", "field", "says"),
    [
        (b'{"host": "a\\u0000b"}', "host", "host contains a NUL character"),
        (b'{"idempotency_key": "\\u0000"}', "idempotency_key", "NUL"),
        (b'{"host": "\\ud800"}', "host", r"host contains an unpaired surrogate \(\\ud800\)"),
        (b'{"host": "ok\\udc00\\ud800"}', "host", "unpaired surrogate"),
        (b'{"ttl_seconds": 1e999}', "ttl_seconds", "ttl_seconds is out of range: 1e999"),
        (b'{"ttl_seconds": -1e999}', "ttl_seconds", "out of range"),
        (b'{"ttl_seconds": 1' + b"0" * 400 + b"}", "ttl_seconds", "integer of 401 digits; at most 30"),
        (b'{"ttl_seconds": NaN}', "ttl_seconds", "NaN is not a JSON value"),
        (b'{"vcpus": 1e999}', "vcpus", "out of range"),
        (b'{"vcpus": 2.0}', "vcpus", r"vcpus must be a JSON integer \(write 2, not 2\.0\)"),
        (b'{"vcpus": 1e3}', "vcpus", r"write 1000, not 1000\.0"),
        (b'{"vcpus": 2.5}', "vcpus", "vcpus must be a JSON integer, got number"),
        (b'{"vcpus": true}', "vcpus", "integer"),
        (b'{"vcpus": 1, "vcpus": 64}', "vcpus", "key 'vcpus' appears twice"),
        (b'{"needs_gpu": 0}', "needs_gpu", "boolean"),
        (b'{"vcpus": "1"}', "vcpus", "integer"),
        (b'{"ttl_seconds": true}', "ttl_seconds", "must be a JSON number, got boolean"),
    ],
)
def test_a_bad_value_is_refused_naming_its_field(payload: bytes, field: str, says: str) -> None:
    error = refused(payload)
    assert error.details.get("field") == field
    assert re.search(says, error.message), error.message


def test_a_field_name_with_an_unpaired_surrogate_is_refused_escaped() -> None:
    error = refused(b'{"a\\udfffb": 1}')

    assert error.message == (
        "request has a key that contains an unpaired surrogate (\\udfff), which is not Unicode text: "
        "'a\\udfffb'"
    )
    assert error.details == {"field": "a\\udfffb"}


@pytest.mark.parametrize(
    ("payload", "says"),
    [
        (b"[" * 30_000 + b"]" * 30_000, "request is not JSON: nested more than 32 levels deep"),
        (b'{"host": ' + b"[" * 40 + b"]" * 40 + b"}", "request is not JSON: nested more than 32 levels deep"),
        (b'{"vcpus": 1, "host": "\xff"}', "request is not UTF-8: invalid byte at offset 22"),
        (b'{"vcpus": 1', "request is not JSON: Expecting ',' delimiter at line 1 column 12"),
        (b"[1]", "request must be a JSON object, got array"),
        (b" " * (MAX_REQUEST_BYTES + 1), f"over the limit of {MAX_REQUEST_BYTES} bytes"),
    ],
)
def test_a_bad_body_is_refused_saying_why(payload: bytes, says: str) -> None:
    assert says in refused(payload).message


def test_an_unknown_field_is_named_and_a_huge_one_is_not_echoed() -> None:
    error = refused(json.dumps({"vcpu": 1, "x" * 10_000: 1}).encode())

    assert error.message.startswith("unknown field(s) vcpu, xxxx")
    assert len(error.message) < 400
    assert error.details == {"field": "vcpu"}


@pytest.mark.parametrize(
    ("payload", "parsed"),
    [
        (b'{"vcpus": 2, "host": "h", "needs_gpu": false}', {"vcpus": 2, "host": "h", "needs_gpu": False}),
        (b'{"ttl_seconds": 2.5, "gpu_profile": null}', {"ttl_seconds": 2.5}),
        (b'{"ttl_seconds": 30}', {"ttl_seconds": 30}),
        (b'{"ttl_seconds": 123456789012345678901234567890}', {"ttl_seconds": 123456789012345678901234567890}),
        (b'{"host": "caf\\u00e9 \\ud83d\\ude00"}', {"host": "caf\u00e9 \U0001f600"}),
        (b'{"host": null, "idempotency_key": null}', {}),
        (b"", {}),
        (b" \n", {}),
    ],
)
def test_good_values_parse_with_nulls_dropped_and_types_kept(payload: bytes, parsed: dict[str, Any]) -> None:
    body = parse_request("validate", payload)
    assert body == parsed
    assert all(type(body[k]) is type(v) for k, v in parsed.items())  # a whole TTL stays an int, unconverted


# ---- no input gets anything but a dict or InvalidRequest ---------------------------------------------------

_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
}


def assert_parses_or_refuses(endpoint: str, payload: bytes) -> None:
    """The only outcomes: a dict whose values have the field's JSON type, or InvalidRequest whose reply the
    service can always send."""
    try:
        body = parse_request(endpoint, payload)
    except InvalidRequest as error:
        header_code, description, reply = error_reply(error)
        assert header_code == "400"
        assert description.isascii() and "\r" not in description and "\n" not in description
        assert json.loads(reply.decode("utf-8"))["code"] == "invalid_request"
        error.message.encode("utf-8")
        return
    assert isinstance(body, dict)
    for name, value in body.items():
        wanted = FIELDS[endpoint][name]
        assert type(value) in _TYPES[wanted], (name, value)
        if isinstance(value, str):
            value.encode("utf-8")
            assert "\x00" not in value


endpoints = st.sampled_from(sorted(FIELDS))


@settings(max_examples=300, deadline=None)
@given(endpoint=endpoints, payload=st.binary(max_size=80))
def test_any_bytes(endpoint: str, payload: bytes) -> None:
    assert_parses_or_refuses(endpoint, payload)


@settings(max_examples=400, deadline=None)
@given(endpoint=endpoints, text=json_texts(ALL_FIELDS) | json_objects(ALL_FIELDS), raw=st.booleans())
def test_any_json_text(endpoint: str, text: str, raw: bool) -> None:
    """Surrogates, NUL, huge numbers, NaN, repeated keys, deep nesting; `raw` writes a surrogate as UTF-8
    would encode it if it could (which is not UTF-8)."""
    assert_parses_or_refuses(endpoint, text.encode("utf-8", "surrogatepass") if raw else text.encode())


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    any_text,
)


@settings(max_examples=400, deadline=None)
@given(
    endpoint=endpoints,
    body=st.dictionaries(
        st.sampled_from(ALL_FIELDS) | any_text, scalars | st.lists(scalars, max_size=2), max_size=6
    ),
    ensure_ascii=st.booleans(),
)
def test_any_dict_over_the_real_field_names(endpoint: str, body: dict[str, Any], ensure_ascii: bool) -> None:
    payload = json.dumps(body, ensure_ascii=ensure_ascii).encode("utf-8", "surrogatepass")
    assert_parses_or_refuses(endpoint, payload)
