"""Usage in the database: the newest report on each instance, the raw samples of the last two hours, and
hourly p50/p95/max per instance and per host (kept LEDGER_RETENTION_USAGE_DAYS).

Nothing here touches a host's running totals or takes its lock: usage is not accounting. Reports are
checked against the ledger (an unknown host or instance, a late or impossible figure is dropped and counted
by reason) and written in one short transaction a batch.

Hours: samples are accepted for the current and the previous hour only. Each `roll_up` recomputes both
hours' summaries from their raw samples, and deletes the raw samples of any older hour after summarising
it one last time, so the raw table holds at most about two hours.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Table, delete, func, select
from sqlalchemy.dialects import postgresql, sqlite

from ledger.core.advice import Evidence
from ledger.core.resources import ResourceType
from ledger.core.usage import (
    MEASURES,
    RESOURCE_MEASURES,
    InstanceUsage,
    InvalidUsage,
    UsageReport,
    check_instance,
    summarize,
)
from ledger.store.database import Database
from ledger.store.sql import hosts, instances
from ledger.store.usage_tables import (
    SUMMARY_STATS,
    host_usage_hourly,
    usage_hourly,
    usage_latest,
    usage_samples,
)

HOUR = timedelta(hours=1)
FUTURE_SLACK = timedelta(minutes=5)  # a sampler's clock a little ahead of the ledger's is fine; more is not
_LATEST_FIGURES = tuple(c.name for c in usage_latest.c if c.name not in {"host_id", "instance_id", "at"})
# what `retention_usage_days` prunes, each by the time it ages by (samples go once summarised, `roll_up`)
_AGEING = (
    (usage_hourly, usage_hourly.c.hour),
    (host_usage_hourly, host_usage_hourly.c.hour),
    (usage_latest, usage_latest.c.at),
)
USAGE_TABLES = tuple(table.name for table, _ in _AGEING)


def hour_of(at: datetime) -> datetime:
    return at.replace(minute=0, second=0, microsecond=0)


@dataclass(slots=True)
class Ingested:
    """What a batch of reports came to: instances stored (measured or not), and what was dropped, why."""

    measured: int = 0
    unmeasured: int = 0
    dropped: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True, slots=True)
class UsedFigures:
    """A host's use of one resource: the newest reports summed, and the highest hourly p95 and max kept."""

    latest: float | None
    p95: float | None
    max: float | None
    hours: int


