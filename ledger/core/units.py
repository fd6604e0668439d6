"""Parsing and formatting of sizes and bandwidths; every accepted form is listed in docs/units.md."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation, localcontext

MAX_AMOUNT = 2**63 - 1  # what a signed 64-bit column (and the seed's int64) can hold

_DECIMAL = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "p": 10**15}
_BINARY = {"ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40, "pi": 2**50}

_NUMBER = r"(?P<num>[0-9]+(?:\.[0-9]+)?|\.[0-9]+)"
_SIZE_RE = re.compile(_NUMBER + r"\s*(?P<prefix>[kmgtp]i?)?(?P<unit>b|bytes?)?", re.IGNORECASE)
# Bandwidth keeps case where it matters: b = bits, B = bytes.
_BW_RE = re.compile(
    _NUMBER + r"\s*(?P<prefix>[kKmMgGtTpP]i?)?(?P<unit>bps|bit/s|b/s|bits/s|B/s|Bps|byte/s|bytes/s)?"
)

SIZE_FORMS = "a whole number of bytes, or a number with a unit: 500GB, 1.5TB, 8GiB, 512MiB, 4096B"
BANDWIDTH_FORMS = (
    "a number of bits per second (10Gbps, 2.5Gbps, 100Mbps, 10Gbit/s), a number of bytes per second "
    "(1GB/s, 125MB/s, 1GiB/s), or a whole number of bytes per second"
)


class UnitError(ValueError):
    """A size or bandwidth could not be parsed; the message quotes the input and lists the accepted forms."""


def _scale(text: str, number: str, multiplier: int, divisor: int = 1) -> int:
    # Enough precision that the product and the division by 8 are exact (the default context keeps only
    # 28 digits, which rounded "1.99999999999999999999999999999KB" up to 2000 bytes).
    with localcontext() as context:
        context.prec = len(number) + 40
        try:
            value = Decimal(number) * multiplier / divisor
        except InvalidOperation:  # pragma: no cover - the regex only admits valid decimals
            raise UnitError(f"cannot parse {text!r}: {number!r} is not a number") from None
    if value >= MAX_AMOUNT + 1:  # i.e. int(value) > MAX_AMOUNT, without building a huge int first
        raise UnitError(f"{text!r} is too large: at most {MAX_AMOUNT} bytes")
    return int(value)  # whole bytes, rounding down: never promise a fraction that is not there


def _prefix_multiplier(prefix: str) -> int:
    prefix = prefix.lower()
    return _BINARY[prefix] if prefix in _BINARY else _DECIMAL[prefix]


def parse_size(text: str) -> int:
    """Bytes in `text`: `"500GB"` is decimal (500·10⁹), `"8GiB"` binary (8·2³⁰), a plain integer is bytes."""
    if not isinstance(text, str):
        raise UnitError(f"cannot parse {text!r} as a size: expected a string like '500GB'")
    stripped = text.strip()
    if stripped.startswith("-"):
        raise UnitError(f"cannot parse {text!r} as a size: sizes cannot be negative")
    match = _SIZE_RE.fullmatch(stripped)
    if match is None:
        raise UnitError(f"cannot parse {text!r} as a size: expected {SIZE_FORMS}")
    prefix = match["prefix"] or ""
    if prefix == "" and match["unit"] is None and "." in match["num"]:
        raise UnitError(f"cannot parse {text!r} as a size: a plain number of bytes must be whole")
    return _scale(text, match["num"], _prefix_multiplier(prefix))


def parse_bandwidth(text: str) -> int:
    """Bytes per second in `text` (the seed's ParseBandwidth): `"10Gbps"` → 1,250,000,000; `"1GB/s"` → 10⁹."""
    if not isinstance(text, str):
        raise UnitError(f"cannot parse {text!r} as a bandwidth: expected a string like '10Gbps'")
    stripped = text.strip()
    if stripped.startswith("-"):
        raise UnitError(f"cannot parse {text!r} as a bandwidth: bandwidths cannot be negative")
    match = _BW_RE.fullmatch(stripped)
    if match is None:
        raise UnitError(f"cannot parse {text!r} as a bandwidth: expected {BANDWIDTH_FORMS}")
    prefix, unit = match["prefix"] or "", match["unit"]
    if unit == "Bps":
        raise UnitError(
            f"cannot parse {text!r} as a bandwidth: 'Bps' is ambiguous; "
            f"write '{match['num']}{prefix}B/s' for bytes or '{match['num']}{prefix}bps' for bits per second"
        )
    if unit is None:
        if prefix:
            raise UnitError(
                f"cannot parse {text!r} as a bandwidth: say whether it is bits or bytes, "
                f"e.g. '{match['num']}{prefix}bps' or '{match['num']}{prefix}B/s'"
            )
        if "." in match["num"]:
            raise UnitError(f"cannot parse {text!r} as a bandwidth: a plain number of bytes/s must be whole")
        return _scale(text, match["num"], 1)
    is_bits = unit in {"bps", "bit/s", "b/s", "bits/s"}
    if is_bits and prefix.lower().endswith("i"):
        raise UnitError(f"cannot parse {text!r} as a bandwidth: binary prefixes are for bytes, e.g. 1GiB/s")
    return _scale(text, match["num"], _prefix_multiplier(prefix), 8 if is_bits else 1)


def _human(value: float, units: list[str], step: int) -> str:
    unit = units[0]
    for unit in units:
        if abs(value) < step or unit == units[-1]:
            break
        value /= step
    if unit == units[0]:
        return f"{int(value)} {unit}"
    return f"{value:.1f} {unit}"


def format_bytes(amount: int) -> str:
    """`8589934592` → `'8.0 GiB'`: binary units, as memory and disks are sold and shown by tools."""
    return _human(float(amount), ["B", "KiB", "MiB", "GiB", "TiB", "PiB"], 1024)


def format_bandwidth(bytes_per_second: int) -> str:
    """`1250000000` → `'10.0 Gbps'`: link speeds read in bits per second, as on the NIC's box."""
    return _human(float(bytes_per_second) * 8, ["bps", "Kbps", "Mbps", "Gbps", "Tbps"], 1000)


def format_byte_rate(bytes_per_second: int) -> str:
    """`1000000000` → `'1.0 GB/s'`: disk I/O reads in decimal bytes per second."""
    return _human(float(bytes_per_second), ["B/s", "KB/s", "MB/s", "GB/s", "TB/s"], 1000)
