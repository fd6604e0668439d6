"""Whatever bytes a request carries, `ledger serve` answers it exactly once, with JSON its schemas describe.

Hypothesis sends thousands of bodies to every endpoint of one `ledger serve` (SQLite, embedded NATS):
arbitrary bytes; arbitrary JSON; objects over the real field names with wrong types, huge and non-finite
numbers, floats for integers, NUL and unpaired surrogates, deep nesting, repeated and unknown keys; empty
bodies and bodies over 64 KiB. Every reply must arrive, alone, within the timeout, parse as strict JSON, and
validate against the endpoint's reply schema (`ok: true`) or error.reply.schema.json (`ok: false`, with
ASCII `Nats-Service-Error` headers and never the `internal` code); no reply may leak a traceback or a repr.
Afterwards the service still answers, its log has no traceback, and the ledger's totals have not drifted.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nats.aio.client import Client
from nats.aio.msg import Msg

from ledger.bus.connect import connect
from ledger.bus.protocol import (
    ENDPOINTS,
    FIELDS,
    HEADER_CODES,
    MAX_ERROR_DESCRIPTION,
    MAX_REQUEST_BYTES,
    REQUIRED,
)
from ledger.store.ledger import Ledger
from tests.protocol.test_protocol_schemas import assert_valid, validator
from tests.service.helpers import GB, GIB, LEAKS, ServeProcess, serve_env, unique
from tests.unit.hostile_json import json_texts

HOST = unique("fuzz")
EXAMPLES = 5000
REPLY_TIMEOUT = 10.0  # seconds for one reply; the service answers in about a millisecond
# A repr or a traceback: never in a reply, unless the request itself carried the text (names are echoed).
REPRS = (*LEAKS, "Decimal(", "datetime.")

T = TypeVar("T")


# ---- the service, and one NATS connection on a loop of its own ---------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    data_dir = tmp_path_factory.mktemp("fuzz")
    process = ServeProcess(data_dir, serve_env(data_dir, HOST))
    try:
        process.start()
        yield process
        assert process.stop() == 0, process.log()[-5000:]
    finally:
        process.kill()


@dataclass
class Wire:
    """Requests from a synchronous test, each with its own reply subject under one wildcard subscription,
    so that every reply is counted: a second reply to a request is kept in `extra`, as is any reply to
    a request that already timed out."""

    nc: Client
    prefix: str
    loop: asyncio.AbstractEventLoop
    sent: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # token → (endpoint, first bytes)
    waiting: dict[str, asyncio.Future[Msg]] = field(default_factory=dict)
    answered: set[str] = field(default_factory=set)
    extra: list[tuple[str, bytes, bytes]] = field(default_factory=list)  # (endpoint, request, reply)
    tokens: Iterator[int] = field(default_factory=itertools.count)

    async def _on_reply(self, msg: Msg) -> None:
        token = msg.subject.rsplit(".", 1)[1]
        future = self.waiting.pop(token, None)
        if future is not None and not future.done():
            self.answered.add(token)
            future.set_result(msg)
        else:
            endpoint, request = self.sent.get(token, ("?", b""))
            self.extra.append((endpoint, request, msg.data[:300]))

    async def _ask(self, endpoint: str, payload: bytes) -> Msg:
        token = str(next(self.tokens))
        self.sent[token] = (endpoint, payload[:300])
        future = self.waiting[token] = self.loop.create_future()
        await self.nc.publish(f"ledger.v1.{endpoint}", payload, reply=f"{self.prefix}.{token}")
        try:
            return await asyncio.wait_for(future, REPLY_TIMEOUT)
        except TimeoutError:
            self.waiting.pop(token, None)
            raise AssertionError(
                f"no reply within {REPLY_TIMEOUT} s to {endpoint} {payload[:300]!r}"
            ) from None

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(REPLY_TIMEOUT + 5)

    def ask(self, endpoint: str, payload: bytes) -> Msg:
        return self.run(self._ask(endpoint, payload))

    def settle(self) -> None:
        """Wait until the server has delivered everything sent to us so far."""
        self.run(self.nc.flush(timeout=int(REPLY_TIMEOUT)))


@pytest.fixture(scope="module")
def wire(served: ServeProcess) -> Iterator[Wire]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fuzz-nats", daemon=True)
    thread.start()

    async def open_wire() -> Wire:
        nc = await connect(served.nats_url, name="fuzz-test", reconnect_forever=False)
        opened = Wire(nc, nc.new_inbox(), asyncio.get_running_loop())
        await nc.subscribe(f"{opened.prefix}.*", cb=opened._on_reply)
        return opened

    opened = asyncio.run_coroutine_threadsafe(open_wire(), loop).result(30)
    try:
        yield opened
    finally:
        asyncio.run_coroutine_threadsafe(opened.nc.close(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()


# ---- request bodies ---------------------------------------------------------------------------------------

# Any character, NUL and lone surrogates often.
_char = st.characters(exclude_categories=()) | st.sampled_from(
    ["\x00", "\ud800", "\udbff", "\udc00", "\udfff"]
)
any_text = st.text(_char, max_size=12)


def _raw_utf8(text: str) -> str:
    """A string literal with its characters unescaped: a lone surrogate becomes bytes that are not UTF-8."""
    return json.dumps(text, ensure_ascii=False)


string_literals = st.one_of(
    any_text.map(json.dumps),  # \ud800 and \u0000 as escapes
    any_text.map(_raw_utf8),
    st.sampled_from(['""', '"\\ud800"', '"a\\udfffb"', '"\\ud83d\\ude00"', '"\\ud83d"', '"\\u0000"']),
)

DEEP = ["[" * 100 + "]" * 100, '{"a":' * 100 + "1" + "}" * 100, "[" * 33 + "]" * 33, "[" * 31 + "]" * 31]
INTEGER_TEXTS = [
    *("0", "1", "2", "-1", "-0", "64", "1000000", "1000001", "10000", "10001"),
    *(str(2**63 - 1), str(2**63), str(-(2**63)), str(2**64), "1" + "0" * 29, "1" + "0" * 30, str(10**400)),
    *("2.0", "1e3", "1E3", "1.5", "0.0", "-0.0", "-1.0", "1e400", "-1e400", "1e-400", "5e-324"),
    *("NaN", "Infinity", "-Infinity"),
]
NUMBER_TEXTS = ["0.5", "60", "86400", "86400.0", "86400.5", "1e-320", "1e308", "0.001"]
WRONG_TEXTS = ["null", "[]", "{}", "[1,2]", '{"a":1}', '{"a":1,"a":2}', "true", "false", '"2"', *DEEP]

integer_literals = st.one_of(
    st.sampled_from(INTEGER_TEXTS),
    st.integers(min_value=0, max_value=64).map(str),
    st.integers(min_value=-(2**65), max_value=2**65).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
)
number_literals = integer_literals | st.sampled_from(NUMBER_TEXTS) | st.floats(0, 1e5).map(repr)
wrong_literals = st.sampled_from(WRONG_TEXTS) | json_texts()

LABEL_NAMES = ["zone", "gpu", "rack", "a/b", "x.y-z_1"]
RESOURCES = ["cpu", "memory", "disk", "network", "disk_io", "gpu", "bananas", "CPU", " cpu"]
NAMED: dict[str, list[str]] = {
    "host": [HOST, "", "nope"],
    "resource": RESOURCES,
    "reservation_id": ["0" * 32, "", "01a23ce24b76780eb7ee5af49557d59f"],
    "gpu_profile": ["1g.10gb", "A100", "", "nvidia-a100"],
    "idempotency_key": ["vm-1", "vm-2", "k" * 255, "k" * 256, ""],
    "after": ["", "inst-1", "\uffff"],
}


def _typed(name: str, kind: str) -> st.SearchStrategy[str]:
    """Values of the field's own JSON type, plausible ones often enough to reach the handlers."""
    if kind == "integer":
        return integer_literals
    if kind == "number":
        return number_literals
    if kind == "boolean":
        return st.sampled_from(["true", "false"])
    if kind == "object":
        pairs = st.lists(st.tuples(st.sampled_from(LABEL_NAMES) | any_text, string_literals), max_size=4)
        return st.sampled_from(["{}", '{"zone":"a"}']) | pairs.map(_object)
    if kind == "array":
        return st.sampled_from(["[]", json.dumps([HOST])]) | st.lists(string_literals, max_size=4).map(_array)
    return st.sampled_from([json.dumps(v) for v in NAMED.get(name, ["x"])]) | string_literals