class UsageStore:
    """Usage reports in, summaries out (see the module docstring)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._insert = postgresql.insert if db.engine.dialect.name == "postgresql" else sqlite.insert

    # ---- writing ---------------------------------------------------------------------------------------

    @contextmanager
    def _writing(self) -> Iterator[Connection]:
        """A write transaction's SQLAlchemy connection (not the DBAPI cursor admission uses)."""
        with self.db.transaction() as tx:
            assert tx.conn is not None, "Database.transaction runs on a SQLAlchemy connection"
            yield tx.conn

    def ingest(self, reports: Sequence[UsageReport]) -> Ingested:
        """Store what can be used of `reports` in one transaction."""
        result = Ingested()
        if not reports:
            return result
        now = self.db.clock()
        oldest = hour_of(now) - HOUR
        host_ids = {report.host for report in reports}
        with self._writing() as conn:
            cores: dict[str, int] = {
                host_id: cpu
                for host_id, cpu in conn.execute(
                    select(hosts.c.host_id, hosts.c.capacity_cpu).where(hosts.c.host_id.in_(host_ids))
                )
            }
            known: set[tuple[str, str]] = {
                (host_id, instance_id)
                for host_id, instance_id in conn.execute(
                    select(instances.c.host_id, instances.c.instance_id).where(
                        instances.c.host_id.in_(host_ids), ~instances.c.deleted
                    )
                )
            }
            latest: list[dict[str, Any]] = []
            samples: list[dict[str, Any]] = []
            for report in reports:
                if report.host not in cores:
                    result.dropped["unknown_host"] += 1
                    continue
                if report.at < oldest:
                    result.dropped["late"] += 1
                    continue
                if report.at > now + FUTURE_SLACK:
                    result.dropped["from_the_future"] += 1
                    continue
                self._rows(report, cores[report.host], known, result, latest, samples)
            if latest:
                conn.execute(self._upsert_latest(), latest)
            if samples:
                conn.execute(
                    self._insert(usage_samples).on_conflict_do_nothing(
                        index_elements=["host_id", "instance_id", "at"]
                    ),
                    samples,
                )
        return result

    def _rows(
        self,
        report: UsageReport,
        cores: int,
        known: set[tuple[str, str]],
        result: Ingested,
        latest: list[dict[str, Any]],
        samples: list[dict[str, Any]],
    ) -> None:
        base = {"host_id": report.host, "at": report.at}
        for usage in report.instances:
            if (report.host, usage.id) not in known:
                result.dropped["unknown_instance"] += 1
                continue
            try:
                check_instance(usage, cores)
            except InvalidUsage as problem:
                result.dropped[problem.reason] += 1
                continue
            latest.append({**base, **_latest_figures(usage), "instance_id": usage.id})
            samples.append({**base, "instance_id": usage.id, **usage.measures()})
            result.measured += 1
        for missing in report.unmeasured:
            if (report.host, missing.id) not in known:
                result.dropped["unknown_instance"] += 1
                continue
            empty = dict.fromkeys(_LATEST_FIGURES)
            latest.append({**base, **empty, "unmeasured_reason": missing.reason, "instance_id": missing.id})
            result.unmeasured += 1

    def _upsert_latest(self) -> Any:
        statement = self._insert(usage_latest)
        return statement.on_conflict_do_update(
            index_elements=["host_id", "instance_id"],
            set_={name: statement.excluded[name] for name in ("at", *_LATEST_FIGURES)},
            where=usage_latest.c.at < statement.excluded.at,  # a late report never hides a newer one
        )

    def roll_up(self) -> int:
        """Summarise every hour that has raw samples (see the module docstring); the summary rows written."""
        now = self.db.clock()
        with self.db.read() as conn:
            rows = conn.execute(
                select(usage_samples).order_by(usage_samples.c.host_id, usage_samples.c.at)
            ).all()
        per_instance: dict[tuple[str, str, datetime], list[Any]] = defaultdict(list)
        per_host_at: dict[tuple[str, datetime], dict[str, float]] = defaultdict(dict)
        for row in rows:
            per_instance[(row.host_id, row.instance_id, hour_of(row.at))].append(row)
            sums = per_host_at[(row.host_id, row.at)]
            for measure in MEASURES:
                value = getattr(row, measure)
                if value is not None:
                    sums[measure] = sums.get(measure, 0.0) + value
        per_host: dict[tuple[str, datetime], list[dict[str, float]]] = defaultdict(list)
        for (host_id, at), sums in per_host_at.items():
            per_host[(host_id, hour_of(at))].append(sums)

        instance_rows = [
            {"host_id": h, "instance_id": i, "hour": hour, **_summaries(r._mapping for r in series)}
            for (h, i, hour), series in per_instance.items()
        ]
        host_rows = [
            {"host_id": h, "hour": hour, **_summaries(series)} for (h, hour), series in per_host.items()
        ]
        with self._writing() as conn:
            if instance_rows:
                conn.execute(
                    self._upsert_summary(usage_hourly, ["host_id", "instance_id", "hour"]), instance_rows
                )
            if host_rows:
                conn.execute(self._upsert_summary(host_usage_hourly, ["host_id", "hour"]), host_rows)
            final = hour_of(now) - HOUR  # no sample before this hour is accepted any more
            conn.execute(delete(usage_samples).where(usage_samples.c.at < final))
        return len(instance_rows) + len(host_rows)

    def _upsert_summary(self, table: Table, keys: list[str]) -> Any:
        statement = self._insert(table)
        columns = [c.name for c in table.c if c.name not in keys]
        return statement.on_conflict_do_update(
            index_elements=keys, set_={name: statement.excluded[name] for name in columns}
        )

    def prune(self, days: float) -> int:
        """Delete summaries and newest reports older than `days` (0 keeps them forever); the rows deleted."""
        return sum(self.prune_tables(days).values())

    def prune_tables(self, days: float, *, dry_run: bool = False) -> dict[str, int]:
        """`prune`, per table (USAGE_TABLES); `dry_run` counts what would go and deletes nothing."""
        if days <= 0:
            return dict.fromkeys(USAGE_TABLES, 0)
        cutoff = self.db.clock() - timedelta(days=days)
        old = {table.name: (table, column < cutoff) for table, column in _AGEING}
        if dry_run:
            with self.db.read() as conn:
                return {
                    name: int(conn.execute(select(func.count()).select_from(table).where(where)).scalar_one())
                    for name, (table, where) in old.items()
                }
        with self._writing() as conn:
            return {
                name: conn.execute(delete(table).where(where)).rowcount or 0
                for name, (table, where) in old.items()
            }

    # ---- reading ---------------------------------------------------------------------------------------

    def latest(self, host_id: str) -> dict[str, dict[str, Any]]:
        """The newest report on each of the host's instances, by instance id."""
        with self.db.read() as conn:
            rows = conn.execute(select(usage_latest).where(usage_latest.c.host_id == host_id)).mappings()
            return {row["instance_id"]: dict(row) for row in rows}

    def evidence(self, host_id: str, window_days: float) -> dict[ResourceType, Evidence]:
        """Per resource, what the host's hourly summaries of the last `window_days` show (for advice)."""
        since = hour_of(self.db.clock()) - timedelta(days=window_days)
        with self.db.read() as conn:
            rows = conn.execute(
                select(host_usage_hourly).where(
                    host_usage_hourly.c.host_id == host_id, host_usage_hourly.c.hour >= since
                )
            ).all()
        found: dict[ResourceType, Evidence] = {}
        for resource in ResourceType:
            measure = RESOURCE_MEASURES.get(resource)
            hours = [row for row in rows if measure and getattr(row, f"{measure}_p95") is not None]
            if not measure or not hours:
                found[resource] = Evidence(None, 0, 0.0)
                continue
            span = max(row.hour for row in hours) + HOUR - min(row.hour for row in hours)
            found[resource] = Evidence(
                used_p95=max(getattr(row, f"{measure}_p95") for row in hours),
                samples=sum(row.samples for row in hours),
                days=span / timedelta(days=1),
            )
        return found

    def host_used(self, host_id: str) -> dict[ResourceType, UsedFigures]:
        """Per sampled resource: the host's newest reports summed, and the highest hourly p95 and max kept."""
        with self.db.read() as conn:
            return read_host_used(conn, host_id)


