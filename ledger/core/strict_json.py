"""Strict JSON: what the request parser and the event contract accept, decided in one place.

`json.loads` takes more than the ledger can use: `NaN` and `Infinity`, a key repeated in one object (which
copy wins differs between readers), strings with NUL (a PostgreSQL text column cannot hold it) or with an
unpaired surrogate such as `"\\ud800"` (no UTF-8 encoder can write one, so neither a database driver nor a
NATS header can), integers of thousands of digits, and nesting deep enough to exhaust the stack. `loads`
refuses each with an `InvalidJSON` that says what is wrong and where; docs/protocol.md and docs/events.md
state the limits for publishers and callers.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from ledger.core.units import MAX_AMOUNT

MAX_DEPTH = 32  # arrays and objects inside one another; the deepest event (host.capacity) needs 5
MAX_INT_DIGITS = 30  # an integer literal's digits; amounts need at most 19

Path = tuple[str | int, ...]


class InvalidJSON(ValueError):
    """The bytes are not JSON the ledger accepts; `path` leads to the value at fault (empty: the whole)."""

    def __init__(self, message: str, path: Path = ()) -> None:
        super().__init__(message)
        self.message = message
        self.path = path

    @property
    def field(self) -> str | None:
        """The path as the contract writes a field, `data.gpu.devices[0].name`; None for the whole."""
        return _dotted(self.path) or None


def loads(
    data: bytes, *, max_bytes: int, integral_floats: bool = False, name: str = "JSON", prefix: str = ""
) -> Any:
    """The JSON value in `data`, or InvalidJSON.

    `name` is what messages call the whole payload (`event is not JSON: ...`) and `prefix` comes before a
    path (`event.` gives `event.data.id contains a NUL character`). With `integral_floats`, a float literal
    with an integral value in the 64-bit range (`4.0`, `1e3`) is read as that integer, as JSON Schema reads
    it; without, it stays a float, so that a caller can refuse `2.0` where an integer literal is due.
    """
    if len(data) > max_bytes:
        raise InvalidJSON(f"{name} is {len(data)} bytes, over the limit of {max_bytes} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidJSON(f"{name} is not UTF-8: invalid byte at offset {exc.start}") from None
    # Only a \u escape can put NUL or a surrogate in a decoded string (the UTF-8 codec refuses encoded
    # surrogates and the scanner raw control characters), and only 31 digits in a row can be a long integer:
    # without either, the C scanner's result needs no second look. One translate finds both, and the
    # brackets, far faster than a regular expression would.
    marks = data.translate(_MARKS)
    walk = (b"\\" in marks and b"\\u" in data) or _LONG_RUN in marks
    if marks.count(b"[") > MAX_DEPTH and _depth(data) > MAX_DEPTH:
        raise InvalidJSON(f"{name} is not JSON: nested more than {MAX_DEPTH} levels deep")
    try:
        if not walk:
            try:
                return (_FAST_INTEGRAL if integral_floats else _FAST).decode(text)
            except _Retry:
                pass  # a repeated key, a constant or an overflowing number: find where, below
        return _Walk(name, prefix, integral_floats).value(_MARKED.decode(text), (), 1)
    except json.JSONDecodeError as exc:
        where = f"{exc.msg.removesuffix(' at')} at line {exc.lineno} column {exc.colno}"  # "starting at at"
        raise InvalidJSON(f"{name} is not JSON: {where}") from None
    except RecursionError:  # not reached after the depth check above; kept so none can ever escape
        raise InvalidJSON(f"{name} is not JSON: nested more than {MAX_DEPTH} levels deep") from None


def check_text(text: str, where: str, path: Path = ()) -> None:
    """Refuse a string that no UTF-8 encoder (so no NATS header or database driver) or PostgreSQL text
    column can hold: one with NUL or an unpaired surrogate. `where` names it in the message."""
    problem = _text_problem(text)
    if problem is not None:
        raise InvalidJSON(f"{where} {problem}", path)


def check_strings(value: Any, *, name: str = "JSON", prefix: str = "") -> None:
    """`check_text` on every key and string of a JSON-like value built in Python (what `loads` checks on
    the way in), at most MAX_DEPTH levels deep."""
    if not _fits(value, 1):
        _Walk(name, prefix, integral_floats=False).check(value, (), 1)  # finds what and where


def _fits(value: Any, depth: int) -> bool:
    """check_strings' quick answer, with no path kept: most values fit."""
    kind = type(value)
    if kind is str:
        return (value.isascii() and "\x00" not in value) or _UNFIT.search(value) is None
    if kind is dict:
        if depth > MAX_DEPTH:
            return False
        for key, item in value.items():
            if type(key) is str and not (key.isascii() and "\x00" not in key) and _UNFIT.search(key):
                return False
            plain = type(item) is str and item.isascii() and "\x00" not in item  # the common case, inline
            if not plain and not _fits(item, depth + 1):
                return False
        return True
    if kind is list:
        return depth <= MAX_DEPTH and all(_fits(item, depth + 1) for item in value)
    if kind in _SCALARS:
        return True
    return not isinstance(value, str | Mapping | list | tuple)  # subclasses and the like: the full walk


