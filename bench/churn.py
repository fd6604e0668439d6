"""Weeks of VM churn on one host, with and without retention: the database's size per simulated day.

The ledger runs on a clock the benchmark moves forward one `prune_interval` (5 minutes) per tick, for 45
days. Each tick, VMs arrive (Poisson, ARRIVALS_PER_HOUR on average): each is validated (a reservation),
then, as the orchestrator would, its hold is consumed by `instance.created` (80 %), released (10 %) or left
to expire (10 %). A VM lives an exponential lifetime (LIFETIME_H on average: a steady population of about
40), then `instance.stopped` and `instance.deleted` arrive; `oci_cache.measured` arrives hourly. Events go
the consumer's way: real envelopes parsed by the contract, applied in one transaction per tick with their
ids and stream sequences, the durable consumer's position advanced in the same transaction. With pruning,
`Retention.prune_once` runs every tick, as `ledger serve` runs it every `prune_interval`.

Three runs, the same churn: no pruning; the default retention (history kept forever: it is a product
feature); and 7 days of everything (history, dead letters and tombstones too). Each simulated day it records
the database's size (SQLite: the file plus its WAL after a TRUNCATE checkpoint; PostgreSQL: the tables'
`pg_total_relation_size` after a plain VACUUM, which stands in for autovacuum in a month squeezed into a
minute), each table's share (with its indexes) and the row counts. After the run without pruning, one
`prune` with 7 days of everything shows a backlog's catch-up (what `ledger db prune` does on a database that
never pruned): rows, batches, the longest write transaction. Dead letters are left out: the journal stamps
them with the machine's clock, not the ledger's.

Run: `python bench/churn.py [--days 45] [--postgres]`; results go to bench/results/churn.json.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PgDatabase, percentile, write_results
from sqlalchemy import text

from ledger.bus.jetstream import DUPLICATE_WINDOW_S, DURABLE
from ledger.config import SETTINGS_BY_KEY
from ledger.core.charges import AllocationRequest
from ledger.core.resources import Capacity, ResourceType, Source
from ledger.events.apply import apply_events
from ledger.events.contract import make_event, parse_event, subject_for
from ledger.store import migrate
from ledger.store.ledger import Ledger
from ledger.store.retention import Limits, Retention

HOST = "churn-host"
BIG = {r: Capacity(10**15, Source.CONFIGURED) for r in ResourceType}
GIB = 2**30
ARRIVALS_PER_HOUR = 6.0
LIFETIME_H = 8.0
CONSUMED, RELEASED = 0.8, 0.1  # the rest of the holds expire
TICK_S = float(SETTINGS_BY_KEY["prune_interval"].default)
DEFAULTS = Limits.defaults()
TABLES = ("processed_events", "reservations", "allocation_log", "instances", "dead_letters")  # what churns
START = datetime(2026, 1, 1, tzinfo=UTC)


class Clock:
    """The ledger's clock, moved forward by the benchmark."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Vm:
    id: str
    record: dict[str, Any]
    version: int
    dies: datetime


