"""Usage sampling and ingest: what the sampler costs, how fast samples are stored, how much they grow.

1. Sampler cost: 200 real processes (`sleep`, each the "hypervisor" of a VM) and 50 network devices
   (25 veth pairs in a network namespace of the benchmark's own; 50 of the VMs name one as their TAP device).
   The sampler runs ROUNDS rounds; the CPU time this process spends per round (`time.process_time`, which
   the psutil and netlink reads are charged to) over the default interval is its share of one core.
   Goal: ≤ 2 % of one core at LEDGER_USAGE_INTERVAL's default (10 s).
2. Ingest: reports of 200 instances each stored with `UsageStore.ingest` into SQLite, one report per
   transaction as the service's fetch loop would see them one host at a time. Goal: ≥ 5,000 instance
   samples per second.
3. Growth: a simulated day (24 hours, six samples an hour, hourly roll-ups, raw samples dropped once
   final) for 200 instances; the database's growth per instance per day, after a checkpoint.

Run as root (the namespace): `python bench/usage.py`; results go to bench/results/usage.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_results
from sqlalchemy import text

from ledger.config import SETTINGS_BY_KEY
from ledger.core.records import InstanceRecord
from ledger.core.resources import Capacity, ResourceType, Source
from ledger.core.results import InstanceUtilizationInfo
from ledger.core.usage import InstanceUsage, UsageReport
from ledger.store import migrate
from ledger.store.ledger import Ledger
from ledger.usage.sampler import Sampler

PROCESSES = 200
DEVICES = 50
ROUNDS = 30
INTERVAL_S = float(SETTINGS_BY_KEY["usage_interval"].default)
HOST = "usage-bench"
BIG = {r: Capacity(10**15, Source.CONFIGURED) for r in ResourceType}


def sampler_cost(rounds: int) -> dict[str, float]:
    from pyroute2 import NetNS, netns  # type: ignore[import-untyped]

    namespace = f"ledger-bench-{uuid.uuid4().hex[:8]}"
    netns.create(namespace)
    sleepers = [subprocess.Popen(["sleep", "3600"]) for _ in range(PROCESSES)]
    try:
        with NetNS(namespace) as ns:
            for n in range(0, DEVICES, 2):  # veth pairs (this kernel may lack the dummy driver)
                ns.link("add", ifname=f"tap{n}", kind="veth", peer={"ifname": f"tap{n + 1}"})
        vms = [
            InstanceUtilizationInfo(f"vm-{i}", f"vm-{i}", p.pid, f"tap{i}" if i < DEVICES else "", 2, 2**30)
            for i, p in enumerate(sleepers)
        ]
        sampler = Sampler(HOST, netns=namespace)
        sampler.sample(vms, INTERVAL_S)  # the first look: no rates yet
        costs = []
        for _ in range(rounds):
            started = time.process_time()
            report = sampler.sample(vms, INTERVAL_S)
            costs.append(time.process_time() - started)
            assert len(report.instances) == PROCESSES, report.unmeasured[:3]
    finally:
        for sleeper in sleepers:
            sleeper.kill()
            sleeper.wait()
        netns.remove(namespace)
    median = statistics.median(costs)
    return {
        "processes": PROCESSES,
        "devices": DEVICES,
        "rounds": rounds,
        "cpu_ms_per_round_median": round(median * 1000, 2),
        "cpu_ms_per_round_max": round(max(costs) * 1000, 2),
        "interval_s": INTERVAL_S,
        "share_of_one_core_pct": round(median / INTERVAL_S * 100, 3),
    }


def report_of(at: datetime, instances: int) -> UsageReport:
    usages = tuple(
        InstanceUsage(
            id=f"vm-{i}",
            cpu_seconds_total=100.0 + i,
            memory_rss_bytes=2**30,
            disk_read_bytes_total=10**6,
            disk_write_bytes_total=10**6,
            cpu_vcpus=0.5,
            memory_pss_bytes=2**29,
            memory_uss_bytes=2**28,
            disk_read_bps=1e5,
            disk_write_bps=2e5,
            network_rx_bytes_total=10**7,
            network_tx_bytes_total=10**7,
            network_rx_bps=1e6,
            network_tx_bps=2e6,
        )
        for i in range(instances)
    )
    return UsageReport(HOST, at, INTERVAL_S, usages)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def fresh_ledger(directory: Path, clock: Clock) -> tuple[Ledger, Path]:
    path = directory / f"usage-{uuid.uuid4().hex[:6]}.db"
    url = f"sqlite:///{path}"
    migrate.upgrade(url)
    ledger = Ledger.open(url, migrate=False, clock=clock)
    ledger.register_host(HOST, BIG, {r: 1.0 for r in ResourceType})
    for i in range(PROCESSES):
        ledger.apply_instance(HOST, InstanceRecord(id=f"vm-{i}", state="Running", vcpus=1))
    return ledger, path


def ingest_rate(directory: Path, reports: int) -> dict[str, float]:
    clock = Clock(datetime.now(UTC).replace(minute=59, second=0, microsecond=0))
    ledger, _ = fresh_ledger(directory, clock)
    try:
        start = clock.now.replace(minute=0)
        batches = [report_of(start + timedelta(seconds=10 * n), PROCESSES) for n in range(reports)]
        started = time.perf_counter()
        for report in batches:
            result = ledger.usage.ingest([report])
            assert result.measured == PROCESSES and not result.dropped
        elapsed = time.perf_counter() - started
    finally:
        ledger.close()
    samples = reports * PROCESSES
    return {"reports": reports, "instance_samples": samples, "per_second": round(samples / elapsed)}


def size_of(ledger: Ledger) -> int:
    """Bytes the database's pages hold, after a checkpoint (free pages left by deleted raw samples are
    reused, so they do not count as growth)."""
    raw = ledger.engine.raw_connection()  # outside a transaction: a checkpoint cannot run in one
    try:
        sqlite = raw.driver_connection
        sqlite.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        pages = sqlite.execute("PRAGMA page_count").fetchone()[0]
        free = sqlite.execute("PRAGMA freelist_count").fetchone()[0]
        page_size = sqlite.execute("PRAGMA page_size").fetchone()[0]
    finally:
        raw.close()
    return int((pages - free) * page_size)


def growth(directory: Path) -> dict[str, float]:
    clock = Clock(datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(days=2))
    ledger, _ = fresh_ledger(directory, clock)
    try:
        clock.now += timedelta(minutes=1)
        ledger.usage.ingest([report_of(clock.now, PROCESSES)])
        ledger.usage.roll_up()
        before = size_of(ledger)
        for _ in range(24):  # a day
            for minute in range(0, 60, 10):
                clock.now = clock.now.replace(minute=minute)
                ledger.usage.ingest([report_of(clock.now, PROCESSES)])
            ledger.usage.roll_up()
            clock.now = clock.now.replace(minute=0) + timedelta(hours=1)
        clock.now += timedelta(hours=2)
        ledger.usage.roll_up()  # the last hours become final and their raw samples go
        after = size_of(ledger)
        with ledger.engine.connect() as conn:
            hourly = conn.execute(text("SELECT COUNT(*) FROM usage_hourly")).scalar_one()
            raw = conn.execute(text("SELECT COUNT(*) FROM usage_samples")).scalar_one()
    finally:
        ledger.close()
    return {
        "instances": PROCESSES,
        "hourly_rows": hourly,
        "raw_rows_left": raw,
        "bytes_per_instance_per_day": round((after - before) / PROCESSES),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="sampler rounds (default %(default)s)")
    parser.add_argument("--reports", type=int, default=300, help="reports to ingest (default %(default)s)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/usage.py needs root: it creates a network namespace with veth pairs")
    results = {"sampler": sampler_cost(args.rounds)}
    print(f"sampler: {results['sampler']}")
    with tempfile.TemporaryDirectory(prefix="ledger-usage-bench-") as directory:
        results["ingest_sqlite"] = ingest_rate(Path(directory), args.reports)
        print(f"ingest (SQLite): {results['ingest_sqlite']}")
        results["growth_sqlite"] = growth(Path(directory))
        print(f"growth (SQLite): {results['growth_sqlite']}")
    print(f"results: {write_results('usage', results)}")


if __name__ == "__main__":
    main()