_SCALARS = frozenset({type(None), bool, int, float})


def escape_text(text: str) -> str:
    """`text` with NUL and unpaired surrogates written as JSON escapes (`\\u0000`, `\\udfff`), so that it
    can be encoded, logged and stored."""
    if text.isascii() and "\x00" not in text:
        return text
    return _UNFIT.sub(_escape_char, text)


# ---- the fast path: the C scanner with hooks that only ask for the slow path --------------------------


class _Retry(Exception):
    """A hook met a problem it cannot locate; the slow path finds where it is."""


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _Retry
    return obj


def _constant(_: str) -> Any:
    raise _Retry


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _Retry
    return value


def _integral(text: str) -> int | float:
    value = _finite(text)
    return _as_integer(text, value)


def _as_integer(text: str, value: float) -> int | float:
    """`value` (the float of `text`) as an int when the literal is exactly a whole number in the 64-bit
    range (`4.0`, `1e3`, `-0.0`); the float otherwise."""
    if value.is_integer() and -_TWO_63 <= value <= _TWO_63:
        try:
            number = Decimal(text)  # exact: the float may have rounded 4.0000000000000001 to 4.0
            if number == number.to_integral_value() and -MAX_AMOUNT <= number <= MAX_AMOUNT:
                return int(number)
        except ArithmeticError:  # an exponent beyond what Decimal holds: not an amount anyway
            pass
    return value


_TWO_63 = float(2**63)
_FAST = json.JSONDecoder(object_pairs_hook=_unique, parse_constant=_constant, parse_float=_finite)
_FAST_INTEGRAL = json.JSONDecoder(object_pairs_hook=_unique, parse_constant=_constant, parse_float=_integral)


# ---- the slow path: the scanner leaves every judgement to a walk that knows the path -------------------


class _Pairs(list[tuple[str, Any]]):
    """An object's members in order, repeats included."""


class _Number(str):
    """A number literal not yet converted."""


class _Constant(str):
    """NaN, Infinity or -Infinity."""


_MARKED = json.JSONDecoder(
    object_pairs_hook=_Pairs, parse_constant=_Constant, parse_float=_Number, parse_int=_Number
)


