"""Loads a big fleet into a migrated ledger database in seconds, not hours, for bench/fleet.py.

Going through the ledger's own paths (`register_host`, one `instance.created` event per instance) would take
hours at a million instances, so the rows are written in bulk: `COPY` on PostgreSQL, executemany of one
INSERT on SQLite. Nothing about them is made up by hand, though:
  * every instance row is what the apply path stores for that record (`entity_rows.values` of an
    `InstanceRecord`), and what it adds to its host's totals is `totals.instance_usage` of that row;
  * capacities and effective limits come from `core.capacity` (the default ratios), and each host's
    `avail_*` and `room` from `totals.derived`, the formulas admission and the views use;
  * an active instance that would take its host past any effective limit is stored as Stopped instead, so
    the fleet starts with no host over its limits (the full ones are full).
Hosts go in first (with zero totals: instances refer to them), then capacities, then the instances while
each host's totals add up in memory; then one UPDATE per host writes its totals, `avail_*` and `room`.
The audit view `ledger_drift` then proves the totals against the rows (`drift_check`).

The fleet: hosts in three classes (32/64/128 cores, 256 GiB/512 GiB/1 TiB, 4/8/16 TB, 25/25/100 Gbps,
4/8/16 GB/s of disk I/O; the default ratios), labelled with a `zone` (4) and a `rack` (100); the instances
spread evenly over them, 1–4 vCPUs with 1, 2 or 4 GiB per vCPU, stated bandwidths, about 8 % stopped or
paused by choice (plus those that did not fit).
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, bindparam, insert, text, update

from ledger.core import capacity as rules
from ledger.core.charges import DefaultBandwidth
from ledger.core.host import HostState, ResourceLimit
from ledger.core.records import InstanceRecord
from ledger.core.resources import RESOURCES, ResourceType, Source
from ledger.store.entity_rows import values
from ledger.store.sql import capacities, hosts, instances
from ledger.store.totals import (
    DERIVED_COLUMNS,
    LIMIT_COLUMNS,
    TOTAL_COLUMNS,
    allocated,
    derived,
    instance_usage,
)

GIB, GB = 2**30, 10**9
MBPS = 125_000  # one megabit per second, in bytes per second


@dataclass(frozen=True, slots=True)
class HostClass:
    name: str
    cpu: int
    memory: int
    disk: int
    network: int
    disk_io: int

    def capacities(self) -> dict[ResourceType, int]:
        return {
            ResourceType.CPU: self.cpu,
            ResourceType.MEMORY: self.memory,
            ResourceType.DISK: self.disk,
            ResourceType.NETWORK: self.network,
            ResourceType.DISK_IO: self.disk_io,
        }


HOST_CLASSES = (
    HostClass("small", 32, 256 * GIB, 4_000 * GB, 25_000 * MBPS, 4 * GB),
    HostClass("medium", 64, 512 * GIB, 8_000 * GB, 25_000 * MBPS, 8 * GB),
    HostClass("large", 128, 1024 * GIB, 16_000 * GB, 100_000 * MBPS, 16 * GB),
)
ZONES = 4
RACKS = 100
_CHUNK = 5_000  # rows per executemany on SQLite
_DEFAULTS = DefaultBandwidth()


@dataclass(frozen=True, slots=True)
class Loaded:
    """What `load_fleet` wrote, and how long it took."""

    hosts: int
    instances: int
    active: int
    stopped_to_fit: int  # active instances stored as Stopped because their host was full
    seconds: float
    method: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(slots=True)
class _Host:
    host_id: str
    klass: HostClass
    limits: tuple[int, ...]  # RESOURCES order
    state: HostState
    totals: dict[str, int] = dataclasses.field(default_factory=lambda: dict.fromkeys(TOTAL_COLUMNS, 0))


def host_name(prefix: str, index: int) -> str:
    return f"{prefix}-{index:05d}"


def load_fleet(
    engine: Engine, n_hosts: int, n_instances: int, *, prefix: str = "node", seed: int = 1
) -> Loaded:
    """Write `n_hosts` hosts and `n_instances` instances into a migrated database without these hosts."""
    started = time.perf_counter()
    fleet = [_host(prefix, index) for index in range(n_hosts)]
    postgres = engine.dialect.name == "postgresql"
    now = datetime.now(UTC)
    writer = _copy if postgres else _executemany
    writer(engine, hosts, [_host_row(h, now) for h in fleet], now)
    writer(engine, capacities, [row for h in fleet for row in _capacity_rows(h, now)], now)
    counts = {"active": 0, "stopped_to_fit": 0}
    writer(engine, instances, _instance_rows(fleet, n_instances, seed, counts), now)
    with engine.begin() as conn:
        conn.execute(
            update(hosts)
            .where(hosts.c.host_id == bindparam("b_host"))
            .values({c: bindparam(f"v_{c}") for c in (*TOTAL_COLUMNS, *DERIVED_COLUMNS)}),
            [
                {
                    "b_host": h.host_id,
                    **{f"v_{c}": h.totals[c] for c in TOTAL_COLUMNS},
                    **{
                        f"v_{c}": a for c, a in zip(DERIVED_COLUMNS, derived(h.totals, h.limits), strict=True)
                    },
                }
                for h in fleet
            ],
        )
    _settle(engine)
    return Loaded(
        n_hosts,
        n_instances,
        counts["active"],
        counts["stopped_to_fit"],
        round(time.perf_counter() - started, 1),
        "COPY (PostgreSQL)" if postgres else "executemany (SQLite)",
    )


def _host(prefix: str, index: int) -> _Host:
    klass = HOST_CLASSES[index % len(HOST_CLASSES)]
    found = klass.capacities()
    ratios = {r: rules.oversub_ratio(r, None) for r in RESOURCES}
    limits = tuple(rules.effective_limit(found[r], ratios[r]) for r in RESOURCES)
    state = HostState(
        host_name(prefix, index),
        tuple(
            ResourceLimit(found[r], limit, ratios[r], Source.CONFIGURED)
            for r, limit in zip(RESOURCES, limits, strict=True)
        ),
        (0,) * len(RESOURCES),
        (0,) * len(RESOURCES),
    )
    return _Host(host_name(prefix, index), klass, limits, state)


def _host_row(host: _Host, now: datetime) -> dict[str, Any]:
    index = int(host.host_id.rsplit("-", 1)[1])
    found = host.klass.capacities()
    return {
        "host_id": host.host_id,
        "created_at": now,
        "updated_at": now,
        "capacity_version": 1,
        "revision": 1,
        "reported_version": None,
        "next_expiry": None,
        "gpu_status": None,
        "labels": {"zone": f"z{index % ZONES}", "rack": f"r{index % RACKS:03d}"},
        **dict(zip(LIMIT_COLUMNS, host.limits, strict=True)),
        "capacity_cpu": found[ResourceType.CPU],
        "capacity_network": found[ResourceType.NETWORK],
        "capacity_disk_io": found[ResourceType.DISK_IO],
        **dict(zip(DERIVED_COLUMNS, derived(host.totals, host.limits), strict=True)),  # nothing allocated yet
        "gpu_total": 0,
        "gpu_busy": 0,
        **host.totals,
    }


def _capacity_rows(host: _Host, now: datetime) -> Iterator[dict[str, Any]]:
    for resource, limit in zip(RESOURCES, host.state.limits, strict=True):
        yield {
            "host_id": host.host_id,
            "resource": resource.value,
            "capacity": limit.capacity,
            "source": limit.source.value,
            "hint": None,
            "oversub_ratio": limit.ratio,
            "effective_limit": limit.effective_limit,
            "updated_at": now,
        }


def instance_record(rng: random.Random, instance_id: str, state: str = "Running") -> InstanceRecord:
    """A typical VM: 1–4 vCPUs, 1, 2 or 4 GiB per vCPU, an overlay, stated bandwidths."""
    vcpus = rng.choice((1, 1, 2, 2, 4))
    download = rng.choice((10, 50, 100, 200)) * MBPS
    return InstanceRecord(
        id=instance_id,
        state=state,
        name=instance_id,
        vcpus=vcpus,
        memory_bytes=vcpus * rng.choice((1, 2, 4)) * GIB,
        overlay_bytes=rng.choice((10, 20, 40)) * GB,
        network_download_bps=download,
        network_upload_bps=download // 2,
        disk_io_bps=rng.choice((20, 50, 100)) * 10**6,
    )


def _instance_rows(
    fleet: Sequence[_Host], n_instances: int, seed: int, counts: dict[str, int]
) -> Iterator[dict[str, Any]]:
    """Each host's share of the instances, as the apply path would store them; adds up the totals."""
    rng = random.Random(seed)
    per_host, extra = divmod(n_instances, len(fleet)) if fleet else (0, 0)
    for index, host in enumerate(fleet):
        for n in range(per_host + (index < extra)):
            roll = rng.random()
            state = "Stopped" if roll < 0.05 else "Paused" if roll < 0.08 else "Running"
            record = instance_record(rng, f"{host.host_id}-vm{n:05d}", state)
            row = {**values(record, host.state, _DEFAULTS), "deleted": False}
            usage = instance_usage(row)
            if usage:
                after = {c: host.totals[c] + usage.get(c, 0) for c in TOTAL_COLUMNS}
                if any(a > limit for a, limit in zip(allocated(after), host.limits, strict=True)):
                    counts["stopped_to_fit"] += 1
                    record = dataclasses.replace(record, state="Stopped")
                    row = {**values(record, host.state, _DEFAULTS), "deleted": False}
                else:
                    host.totals = after
                    counts["active"] += 1
            yield {"host_id": host.host_id, "instance_id": record.id, "version": 1, **row}


