"""Lifecycle events applied per second, end to end (published → applied, committed and acked), on SQLite and
PostgreSQL.

Each run starts its own embedded nats-server and a fresh, migrated database with one registered host, then:
  * pre-published: N events go into the stream first (publish rate reported on its own), then an in-process
    EventConsumer drains them; timed from the consumer's start until every event is applied and the server
    shows nothing pending or unacknowledged;
  * overlapped: the consumer runs while the same N events are published; timed from the first publish until
    the last one is applied and acked (end-to-end rate).
The events are realistic lifecycles interleaved across many entities: instances created → started → resized →
paused → stopped → deleted, volumes created → attached → resized → detached → deleted, images pulled →
deleted, and the host's OCI cache measured. Afterwards: processed_events holds N rows, every event was
`applied`, and `ledger.drift()` is empty. SQLite also runs at batch sizes 32/128/512.

Targets (issues): ≥ 2,000 events/s with ack-after-commit, on SQLite and on PostgreSQL (pre-published).
`--profile` adds a cProfile of the consumer's apply path (the worker thread) and of its event-loop side,
with a per-phase wall-time split and SQL statements per event. Run: `python bench/ingest.py [--quick]
[--profile]`; results go to bench/results/ingest.json.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import os
import pstats
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import nats
from common import PgDatabase, write_results
from nats.aio.client import Client
from sqlalchemy import event as sa_event
from sqlalchemy import func, select

from ledger.bus.consumer import EventConsumer, Outcome
from ledger.bus.embedded import EmbeddedNats
from ledger.bus.jetstream import DURABLE, STREAM, ensure_stream, stream_config
from ledger.core.resources import Capacity, ResourceType, Source
from ledger.events.contract import make_event, subject_for
from ledger.store import migrate
from ledger.store.journal import processed_events
from ledger.store.ledger import Ledger

HOST = "bench-host"
BIG = {r: Capacity(10**15, Source.CONFIGURED) for r in ResourceType}
GIB = 2**30
PUBLISH_CHUNK = 256  # publishes in flight at once (asyncio.gather per chunk)
GROUP = 1200  # entities whose lifecycles are interleaved step by step: same-entity events sit ≥ a chunk apart
BATCH_SIZES = (32, 128, 512)
DEFAULT_BATCH = 128  # EventConsumer's default and `ledger events consume --batch`'s
STALL_S = 120.0  # give up when nothing is applied for this long


@dataclass(frozen=True, slots=True)
class Message:
    subject: str
    payload: bytes
    event_id: str


# ---- the events ------------------------------------------------------------------------------------------


def _instance_steps(rng: random.Random, n: int) -> list[tuple[str, dict[str, Any]]]:
    iid = f"inst-{n}"
    vcpus = rng.choice((1, 2, 4, 8))
    memory = vcpus * rng.choice((1, 2, 4)) * GIB
    net = rng.choice((125_000_000, 250_000_000, 1_250_000_000))
    base = {
        "id": iid,
        "name": f"vm-{n}",
        "vcpus": vcpus,
        "memory_bytes": memory,
        "overlay_bytes": rng.choice((10, 20, 40)) * GIB,
        "network_download_bps": net,
        "network_upload_bps": net // 2,
        "disk_io_bps": rng.choice((100, 200, 400)) * 2**20,
    }
    bigger = {**base, "vcpus": vcpus * 2, "memory_bytes": memory * 2}
    return [
        ("instance.created", {**base, "state": "Created"}),
        ("instance.started", {**base, "state": "Running"}),
        ("instance.resized", {**bigger, "state": "Running"}),
        ("instance.paused", {**bigger, "state": "Paused"}),
        ("instance.stopped", {**bigger, "state": "Stopped"}),
        ("instance.deleted", {"id": iid}),
    ]


def _volume_steps(rng: random.Random, n: int) -> list[tuple[str, dict[str, Any]]]:
    vid, size = f"vol-{n}", rng.choice((10, 50, 100)) * GIB
    base = {"id": vid, "name": f"data-{n}", "size_bytes": size}
    return [
        ("volume.created", base),
        ("volume.attached", {**base, "attached_to": f"inst-{n}"}),
        ("volume.resized", {**base, "size_bytes": size * 2, "attached_to": f"inst-{n}"}),
        ("volume.detached", {**base, "size_bytes": size * 2}),
        ("volume.deleted", {"id": vid}),
    ]


def _image_steps(rng: random.Random, n: int) -> list[tuple[str, dict[str, Any]]]:
    base = {
        "id": f"img-{n}",
        "name": f"docker.io/library/app-{n}:latest",
        "size_bytes": rng.randint(1, 8) * GIB,
    }
    return [("image.pulled", base), ("image.deleted", {"id": f"img-{n}"})]


def build_events(total: int, seed: int = 7) -> tuple[list[Message], Counter[str]]:
    """`total` valid events: groups of GROUP entities (instances, volumes, images in 4:3:1), each group's
    lifecycles interleaved wave by wave, so no publish chunk carries two events of one entity (JetStream
    may order a chunk's publishes either way) and every event is applied, none stale."""
    rng = random.Random(seed)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    events: list[tuple[str, dict[str, Any], int, str]] = []  # type, data, version, entity
    n = oci_version = 0
    while len(events) < total:
        lifecycles = []
        for _ in range(GROUP):
            n += 1
            make = (_instance_steps, _instance_steps, _instance_steps, _instance_steps, _volume_steps,
                    _volume_steps, _volume_steps, _image_steps)[n % 8]  # fmt: skip
            steps = make(rng, n)
            lifecycles.append(
                [(t, d, v + 1, f"{t.split('.')[0]}:{d['id']}") for v, (t, d) in enumerate(steps)]
            )
        for wave in range(max(len(steps) for steps in lifecycles)):
            events.extend(steps[wave] for steps in lifecycles if wave < len(steps))
        oci_version += 1
        events.append(("oci_cache.measured", {"total_bytes": oci_version * GIB}, oci_version, "oci"))
    events = events[:total]
    last_seen: dict[str, int] = {}
    for position, (_, _, _, entity) in enumerate(events):
        if entity in last_seen:
            assert position - last_seen[entity] >= PUBLISH_CHUNK, (entity, position, last_seen[entity])
        last_seen[entity] = position
    messages = []
    for i, (event_type, data, version, _) in enumerate(events):
        envelope = make_event(
            event_type, HOST, data, version, id=f"evt-{i:07d}", time=t0 + timedelta(milliseconds=i)
        )
        payload = json.dumps(envelope, separators=(",", ":")).encode()
        messages.append(Message(subject_for(HOST, event_type), payload, envelope["id"]))
    return messages, Counter(t for t, _, _, _ in events)


# ---- one run ---------------------------------------------------------------------------------------------


async def publish_all(nc: Client, messages: list[Message]) -> dict[str, Any]:
    js = nc.jetstream()
    start = time.perf_counter()
    duplicates = 0
    for i in range(0, len(messages), PUBLISH_CHUNK):
        acks = await asyncio.gather(
            *(
                js.publish(m.subject, m.payload, timeout=30.0, headers={"Nats-Msg-Id": m.event_id})
                for m in messages[i : i + PUBLISH_CHUNK]
            )
        )
        duplicates += sum(1 for a in acks if a.duplicate)
    elapsed = time.perf_counter() - start
    assert duplicates == 0, f"{duplicates} publishes were duplicates"
    return {"publish_s": round(elapsed, 3), "published_per_s": round(len(messages) / elapsed, 1)}


async def wait_applied(
    nc: Client, consumer_task: asyncio.Task[None], done: asyncio.Event, seen: Callable[[], int]
) -> None:
    """Until the consumer has reported every event, then until the server shows them all acked."""
    last, last_change = -1, time.perf_counter()
    while not done.is_set():
        if consumer_task.done():
            consumer_task.result()
            raise RuntimeError("the consumer stopped early")
        count = seen()
        if count != last:
            last, last_change = count, time.perf_counter()
        elif time.perf_counter() - last_change > STALL_S:
            raise RuntimeError(f"no progress for {STALL_S:.0f} s at {count} events")
        with suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), timeout=1.0)
    js = nc.jetstream()
    await nc.flush()
    while True:
        info = await js.consumer_info(STREAM, DURABLE)
        if info.num_ack_pending == 0 and info.num_pending == 0:
            return
        await asyncio.sleep(0.002)


