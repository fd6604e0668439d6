"""The fleet at scale: candidate searches, `place` through two `ledger serve` replicas, and growth, on
PostgreSQL (10,000 hosts, 1,000,000 instances) and SQLite (1,000 hosts, 100,000 instances).

The fleet is loaded in bulk (bench/fleet_load.py: COPY on PostgreSQL, executemany on SQLite; each instance
row is the one the apply path stores for its record, each host's running totals and `avail_*` computed from
those very rows with the store's formulas, then VACUUM ANALYZE / ANALYZE), and `ledger_drift` must read
zero before anything is measured. Then, on PostgreSQL:
  * candidates, in-process (`Ledger.candidates`) and over NATS (`LedgerClient.candidates` through one
    `ledger serve`), at concurrency 1 with limit 10, rotating four requests (unstated bandwidths; a zone
    label; stated bandwidths with `pack`; a large VM few hosts fit): p50/p99;
  * place at concurrency 32 (a pool of client processes, each with its own NATS connection and a share of
    the 32 requests in flight) against 2 `ledger serve` replicas on one embedded nats-server: grants/s,
    refusals, p50/p99; then `validate` on one named host (registered after the place run, so placement
    never chose it) by the same pool at the same concurrency, for place ÷ validate; the RSS of each serve
    sampled throughout (psutil); the hosts over an effective limit afterwards (fleet_status);
  * growth: instance records applied the consumer's way (`apply_events` in `Ledger.batch`, batches of 128,
    the consumer position advanced in the same transaction) to one host, per 1,000 records, once in a fresh
    database of 10,000 instances and once in the big one after the run (statistics refreshed after a
    warm-up round, as autovacuum would): the ratio must stay ≤ 1.5;
  * the time of `SELECT * FROM ledger_drift` after the load and again at the end (it must read zero);
  * upkeep: one background prune run with the default retention (`Retention.prune_once`, what `ledger
    serve` runs every `prune_interval`) with nothing old enough to go, by rule, and one expiry sweep
    (`Ledger.sweep_due`, every `sweep_interval`) with nothing due: medians of 3 and 20 runs.
On SQLite: candidates in-process at concurrency 1 with limit 10, and `ledger_drift`'s time.

Targets (issue 15): PostgreSQL candidates p50 ≤ 10 ms and p99 ≤ 50 ms; place ≥ 500/s at c=32 with 2
replicas; serve RSS ≤ 300 MB; 0 hosts over their limit; SQLite candidates p50 ≤ 5 ms; growth ratio ≤ 1.5.
Run: `python bench/fleet.py` (full size), `--quick` for a smoke run, or scale with --hosts/--instances;
results go to bench/results/fleet.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import json
import multiprocessing
import os
import queue
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import psutil
from common import PgDatabase, summarize, write_results
from fleet_load import drift_check, instance_record, load_fleet
from sqlalchemy import Engine, text

from ledger.bus.embedded import EmbeddedNats, terminate
from ledger.bus.jetstream import DUPLICATE_WINDOW_S, DURABLE
from ledger.client import LedgerClient
from ledger.core.charges import AllocationRequest
from ledger.core.errors import InsufficientResources, LedgerError
from ledger.core.resources import Capacity, ResourceType, Source
from ledger.events.apply import apply_events
from ledger.events.contract import Event, make_event, parse_event, subject_for
from ledger.store import migrate
from ledger.store.engine import make_engine
from ledger.store.ledger import Ledger
from ledger.store.retention import Limits, Retention

REPO = Path(__file__).resolve().parent.parent
GIB, GB = 2**30, 10**9
HUGE = {r: Capacity(10**15, Source.CONFIGURED) for r in ResourceType}
SERVE_HOST = "bench-serve"  # the replicas' own host: a medium host of the fleet like any other
VALIDATE_HOST = "bench-validate"
GROWTH_HOST = "bench-growth"
GROWTH_CONSUMER = "fleet-bench"  # its own consumer position: the replicas' is left alone
CONSUMER_BATCH = 128  # EventConsumer's default batch
START_TIMEOUT_S = 120.0
TTL_S = 3600  # no hold expires during the run: no sweep is measured
# the candidate searches, rotated: (name, request fields, labels, policy)
_STATED = {"network_download_bps": 12_500_000, "network_upload_bps": 0, "disk_io_bps": 50_000_000}
SEARCHES: tuple[tuple[str, dict[str, Any], dict[str, str], str], ...] = (
    (
        "2 vCPU 4 GiB, default bandwidths",
        {"vcpus": 2, "memory_bytes": 4 * GIB, "disk_bytes": 20 * GB},
        {},
        "spread",
    ),
    ("4 vCPU 16 GiB in zone z1", {"vcpus": 4, "memory_bytes": 16 * GIB}, {"zone": "z1"}, "spread"),
    ("1 vCPU 2 GiB, stated bandwidths, pack", {"vcpus": 1, "memory_bytes": 2 * GIB, **_STATED}, {}, "pack"),
    ("32 vCPU 256 GiB", {"vcpus": 32, "memory_bytes": 256 * GIB}, {}, "spread"),
)
PLACE = {"vcpus": 2, "memory_bytes": 4 * GIB, "disk_bytes": 20 * GB, "ttl_seconds": TTL_S}
HOW_LOADED = (
    "in bulk (bench/fleet_load.py), not through the event path: COPY on PostgreSQL, executemany on SQLite; "
    "each instance row is what the apply path stores for its record, each host's running totals and avail_* "
    "are computed from those rows with the store's formulas; then VACUUM ANALYZE (PostgreSQL) / ANALYZE "
    "(SQLite), and ledger_drift must read zero before anything is measured"
)
TARGETS = {
    "pg_candidates_p50_ms": 10.0,
    "pg_candidates_p99_ms": 50.0,
    "place_per_s": 500.0,
    "serve_rss_mb": 300.0,
    "hosts_over_limit": 0,
    "sqlite_candidates_p50_ms": 5.0,
    "growth_ratio": 1.5,
}


# ---- candidates at concurrency 1 ---------------------------------------------------------------------


def candidates_in_process(ledger: Ledger, calls: int) -> dict[str, Any]:
    """`Ledger.candidates` back to back, the searches rotated; p50/p99 overall and per search."""
    for _, fields, labels, policy in SEARCHES:  # warm the connection pool and the plans
        ledger.candidates(AllocationRequest(**fields), labels=labels, policy=policy, limit=10)
    per: dict[str, list[float]] = {name: [] for name, *_ in SEARCHES}
    fitting: dict[str, int] = {}
    for n in range(calls):
        name, fields, labels, policy = SEARCHES[n % len(SEARCHES)]
        t0 = time.perf_counter()
        found = ledger.candidates(AllocationRequest(**fields), labels=labels, policy=policy, limit=10)
        per[name].append(time.perf_counter() - t0)
        fitting[name] = found.shortfalls.fitting
    return _latencies(per, fitting)


async def candidates_over_nats(url: str, calls: int) -> dict[str, Any]:
    """`LedgerClient.candidates` back to back through whichever replica answers."""
    client = await LedgerClient.connect(url, timeout=30, reconnect_forever=False)
    try:
        per: dict[str, list[float]] = {name: [] for name, *_ in SEARCHES}
        fitting: dict[str, int] = {}
        for n in range(calls + len(SEARCHES)):
            name, fields, labels, policy = SEARCHES[n % len(SEARCHES)]
            t0 = time.perf_counter()
            found = await client.candidates(**fields, labels=labels, policy=policy, limit=10)
            if n >= len(SEARCHES):  # the first round warms up
                per[name].append(time.perf_counter() - t0)
                fitting[name] = found.fitting
    finally:
        await client.close()
    return _latencies(per, fitting)


def _latencies(per: dict[str, list[float]], fitting: dict[str, int]) -> dict[str, Any]:
    every = [s for samples in per.values() for s in samples]
    return {
        "calls": len(every),
        **summarize(every),
        "by_search": {
            name: {**summarize(samples), "fitting": fitting.get(name)}
            for name, samples in per.items()
            if samples
        },
    }


# ---- ledger serve replicas ---------------------------------------------------------------------------


class Serve:
    """`python -m ledger serve` on the bench's database and NATS; its log beside its data dir."""

    def __init__(self, data_dir: Path, database_url: str, nats_url: str) -> None:
        self.data_dir = data_dir
        self.log = data_dir.parent / f"{data_dir.name}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LEDGER_", "OVERSUB_"))}
        env.update(
            LEDGER_DATA_DIR=str(data_dir),
            LEDGER_HOST_ID=SERVE_HOST,
            LEDGER_DATABASE_URL=database_url,
            LEDGER_NATS_URL=nats_url,
            LEDGER_METRICS_ADDR="127.0.0.1:0",  # any free port: never fight another serve over the default
            LEDGER_RESERVATION_TTL=str(TTL_S),
            CPU_LIMIT="64",
            MEMORY_LIMIT="512GiB",
            DISK_LIMIT="8TB",
            NETWORK_LIMIT="25Gbps",
            DISK_IO_LIMIT="8GB/s",
            PYTHONUNBUFFERED="1",
        )
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Serve:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        runtime = self.data_dir / "serve.json"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "ledger", "serve"],
                env=self.env,
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ledger serve exited {self.process.returncode}: {self.tail()}")
            with contextlib.suppress(OSError, ValueError):
                if json.loads(runtime.read_text()).get("pid") == self.process.pid:
                    return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"ledger serve did not write serve.json within {START_TIMEOUT_S:.0f} s")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""

    def stop(self) -> int | None:
        """SIGTERM (SIGKILL after 60 s); the exit status."""
        process, self.process = self.process, None
        if process is None:
            return None
        if process.poll() is None:
            terminate(process, 60)
        return process.returncode