def _latest_figures(usage: InstanceUsage) -> dict[str, Any]:
    figures = usage.to_dict()
    return {name: figures.get(name) for name in _LATEST_FIGURES}


def _summaries(series: Iterable[Any]) -> dict[str, Any]:
    """p50, p95 and max of each measure over `series` (rows or dicts of measures); None where it has none."""
    values: dict[str, list[float]] = {measure: [] for measure in MEASURES}
    count = 0
    for sample in series:
        count += 1
        for measure in MEASURES:
            value = sample.get(measure)
            if value is not None:
                values[measure].append(float(value))
    row: dict[str, Any] = {"samples": count}
    for measure, found in values.items():
        summary = summarize(found) if found else None
        for stat in SUMMARY_STATS:
            row[f"{measure}_{stat}"] = getattr(summary, stat) if summary else None
    return row


def read_host_used(conn: Connection, host_id: str) -> dict[ResourceType, UsedFigures]:
    latest = conn.execute(select(usage_latest).where(usage_latest.c.host_id == host_id)).all()
    history = conn.execute(select(host_usage_hourly).where(host_usage_hourly.c.host_id == host_id)).all()
    reports = [usage for row in latest if (usage := usage_of(row)) is not None]
    used: dict[ResourceType, UsedFigures] = {}
    for resource, measure in RESOURCE_MEASURES.items():
        current = [value for usage in reports if (value := usage.measures()[measure]) is not None]
        p95s = [v for row in history if (v := getattr(row, f"{measure}_p95")) is not None]
        maxes = [v for row in history if (v := getattr(row, f"{measure}_max")) is not None]
        used[resource] = UsedFigures(
            latest=sum(current) if current else None,
            p95=max(p95s) if p95s else None,
            max=max(maxes) if maxes else None,
            hours=len(history),
        )
    return used


def usage_of(row: Any) -> InstanceUsage | None:
    """The report a usage_latest row keeps, or None if the instance was unmeasured."""
    if row.unmeasured_reason is not None:
        return None
    mapping = row._mapping
    return InstanceUsage(
        id=mapping["instance_id"],
        **{name: mapping[name] for name in _LATEST_FIGURES if name != "unmeasured_reason"},
    )