# Values of the right JSON type that are out of range, or written in a form the service refuses.
OUT_OF_RANGE = {
    "integer": st.sampled_from(["-1", "10001", "1000001", str(2**63), str(-(2**63) - 1), "1" + "0" * 29])
    | st.integers(max_value=-1).map(str)
    | st.integers(min_value=2**63).map(str),
    "number": st.sampled_from(["0", "-1", "0.0", "86400.5", "1e5", "1e400", "-1e400", "NaN", "-Infinity"]),
    "boolean": st.sampled_from(["0", "1", '"true"', '"false"']),
    "string": string_literals,
    "object": st.sampled_from(
        [
            '{"":"a"}',
            '{"-zone":"a"}',
            '{"zone":1}',
            '{"zone":null}',
            '{"zone":["a"]}',
            json.dumps({"z" * 64: "a"}),
            json.dumps({"zone": "v" * 256}),
            json.dumps({f"k{n}": "v" for n in range(33)}),
        ]
    ),
    "array": st.sampled_from(["[1]", "[null]", "[[]]", '["\\ud800"]', json.dumps(["h"] * 1001)]),
}


def _value(name: str, kind: str | None) -> st.SearchStrategy[str]:
    """Values for a field: of its own type (plausible or out of range), of another type, or any JSON."""
    if kind is None:
        return st.one_of(string_literals, wrong_literals)
    own, bad = _typed(name, kind), OUT_OF_RANGE.get(kind, wrong_literals)
    others = [_typed(name, k) for k in ("integer", "number", "boolean", "string", "array") if k != kind]
    return st.one_of(own, own, bad, bad, st.one_of(others), wrong_literals)