class RssSampler:
    """The resident set size of each process, sampled every 200 ms in a thread; the peak per process."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.processes = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.peak = dict.fromkeys(pids, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, process in self.processes.items():
                with contextlib.suppress(psutil.Error):
                    self.peak[name] = max(self.peak[name], process.memory_info().rss)
            self._stop.wait(0.2)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def peak_mb(self) -> dict[str, float]:
        return {name: round(rss / 2**20, 1) for name, rss in self.peak.items()}


# ---- the client process pool ---------------------------------------------------------------------------


async def _drive(
    url: str, endpoint: str, body: dict[str, Any], tasks: int, duration: float, barrier: Any, tag: str
) -> dict[str, Any]:
    """`tasks` requests in flight on one connection, each with a new idempotency key, for `duration`."""
    client = await LedgerClient.connect(url, timeout=60, reconnect_forever=False)
    keys = itertools.count()
    counts: Counter[str] = Counter()
    latencies: list[float] = []
    errors: list[str] = []

    async def one() -> tuple[str, float]:
        t0 = time.perf_counter()
        try:
            await client.call(endpoint, {**body, "idempotency_key": f"{tag}-{next(keys)}"})
        except InsufficientResources:
            return "refused", time.perf_counter() - t0
        except LedgerError as exc:
            if len(errors) < 5:
                errors.append(f"{exc.code}: {exc.message}")
            return "error", time.perf_counter() - t0
        return "granted", time.perf_counter() - t0

    try:
        await asyncio.gather(*(one() for _ in range(tasks)))  # warm up: connection, plans, caches
        await asyncio.to_thread(barrier.wait, 300)
        start = time.perf_counter()
        deadline = start + duration

        async def lane() -> None:
            while time.perf_counter() < deadline:
                outcome, latency = await one()
                counts[outcome] += 1
                if outcome == "granted":
                    latencies.append(latency)

        await asyncio.gather(*(lane() for _ in range(tasks)))
        elapsed = time.perf_counter() - start
    finally:
        await client.close()
    return {"elapsed": elapsed, "counts": dict(counts), "latencies": latencies, "errors": errors}


def client_process(
    url: str,
    endpoint: str,
    body: dict[str, Any],
    tasks: int,
    duration: float,
    barrier: Any,
    out: Any,
    tag: str,
) -> None:
    """A pool member (spawned): its counts and grant latencies, put on `out`."""
    out.put(asyncio.run(_drive(url, endpoint, body, tasks, duration, barrier, tag)))


def run_pool(
    url: str, endpoint: str, body: dict[str, Any], concurrency: int, processes: int, duration: float
) -> dict[str, Any]:
    """`concurrency` requests in flight from `processes` client processes, started together."""
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(processes), ctx.Queue()
    shares = [concurrency // processes + (i < concurrency % processes) for i in range(processes)]
    tag = uuid.uuid4().hex[:8]
    workers = [
        ctx.Process(
            target=client_process, args=(url, endpoint, body, share, duration, barrier, out, f"{tag}-{i}")
        )
        for i, share in enumerate(shares)
    ]
    for worker in workers:
        worker.start()
    reports = []
    try:
        for _ in workers:
            reports.append(out.get(timeout=duration + 600))
    except queue.Empty:
        raise RuntimeError(f"only {len(reports)} of {processes} client processes reported") from None
    finally:
        for worker in workers:
            worker.join(timeout=30)
            if worker.is_alive():
                worker.kill()
                worker.join()
    counts: Counter[str] = Counter()
    latencies: list[float] = []
    for report in reports:
        counts.update(report["counts"])
        latencies += report["latencies"]
    elapsed = max(report["elapsed"] for report in reports)
    return {
        "endpoint": endpoint,
        "concurrency": concurrency,
        "client_processes": processes,
        "seconds": round(elapsed, 2),
        "granted": counts["granted"],
        "refused": counts["refused"],
        "errors": counts["error"],
        "error_samples": [e for report in reports for e in report["errors"]][:5],
        "per_s": round(counts["granted"] / elapsed, 1),
        **(summarize(latencies) if latencies else {}),
    }


# ---- growth: instance records applied the consumer's way ----------------------------------------------


def growth(ledger: Ledger, rounds: int, per_round: int, seed: int = 3) -> dict[str, Any]:
    """Seconds per `per_round` instance.created events applied to one host in consumer-sized batches, after
    one round of warm-up; parsing is done before the clock starts.

    After the warm-up the tables the apply path reads are analyzed, as autovacuum would within a minute:
    the bulk load left `processed_events` analyzed empty, and on such stale statistics PostgreSQL scans the
    whole table for each batch's duplicate check, a cost that grows with every round and says nothing
    about the fleet's size."""
    ledger.register_host(GROWTH_HOST, HUGE, {})
    rng = random.Random(seed)
    tag = uuid.uuid4().hex[:6]  # new instance ids, however often it runs on a database
    seq = ledger.stream_position(GROWTH_CONSUMER)
    n = 0
    times = []
    for round_ in range(rounds + 1):
        events: list[tuple[Event, int]] = []
        for _ in range(per_round):
            n += 1
            seq += 1
            record = instance_record(rng, f"{GROWTH_HOST}-{tag}-{n:07d}").to_dict()
            data = {k: v for k, v in record.items() if v is not None}
            envelope = make_event("instance.created", GROWTH_HOST, data, 1, id=uuid.uuid4().hex)
            payload = json.dumps(envelope, separators=(",", ":")).encode()
            events.append((parse_event(payload, subject_for(GROWTH_HOST, "instance.created")), seq))
        t0 = time.perf_counter()
        outcomes: Counter[str] = Counter()
        for start in range(0, len(events), CONSUMER_BATCH):
            batch = events[start : start + CONSUMER_BATCH]
            with ledger.batch([GROWTH_HOST]):
                outcomes.update(r.outcome for r in apply_events(ledger, batch))
                ledger.advance_position(GROWTH_CONSUMER, [s for _, s in batch])
        elapsed = time.perf_counter() - t0
        assert outcomes == Counter({"applied": per_round}), outcomes
        if round_:
            times.append(elapsed)
        else:
            with ledger.engine.begin() as conn:
                conn.execute(text("ANALYZE processed_events, instances, allocation_log"))
    return {
        "records_per_round": per_round,
        "rounds": rounds,
        "batch": CONSUMER_BATCH,
        "seconds_per_round": [round(t, 3) for t in times],
        "median_s": round(statistics.median(times), 3),
    }


