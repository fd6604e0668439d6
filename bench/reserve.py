"""validate+reserve through the Python API on SQLite and PostgreSQL.

Measures reservations/s at 1 and 8 concurrent processes with p50/p99 latency, and single-process latency with
10 vs 10,000 active instances on the host (the running totals keep admission flat; the SUM is the audit).
Targets (issue 3): SQLite ≥ 2,000 reservations/s single-process; 10,000 instances ≤ 1.5 × the 10-instance
latency. Run: `python bench/reserve.py [--quick]`; results go to bench/results/reserve.json.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PgDatabase, summarize, write_results

from ledger.core.charges import AllocationRequest
from ledger.core.records import InstanceRecord
from ledger.core.resources import Capacity, ResourceType, Source
from ledger.store import migrate
from ledger.store.ledger import Ledger

BIG = {r: Capacity(10**15, Source.CONFIGURED) for r in ResourceType}
REQUEST = AllocationRequest(vcpus=1, memory_bytes=2**20, network_download_bps=1000, disk_io_bps=1000)


def _prepare(url: str, host_id: str, instances: int) -> None:
    ledger = Ledger.open(url, migrate=False)
    ledger.register_host(host_id, BIG, {})
    for i in range(instances):
        ledger.apply_instance(
            host_id, InstanceRecord(id=f"i{i}", state="Running", vcpus=1, memory_bytes=2**20), version=1
        )
    ledger.close()


def _worker(url: str, host_id: str, count: int, barrier: Any, out: Any) -> None:
    ledger = Ledger.open(url, migrate=False, reservation_ttl=3600)
    for _ in range(20):  # warm the statement cache and the connection pool
        ledger.reserve(host_id, REQUEST)
    barrier.wait()
    latencies = []
    start = time.perf_counter()
    for _ in range(count):
        t0 = time.perf_counter()
        ledger.reserve(host_id, REQUEST)
        latencies.append(time.perf_counter() - t0)
    out.put((time.perf_counter() - start, latencies))
    ledger.close()


def run_concurrent(url: str, host_id: str, processes: int, per_process: int) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(processes), ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=(url, host_id, per_process, barrier, out)) for _ in range(processes)
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    elapsed = max(r[0] for r in results)
    latencies = [x for r in results for x in r[1]]
    return {
        "processes": processes,
        "reservations": len(latencies),
        "reservations_per_s": round(len(latencies) / elapsed, 1),
        **summarize(latencies),
    }


def latency_with_instances(url: str, instances: int, count: int) -> dict[str, Any]:
    host_id = f"bench-inst-{instances}"
    _prepare(url, host_id, instances)
    ledger = Ledger.open(url, migrate=False, reservation_ttl=3600)
    for _ in range(20):
        ledger.reserve(host_id, REQUEST)
    latencies = []
    for _ in range(count):
        t0 = time.perf_counter()
        ledger.reserve(host_id, REQUEST)
        latencies.append(time.perf_counter() - t0)
    audit_t0 = time.perf_counter()
    drift = ledger.drift()
    audit_s = time.perf_counter() - audit_t0
    ledger.close()
    assert drift == [], drift
    return {"instances": instances, **summarize(latencies), "audit_query_ms": round(audit_s * 1000, 1)}


def bench_engine(name: str, url: str, quick: bool) -> dict[str, Any]:
    migrate.upgrade(url)
    per_process = 500 if quick else 3000
    result: dict[str, Any] = {"engine": name, "throughput": [], "instances": []}
    for processes in (1, 8):
        host_id = f"bench-{processes}"
        _prepare(url, host_id, 10)
        row = run_concurrent(url, host_id, processes, per_process if processes == 1 else per_process // 4)
        print(
            f"{name:10} {processes} proc: {row['reservations_per_s']:>8} res/s  p50 {row['p50_ms']} ms  "
            f"p99 {row['p99_ms']} ms",
            flush=True,
        )
        result["throughput"].append(row)
    samples = 300 if quick else 2000
    small = latency_with_instances(url, 10, samples)
    large = latency_with_instances(url, 1000 if quick else 10_000, samples)
    ratio = round(large["p50_ms"] / small["p50_ms"], 2)
    result["instances"] = [small, large]
    result["large_over_small_p50"] = ratio
    print(
        f"{name:10} p50 with {small['instances']} instances {small['p50_ms']} ms, with {large['instances']} "
        f"{large['p50_ms']} ms (ratio {ratio}); drift audit {large['audit_query_ms']} ms",
        flush=True,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer iterations (a smoke run)")
    parser.add_argument("--skip-postgres", action="store_true")
    args = parser.parse_args()
    engines = []
    with tempfile.TemporaryDirectory() as tmp:
        engines.append(bench_engine("sqlite", f"sqlite:///{tmp}/bench.db", args.quick))
    if not args.skip_postgres:
        with PgDatabase() as url:
            engines.append(bench_engine("postgresql", url, args.quick))
    sqlite = engines[0]
    single = sqlite["throughput"][0]["reservations_per_s"]
    verdict = {
        "sqlite_single_process_target_2000_per_s": single >= 2000,
        "sqlite_10k_instances_within_1.5x": sqlite["large_over_small_p50"] <= 1.5,
    }
    print("targets:", verdict)
    path = write_results("reserve", {"quick": args.quick, "engines": engines, "targets_met": verdict})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