def verify(ledger: Ledger, total: int, outcomes: Counter[str]) -> None:
    with ledger.engine.connect() as conn:
        rows = conn.execute(select(func.count()).select_from(processed_events)).scalar_one()
    assert rows == total, f"processed_events holds {rows} rows, expected {total}"
    assert outcomes == Counter({"applied": total}), f"outcomes {dict(outcomes)}"
    drift = ledger.drift()
    assert drift == [], drift


@contextmanager
def fresh_database(engine: str, tmp: Path, run: int) -> Iterator[str]:
    if engine == "sqlite":
        yield f"sqlite:///{tmp}/ingest-{run}.db"
    else:
        with PgDatabase() as url:
            yield url


async def one_run(
    engine: str,
    tmp: Path,
    run: int,
    messages: list[Message],
    *,
    batch_size: int,
    overlap: bool,
    consumer_cls: type[EventConsumer] = EventConsumer,
) -> dict[str, Any]:
    total = len(messages)
    with fresh_database(engine, tmp, run) as url, EmbeddedNats(tmp / f"nats-{run}") as server:
        migrate.upgrade(url)
        ledger = Ledger.open(url, migrate=False)
        ledger.register_host(HOST, BIG, {})
        nc = await nats.connect(server.url)
        try:
            await ensure_stream(nc.jetstream(), stream_config())
            outcomes: Counter[str] = Counter()
            done = asyncio.Event()

            def on_outcome(outcome: Outcome) -> None:
                outcomes[outcome.outcome] += 1
                if outcomes.total() >= total:
                    done.set()

            consumer = consumer_cls(nc, ledger, batch_size=batch_size, on_outcome=on_outcome)
            stop = asyncio.Event()
            row: dict[str, Any] = {"engine": engine, "mode": "overlapped" if overlap else "pre-published"}
            row["batch_size"] = batch_size
            if not overlap:
                row.update(await publish_all(nc, messages))
            start, cpu_start = time.perf_counter(), time.process_time()
            await consumer.start()
            task = asyncio.create_task(consumer.run(stop))
            if overlap:
                row.update(await publish_all(nc, messages))
                published_at = time.perf_counter()
            await wait_applied(nc, task, done, outcomes.total)
            elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
            stop.set()
            await task
            row["events"] = total
            row["consume_s" if not overlap else "end_to_end_s"] = round(elapsed, 3)
            row["events_per_s"] = round(total / elapsed, 1)
            # this process's CPU (event loop + apply thread): less sensitive to a busy machine than wall time
            row["events_per_cpu_s"] = round(total / cpu, 1)
            if overlap:
                row["drain_after_last_publish_s"] = round(time.perf_counter() - published_at, 3)
            verify(ledger, total, outcomes)
            row["verified"] = True
            if hasattr(consumer, "report"):
                row["profile"] = consumer.report(total)
            return row
        finally:
            await nc.close()
            ledger.close()