def instance_count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM instances")).scalar_one())


def hosts_over_limit(engine: Engine) -> int:
    """Hosts with any resource's allocated + pending above its effective limit (fleet_status: the totals)."""
    with engine.connect() as conn:
        found = conn.execute(
            text(
                "SELECT count(DISTINCT host_id) FROM fleet_status WHERE allocated + pending > effective_limit"
            )
        ).scalar_one()
    return int(found)


def hosts_table_bytes(engine: Engine) -> int | None:
    if engine.dialect.name != "postgresql":
        return None
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT pg_total_relation_size('hosts')")).scalar_one())


# ---- the runs ------------------------------------------------------------------------------------------


@contextlib.contextmanager
def loaded(url: str, hosts: int, instances: int, label: str) -> Iterator[tuple[Engine, dict[str, Any]]]:
    """A migrated database at `url` with the fleet loaded and audited."""
    migrate.upgrade(url)
    engine = make_engine(url)
    try:
        load = load_fleet(engine, hosts, instances)
        check = drift_check(engine)
        print(
            f"{label}: loaded {load.hosts:,} hosts and {load.instances:,} instances ({load.active:,} active, "
            f"{load.stopped_to_fit:,} stored as Stopped because their host was full) in {load.seconds} s "
            f"by {load.method}; {_drift_line(check.to_dict())}",
            flush=True,
        )
        if check.drifted:
            raise RuntimeError(f"{label}: the loaded totals drift from the rows ({check.drifted} rows)")
        yield engine, {"load": load.to_dict(), "drift_after_load": check.to_dict()}
    finally:
        engine.dispose()