def _copy(engine: Engine, table: Any, rows: Any, now: datetime) -> None:
    """PostgreSQL: one COPY per table, on the engine's own psycopg connection."""
    from psycopg.types.json import Jsonb

    columns = [c.name for c in table.c]
    naive = now.astimezone(UTC).replace(tzinfo=None)  # UTCDateTime stores naive UTC
    times = {"created_at", "updated_at"}
    raw = engine.raw_connection()
    try:
        cursor = raw.driver_connection.cursor()  # type: ignore[union-attr]
        with cursor.copy(f"COPY {table.name} ({', '.join(columns)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(
                    [naive if c in times else Jsonb(row[c]) if c == "labels" else row.get(c) for c in columns]
                )
        raw.commit()
    finally:
        raw.close()


def _executemany(engine: Engine, table: Any, rows: Any, now: datetime) -> None:
    """SQLite: one INSERT, executed for chunks of rows (SQLAlchemy binds the column types)."""
    statement = insert(table)
    with engine.begin() as conn:
        chunk: list[dict[str, Any]] = []
        for row in rows:
            chunk.append(row if "updated_at" in row else {**row, "updated_at": now})
            if len(chunk) >= _CHUNK:
                conn.execute(statement, chunk)
                chunk = []
        if chunk:
            conn.execute(statement, chunk)


def _settle(engine: Engine) -> None:
    """What a database that grew slowly would have by now: statistics, and (PostgreSQL) a vacuumed heap
    (the totals UPDATE left a dead version of every host row, which autovacuum would clear)."""
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE"))
    else:
        with engine.begin() as conn:
            conn.execute(text("ANALYZE"))


@dataclass(frozen=True, slots=True)
class DriftCheck:
    """`SELECT * FROM ledger_drift`: how long it took, its rows, and how many show a difference."""

    seconds: float
    rows: int
    drifted: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def drift_check(engine: Engine) -> DriftCheck:
    with engine.connect() as conn:
        started = time.perf_counter()
        rows = conn.execute(text("SELECT * FROM ledger_drift")).all()
        elapsed = time.perf_counter() - started
    return DriftCheck(round(elapsed, 3), len(rows), sum(1 for r in rows if r.drift != 0))