def _object(members: list[tuple[str, str]]) -> str:
    return "{" + ",".join(f"{json.dumps(key)}:{value}" for key, value in members) + "}"


def _array(items: list[str]) -> str:
    return "[" + ",".join(items) + "]"


def objects(endpoint: str) -> st.SearchStrategy[str]:
    """JSON objects over the endpoint's field names (unknown names and repeated keys now and then)."""
    known = FIELDS[endpoint]
    unknown_keys = st.sampled_from(["vcpu", "extra", "", "HOST", "ok"]) | any_text
    keys = st.sampled_from(sorted(known)) | unknown_keys if known else unknown_keys
    member = keys.flatmap(lambda key: st.tuples(st.just(key), _value(key, known.get(key))))
    unique_keys = st.lists(member, max_size=len(known) + 1, unique_by=lambda m: m[0])
    return st.one_of(unique_keys, unique_keys, st.lists(member, max_size=6)).map(_object)


def _amount(most: int) -> st.SearchStrategy[str]:
    return st.integers(0, most).map(str) | st.sampled_from(["0", str(2**63 - 1)])


# Good values for every field name, so that near-valid requests reach the handlers and the database: grants,
# capacity refusals (the host has 32 vCPUs to promise and 16 GiB), replays and conflicts, unknown hosts.
GOOD: dict[str, st.SearchStrategy[str]] = {
    "host": st.sampled_from([json.dumps(HOST)] * 6 + ["null", '""', '"nope"']),
    "vcpus": _amount(40),
    "memory_bytes": _amount(20 * GIB),
    "disk_bytes": _amount(120 * GB),
    "network_download_bps": _amount(3 * GB),
    "network_upload_bps": _amount(3 * GB),
    "disk_io_bps": _amount(3 * GB),
    "needs_gpu": st.sampled_from(["false", "false", "true", "null"]),
    "gpu_profile": st.sampled_from(["null", '"1g.10gb"', '"A100"']),
    "idempotency_key": st.sampled_from(["null", '"vm-1"', '"vm-2"', '"vm-3"', '"vm-\\ud83d\\ude00"']),
    "ttl_seconds": st.sampled_from(["null", "0.2", "60", "86400"]) | st.floats(0.001, 86400).map(repr),
    "reservation_id": st.sampled_from(['"' + "0" * 32 + '"', '"x"']) | st.uuids().map(lambda u: f'"{u.hex}"'),
    "resource": st.sampled_from([json.dumps(r) for r in RESOURCES[:5]] + ['"gpu"', "null"]),
    "allocations": st.sampled_from(["true", "false", "null"]),
    "limit": st.sampled_from(["0", "1", "1000", "10000", "null"]),
    "after": st.sampled_from(["null", '""', '"inst-1"']),
    "amount": _amount(64) | _amount(2**40),
    "labels": st.sampled_from(["null", "{}", '{"zone":"a"}', '{"rack":"r1","zone":"b"}']),
    "exclude_hosts": st.sampled_from(["null", "[]", json.dumps([HOST]), '["nope"]']),
    "policy": st.sampled_from(["null", '"spread"', '"pack"', '"fill"']),
    "attempts": st.sampled_from(["null", "1", "3", "20"]),
}