class _Walk:
    """Checks (and, for decoded input, converts) a value depth first, so the first fault in document order
    is the one reported, with its path."""

    def __init__(self, name: str, prefix: str, integral_floats: bool) -> None:
        self.name, self.prefix, self.integral_floats = name, prefix, integral_floats

    def where(self, path: Path) -> str:
        if not path:
            return self.name
        dotted = _dotted(path)
        return f"{self.prefix.removesuffix('.')}{dotted}" if dotted[0] == "[" else f"{self.prefix}{dotted}"

    def value(self, value: Any, path: Path, depth: int) -> Any:
        kind = type(value)
        if kind is str:
            check_text(value, self.where(path), path)
            return value
        if kind is _Number:
            return self.number(value, path)
        if kind is _Pairs or kind is list:
            if depth > MAX_DEPTH:
                raise InvalidJSON(f"{self.name} is not JSON: nested more than {MAX_DEPTH} levels deep", path)
            if kind is list:
                return [self.value(item, (*path, index), depth + 1) for index, item in enumerate(value)]
            obj: dict[str, Any] = {}
            for key, item in value:
                self.key(key, path)
                if key in obj:
                    raise InvalidJSON(self.repeated(key, path), (*path, key))
                obj[key] = self.value(item, (*path, key), depth + 1)
            return obj
        if kind is _Constant:
            raise InvalidJSON(f"{self.name} is not JSON: {value} is not a JSON value{self.at(path)}", path)
        return value  # true, false, null

    def check(self, value: Any, path: Path, depth: int) -> None:
        if isinstance(value, str):
            check_text(value, self.where(path), path)
        elif isinstance(value, Mapping | list | tuple):
            if depth > MAX_DEPTH:
                raise InvalidJSON(f"{self.where(path)} is nested more than {MAX_DEPTH} levels deep", path)
            if isinstance(value, Mapping):
                for key, item in value.items():
                    if isinstance(key, str):
                        self.key(key, path)
                    self.check(item, (*path, key if isinstance(key, str | int) else str(key)), depth + 1)
            else:
                for index, item in enumerate(value):
                    self.check(item, (*path, index), depth + 1)

    def key(self, key: str, path: Path) -> None:
        problem = _text_problem(key)
        if problem is not None:
            shown = escape_text(key)
            raise InvalidJSON(f"{self.where(path)} has a key that {problem}: '{shown}'", (*path, shown))

    def repeated(self, key: str, path: Path) -> str:
        return f"{self.name} is not JSON: key {key!r} appears twice in one object{self.at(path)}"

    def at(self, path: Path) -> str:
        return f" ({self.where(path)})" if path else ""

    def number(self, text: str, path: Path) -> int | float:
        if "." not in text and "e" not in text and "E" not in text:
            digits = len(text) - text.startswith("-")
            if digits > MAX_INT_DIGITS:
                raise InvalidJSON(
                    f"{self.where(path)} is an integer of {digits} digits; at most {MAX_INT_DIGITS} are "
                    "accepted",
                    path,
                )
            return int(text)
        value = float(text)
        if math.isinf(value):
            shown = text if len(text) <= 24 else f"{text[:20]}..."
            raise InvalidJSON(
                f"{self.where(path)} is out of range: {shown} is beyond the largest 64-bit float", path
            )
        return _as_integer(text, value) if self.integral_floats else value


# ---- strings, paths, depth ------------------------------------------------------------------------------

_UNFIT = re.compile("[\x00\ud800-\udfff]")


def _marks_table() -> bytes:
    """For `loads`' first look: digits as 0, [ and { as [, the backslash as itself, anything else a space."""
    table = bytearray(b" " * 256)
    table[ord("0") : ord("9") + 1] = b"0" * 10
    table[ord("[")] = table[ord("{")] = ord("[")
    table[ord("\\")] = ord("\\")
    return bytes(table)


_MARKS = _marks_table()
_LONG_RUN = b"0" * (MAX_INT_DIGITS + 1)
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_\-]+")
# A string, possessive and with an optional close, so that a scan over any bytes stays linear.
_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+"?', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = [0] * 256
_STEP[ord("[")] = _STEP[ord("{")] = 1
_STEP[ord("]")] = _STEP[ord("}")] = -1


def _text_problem(text: str) -> str | None:
    if text.isascii():
        return "contains a NUL character (\\u0000)" if "\x00" in text else None
    found = _UNFIT.search(text)
    if found is None:
        return None
    if found.group() == "\x00":
        return "contains a NUL character (\\u0000)"
    return f"contains an unpaired surrogate ({_escape_char(found)}), which is not Unicode text"


def _escape_char(found: re.Match[str]) -> str:
    return f"\\u{ord(found.group()):04x}"


def _dotted(path: Path) -> str:
    parts = []
    for step in path:
        if isinstance(step, int):
            parts.append(f"[{step}]")
        elif _PLAIN_KEY.fullmatch(step):
            parts.append(f".{step}" if parts else step)
        else:
            parts.append(f"['{escape_text(step)}']")
    return "".join(parts)


def _depth(data: bytes) -> int:
    """How deeply arrays and objects nest in `data` (exact for JSON; strings are skipped), without
    recursion and in C-speed passes."""
    brackets = _STRING.sub(b"", data).translate(None, _NOT_BRACKETS)
    return max(itertools.accumulate(map(_STEP.__getitem__, brackets)), default=0)