def bench_postgres(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    result: dict[str, Any] = {"hosts": args.hosts, "instances": args.instances}
    with PgDatabase() as url, loaded(url, args.hosts, args.instances, "postgresql") as (engine, info):
        result.update(info)
        ledger = Ledger.open(url, migrate=False, reservation_ttl=TTL_S)
        try:
            result["candidates_in_process"] = found = candidates_in_process(ledger, args.candidates_calls)
            _print_latency("candidates in-process, c=1, limit 10", found)
            result.update(serve_phase(url, ledger, args, tmp))
            result["upkeep"] = kept = upkeep(ledger)  # after the run: its holds are in `reservations`
            print(f"  upkeep with nothing to do: {kept}")
            result["hosts_over_limit"] = over = hosts_over_limit(engine)
            print(f"  hosts over an effective limit after the run: {over}")
            result["growth_large"] = large = growth(ledger, args.growth_rounds, 1000)
            large["instances_before"] = instance_count(engine) - 1000 * (args.growth_rounds + 1)
            result["hosts_table_bytes"] = hosts_table_bytes(engine)
            print(f"  growth at {large['instances_before']:,} instances: {large['median_s']} s per 1,000")
        finally:
            ledger.close()
        result["drift_at_end"] = check = drift_check(engine).to_dict()
        print(f"  at the end: {_drift_line(check)}")
        result["hosts_over_limit_at_end"] = hosts_over_limit(engine)
    result["growth_small"] = small = growth_baseline(args)
    print(f"  growth at {args.growth_small:,} instances: {small['median_s']} s per 1,000")
    result["growth_ratio"] = round(large["median_s"] / small["median_s"], 3)
    return result


def upkeep(ledger: Ledger) -> dict[str, Any]:
    """What `ledger serve`'s background upkeep costs the database when there is nothing to delete or sweep:
    a prune run with the default retention, by rule (the time of each kind of row, measured alone), and
    the expiry sweep's search."""
    defaults = Limits.defaults()
    retention = Retention(ledger.db, consumer=DURABLE, duplicate_window_s=DUPLICATE_WINDOW_S)
    off = dataclasses.replace(
        defaults,
        processed_days=0,
        reservations_days=0,
        history_days=0,
        dead_letters_days=0,
        tombstones_days=0,
    )
    alone = {  # each rule on its own (tombstones need the dead letters' retention, which has no rule cost)
        "processed_events": dataclasses.replace(off, processed_days=defaults.processed_days),
        "reservations": dataclasses.replace(off, reservations_days=defaults.reservations_days),
        "tombstones": dataclasses.replace(
            off, tombstones_days=defaults.tombstones_days, dead_letters_days=defaults.dead_letters_days
        ),
    }

    def median_s(work: Any, runs: int) -> float:
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            work()
            times.append(time.perf_counter() - started)
        return round(statistics.median(times), 4)

    return {
        "prune_run_s": median_s(lambda: retention.prune_once(defaults), 3),
        "prune_run_s_by_rule": {
            name: median_s(lambda lim=lim: retention.prune_once(lim), 3) for name, lim in alone.items()
        },
        "sweep_ms": round(median_s(lambda: ledger.sweep_due(500), 20) * 1000, 2),
    }


def serve_phase(url: str, ledger: Ledger, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Two replicas on one embedded nats-server: candidates over NATS, then place and validate by the client
    pool while each replica's RSS is sampled."""
    result: dict[str, Any] = {}
    with EmbeddedNats(tmp / "nats") as server:
        replicas: list[Serve] = []
        try:
            for i in range(2):  # one after the other: two first starts race for the consumer's position
                replicas.append(Serve(tmp / f"serve-{i}", url, server.url).start())
            print(f"  2 ledger serve replicas up (pids {[r.pid for r in replicas]})", flush=True)
            found = asyncio.run(candidates_over_nats(server.url, args.candidates_calls))
            result["candidates_over_nats"] = found
            _print_latency("candidates over NATS, c=1, limit 10", found)
            pool = (args.concurrency, args.client_processes, args.duration)
            with RssSampler({f"serve-{i}": r.pid for i, r in enumerate(replicas)}) as rss:
                result["place"] = placed = run_pool(server.url, "place", PLACE, *pool)
                _print_pool(placed)
                ledger.register_host(VALIDATE_HOST, HUGE, {})  # now: placement never chose it
                body = {**PLACE, "host": VALIDATE_HOST}
                result["validate"] = validated = run_pool(server.url, "validate", body, *pool)
                _print_pool(validated)
            result["serve_rss_peak_mb"] = rss.peak_mb()
            print(f"  ledger serve peak RSS: {result['serve_rss_peak_mb']} MB")
        finally:
            result["serve_exit_codes"] = [r.stop() for r in replicas]
            logs = [r.tail() for r in replicas]
            if any("Traceback" in log for log in logs):
                print("  a serve logged a traceback:\n" + next(log for log in logs if "Traceback" in log))
    result["place_over_validate"] = round(placed["per_s"] / max(validated["per_s"], 0.1), 3)
    return result


def growth_baseline(args: argparse.Namespace) -> dict[str, Any]:
    """Growth in a fresh database of `--growth-small` instances (100 a host, like the big one)."""
    hosts = max(1, args.growth_small // 100)
    with PgDatabase() as url, loaded(url, hosts, args.growth_small, "postgresql (growth baseline)"):
        ledger = Ledger.open(url, migrate=False)
        try:
            small = growth(ledger, args.growth_rounds, 1000)
        finally:
            ledger.close()
    small["instances_before"] = args.growth_small
    return small


def bench_sqlite(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    url = f"sqlite:///{tmp / 'fleet.db'}"
    result: dict[str, Any] = {"hosts": args.sqlite_hosts, "instances": args.sqlite_instances}
    with loaded(url, args.sqlite_hosts, args.sqlite_instances, "sqlite") as (engine, info):
        result.update(info)
        ledger = Ledger.open(url, migrate=False)
        try:
            result["candidates_in_process"] = found = candidates_in_process(ledger, args.candidates_calls)
        finally:
            ledger.close()
        _print_latency("candidates in-process, c=1, limit 10", found)
        result["hosts_over_limit"] = hosts_over_limit(engine)
    return result


def _drift_line(check: dict[str, Any]) -> str:
    rows, seconds, drifted = check["rows"], check["seconds"], check["drifted"]
    return f"SELECT * FROM ledger_drift: {rows:,} rows in {seconds} s, {drifted} drifted"


def _print_latency(label: str, found: dict[str, Any]) -> None:
    print(
        f"  {label}: p50 {found['p50_ms']} ms, p99 {found['p99_ms']} ms ({found['calls']} calls)", flush=True
    )
    for name, row in found["by_search"].items():
        print(f"    {name}: p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms, {row['fitting']} hosts fit")


def _print_pool(row: dict[str, Any]) -> None:
    print(
        f"  {row['endpoint']} at c={row['concurrency']} ({row['client_processes']} client processes, "
        f"{row['seconds']} s): {row['per_s']}/s granted ({row['granted']} granted, {row['refused']} refused, "
        f"{row['errors']} errors) p50 {row.get('p50_ms')} ms p99 {row.get('p99_ms')} ms",
        flush=True,
    )
    if row["error_samples"]:
        print(f"    errors: {row['error_samples']}")


def verdicts(pg: dict[str, Any] | None, sqlite: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Each target next to its measurement."""
    rows: list[tuple[str, Any, Any, bool]] = []
    if pg is not None:
        local, remote = pg["candidates_in_process"], pg["candidates_over_nats"]
        p50, p99 = TARGETS["pg_candidates_p50_ms"], TARGETS["pg_candidates_p99_ms"]
        rows += [
            ("PostgreSQL candidates p50 (in-process), ms", local["p50_ms"], p50, True),
            ("PostgreSQL candidates p99 (in-process), ms", local["p99_ms"], p99, True),
            ("PostgreSQL candidates p50 (over NATS), ms", remote["p50_ms"], p50, True),
            ("PostgreSQL candidates p99 (over NATS), ms", remote["p99_ms"], p99, True),
            (
                f"place per s, c={pg['place']['concurrency']}, 2 replicas",
                pg["place"]["per_s"],
                TARGETS["place_per_s"],
                False,
            ),
            (
                "ledger serve peak RSS, MB",
                max(pg["serve_rss_peak_mb"].values()),
                TARGETS["serve_rss_mb"],
                True,
            ),
            ("hosts over their limit after the run", pg["hosts_over_limit_at_end"], 0, True),
            ("ledger_drift rows that drift, at the end", pg["drift_at_end"]["drifted"], 0, True),
            ("growth: s per 1,000 records, large ÷ small", pg["growth_ratio"], TARGETS["growth_ratio"], True),
        ]
    if sqlite is not None:
        measured = sqlite["candidates_in_process"]["p50_ms"]
        rows.append(
            ("SQLite candidates p50 (in-process), ms", measured, TARGETS["sqlite_candidates_p50_ms"], True)
        )
    return [
        {
            "target": name,
            "measured": measured,
            "bound": bound,
            "comparison": "≤" if at_most else "≥",
            "pass": measured <= bound if at_most else measured >= bound,
        }
        for name, measured, bound, at_most in rows
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: a small fleet, 5 s per load point")
    parser.add_argument("--hosts", type=int, default=10_000, help="PostgreSQL hosts (default 10,000)")
    parser.add_argument(
        "--instances", type=int, default=1_000_000, help="PostgreSQL instances (default 1,000,000)"
    )
    parser.add_argument("--sqlite-hosts", type=int, default=1_000, help="SQLite hosts (default 1,000)")
    parser.add_argument(
        "--sqlite-instances", type=int, default=100_000, help="SQLite instances (default 100,000)"
    )
    parser.add_argument("--concurrency", type=int, default=32, help="place/validate requests in flight (32)")
    parser.add_argument("--client-processes", type=int, default=4, help="client processes sharing them (4)")
    parser.add_argument(
        "--duration", type=float, default=20.0, help="seconds of place, then of validate (20)"
    )
    parser.add_argument(
        "--candidates-calls", type=int, default=400, help="candidate searches per point (400)"
    )
    parser.add_argument("--growth-rounds", type=int, default=5, help="rounds of 1,000 records per size (5)")
    parser.add_argument(
        "--growth-small", type=int, default=10_000, help="instances in the growth baseline database (10,000)"
    )
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--skip-sqlite", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.hosts, args.instances = min(args.hosts, 1_000), min(args.instances, 50_000)
        args.sqlite_hosts, args.sqlite_instances = (
            min(args.sqlite_hosts, 200),
            min(args.sqlite_instances, 20_000),
        )
        args.duration, args.candidates_calls, args.growth_rounds = 5.0, 100, 3
    full = (args.hosts, args.instances, args.sqlite_hosts, args.sqlite_instances) == (
        10_000,
        1_000_000,
        1_000,
        100_000,
    )
    print(
        f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; "
        f"{'full size' if full else 'SCALED DOWN (not the issue sizes)'}",
        flush=True,
    )
    print(f"how the fleet is loaded: {HOW_LOADED}", flush=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ledger-fleet-") as tmp_name:
        tmp = Path(tmp_name)
        pg = None if args.skip_postgres else bench_postgres(args, tmp)
        sqlite = None if args.skip_sqlite else bench_sqlite(args, tmp)
    table = verdicts(pg, sqlite)
    print("targets (issue 15):")
    for row in table:
        print(
            f"  {'PASS' if row['pass'] else 'FAIL'}  {row['target']}: {row['measured']} "
            f"(target {row['comparison']} {row['bound']})"
        )
    if pg is not None:
        print(f"place ÷ validate (same run, same concurrency): {pg['place_over_validate']}")
    path = write_results(
        "fleet",
        {
            "full_size": full,
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "seconds": round(time.perf_counter() - started, 1),
            "how_loaded": HOW_LOADED,
            "settings": {k: v for k, v in vars(args).items() if k != "quick"} | {"quick": args.quick},
            "searches": [{"name": n, "request": f, "labels": lab, "policy": p} for n, f, lab, p in SEARCHES],
            "place_request": PLACE,
            "postgresql": pg,
            "sqlite": sqlite,
            "targets": table,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
