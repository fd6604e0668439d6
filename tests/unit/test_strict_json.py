"""strict_json: the JSON the ledger accepts, the same for requests and events. Every refusal says what is
wrong and where, in a message that any encoder can write."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.core.strict_json import (
    MAX_DEPTH,
    MAX_INT_DIGITS,
    InvalidJSON,
    check_strings,
    check_text,
    escape_text,
    loads,
)

LIMIT = 2**20


def refusal(payload: bytes, *, integral_floats: bool = False, max_bytes: int = LIMIT) -> InvalidJSON:
    with pytest.raises(InvalidJSON) as caught:
        loads(payload, max_bytes=max_bytes, integral_floats=integral_floats, name="event", prefix="event.")
    return caught.value


def assert_safe(message: str) -> None:
    """A message any encoder writes: valid UTF-8, no NUL, no surrogate."""
    message.encode("utf-8")
    assert "\x00" not in message


# ---- what is accepted ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        b'{"vcpus": 2, "memory_bytes": 2147483648, "host": "h1", "needs_gpu": false, "gpu_profile": null}',
        b'{"ttl_seconds": 2.5, "list": [1, "a", {"b": []}], "e": "\\u00e9\\ud83d\\ude00"}',
        b'"caf\xc3\xa9"',
        b" [ ] ",
        b"-0",
        b'{"a": "\\\\u0000"}',  # an escaped backslash before "u0000": text, not NUL
        b'{"n": 123456789012345678901234567890}',
    ],
)
def test_valid_json_decodes_as_json_loads_does(payload: bytes) -> None:
    assert loads(payload, max_bytes=LIMIT) == json.loads(payload)


def test_integral_floats_reads_whole_numbers_as_integers_as_json_schema_does() -> None:
    payload = (
        b"[4.0, 1e3, -0.0, 2.5, 9223372036854775807.0, 9223372036854775808.0, 1e-400, 4.0000000000000001]"
    )
    value = loads(payload, max_bytes=LIMIT, integral_floats=True)

    assert value == [4, 1000, 0, 2.5, 2**63 - 1, 2.0**63, 0.0, 4.0000000000000001]
    assert [type(v) for v in value] == [int, int, int, float, int, float, float, float]


def test_without_integral_floats_a_float_literal_stays_a_float() -> None:
    assert [type(v) for v in loads(b"[2.0, 1e3, 2]", max_bytes=LIMIT)] == [float, float, int]


def test_nesting_up_to_the_limit_is_accepted() -> None:
    deepest = b"[" * MAX_DEPTH + b"]" * MAX_DEPTH
    assert loads(deepest, max_bytes=LIMIT) is not None
    assert loads(b'["' + b"[" * 1000 + b'"]', max_bytes=LIMIT) == ["[" * 1000]  # brackets in a string


def test_an_integer_of_the_most_digits_allowed_is_accepted() -> None:
    assert loads(b"9" * MAX_INT_DIGITS, max_bytes=LIMIT) == int("9" * MAX_INT_DIGITS)


# ---- what is refused, and how the refusal reads ----------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "message", "field"),
    [
        (b'{"id": "\xff"}', "event is not UTF-8: invalid byte at offset 8", None),
        (
            b'{"id": "\xed\xa0\x80"}',
            "event is not UTF-8: invalid byte at offset 8",
            None,
        ),  # an encoded surrogate
        (b'{"id": ', "event is not JSON: Expecting value at line 1 column 8", None),
        (b'{"a": "b', "event is not JSON: Unterminated string starting at line 1 column 7", None),
        (b'{"a": "\x00"}', "event is not JSON: Invalid control character at line 1 column 8", None),
        (b'{"v": NaN}', "event is not JSON: NaN is not a JSON value (event.v)", "v"),
        (b"[1, -Infinity]", "event is not JSON: -Infinity is not a JSON value (event[1])", "[1]"),
        (b'{"id": "a", "id": "b"}', "event is not JSON: key 'id' appears twice in one object", "id"),
        (
            b'{"data": {"x": [{"v": 1, "v": 1}]}}',
            "event is not JSON: key 'v' appears twice in one object (event.data.x[0])",
            "data.x[0].v",
        ),
        (b'{"data": {"id": "a\\u0000b"}}', "event.data.id contains a NUL character (\\u0000)", "data.id"),
        (
            b'{"data": {"name": ["ok", "\\ud800"]}}',
            "event.data.name[1] contains an unpaired surrogate (\\ud800), which is not Unicode text",
            "data.name[1]",
        ),
        (
            b'{"data": {"a\\udfffb": 1}}',
            "event.data has a key that contains an unpaired surrogate (\\udfff), which is not Unicode text: "
            "'a\\udfffb'",
            "data['a\\udfffb']",
        ),
        (
            b'{"a\\u0000": 1}',
            "event has a key that contains a NUL character (\\u0000): 'a\\u0000'",
            "['a\\u0000']",
        ),
        (
            b'{"version": 1e400}',
            "event.version is out of range: 1e400 is beyond the largest 64-bit float",
            "version",
        ),
        (
            b'{"version": -' + b"9" * 400 + b".5}",
            "event.version is out of range: -9999999999999999999... is beyond the largest 64-bit float",
            "version",
        ),
        (
            b'{"data": {"total_bytes": 1' + b"0" * 400 + b"}}",
            "event.data.total_bytes is an integer of 401 digits; at most 30 are accepted",
            "data.total_bytes",
        ),
        (
            b'{"a.b": {"c": 1e999}}',
            "event['a.b'].c is out of range: 1e999 is beyond the largest 64-bit float",
            None,
        ),
    ],
)
def test_a_refusal_says_what_and_where(payload: bytes, message: str, field: str | None) -> None:
    for integral_floats in (False, True):
        error = refusal(payload, integral_floats=integral_floats)
        assert error.message == message
        if field is not None:
            assert error.field == field
        assert_safe(error.message)


def test_the_first_fault_in_document_order_is_reported() -> None:
    assert refusal(b'{"a": "\\u0000", "b": NaN}').field == "a"
    assert refusal(b'{"b": NaN, "a": "\\u0000"}').field == "b"


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 1000, 100_000])
def test_nesting_deeper_than_the_limit_is_refused_without_recursion(depth: int) -> None:
    for payload in (b"[" * depth + b"]" * depth, b'{"a":' * depth + b"1" + b"}" * depth, b"[" * depth):
        assert refusal(payload).message == f"event is not JSON: nested more than {MAX_DEPTH} levels deep"


def test_nesting_is_refused_even_with_little_stack_left() -> None:
    limit, depth = sys.getrecursionlimit(), 0
    frame = sys._getframe()
    while frame.f_back is not None:
        frame, depth = frame.f_back, depth + 1
    sys.setrecursionlimit(depth + 40)
    try:
        refusal(b"[" * 5000 + b"]" * 5000)
    finally:
        sys.setrecursionlimit(limit)


def test_a_payload_over_the_callers_limit_is_refused_before_it_is_read() -> None:
    assert (
        refusal(b"[" + b" " * 100 + b"]", max_bytes=64).message
        == "event is 102 bytes, over the limit of 64 bytes"
    )


@pytest.mark.parametrize(
    "payload",
    [
        b'"' + b'\\"' * 300_000,  # one unterminated string of escaped quotes
        b'"' * 600_000,
        b"[" * 600_000,
        b"1" * 600_000,
        b'{"a":' * 150_000,
        b"[" + b'"\\u00e9",' * 100_000 + b'"\\u0000"]',  # the slow path over every string
    ],
)
def test_large_hostile_payloads_are_refused_quickly(payload: bytes) -> None:
    started = time.perf_counter()
    refusal(payload)
    assert time.perf_counter() - started < 2.0


# ---- messages are always safe ---------------------------------------------------------------------------

any_text = st.text(st.characters(exclude_categories=()), max_size=8)


def _quote(text: str) -> str:
    return json.dumps(text)  # ensure_ascii: a surrogate becomes a \ud800 escape


json_texts = st.recursive(
    st.one_of(
        st.sampled_from(["null", "true", "1", "2.0", "1e400", "NaN", "-Infinity", "1" + "0" * 40, "1e3"]),
        st.integers(min_value=-(10**35), max_value=10**35).map(str),
        any_text.map(_quote),
    ),
    lambda inner: (
        st.lists(inner, max_size=3).map(lambda items: "[" + ",".join(items) + "]")
        | st.lists(st.tuples(st.sampled_from(['"a"', '"b"']) | any_text.map(_quote), inner), max_size=3).map(
            lambda pairs: "{" + ",".join(f"{k}:{v}" for k, v in pairs) + "}"
        )
        | st.tuples(st.integers(min_value=0, max_value=40), inner).map(
            lambda d: "[" * d[0] + d[1] + "]" * d[0]
        )
    ),
    max_leaves=8,
)


@settings(max_examples=400, deadline=None)
@given(text=json_texts, integral_floats=st.booleans())
def test_any_json_text_decodes_or_is_refused_with_a_safe_message(text: str, integral_floats: bool) -> None:
    try:
        value = loads(text.encode(), max_bytes=LIMIT, integral_floats=integral_floats, name="event")
    except InvalidJSON as error:
        assert_safe(error.message)
        assert error.field is None or isinstance(error.field, str)
        assert_safe(error.field or "")
    else:
        assert json.loads(json.dumps(value)) == value  # plain JSON: no NaN, no markers left
        check_strings(value)  # nothing unfit got through


@settings(max_examples=300, deadline=None)
@given(payload=st.binary(max_size=64))
def test_any_bytes_decode_or_are_refused_with_a_safe_message(payload: bytes) -> None:
    try:
        loads(payload, max_bytes=LIMIT)
    except InvalidJSON as error:
        assert_safe(error.message)


plain_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30) + 1, max_value=10**30 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00")),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=4).filter(lambda k: "\x00" not in k), inner, max_size=3)
    ),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(value=plain_values, ensure_ascii=st.booleans())
def test_the_fast_and_the_slow_path_agree_with_json_loads(value: Any, ensure_ascii: bool) -> None:
    """ensure_ascii writes every non-ASCII character as a \\u escape, which takes the slow path."""
    payload = json.dumps(value, ensure_ascii=ensure_ascii).encode()
    assert loads(payload, max_bytes=LIMIT) == json.loads(payload)


# ---- text checks for values built in Python -------------------------------------------------------------


def test_check_text_refuses_nul_and_unpaired_surrogates_with_the_decoders_wording() -> None:
    check_text("plain", "event.host")
    check_text("caf\u00e9 \U0001f600", "event.host")
    with pytest.raises(InvalidJSON, match=r"^event\.host contains a NUL character"):
        check_text("a\x00", "event.host")
    with pytest.raises(InvalidJSON, match=r"^event\.host contains an unpaired surrogate \(\\udc80\)"):
        check_text("caf\udc80", "event.host")


def test_check_strings_walks_keys_and_values_with_paths() -> None:
    check_strings({"a": ["b", {"c": 1.5}], "d": None})
    with pytest.raises(InvalidJSON) as caught:
        check_strings({"data": {"gpu": {"devices": [{"name": "x\ud800"}]}}}, name="event", prefix="event.")
    assert caught.value.field == "data.gpu.devices[0].name"
    assert caught.value.message.startswith("event.data.gpu.devices[0].name contains an unpaired surrogate")
    with pytest.raises(InvalidJSON, match="has a key that contains a NUL"):
        check_strings({"data": {"a\x00": 1}})


def test_check_strings_stops_at_the_depth_limit_so_a_cycle_cannot_recurse_forever() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(InvalidJSON, match=f"nested more than {MAX_DEPTH} levels deep"):
        check_strings(loop)


def test_escape_text_writes_nul_and_surrogates_as_json_escapes() -> None:
    assert escape_text("plain") == "plain"
    assert escape_text("a\x00b\udfffc\u00e9") == "a\\u0000b\\udfffc\u00e9"
