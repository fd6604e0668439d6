"""Sizes and bandwidths: every accepted form, every rejection, and properties that hold for any amount."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.core.units import (
    BANDWIDTH_FORMS,
    MAX_AMOUNT,
    SIZE_FORMS,
    UnitError,
    format_bandwidth,
    format_byte_rate,
    format_bytes,
    parse_bandwidth,
    parse_size,
)

KB, MB, GB, TB, PB = 10**3, 10**6, 10**9, 10**12, 10**15
KIB, MIB, GIB, TIB, PIB = 2**10, 2**20, 2**30, 2**40, 2**50

# ---------------------------------------------------------------------------------------------- sizes


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # plain whole numbers are bytes
        ("0", 0),
        ("4096", 4096),
        ("9223372036854775807", MAX_AMOUNT),
        # whitespace around and between number and unit
        ("  42  ", 42),
        ("\t8GiB\n", 8 * GIB),
        ("500 GB", 500 * GB),
        # byte unit spellings
        ("4096B", 4096),
        ("1byte", 1),
        ("3 bytes", 3),
        # decimal prefixes, any case; in a size `b` is bytes, never bits
        ("1kB", KB),
        ("1KB", KB),
        ("1MB", MB),
        ("500GB", 500 * GB),
        ("500gb", 500 * GB),
        ("1.5TB", 1_500_000_000_000),
        ("2PB", 2 * PB),
        # binary prefixes, any case
        ("1KiB", KIB),
        ("512MiB", 512 * MIB),
        ("8GiB", 8 * GIB),
        ("8gib", 8 * GIB),
        ("2TiB", 2 * TIB),
        ("1PiB", PIB),
        ("1.5GiB", 1_610_612_736),
        # a prefix alone (no B) still means bytes
        ("8G", 8 * GB),
        ("8Gi", 8 * GIB),
        ("1k", KB),
        # decimals with a leading dot
        (".5GB", 500 * MB),
        ("0.5KiB", 512),
    ],
)
def test_parse_size_accepts_every_documented_form(text: str, expected: int) -> None:
    assert parse_size(text) == expected


def test_parse_size_rounds_a_fractional_byte_down() -> None:
    assert parse_size("1.0001KB") == 1000
    assert parse_size("0.5B") == 0


def test_parse_size_rounds_down_even_with_more_digits_than_the_default_decimal_precision() -> None:
    assert parse_size("1.99999999999999999999999999999KB") == 1999


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("10 potatoes", "expected a whole number of bytes"),
        ("", "expected"),
        ("   ", "expected"),
        ("GB", "expected"),
        ("1e3", "expected"),
        ("5.", "expected"),
        ("+5", "expected"),
        ("1,000", "expected"),
        ("10Gbps", "expected"),
        ("1GB/s", "expected"),
        ("8 GiB of RAM", "expected"),
        ("-5", "cannot be negative"),
        ("-1GiB", "cannot be negative"),
        (" -1", "cannot be negative"),
        ("1.5", "a plain number of bytes must be whole"),
        ("9223372036854775808", "too large"),
        ("10000PB", "too large"),
        ("9223372036854775808B", "too large"),
        ("8EiB", "expected"),
    ],
)
def test_parse_size_rejects_bad_input_quoting_it(text: str, reason: str) -> None:
    with pytest.raises(UnitError) as caught:
        parse_size(text)
    assert repr(text) in str(caught.value)
    assert reason in str(caught.value)


def test_parse_size_garbage_message_lists_the_accepted_forms() -> None:
    with pytest.raises(UnitError, match="potatoes") as caught:
        parse_size("10 potatoes")
    assert SIZE_FORMS in str(caught.value)


@pytest.mark.parametrize("value", [5, 5.0, None, b"5GB", ["5GB"]])
def test_parse_size_rejects_non_string_input_quoting_it(value: object) -> None:
    with pytest.raises(UnitError) as caught:
        parse_size(value)  # type: ignore[arg-type]
    assert repr(value) in str(caught.value)
    assert "expected a string" in str(caught.value)


def test_unit_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="potatoes"):
        parse_size("potatoes")


# ------------------------------------------------------------------------------------------ bandwidth


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # bits per second (lower-case b), decimal prefixes; result in bytes/s
        ("10Gbps", 1_250_000_000),
        ("2.5Gbps", 312_500_000),
        ("100Mbps", 12_500_000),
        ("1Tbps", 125_000_000_000),
        ("1Pbps", 125_000_000_000_000),
        ("8kbps", 1000),
        ("8Kbps", 1000),
        ("10gbps", 1_250_000_000),
        ("8bps", 1),
        ("7bps", 0),
        ("10Gbit/s", 1_250_000_000),
        ("10 Gb/s", 1_250_000_000),
        ("10Gbits/s", 1_250_000_000),
        ("8 bits/s", 1),
        # bytes per second (upper-case B or a spelled-out byte), decimal prefixes
        ("1GB/s", 1_000_000_000),
        ("125MB/s", 125_000_000),
        ("1kB/s", 1000),
        ("1KB/s", 1000),
        ("2TB/s", 2 * TB),
        ("3B/s", 3),
        ("3 byte/s", 3),
        ("3 bytes/s", 3),
        ("1 Gbyte/s", GB),
        # bytes per second, binary prefixes (only valid with bytes)
        ("1KiB/s", KIB),
        ("1MiB/s", MIB),
        ("1GiB/s", GIB),
        ("1TiB/s", TIB),
        ("1PiB/s", PIB),
        # a plain whole number is bytes per second
        ("0", 0),
        ("1000", 1000),
        # whitespace
        ("  10Gbps  ", 1_250_000_000),
        ("10 Gbps", 1_250_000_000),
        (".5GB/s", 500_000_000),
    ],
)
def test_parse_bandwidth_accepts_every_documented_form(text: str, expected: int) -> None:
    assert parse_bandwidth(text) == expected


def test_parse_bandwidth_of_the_design_examples() -> None:
    assert parse_bandwidth("10Gbps") == 1_250_000_000
    assert parse_bandwidth("1GB/s") == 1_000_000_000
    assert parse_bandwidth("125MB/s") == 125_000_000
    assert parse_bandwidth("2.5Gbps") == 312_500_000


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("10 potatoes", "expected a number of bits per second"),
        ("", "expected"),
        ("fast", "expected"),
        ("10GBPS", "expected"),
        ("10Gbs", "expected"),
        ("1GIB/s", "expected"),
        ("10GB", "expected"),
        ("1e9bps", "expected"),
        ("-1Gbps", "cannot be negative"),
        ("-5", "cannot be negative"),
        ("10MBps", "'Bps' is ambiguous"),
        ("1KBps", "'Bps' is ambiguous"),
        ("5Bps", "'Bps' is ambiguous"),
        ("10G", "say whether it is bits or bytes"),
        ("10Mi", "say whether it is bits or bytes"),
        ("1Gibps", "binary prefixes are for bytes"),
        ("1Kibit/s", "binary prefixes are for bytes"),
        ("1.5", "a plain number of bytes/s must be whole"),
        ("9223372036854775808", "too large"),
        ("74Ebps", "expected"),
        ("100000Pbps", "too large"),
    ],
)
def test_parse_bandwidth_rejects_bad_input_quoting_it(text: str, reason: str) -> None:
    with pytest.raises(UnitError) as caught:
        parse_bandwidth(text)
    assert repr(text) in str(caught.value)
    assert reason in str(caught.value)


def test_parse_bandwidth_garbage_message_lists_the_accepted_forms() -> None:
    with pytest.raises(UnitError) as caught:
        parse_bandwidth("10 potatoes")
    assert BANDWIDTH_FORMS in str(caught.value)


def test_parse_bandwidth_ambiguous_bps_suggests_both_spellings() -> None:
    with pytest.raises(UnitError) as caught:
        parse_bandwidth("10MBps")
    assert "'10MB/s'" in str(caught.value)
    assert "'10Mbps'" in str(caught.value)


def test_parse_bandwidth_prefix_without_unit_suggests_both_spellings() -> None:
    with pytest.raises(UnitError) as caught:
        parse_bandwidth("10G")
    assert "'10Gbps'" in str(caught.value)
    assert "'10GB/s'" in str(caught.value)


@pytest.mark.parametrize("value", [10, 1.5, None, b"10Gbps"])
def test_parse_bandwidth_rejects_non_string_input_quoting_it(value: object) -> None:
    with pytest.raises(UnitError) as caught:
        parse_bandwidth(value)  # type: ignore[arg-type]
    assert repr(value) in str(caught.value)
    assert "expected a string" in str(caught.value)


# ------------------------------------------------------------------------------------------- format


@pytest.mark.parametrize(
    ("amount", "expected"),
    [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (8 * GIB, "8.0 GiB"), (1536 * MIB, "1.5 GiB")],
)
def test_format_bytes_uses_binary_units(amount: int, expected: str) -> None:
    assert format_bytes(amount) == expected


@pytest.mark.parametrize(
    ("amount", "expected"),
    [(0, "0 bps"), (1, "8 bps"), (125, "1.0 Kbps"), (1_250_000_000, "10.0 Gbps"), (125 * TB, "1000.0 Tbps")],
)
def test_format_bandwidth_shows_bits_per_second(amount: int, expected: str) -> None:
    assert format_bandwidth(amount) == expected


@pytest.mark.parametrize(
    ("amount", "expected"), [(0, "0 B/s"), (999, "999 B/s"), (10**9, "1.0 GB/s"), (1_500_000, "1.5 MB/s")]
)
def test_format_byte_rate_shows_decimal_bytes_per_second(amount: int, expected: str) -> None:
    assert format_byte_rate(amount) == expected


# --------------------------------------------------------------------------------------- properties

amounts = st.integers(min_value=0, max_value=MAX_AMOUNT)


@given(st.integers(min_value=0, max_value=MAX_AMOUNT))
def test_any_whole_number_parses_as_that_many_bytes(n: int) -> None:
    assert parse_size(str(n)) == n
    assert parse_bandwidth(str(n)) == n


@given(st.integers(min_value=MAX_AMOUNT + 1, max_value=MAX_AMOUNT * 10**6))
def test_any_whole_number_beyond_int64_is_too_large(n: int) -> None:
    with pytest.raises(UnitError, match="too large"):
        parse_size(str(n))
    with pytest.raises(UnitError, match="too large"):
        parse_bandwidth(str(n))


@given(st.integers(min_value=1, max_value=MAX_AMOUNT * 10))
def test_any_negative_number_is_rejected(n: int) -> None:
    with pytest.raises(UnitError, match="negative"):
        parse_size(f"-{n}")
    with pytest.raises(UnitError, match="negative"):
        parse_bandwidth(f"-{n}bps")


@given(st.integers(min_value=0, max_value=8 * MAX_AMOUNT + 7))
def test_any_number_of_bits_per_second_is_that_divided_by_eight_rounded_down(n: int) -> None:
    assert parse_bandwidth(f"{n}bps") == n // 8


@given(st.integers(min_value=0, max_value=MAX_AMOUNT // GIB))
def test_any_number_of_gib_is_that_times_two_to_the_thirty(n: int) -> None:
    assert parse_size(f"{n}GiB") == n * GIB
    assert parse_bandwidth(f"{n}GiB/s") == n * GIB


@given(st.integers(min_value=0, max_value=MAX_AMOUNT // GB))
def test_any_number_of_gb_is_that_times_ten_to_the_nine(n: int) -> None:
    assert parse_size(f"{n}GB") == n * GB
    assert parse_bandwidth(f"{n}GB/s") == n * GB


@given(st.integers(min_value=0, max_value=(8 * MAX_AMOUNT) // GB))
def test_any_number_of_gbps_is_that_times_ten_to_the_nine_over_eight(n: int) -> None:
    assert parse_bandwidth(f"{n}Gbps") == n * GB // 8


@given(st.integers(min_value=0, max_value=10**6), st.integers(min_value=0, max_value=10**9 - 1))
def test_any_decimal_number_of_gb_rounds_down_exactly(whole: int, nanos: int) -> None:
    assert parse_size(f"{whole}.{nanos:09d}GB") == whole * GB + nanos
    assert parse_size(f"{whole}.{nanos:09d}9GB") == whole * GB + nanos


@given(st.text(max_size=30))
def test_parse_never_raises_anything_but_unit_error(text: str) -> None:
    for parse in (parse_size, parse_bandwidth):
        try:
            result = parse(text)
        except UnitError as exc:
            assert repr(text) in str(exc)
        else:
            assert 0 <= result <= MAX_AMOUNT


def _close(parsed: int, original: int) -> bool:
    # One decimal place of the chosen unit: within 5% (or a few bytes for tiny amounts).
    return abs(parsed - original) <= max(original * 0.05, 8)


@given(amounts)
def test_format_functions_never_raise_for_any_storable_amount(n: int) -> None:
    for text in (format_bytes(n), format_bandwidth(n), format_byte_rate(n)):
        assert isinstance(text, str)
        assert text


# Below the top of the range: rounding to one decimal place may step just past MAX_AMOUNT, which then
# (rightly) no longer parses.
roundtrip_amounts = st.integers(min_value=0, max_value=MAX_AMOUNT // 2)


@given(roundtrip_amounts)
def test_format_bytes_parses_back_roughly(n: int) -> None:
    assert _close(parse_size(format_bytes(n)), n)


@given(roundtrip_amounts)
def test_format_bandwidth_parses_back_roughly(n: int) -> None:
    assert _close(parse_bandwidth(format_bandwidth(n)), n)


@given(roundtrip_amounts)
def test_format_byte_rate_parses_back_roughly(n: int) -> None:
    assert _close(parse_bandwidth(format_byte_rate(n)), n)


def test_format_of_the_largest_amount_reads_as_too_large_rather_than_wrapping() -> None:
    with pytest.raises(UnitError, match="too large"):
        parse_size(format_bytes(MAX_AMOUNT))
