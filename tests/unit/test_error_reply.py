"""error_reply: what the service sends for any LedgerError can always be sent. The body is JSON in ASCII with
ok, code, message and the details; the Nats-Service-Error description is one ASCII line of at most 1,024
characters; no repr of an object reaches the caller."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from enum import Enum
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.bus.protocol import HEADER_CODES, MAX_ERROR_DESCRIPTION, error_reply, refusal
from ledger.core.errors import (
    ConfigError,
    Conflict,
    InsufficientResources,
    InvalidRequest,
    LedgerError,
    NotFound,
    Unavailable,
    UnknownHost,
)
from tests.unit.hostile_json import any_text


class Colour(Enum):
    RED = "red"


class Opaque:
    pass


class Named:
    def __str__(self) -> str:
        return "named thing"


class Broken:
    def __str__(self) -> str:
        raise RuntimeError("no")


def sent(error: LedgerError) -> tuple[str, str, dict[str, Any]]:
    code, description, body = error_reply(error)
    assert body.isascii()
    assert description.isascii()
    assert not any(c in description for c in "\r\n\x00")
    assert len(description) <= MAX_ERROR_DESCRIPTION
    assert body == refusal(error)
    return code, description, json.loads(body)


def test_a_plain_refusal_is_what_the_docs_show() -> None:
    error = InsufficientResources(
        "insufficient CPU: requested 64 vCPUs", resource="cpu", requested=64, ratio=4.0
    )

    code, description, reply = sent(error)

    assert (code, description) == ("409", "insufficient CPU: requested 64 vCPUs")
    assert error_reply(error)[2] == (
        b'{"ok":false,"code":"insufficient_resources","message":"insufficient CPU: requested 64 vCPUs",'
        b'"resource":"cpu","requested":64,"ratio":4.0}'
    )
    assert reply["ok"] is False


@pytest.mark.parametrize(
    "error",
    [InvalidRequest(), UnknownHost(), NotFound(), Conflict(), Unavailable(), ConfigError(), LedgerError()],
)
def test_each_code_has_its_header_code(error: LedgerError) -> None:
    code, _, reply = sent(error)
    assert code == HEADER_CODES[error.code]
    assert reply["code"] == error.code


def test_surrogates_nul_and_line_breaks_are_escaped_in_message_header_and_details() -> None:
    error = UnknownHost(
        "unknown host 'a\udfffb\x00'\r\nInjected: yes \u00e9", host="a\udfffb\x00", path=["\ud800"]
    )

    code, description, reply = sent(error)

    assert code == "404"
    assert reply["message"] == "unknown host 'a\\udfffb\\u0000'\r\nInjected: yes \u00e9"
    assert reply["host"] == "a\\udfffb\\u0000"
    assert reply["path"] == ["\\ud800"]
    assert description == "unknown host 'a\\udfffb\\u0000'  Injected: yes \\xe9"


def test_a_long_message_is_cut_in_the_header_but_whole_in_the_body() -> None:
    _, description, reply = sent(InvalidRequest("x" * 5000))

    assert len(description) == MAX_ERROR_DESCRIPTION and description.endswith("...")
    assert reply["message"] == "x" * 5000


def test_details_json_cannot_hold_become_strings_never_a_repr() -> None:
    cycle: list[Any] = []
    cycle.append(cycle)
    error = InvalidRequest(
        "bad",
        when=datetime(2025, 6, 1, tzinfo=UTC),
        colour=Colour.RED,
        tags={"b"},
        pair=(1, 2.5),
        opaque=Opaque(),
        named=Named(),
        broken=Broken(),
        nan=float("nan"),
        huge=10**5000,
        nested={1: {"k": Opaque()}},
        cycle=cycle,
        raw=b"\xff",
    )

    _, _, reply = sent(error)

    assert reply["when"] == "2025-06-01T00:00:00+00:00"
    assert reply["colour"] == "red"
    assert reply["tags"] == ["b"]
    assert reply["pair"] == [1, 2.5]
    assert (reply["opaque"], reply["named"], reply["broken"]) == ("Opaque", "named thing", "Broken")
    assert reply["nan"] == "nan"
    assert reply["huge"] == "an integer of 16610 bits"
    assert reply["nested"] == {"1": {"k": "Opaque"}}
    assert reply["raw"] == "\\xff"
    assert reply["cycle"] == [[[[[[[["..."]]]]]]]]
    assert "object at 0x" not in json.dumps(reply)


def test_details_cannot_overwrite_ok_code_or_message() -> None:
    error = InvalidRequest("real", ok=True, code="forged")
    error.details["message"] = "forged"
    _, _, reply = sent(error)
    assert (reply["ok"], reply["code"], reply["message"]) == (False, "invalid_request", "real")


@settings(max_examples=300, deadline=None)
@given(
    message=any_text, details=st.dictionaries(any_text, any_text | st.integers() | st.floats(), max_size=3)
)
def test_any_text_can_be_sent(message: str, details: dict[str, Any]) -> None:
    error = InvalidRequest(message or "m")
    error.details.update(details)  # any keys, even `message` (which a keyword argument cannot carry)
    _, _, reply = sent(error)
    assert reply["code"] == "invalid_request"
