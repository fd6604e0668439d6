"""`ledger top`, `ledger advise` and the used figures of `ledger status`, on usage stored the way the service
stores it (the database read, read-only, by a real `ledger` process)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from ledger.core.records import InstanceRecord
from ledger.core.usage import InstanceUsage, Unmeasured, UsageReport
from ledger.local import open_writer
from tests.cli.conftest import Cli, ok, one_line_error

GIB = 2**30


def sampled(cli: Cli, hours: int = 1, per_hour: int = 6) -> None:
    """Two VMs on the CLI's host: `busy` uses 1.5 vCPUs and 3 GiB, `lost` could not be measured."""
    ledger = open_writer(cli.settings())
    try:
        for vm, vcpus in (("busy", 2), ("lost", 1)):
            record = InstanceRecord(id=vm, name=vm, state="Running", vcpus=vcpus, memory_bytes=4 * GIB)
            ledger.apply_instance(cli.host_id, record)
        now = datetime.now(UTC).replace(second=0, microsecond=0)
        usage = InstanceUsage(
            "busy", 10.0, 3 * GIB, 0, 0, cpu_vcpus=1.5, disk_read_bps=1e6, disk_write_bps=2e6
        )
        reports = [
            UsageReport(
                cli.host_id,
                now - timedelta(minutes=10 * n),
                10.0,
                (usage,),
                (Unmeasured("lost", "hypervisor process 9 is gone"),),
            )
            for n in range(per_hour * hours)
        ]
        ledger.usage.ingest(reports)
        ledger.usage.roll_up()
    finally:
        ledger.close()


def test_top_puts_used_beside_allocated(ready_cli: Cli) -> None:
    sampled(ready_cli)
    rows = json.loads(ok(ready_cli.run("top", "--json")))
    by_id = {row["instance_id"]: row for row in rows}
    assert [row["instance_id"] for row in rows] == ["busy", "lost"]  # busiest first
    assert (by_id["busy"]["allocated_vcpus"], by_id["busy"]["cpu_vcpus"]) == (2, 1.5)
    assert by_id["busy"]["disk_io_bps"] == 3e6
    assert by_id["lost"]["unmeasured_reason"] == "hypervisor process 9 is gone"
    table = ok(ready_cli.run("top", "--once", "--sort", "memory"))
    assert "busy" in table and "1.50" in table and "3.0 GiB" in table
    assert "unmeasured: hypervisor process 9 is gone" in table


def test_status_shows_what_is_really_used(ready_cli: Cli) -> None:
    sampled(ready_cli)
    status = json.loads(ok(ready_cli.run("status", "--json")))
    assert status["cpu"]["used"] == 1.5 and status["memory"]["used"] == 3 * GIB
    assert "used" not in status["disk"]  # disk space is not sampled
    table = ok(ready_cli.run("status"))
    assert "= used, # allocated" in table


def test_advise_says_what_the_evidence_supports_and_changes_nothing(ready_cli: Cli) -> None:
    sampled(ready_cli)
    advice = json.loads(ok(ready_cli.run("advise", "--json", "--min-samples", "5", "--min-days", "0")))
    cpu = next(a for a in advice["advice"] if a["resource"] == "cpu")
    # 3 vCPUs allocated, the busiest hour's p95 used 1.5: 3 / (1.5 × 1.2) = 1.67 → 1.6
    assert (cpu["current_ratio"], cpu["suggested_ratio"], cpu["samples"]) == (4.0, 1.6, 6)
    strict = json.loads(ok(ready_cli.run("advise", "--json")))  # defaults: 1,000 samples over 3 days
    assert all(a["suggested_ratio"] is None for a in strict["advice"])
    assert "not enough evidence" in ok(ready_cli.run("advise"))
    status = json.loads(ok(ready_cli.run("status", "--json")))
    assert status["cpu"]["oversub_ratio"] == 4.0


def test_bad_flags_and_nats_are_one_line_usage_errors(ready_cli: Cli) -> None:
    assert "--interval" in one_line_error(ready_cli.run("top", "--interval", "0"), 2)
    assert "--days" in one_line_error(ready_cli.run("advise", "--days", "-1"), 2)
    line = one_line_error(ready_cli.run("top", "--once", "--nats-url", "nats://127.0.0.1:1"), 2)
    assert "reads the database" in line
