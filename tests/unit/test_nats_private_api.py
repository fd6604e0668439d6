"""ledger.bus.ordered_client.OrderedFlushClient overrides a private method of nats-py's Client and uses its
private attributes. pyproject.toml pins nats-py to the versions this was checked with; this test fails, saying
what to re-check, when what it relies on moves. tests/bus/test_ordered_flush.py checks the behaviour."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import re
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
from nats.aio import client as nats_client
from packaging.specifiers import SpecifierSet

from ledger.bus.ordered_client import OrderedFlushClient

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"
RECHECK = (
    "nats-py changed what ledger/bus/ordered_client.py relies on. Re-check there that flush() still needs "
    "its PING queued behind the buffered commands (tests/bus/test_ordered_flush.py shows it), adapt the "
    "override, then update this test and the nats-py pin in pyproject.toml"
)
# sha256 of the source of nats-py's methods the override replaces or must agree with, as in the pinned
# versions: a change to any of them may change what flush() means.
FINGERPRINTS = {
    "_send_ping": "d57b2f820443afb4",
    "_send_command": "ed57e8e86389cf94",
    "_flush_pending": "317c8d7ef54b90b7",
}


def _pinned() -> SpecifierSet:
    dependencies = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    [spec] = [d for d in dependencies if re.match(r"nats-py\b", d)]
    return SpecifierSet(spec.removeprefix("nats-py"))


def _fingerprint(name: str) -> str:
    source = inspect.getsource(getattr(nats_client.Client, name))
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def test_the_installed_nats_py_is_a_pinned_version() -> None:
    installed = version("nats-py")
    pinned = _pinned()
    assert installed in pinned, f"nats-py {installed} is outside the pin {pinned}: {RECHECK}"
    assert any(s.operator == "<" for s in pinned), (
        f"nats-py must have an upper bound in pyproject.toml: {RECHECK}"
    )


@pytest.mark.parametrize(
    ("name", "parameters"),
    [
        ("_send_ping", ["self", "future"]),
        ("_send_command", ["self", "cmd", "priority"]),
        ("_flush_pending", ["self", "force_flush"]),
        ("flush", ["self", "timeout"]),
        ("close", ["self"]),
        ("drain", ["self"]),
    ],
)
def test_the_methods_it_overrides_or_calls_keep_their_signature(name: str, parameters: list[str]) -> None:
    method = getattr(nats_client.Client, name, None)
    assert method is not None, f"Client.{name} is gone: {RECHECK}"
    assert inspect.iscoroutinefunction(method), f"Client.{name} is no longer a coroutine: {RECHECK}"
    assert list(inspect.signature(method).parameters) == parameters, f"Client.{name} changed: {RECHECK}"


def test_flush_rtt_and_the_keep_alive_still_send_their_ping_through_send_ping() -> None:
    for name in ("flush", "rtt", "_ping_interval"):
        source = inspect.getsource(getattr(nats_client.Client, name))
        assert "self._send_ping(" in source, f"Client.{name} no longer calls _send_ping: {RECHECK}"


async def test_the_attributes_it_uses_exist_on_a_client() -> None:
    client = nats_client.Client()
    assert isinstance(client._pongs, list), f"Client._pongs is not a list any more: {RECHECK}"
    assert nats_client.PING_PROTO == b"PING\r\n", f"nats.aio.client.PING_PROTO changed: {RECHECK}"
    assert "_pongs" in inspect.getsource(nats_client.Client._process_pong), (
        f"PONGs are matched otherwise: {RECHECK}"
    )
    assert asyncio.iscoroutinefunction(OrderedFlushClient._send_ping)


def test_the_replaced_methods_are_as_they_were_checked() -> None:
    """The override copies _send_ping's bookkeeping; the others decide where a queued command goes."""
    found = {name: _fingerprint(name) for name in FINGERPRINTS}
    assert found == FINGERPRINTS, (
        f"the source of {sorted(k for k in found if found[k] != FINGERPRINTS[k])}: {RECHECK}"
    )
