"""Usage in the database, on both engines: reports checked against the ledger and stored, hourly summaries
of a known series, raw samples kept about two hours, summaries pruned, and the two utilization views."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, text

from ledger.core.records import InstanceRecord
from ledger.core.resources import ResourceType
from ledger.core.usage import InstanceUsage, Unmeasured, UsageReport
from ledger.store.ledger import Ledger
from ledger.store.usage_tables import usage_samples
from tests.conftest import FakeClock, capacities

GIB = 2**30


@pytest.fixture
def clock() -> FakeClock:
    """Ten minutes into an hour (`timed` runs on it)."""
    return FakeClock(datetime.now(UTC).replace(minute=10, second=0, microsecond=0))


def setup_host(ledger: Ledger, host_id: str, *vms: str) -> None:
    ledger.register_host(host_id, capacities(cpu=8), {r: 4.0 for r in ResourceType})
    for vm in vms:
        ledger.apply_instance(host_id, InstanceRecord(id=vm, state="Running", vcpus=2, memory_bytes=4 * GIB))


def used(vm: str, cpu: float | None = 1.0, rss: int = GIB, **more: Any) -> InstanceUsage:
    return InstanceUsage(
        id=vm,
        cpu_seconds_total=100.0,
        memory_rss_bytes=rss,
        disk_read_bytes_total=0,
        disk_write_bytes_total=0,
        cpu_vcpus=cpu,
        **more,
    )


def report(
    host_id: str, at: datetime, *usages: InstanceUsage, missing: tuple[Unmeasured, ...] = ()
) -> UsageReport:
    return UsageReport(host_id, at, 10.0, usages, missing)


def test_reports_are_stored_and_what_cannot_be_used_is_counted_by_reason(
    timed: Ledger, clock: FakeClock, host_id: str
) -> None:
    setup_host(timed, host_id, "vm-1", "vm-2")
    now = clock.now
    result = timed.usage.ingest(
        [
            report(host_id, now, used("vm-1"), used("ghost"), used("vm-2", cpu=17.0)),
            report(host_id, now, missing=(Unmeasured("vm-2", "hypervisor process 4242 is gone"),)),
            report("no-such-host", now, used("vm-1")),
            report(host_id, now - timedelta(hours=2), used("vm-1")),
            report(host_id, now + timedelta(hours=1), used("vm-1")),
        ]
    )
    assert (result.measured, result.unmeasured) == (1, 1)
    assert result.dropped == {
        "unknown_instance": 1,
        "impossible": 1,  # 17 vCPUs on an 8-core host: over twice its cores
        "unknown_host": 1,
        "late": 1,
        "from_the_future": 1,
    }
    latest = timed.usage.latest(host_id)
    assert latest["vm-1"]["cpu_vcpus"] == 1.0 and latest["vm-1"]["unmeasured_reason"] is None
    assert latest["vm-2"]["unmeasured_reason"] == "hypervisor process 4242 is gone"
    assert latest["vm-2"]["cpu_vcpus"] is None


def test_a_late_report_never_hides_a_newer_one(timed: Ledger, clock: FakeClock, host_id: str) -> None:
    setup_host(timed, host_id, "vm-1")
    timed.usage.ingest([report(host_id, clock.now, used("vm-1", cpu=2.0))])
    timed.usage.ingest([report(host_id, clock.now - timedelta(seconds=30), used("vm-1", cpu=0.5))])
    timed.usage.ingest([report(host_id, clock.now, used("vm-1", cpu=2.0))])  # a redelivery: no duplicate
    assert timed.usage.latest(host_id)["vm-1"]["cpu_vcpus"] == 2.0
    with timed.engine.connect() as conn:
        count = conn.execute(
            select(func.count()).select_from(usage_samples).where(usage_samples.c.host_id == host_id)
        ).scalar()
    assert count == 2


def test_hourly_summaries_of_a_known_series(timed: Ledger, clock: FakeClock, host_id: str) -> None:
    setup_host(timed, host_id, "vm-1", "vm-2")
    start = clock.now.replace(minute=0)
    for n in range(1, 101):  # vm-1 uses 0.01 … 1.00 vCPUs; vm-2 a steady 0.5
        at = start + timedelta(seconds=5 * n)
        timed.usage.ingest([report(host_id, at, used("vm-1", cpu=n / 100), used("vm-2", cpu=0.5))])
    assert timed.usage.roll_up() >= 3  # two instances and the host, one hour (and other tests' hosts)

    with timed.engine.connect() as conn:
        row = conn.execute(
            text("SELECT * FROM usage_hourly WHERE host_id = :h AND instance_id = 'vm-1'"), {"h": host_id}
        ).one()
        host = conn.execute(text("SELECT * FROM host_usage_hourly WHERE host_id = :h"), {"h": host_id}).one()
    assert row.samples == 100
    assert row.cpu_vcpus_p50 == pytest.approx(0.505)
    assert row.cpu_vcpus_p95 == pytest.approx(0.9505)  # linear interpolation, as percentile_cont
    assert row.cpu_vcpus_max == pytest.approx(1.0)
    assert row.network_bps_p95 is None  # no TAP device: no network figures
    assert host.samples == 100
    assert host.cpu_vcpus_p95 == pytest.approx(1.4505)  # the host's sum at each sample
    assert host.memory_rss_bytes_max == pytest.approx(2 * GIB)

    figures = timed.usage.host_used(host_id)[ResourceType.CPU]
    assert figures.latest == pytest.approx(1.5) and figures.p95 == pytest.approx(1.4505)
    assert figures.max == pytest.approx(1.5) and figures.hours == 1


def test_raw_samples_go_once_their_hour_is_final_and_summaries_after_the_retention(
    timed: Ledger, clock: FakeClock, host_id: str
) -> None:
    setup_host(timed, host_id, "vm-1")
    timed.usage.ingest([report(host_id, clock.now, used("vm-1"))])
    clock.now += timedelta(hours=1)
    timed.usage.ingest([report(host_id, clock.now, used("vm-1"))])
    timed.usage.roll_up()
    assert _raw(timed, host_id) == 2  # the previous hour may still get late samples
    clock.now += timedelta(hours=1)
    timed.usage.roll_up()
    assert _raw(timed, host_id) == 1  # the first hour is final: summarised, its samples gone
    assert _hours(timed, host_id) == 2

    clock.now += timedelta(days=2)
    counted = timed.usage.prune_tables(days=1, dry_run=True)  # `ledger db prune --dry-run`
    assert counted["usage_hourly"] >= 2 and counted["host_usage_hourly"] >= 2, counted
    assert _hours(timed, host_id) == 2, "a dry run deleted something"
    assert timed.usage.prune_tables(days=1) == counted
    assert _hours(timed, host_id) == 0
    assert timed.usage.latest(host_id) == {}
    assert timed.usage.prune(days=0) == 0  # 0 keeps them forever


def test_the_utilization_views_put_used_beside_allocated(
    timed: Ledger, clock: FakeClock, host_id: str
) -> None:
    setup_host(timed, host_id, "vm-1")
    timed.usage.ingest([report(host_id, clock.now, used("vm-1", cpu=1.5, rss=3 * GIB))])
    timed.usage.roll_up()
    with timed.engine.connect() as conn:
        vm = conn.execute(text("SELECT * FROM instance_utilization WHERE host_id = :h"), {"h": host_id}).one()
        rows = conn.execute(
            text("SELECT * FROM host_utilization WHERE host_id = :h ORDER BY resource"), {"h": host_id}
        ).all()
    assert (vm.allocated_vcpus, vm.cpu_vcpus, vm.cpu_vcpus_p95, vm.hours) == (2, 1.5, 1.5, 1)
    assert (vm.allocated_memory_bytes, vm.memory_rss_bytes) == (4 * GIB, 3 * GIB)
    by_resource = {row.resource: row for row in rows}
    cpu = by_resource["cpu"]
    assert (cpu.capacity, cpu.effective_limit, cpu.allocated, cpu.used_p95, cpu.used_max) == (
        8,
        32,
        2,
        1.5,
        1.5,
    )
    assert cpu.oversub_ratio == 4.0
    assert by_resource["disk"].used_p95 is None  # disk space is not sampled


def _raw(ledger: Ledger, host_id: str) -> int:
    with ledger.engine.connect() as conn:
        return int(
            conn.execute(
                select(func.count()).select_from(usage_samples).where(usage_samples.c.host_id == host_id)
            ).scalar_one()
        )


def _hours(ledger: Ledger, host_id: str) -> int:
    with ledger.engine.connect() as conn:
        return int(
            conn.execute(
                text("SELECT COUNT(*) FROM usage_hourly WHERE host_id = :h"), {"h": host_id}
            ).scalar_one()
        )


def test_advice_from_three_days_of_known_usage(timed: Ledger, clock: FakeClock, host_id: str) -> None:
    timed.register_host(host_id, capacities(cpu=8), {r: 4.0 for r in ResourceType})
    timed.apply_instance(host_id, InstanceRecord(id="big", state="Running", vcpus=32, memory_bytes=8 * GIB))
    for _ in range(72):  # three days, ten samples an hour: 4 cores busy, 2 GiB resident
        at = clock.now.replace(minute=0)
        timed.usage.ingest(
            [report(host_id, at + timedelta(minutes=m), used("big", cpu=4.0, rss=2 * GIB)) for m in range(10)]
        )
        timed.usage.roll_up()
        clock.now += timedelta(hours=1)
    advice = {a.resource: a for a in timed.advise(host_id, window_days=14, min_samples=700, min_days=2.9)}
    assert advice[ResourceType.CPU].suggested_ratio == 6.6  # 32 / (4 × 1.2) = 6.67, rounded down
    assert advice[ResourceType.CPU].evidence.samples == 720
    assert advice[ResourceType.CPU].evidence.days == pytest.approx(3.0)
    assert advice[ResourceType.MEMORY].suggested_ratio == 3.3  # 8 GiB / (2 GiB × 1.2) = 3.33
    assert advice[ResourceType.DISK].suggested_ratio is None
    assert advice[ResourceType.DISK].reason == "not sampled"
    assert advice[ResourceType.NETWORK].reason == "no usage measured yet"
    stricter = {a.resource: a for a in timed.advise(host_id, window_days=14, min_samples=10_000, min_days=1)}
    assert stricter[ResourceType.CPU].suggested_ratio is None