@dataclass
class Churn:
    """The orchestrator: decides arrivals and departures, writes the events the consumer would apply."""

    rng: random.Random
    clock: Clock
    seq: int = 0
    oci_version: int = 0
    vms: list[Vm] = field(default_factory=list)
    counter: int = 0

    def event(self, event_type: str, data: dict[str, Any], version: int) -> tuple[Any, int]:
        self.seq += 1
        event_id = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
        envelope = make_event(event_type, HOST, data, version, id=event_id, time=self.clock())
        payload = json.dumps(envelope, separators=(",", ":")).encode()
        return parse_event(payload, subject_for(HOST, event_type)), self.seq

    def tick(self, ledger: Ledger) -> None:
        now = self.clock()
        events = []
        for _ in range(_poisson(self.rng, ARRIVALS_PER_HOUR * TICK_S / 3600)):
            events.extend(self.arrive(ledger, now))
        for vm in [vm for vm in self.vms if vm.dies <= now]:
            self.vms.remove(vm)
            events.append(self.event("instance.stopped", {**vm.record, "state": "Stopped"}, vm.version + 1))
            events.append(self.event("instance.deleted", {"id": vm.id}, vm.version + 2))
        if now.minute == 0:
            self.oci_version += 1
            size = {"total_bytes": self.rng.randint(4, 8) * GIB}
            events.append(self.event("oci_cache.measured", size, self.oci_version))
        if events:
            with ledger.batch([HOST]):
                apply_events(ledger, events)
                ledger.advance_position(DURABLE, [seq for _, seq in events])

    def arrive(self, ledger: Ledger, now: datetime) -> list[tuple[Any, int]]:
        self.counter += 1
        vcpus = self.rng.choice((1, 2, 4, 8))
        memory = vcpus * self.rng.choice((1, 2, 4)) * GIB
        grant = ledger.reserve(HOST, AllocationRequest(vcpus=vcpus, memory_bytes=memory))
        fate = self.rng.random()
        if fate >= CONSUMED + RELEASED:
            return []  # the hold expires: swept at a later tick
        if fate >= CONSUMED:
            ledger.release(grant.reservation_id)
            return []
        record = {
            "id": f"vm-{self.counter:06d}",
            "name": f"web-{self.counter}",
            "vcpus": vcpus,
            "memory_bytes": memory,
            "overlay_bytes": self.rng.choice((10, 20, 40)) * GIB,
        }
        lifetime = timedelta(hours=self.rng.expovariate(1 / LIFETIME_H))
        self.vms.append(Vm(record["id"], record, 2, now + lifetime))
        created = {**record, "state": "Created", "reservation_id": grant.reservation_id}
        return [
            self.event("instance.created", created, 1),
            self.event("instance.started", {**record, "state": "Running"}, 2),
        ]


def _poisson(rng: random.Random, mean: float) -> int:
    count, total = 0, rng.expovariate(1.0)
    while total < mean:
        count += 1
        total += rng.expovariate(1.0)
    return count


def measure(ledger: Ledger, path: Path | None) -> dict[str, Any]:
    """The database's size, each table's (with its indexes) and its rows."""
    with ledger.engine.connect() as conn:
        rows = {t: conn.execute(text(f"SELECT COUNT(*) FROM {t}")).scalar_one() for t in TABLES}
    if path is None:
        with ledger.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM")
            sizes = dict(conn.execute(text(_PG_SIZES)).all())
        return {"bytes": sum(sizes.values()), "table_bytes": _of(sizes), "rows": rows}
    raw = ledger.engine.raw_connection()  # outside a transaction: a checkpoint cannot run in one
    try:
        sqlite = raw.driver_connection
        sqlite.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        sizes = dict(sqlite.execute(_SQLITE_SIZES).fetchall())
        free = (
            sqlite.execute("PRAGMA freelist_count").fetchone()[0]
            * sqlite.execute("PRAGMA page_size").fetchone()[0]
        )
    finally:
        raw.close()
    wal = path.with_name(path.name + "-wal")
    size = path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
    return {"bytes": size, "free_bytes": free, "table_bytes": _of(sizes), "rows": rows}


def _of(sizes: dict[str, int]) -> dict[str, int]:
    return {t: int(sizes.get(t, 0)) for t in TABLES}


_PG_SIZES = (
    "SELECT tablename, pg_total_relation_size(quote_ident(tablename)) "
    "FROM pg_tables WHERE schemaname = 'public'"
)
# every b-tree's pages, indexes counted with their table
_SQLITE_SIZES = (
    "SELECT m.tbl_name, SUM(s.pgsize) FROM dbstat s JOIN sqlite_master m ON m.name = s.name "
    "GROUP BY m.tbl_name"
)


@contextmanager
def database(engine: str, tmp: Path, name: str) -> Iterator[tuple[str, Path | None]]:
    if engine == "sqlite":
        path = tmp / f"{name}.db"
        yield f"sqlite:///{path}", path
    else:
        with PgDatabase() as url:
            yield url, None


