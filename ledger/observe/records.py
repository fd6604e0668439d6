"""Counts of the ledger's records that an operator watches: dead letters waiting for a look, reservations held
and reservations that ran out. They are counted every few seconds by `ledger serve` (see refresh.py), not at
scrape time, and each count runs on an index per host (or on the dead letters, which retention bounds)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Connection, ScalarSelect, func, select

from ledger.core.results import EXPIRED, HELD
from ledger.store.journal import dead_letters
from ledger.store.sql import hosts, reservations

UNKNOWN_HOST = ""  # a dead letter whose subject named no host


def _per_host(status: str) -> ScalarSelect[int]:
    """Reservations of the outer host in `status`: a range of the (host_id, status, expires_at) index."""
    return (
        select(func.count())
        .where(reservations.c.host_id == hosts.c.host_id, reservations.c.status == status)
        .scalar_subquery()
    )


RESERVATIONS = select(hosts.c.host_id, _per_host(HELD), _per_host(EXPIRED))
DEAD_LETTERS = (
    select(dead_letters.c.host_id, func.count())
    .where(dead_letters.c.replayed_at.is_(None))
    .group_by(dead_letters.c.host_id)
)


@dataclass(frozen=True, slots=True)
class RecordCounts:
    """Per host: dead letters not replayed, reservations held, reservations expired (kept until retention
    removes them)."""

    dead_letters: Mapping[str, int] = field(default_factory=dict)
    held: Mapping[str, int] = field(default_factory=dict)
    expired: Mapping[str, int] = field(default_factory=dict)


def count_records(conn: Connection) -> RecordCounts:
    held: dict[str, int] = {}
    expired: dict[str, int] = {}
    for host_id, held_count, expired_count in conn.execute(RESERVATIONS):
        held[host_id], expired[host_id] = held_count, expired_count
    letters = {host_id or UNKNOWN_HOST: count for host_id, count in conn.execute(DEAD_LETTERS)}
    return RecordCounts(letters, held, expired)


class RecordsCollector(Collector):
    """`ledger_dead_letters`, `ledger_reservations_held` and `ledger_reservations_expired`, as last counted
    (no samples before the first count)."""

    def __init__(self) -> None:
        self.counts = RecordCounts()

    def describe(self) -> Iterable[Metric]:
        return self._families(RecordCounts())

    def collect(self) -> Iterable[Metric]:
        return self._families(self.counts)

    @staticmethod
    def _families(counts: RecordCounts) -> list[Metric]:
        letters = GaugeMetricFamily(
            "ledger_dead_letters",
            "Events dead-lettered and not replayed, by host (empty: the subject named none); "
            "retention removes old ones",
            labels=["host"],
        )
        held = GaugeMetricFamily(
            "ledger_reservations_held",
            "Reservations held (including any past their TTL not swept yet)",
            labels=["host"],
        )
        expired = GaugeMetricFamily(
            "ledger_reservations_expired",
            "Reservations that ran out before an instance consumed them or they were released, "
            "kept until retention removes them",
            labels=["host"],
        )
        for family, values in (
            (letters, counts.dead_letters),
            (held, counts.held),
            (expired, counts.expired),
        ):
            for host_id, value in sorted(values.items()):
                family.add_metric([host_id], value)
        return [letters, held, expired]