def median_of(rows: list[dict[str, Any]]) -> dict[str, Any]:
    rates = [r["events_per_s"] for r in rows]
    first = rows[0]
    summary = {k: first[k] for k in ("engine", "mode", "batch_size", "events")}
    summary["events_per_s_median"] = round(statistics.median(rates), 1)
    summary["events_per_s_runs"] = rates
    summary["events_per_cpu_s_median"] = round(statistics.median(r["events_per_cpu_s"] for r in rows), 1)
    summary["published_per_s_median"] = round(statistics.median(r["published_per_s"] for r in rows), 1)
    if first["mode"] == "overlapped":
        summary["drain_after_last_publish_s_median"] = round(
            statistics.median(r["drain_after_last_publish_s"] for r in rows), 3
        )
    return summary


# ---- profiling -------------------------------------------------------------------------------------------


class ProfiledConsumer(EventConsumer):
    """An EventConsumer with wall time per phase, cProfile on the apply thread and on the event loop, and
    the SQL statements it executes (for `--profile` only: the measured runs use the plain consumer)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.apply_profile = cProfile.Profile()
        self.loop_profile = cProfile.Profile()
        self.phases: Counter[str] = Counter()
        self.batches = 0
        self.statements: Counter[str] = Counter()

        @sa_event.listens_for(self.ledger.engine, "before_cursor_execute")
        def _count(conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
            self.statements[" ".join(statement.split()[:4])] += 1

    async def run(self, stop: asyncio.Event) -> None:
        self.loop_profile.enable()
        try:
            await super().run(stop)
        finally:
            self.loop_profile.disable()

    async def process(self, msgs: list[Any]) -> list[Outcome]:
        t0 = time.perf_counter()
        try:
            return await super().process(msgs)
        finally:
            self.phases["process (parse + apply + ack + announce)"] += time.perf_counter() - t0
            self.batches += 1

    def _parse(self, msg: Any) -> Any:  # type: ignore[override]
        t0 = time.perf_counter()
        try:
            return EventConsumer._parse(msg)
        finally:
            self.phases["parse_event (event loop)"] += time.perf_counter() - t0

    def _apply_batch(self, deliveries: list[Any]) -> list[Outcome]:
        t0 = time.perf_counter()
        self.apply_profile.enable()
        try:
            return super()._apply_batch(deliveries)
        finally:
            self.apply_profile.disable()
            self.phases["_apply_batch (worker thread, incl. commit)"] += time.perf_counter() - t0

    async def _settle(self, action: Callable[..., Any], **kwargs: Any) -> None:  # type: ignore[override]
        t0 = time.perf_counter()
        try:
            await EventConsumer._settle(action, **kwargs)
        finally:
            self.phases["ack (event loop)"] += time.perf_counter() - t0

    async def _report(self, outcome: Outcome) -> None:
        t0 = time.perf_counter()
        try:
            await super()._report(outcome)
        finally:
            self.phases["announce + on_outcome (event loop)"] += time.perf_counter() - t0

    def report(self, total: int) -> dict[str, Any]:
        return {
            "batches": self.batches,
            "phase_wall_s": {k: round(v, 3) for k, v in self.phases.items()},
            "sql_per_event": {k: round(v / total, 2) for k, v in self.statements.most_common()},
            "apply_thread_top": _top(self.apply_profile, 25),
            "event_loop_top": _top(self.loop_profile, 15),
        }


def _top(profile: cProfile.Profile, limit: int) -> list[dict[str, Any]]:
    stats = pstats.Stats(profile, stream=io.StringIO())
    rows = []
    for (filename, line, name), (_, calls, tottime, cumtime, _) in stats.stats.items():  # type: ignore[attr-defined]
        where = filename.split("site-packages/")[-1].split("/work/main/")[-1]
        rows.append(
            {
                "function": f"{where}:{line}({name})",
                "calls": calls,
                "tottime_s": tottime,
                "cumtime_s": cumtime,
            }
        )
    total = sum(r["tottime_s"] for r in rows)
    by_self = sorted(rows, key=lambda r: -r["tottime_s"])[:limit]
    for r in by_self:
        r["self_pct"] = round(100 * r["tottime_s"] / total, 1) if total else 0.0
        r["tottime_s"], r["cumtime_s"] = round(r["tottime_s"], 3), round(r["cumtime_s"], 3)
    return by_self


def print_profile(profile: dict[str, Any], elapsed: float) -> None:
    print(f"  profiled run ({profile['batches']} batches); wall time by phase:")
    for phase, seconds in profile["phase_wall_s"].items():
        print(f"    {phase:48} {seconds:8.3f} s")
    print("  SQL statements per event:")
    for stmt, per in profile["sql_per_event"].items():
        print(f"    {per:6.2f}  {stmt}")
    for title, key in (("apply thread", "apply_thread_top"), ("event loop", "event_loop_top")):
        print(f"  {title}: top functions by own time")
        for r in profile[key]:
            print(
                f"    {r['self_pct']:5.1f}%  {r['tottime_s']:7.3f} s  cum {r['cumtime_s']:7.3f} s  "
                f"{r['calls']:>8}  {r['function']}"
            )


# ---- the benchmark ---------------------------------------------------------------------------------------


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    total = 3000 if args.quick else args.events
    repeats = 1 if args.quick else args.repeats
    pg_repeats = 1 if args.quick else (args.pg_repeats or repeats)
    t0 = time.perf_counter()
    messages, types = build_events(total)
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print(
        f"built {total} events ({len(types)} types) in {time.perf_counter() - t0:.1f} s; repeats {repeats}",
        flush=True,
    )
    plan: list[tuple[str, int, bool]] = [("sqlite", b, False) for b in BATCH_SIZES]
    plan.append(("sqlite", DEFAULT_BATCH, True))
    if not args.skip_postgres:
        plan += [("postgresql", DEFAULT_BATCH, False), ("postgresql", DEFAULT_BATCH, True)]
    runs, summaries = [], []
    counter = 0
    with tempfile.TemporaryDirectory(prefix="ledger-ingest-") as tmp_name:
        tmp = Path(tmp_name)
        for engine, batch, overlap in plan:
            rows = []
            for _ in range(repeats if engine == "sqlite" else pg_repeats):
                counter += 1
                row = await one_run(engine, tmp, counter, messages, batch_size=batch, overlap=overlap)
                rows.append(row)
                print(
                    f"  {engine:10} {row['mode']:13} batch {batch:>3}: {row['events_per_s']:>8} events/s "
                    f"({row['events_per_cpu_s']}/CPU-s; publish alone {row['published_per_s']}/s)",
                    flush=True,
                )
            summary = median_of(rows)
            summaries.append(summary)
            runs.extend(rows)
            print(
                f"{engine:10} {summary['mode']:13} batch {batch:>3}: "
                f"median {summary['events_per_s_median']:>8} events/s "
                f"({summary['events_per_cpu_s_median']}/CPU-s)  runs {summary['events_per_s_runs']}",
                flush=True,
            )
        profile = None
        if args.profile:
            counter += 1
            row = await one_run(
                "sqlite",
                tmp,
                counter,
                messages[: args.profile_events],
                batch_size=DEFAULT_BATCH,
                overlap=False,
                consumer_cls=ProfiledConsumer,
            )
            profile = row.pop("profile")
            profile["events_per_s_under_profiler"] = row["events_per_s"]
            print(
                f"profile: sqlite pre-published batch {DEFAULT_BATCH}, "
                f"{row['events_per_s']} events/s under cProfile"
            )
            print_profile(profile, row["consume_s"])
    sqlite_default = next(
        s
        for s in summaries
        if s["engine"] == "sqlite" and s["mode"] == "pre-published" and s["batch_size"] == DEFAULT_BATCH
    )
    best = max((s for s in summaries if s["engine"] == "sqlite"), key=lambda s: s["events_per_s_median"])
    verdict = {
        "sqlite_default_batch_target_2000_per_s": sqlite_default["events_per_s_median"] >= 2000,
        "sqlite_any_batch_target_2000_per_s": best["events_per_s_median"] >= 2000,
    }
    for s in summaries:
        if s["engine"] == "postgresql" and s["mode"] == "pre-published":
            verdict["postgresql_target_2000_per_s"] = s["events_per_s_median"] >= 2000
    print("targets:", verdict)
    return {
        "quick": args.quick,
        "events": total,
        "event_types": dict(sorted(types.items())),
        "repeats": repeats,
        "pg_repeats": pg_repeats,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "publish_chunk": PUBLISH_CHUNK,
        "summary": summaries,
        "runs": runs,
        "profile": profile,
        "targets_met": verdict,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="3,000 events, one run each (a smoke run)")
    parser.add_argument("--events", type=int, default=20_000, help="events per run (default 20,000)")
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs per configuration; the median is reported"
    )
    parser.add_argument(
        "--profile", action="store_true", help="also profile the consumer (SQLite, batch 128)"
    )
    parser.add_argument("--profile-events", type=int, default=3000, help="events in the profiled run")
    parser.add_argument(
        "--pg-repeats", type=int, default=0, help="runs per PostgreSQL setting (default: as --repeats)"
    )
    parser.add_argument("--skip-postgres", action="store_true")
    args = parser.parse_args()
    result = asyncio.run(bench(args))
    path = write_results("ingest", result)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