def run(
    engine: str, tmp: Path, name: str, limits: Limits | None, days: int, seed: int, catch_up: Limits
) -> dict[str, Any]:
    """`days` of churn, pruned every tick with `limits` (None: never); without, a catch-up prune after."""
    clock = Clock()
    churn = Churn(random.Random(seed), clock)
    ticks_per_day = round(86_400 / TICK_S)
    daily, prune_s, longest_batch, pruned = [], [], 0.0, 0
    result: dict[str, Any] = {"name": name, "engine": engine, "limits": limits and asdict(limits)}
    with database(engine, tmp, name) as (url, path):
        migrate.upgrade(url)
        ledger = Ledger.open(url, migrate=False, clock=clock)
        try:
            ledger.register_host(HOST, BIG, {})
            retention = Retention(ledger.db, consumer=DURABLE, duplicate_window_s=DUPLICATE_WINDOW_S)
            started = time.perf_counter()
            for tick in range(1, days * ticks_per_day + 1):
                clock.now = START + timedelta(seconds=tick * TICK_S)
                churn.tick(ledger)
                if limits is not None:
                    t0 = time.perf_counter()
                    report = retention.prune_once(limits)
                    prune_s.append(time.perf_counter() - t0)
                    longest_batch = max(longest_batch, report.longest_batch_s)
                    pruned += report.total
                if tick % ticks_per_day == 0:
                    day = {"day": tick // ticks_per_day, **measure(ledger, path)}
                    daily.append(day)
                    _print_day(name, day)
            result["elapsed_s"] = round(time.perf_counter() - started, 1)
            if limits is None:  # `ledger db prune` on a database that never pruned: the backlog at once
                t0 = time.perf_counter()
                report = retention.prune(catch_up)
                result["catch_up"] = {
                    "limits": asdict(catch_up),
                    "seconds": round(time.perf_counter() - t0, 2),
                    **report.to_dict(),
                    "after": measure(ledger, path),
                }
                print(f"  catch-up prune: {result['catch_up']}", flush=True)
            assert ledger.drift() == [], ledger.drift()
        finally:
            ledger.close()
    result.update(vms_created=churn.counter, events=churn.seq, rows_pruned=pruned, daily=daily)
    if prune_s:
        result["prune_run_ms"] = {
            "p50": round(percentile(prune_s, 0.5) * 1000, 2),
            "p99": round(percentile(prune_s, 0.99) * 1000, 2),
            "max": round(max(prune_s) * 1000, 2),
        }
        result["longest_write_batch_ms"] = round(longest_batch * 1000, 2)
    return result


def _print_day(name: str, day: dict[str, Any]) -> None:
    if day["day"] % 5 and day["day"] != 1:
        return
    rows = "  ".join(f"{t} {n:>6}" for t, n in day["rows"].items())
    print(f"  {name:<18} day {day['day']:>2}: {day['bytes'] / 1024:7.0f} KiB  rows: {rows}", flush=True)


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    """Size on days 7, 14, 21 and the last; growth per day in the first and the last week, overall and
    per table (what still grows once the retention is in force)."""
    days = {d["day"]: d for d in result["daily"]}
    last = max(days)
    before = days.get(last - 7)

    def per_day(key: str, table: str | None = None) -> float:
        now = days[last][key] if table is None else days[last][key][table]
        then = 0 if before is None else before[key] if table is None else before[key][table]
        return round((now - then) / 7 / 1024, 1)

    return {
        "name": result["name"],
        "kib_on_day": {d: round(days[d]["bytes"] / 1024) for d in (7, 14, 21, last) if d in days},
        "first_week_kib_per_day": round(days[min(7, last)]["bytes"] / min(7, last) / 1024, 1),
        "last_week_kib_per_day": per_day("bytes"),
        "last_week_kib_per_day_by_table": {t: per_day("table_bytes", t) for t in TABLES},
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--days", type=int, default=45, help="simulated days (default 45)")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--postgres", action="store_true", help="also run on PostgreSQL")
    args = parser.parse_args()
    # tombstones never go before the dead letters (none in this churn): a week of all three
    week = replace(DEFAULTS, history_days=7.0, tombstones_days=7.0, dead_letters_days=7.0)
    plans = [("no pruning", None), ("default retention", DEFAULTS), ("7 days of everything", week)]
    engines = ["sqlite", "postgresql"] if args.postgres else ["sqlite"]
    results, summaries = [], []
    with tempfile.TemporaryDirectory(prefix="ledger-churn-") as tmp:
        for engine in engines:
            for name, limits in plans:
                print(f"{engine}: {name}", flush=True)
                result = run(engine, Path(tmp), name.replace(" ", "-"), limits, args.days, args.seed, week)
                results.append(result)
                summary = {"engine": engine, **summarize(result)}
                summaries.append(summary)
                print(f"  → {summary}", flush=True)
    path = write_results(
        "churn",
        {
            "days": args.days,
            "tick_s": TICK_S,
            "arrivals_per_hour": ARRIVALS_PER_HOUR,
            "mean_lifetime_h": LIFETIME_H,
            "summary": summaries,
            "runs": results,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