def _good(name: str, kind: str) -> st.SearchStrategy[str]:
    """GOOD's values for a known name; for a field added since, values of its type."""
    return GOOD[name] if name in GOOD else _typed(name, kind)


def near_valid(endpoint: str) -> st.SearchStrategy[str]:
    """Good requests, and good requests with one field (or one more, unknown or repeated) gone wrong."""
    known = FIELDS[endpoint]
    required = REQUIRED.get(endpoint, frozenset())
    good = st.fixed_dictionaries(
        {name: _good(name, known[name]) for name in sorted(required)},
        optional={name: _good(name, known[name]) for name in sorted(known) if name not in required},
    ).map(lambda fields: list(fields.items()))
    names = st.sampled_from(sorted(known)) if known else st.nothing()
    wrong = st.one_of(names, names, names, any_text).flatmap(
        lambda name: st.tuples(st.just(name), _value(name, known.get(name)))
    )

    def spoil(members: list[tuple[str, str]], member: tuple[str, str], repeat: bool) -> list[tuple[str, str]]:
        if repeat:
            return [*members, member]
        return [m for m in members if m[0] != member[0]] + [member]

    spoiled = st.builds(spoil, good, wrong, st.booleans())
    return st.one_of(good, spoiled, spoiled).map(_object)


def _big(size: int, shape: str) -> bytes:
    """A body of about `size` bytes (the request limit is 64 KiB)."""
    if shape == "string":
        return b'{"host":"' + b"h" * size + b'"}'
    if shape == "key":
        return b'{"idempotency_key":"' + b"k" * size + b'","vcpus":1}'
    if shape == "spaces":
        return b"{}" + b" " * size
    if shape == "blank":
        return b" " * size
    return b"[" + b"1," * (size // 2) + b"1]"


big_bodies = st.builds(
    _big,
    st.integers(MAX_REQUEST_BYTES - 64, MAX_REQUEST_BYTES + 4096) | st.integers(MAX_REQUEST_BYTES, 200_000),
    st.sampled_from(["string", "key", "spaces", "blank", "array"]),
)
small_bodies = st.sampled_from(
    [b"", b" ", b"\n", b"{}", b"null", b"[]", b'""', b"0", b"{", b"}", b"\xff", b"\xef\xbb\xbf{}", b"{}{}"]
) | st.sampled_from([d.encode() for d in DEEP])


def bodies(endpoint: str) -> st.SearchStrategy[bytes]:
    near = near_valid(endpoint)
    texts = st.one_of(near, near, near, near, objects(endpoint), objects(endpoint), json_texts())
    return st.one_of(
        *[texts.map(lambda text: text.encode("utf-8", "surrogatepass"))] * 3,
        st.binary(max_size=80),
        small_bodies,
        big_bodies,
    )


endpoint_bodies = st.one_of([st.tuples(st.just(e), bodies(e)) for e in ENDPOINTS])


# ---- what every reply must be ------------------------------------------------------------------------------


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def schema_refuses(endpoint: str, payload: bytes) -> bool:
    """Whether the endpoint's request schema refuses the body as a lenient JSON reader reads it (the last of
    repeated keys wins, NaN is a number): the service must then refuse it too."""
    try:
        body = json.loads(payload) if payload.strip() else {}
    except (ValueError, RecursionError):
        return False  # not JSON to Python either: the schema has nothing to say
    return not validator(f"{endpoint}.request").is_valid(body)


def _request_text(payload: bytes) -> str:
    """The request as text, with its JSON strings decoded: what a reply may echo."""
    text = payload.decode("utf-8", "replace")
    try:
        decoded = json.loads(payload)
    except (ValueError, RecursionError):
        return text
    return "\n".join([text, *_strings(decoded)])


def _no_constant(name: str) -> Any:
    raise AssertionError(f"the reply holds {name}, which is not JSON")


def check_reply(endpoint: str, payload: bytes, msg: Msg) -> dict[str, Any]:
    where = f"{endpoint} {payload[:200]!r}"
    headers = msg.headers or {}
    assert "Status" not in headers, f"NATS status {headers} instead of a reply to {where}"
    assert msg.data, f"an empty reply to {where}"
    text = msg.data.decode("utf-8")
    reply = json.loads(text, parse_constant=_no_constant)
    assert isinstance(reply, dict) and isinstance(reply.get("ok"), bool), f"{text[:500]} to {where}"
    echoed = _request_text(payload)
    for leak in REPRS:
        assert leak not in text or leak in echoed, f"reply leaks {leak!r}: {text[:1000]} to {where}"
    if reply["ok"]:
        assert not schema_refuses(endpoint, payload), f"{text[:300]} to {where}, which the schema refuses"
        assert_valid(f"{endpoint}.reply", reply)
        assert "Nats-Service-Error" not in headers and "Nats-Service-Error-Code" not in headers, headers
        return reply
    assert_valid("error.reply", reply)
    assert reply["code"] not in {"internal", "unavailable"}, f"{text[:1000]} to {where}"
    assert headers.get("Nats-Service-Error-Code") == HEADER_CODES[reply["code"]], (headers, where)
    description = headers.get("Nats-Service-Error", "")
    assert description, f"no Nats-Service-Error header on {text[:500]} to {where}"
    assert description.isascii() and description.isprintable(), (description, where)
    assert len(description) <= MAX_ERROR_DESCRIPTION, (len(description), where)
    for leak in REPRS:
        assert leak not in description or leak in echoed, f"header leaks {leak!r}: {description} to {where}"
    return reply


# ---- the fuzz test --------------------------------------------------------------------------------------


def _alive(served: ServeProcess) -> None:
    assert served.process is not None and served.process.poll() is None, (
        f"ledger serve exited with {served.process and served.process.returncode}:\n{served.log()[-5000:]}"
    )


def test_every_request_gets_exactly_one_well_formed_reply(served: ServeProcess, wire: Wire) -> None:
    counted = itertools.count(1)
    examples = 0

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )
    @given(endpoint_bodies)
    def one_request(request: tuple[str, bytes]) -> None:
        nonlocal examples
        examples = next(counted)
        endpoint, payload = request
        try:
            reply = check_reply(endpoint, payload, wire.ask(endpoint, payload))
        except AssertionError:
            _alive(served)
            raise
        if endpoint in {"validate", "place"} and reply["ok"] and reply["status"] == "held":  # keep room free
            release = json.dumps({"reservation_id": reply["reservation_id"]}).encode()
            ended = check_reply("release", release, wire.ask("release", release))
            assert ended["status"] in {"released", "expired"}, ended  # a TTL of 1 ms may pass first

    started = time.perf_counter()
    one_request()
    elapsed = time.perf_counter() - started
    print(f"\n{examples} examples, {len(wire.sent)} requests in {elapsed:.1f} s")
    assert examples >= EXAMPLES

    # after the fuzzing: exactly one reply each, and the service answers as before
    grant = check_reply("validate", b'{"vcpus":1}', wire.ask("validate", b'{"vcpus":1}'))
    assert (grant["ok"], grant["status"], grant["host"]) == (True, "held", HOST), grant
    release = json.dumps({"reservation_id": grant["reservation_id"]}).encode()
    assert check_reply("release", release, wire.ask("release", release))["status"] == "released"
    status = check_reply("status", b"{}", wire.ask("status", b"{}"))
    assert status["ok"] and status["host"] == HOST and status["cpu"]["pending"] == 0, status
    wire.settle()
    assert wire.extra == [], f"{len(wire.extra)} replies more than one per request: {wire.extra[:5]}"
    assert wire.answered == set(wire.sent), "requests without a reply"
    _alive(served)
    assert "Traceback" not in served.log(), served.log()[-5000:]

    ledger = Ledger.open(f"sqlite:///{served.data_dir / 'ledger.db'}", migrate=False)
    try:
        assert ledger.drift() == [], "running totals drifted from the recomputed sums"
    finally:
        ledger.close()
