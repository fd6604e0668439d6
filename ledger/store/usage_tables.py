"""The usage tables: what VMs really use, beside what they were promised (see ledger.store.usage).

Lossy by design (a sampler's report that is late or impossible is dropped, see core.usage): none of these
rows is accounting, and none counts toward a host's totals. Core tables, since their columns are generated
from core.usage. They share the models' metadata; `ledger.store.schema` gathers the whole schema.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from sqlalchemy import BigInteger, Column, Float, ForeignKey, Index, Integer, String, Table, Text

from ledger.core.usage import MEASURES, InstanceUsage
from ledger.store.models import Base, UTCDateTime


def _host_column() -> Column[str]:
    return Column("host_id", String(255), ForeignKey("hosts.host_id", ondelete="CASCADE"), primary_key=True)


def _figure_columns() -> list[Column[Any]]:
    """A report's own figures: a column per field of core.usage.InstanceUsage but its id."""
    return [
        Column(f.name, Float if "float" in str(f.type) else BigInteger)
        for f in fields(InstanceUsage)
        if f.name != "id"
    ]


def _summary_columns() -> list[Column[Any]]:
    return [Column(f"{measure}_{stat}", Float) for measure in MEASURES for stat in SUMMARY_STATS]


SUMMARY_STATS = ("p50", "p95", "max")

usage_latest = Table(
    "usage_latest",
    Base.metadata,
    _host_column(),
    Column("instance_id", String(255), primary_key=True),
    Column("at", UTCDateTime(), nullable=False),
    Column("unmeasured_reason", Text),  # set when the sampler could not measure it (the figures are null)
    *_figure_columns(),
)
"""The newest report on each instance (measured or not)."""

usage_samples = Table(
    "usage_samples",
    Base.metadata,
    _host_column(),
    Column("instance_id", String(255), primary_key=True),
    Column("at", UTCDateTime(), primary_key=True),
    *(Column(measure, Float) for measure in MEASURES),
)
"""Every sample of the hours not yet rolled up for good (the current and the previous hour)."""

usage_hourly = Table(
    "usage_hourly",
    Base.metadata,
    _host_column(),
    Column("instance_id", String(255), primary_key=True),
    Column("hour", UTCDateTime(), primary_key=True),  # the hour's start
    Column("samples", Integer, nullable=False),
    *_summary_columns(),
    Index(None, "hour"),
)
"""Per instance and hour: p50, p95 and max of each measure."""

host_usage_hourly = Table(
    "host_usage_hourly",
    Base.metadata,
    _host_column(),
    Column("hour", UTCDateTime(), primary_key=True),
    Column("samples", Integer, nullable=False),
    *_summary_columns(),
    Index(None, "hour"),
)
"""Per host and hour: p50, p95 and max of each measure summed over the host's instances at each sample."""
