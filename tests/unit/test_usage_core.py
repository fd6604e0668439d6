"""The usage report's rules and the advice formula, as plain functions: what a report must look like,
percentiles as percentile_cont computes them, and the ratio a known history supports."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.core.advice import Evidence, advise
from ledger.core.resources import ResourceType
from ledger.core.usage import (
    InstanceUsage,
    InvalidUsage,
    Unmeasured,
    UsageReport,
    check_instance,
    parse_report,
    percentile,
    summarize,
)

AT = datetime(2026, 12, 3, 12, 0, 10, tzinfo=UTC)


def usage(**more: object) -> InstanceUsage:
    return InstanceUsage(
        id="vm-1",
        cpu_seconds_total=12.5,
        memory_rss_bytes=2**30,
        disk_read_bytes_total=10,
        disk_write_bytes_total=20,
        **more,  # type: ignore[arg-type]
    )


def test_a_report_survives_its_own_json() -> None:
    report = UsageReport(
        "h1",
        AT,
        10.0,
        (usage(cpu_vcpus=0.5, network_rx_bps=10.0, network_tx_bps=30.0, network_rx_bytes_total=5),),
        (Unmeasured("vm-2", "hypervisor process 7 is gone"),),
    )
    assert parse_report(report.to_json()) == report
    assert json.loads(report.to_json())["at"] == "2026-12-03T12:00:10Z"


def test_derived_measures_follow_how_allocations_are_charged() -> None:
    figures = usage(
        network_rx_bps=10.0, network_tx_bps=30.0, disk_read_bps=1.0, disk_write_bps=2.0
    ).measures()
    assert figures["network_bps"] == 30.0  # the larger direction, as core.capacity.link_share
    assert figures["disk_io_bps"] == 3.0  # reads plus writes
    assert usage().measures()["network_bps"] is None  # no TAP device: not zero, unknown


@pytest.mark.parametrize(
    ("payload", "reason", "words"),
    [
        (b"{not json", "malformed", "not JSON"),
        (b"[]", "malformed", "JSON object"),
        (b'{"host": "h1", "at": "2026-12-03T12:00:00Z", "interval_s": 0}', "malformed", "interval_s"),
        (b'{"host": "h.1", "at": "2026-12-03T12:00:00Z", "interval_s": 10}', "malformed", "host"),
        (b'{"host": "h1", "at": "2026-12-03T12:00:00", "interval_s": 10}', "malformed", "time zone"),
        (b'{"host": "h1", "at": "yesterday", "interval_s": 10}', "malformed", "ISO 8601"),
        (b'{"host": "h1", "at": "2026-12-03T12:00:00Z", "interval_s": 10, "x": 1}', "malformed", "unknown"),
        (
            b'{"host": "h1", "at": "2026-12-03T12:00:00Z", "interval_s": 10, "instances": [{"id": "a"}]}',
            "malformed",
            "required",
        ),
        (
            b'{"host": "h1", "at": "2026-12-03T12:00:00Z", "interval_s": 10, "instances": [{"id": "a", '
            b'"cpu_seconds_total": 1, "memory_rss_bytes": -5, "disk_read_bytes_total": 0, '
            b'"disk_write_bytes_total": 0}]}',
            "impossible",
            "negative",
        ),
        (
            b'{"host": "h1", "at": "2026-12-03T12:00:00Z", "interval_s": 10, "instances": [{"id": "a", '
            b'"cpu_seconds_total": 1, "memory_rss_bytes": 1.5, "disk_read_bytes_total": 0, '
            b'"disk_write_bytes_total": 0}]}',
            "malformed",
            "whole number",
        ),
        (b'{"host": "h1", "at": "2026-12-03T12:00:00Z", "interval_s": NaN}', "malformed", "NaN"),
    ],
)
def test_a_bad_report_is_refused_with_a_countable_reason(payload: bytes, reason: str, words: str) -> None:
    with pytest.raises(InvalidUsage) as refused:
        parse_report(payload)
    assert refused.value.reason == reason
    assert words in str(refused.value)


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_any_bytes_are_a_report_or_an_invalid_usage(data: bytes) -> None:
    try:
        parse_report(data)
    except InvalidUsage as refused:
        assert refused.reason in {"malformed", "impossible"}


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=500)
@given(
    st.fixed_dictionaries(
        {"host": st.just("h1"), "at": st.just("2026-12-03T12:00:00Z"), "interval_s": st.just(10)},
        optional={
            "instances": st.lists(
                st.dictionaries(
                    st.sampled_from(
                        [
                            "id",
                            "cpu_vcpus",
                            "cpu_seconds_total",
                            "memory_rss_bytes",
                            "disk_read_bytes_total",
                            "disk_write_bytes_total",
                        ]
                    ),
                    JSONISH,
                ),
                max_size=3,
            ),
            "unmeasured": JSONISH,
        },
    )
)
def test_any_shape_of_instances_is_a_report_or_an_invalid_usage(raw: dict[str, object]) -> None:
    try:
        report = parse_report(json.dumps(raw).encode())
    except InvalidUsage:
        return
    for instance in report.instances:
        assert instance.memory_rss_bytes >= 0 and instance.cpu_seconds_total >= 0


def test_a_cpu_figure_over_twice_the_hosts_cores_is_impossible() -> None:
    check_instance(usage(cpu_vcpus=16.0), host_cores=8)
    with pytest.raises(InvalidUsage, match=r"16\.5 vCPUs on a host of 8 cores"):
        check_instance(usage(cpu_vcpus=16.5), host_cores=8)


def test_percentiles_interpolate_between_ranks_like_percentile_cont() -> None:
    series = [float(n) for n in range(1, 101)]
    assert percentile(series, 95) == pytest.approx(95.05)
    assert percentile(series, 50) == pytest.approx(50.5)
    assert percentile([7.0], 95) == 7.0
    assert summarize([3.0, 1.0, 2.0]) == summarize([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="empty"):
        percentile([], 50)


def test_advice_from_a_known_history() -> None:
    # 32 vCPUs promised on 8 cores (ratio 4); the busiest hour's p95 used 4 cores: each vCPU uses 1/8 core.
    # With 20 % headroom the host supports 32 / (4 × 1.2) = 6.67, rounded down to 6.6.
    evidence = Evidence(used_p95=4.0, samples=25_920, days=3.0)
    advice = advise(ResourceType.CPU, 4.0, 32, evidence)
    assert advice.suggested_ratio == 6.6
    assert advice.reason.startswith("higher than the ratio in force")
    busy = advise(ResourceType.CPU, 4.0, 32, Evidence(used_p95=8.0, samples=25_920, days=3.0))
    assert busy.suggested_ratio == 3.3 and busy.reason.startswith("lower")


@pytest.mark.parametrize(
    ("resource", "allocated", "evidence", "reason"),
    [
        (ResourceType.CPU, 32, Evidence(4.0, 999, 3.0), "not enough evidence: 999 samples over 3.0 days"),
        (ResourceType.CPU, 32, Evidence(4.0, 5000, 2.9), "not enough evidence"),
        (ResourceType.CPU, 0, Evidence(4.0, 5000, 3.0), "nothing allocated"),
        (ResourceType.CPU, 32, Evidence(None, 0, 0.0), "no usage measured yet"),
        (ResourceType.DISK, 32, Evidence(None, 0, 0.0), "not sampled"),
        (ResourceType.CPU, 32, Evidence(0.0, 5000, 3.0), "no usage at all"),
    ],
)
def test_no_advice_without_the_evidence_for_it(
    resource: ResourceType, allocated: int, evidence: Evidence, reason: str
) -> None:
    advice = advise(resource, 4.0, allocated, evidence)
    assert advice.suggested_ratio is None
    assert advice.reason.startswith(reason)
