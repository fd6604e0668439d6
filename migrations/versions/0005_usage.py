"""Usage: what VMs really use, sampled on each host, beside what they were promised.

- `usage_latest`: the newest report on each instance; `usage_samples`: every sample of the hours not yet
  rolled up for good; `usage_hourly` and `host_usage_hourly`: p50, p95 and max of each measure per hour.
- The reporting views, version 4: `instance_utilization`, `host_utilization`.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 22:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from ledger.store.models import UTCDateTime
from ledger.store.views import views_v4

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# frozen as of this revision (core.usage.MEASURES may grow; a later revision adds its columns)
_MEASURES = (
    "cpu_vcpus",
    "memory_rss_bytes",
    "disk_read_bps",
    "disk_write_bps",
    "network_rx_bps",
    "network_tx_bps",
    "network_bps",
    "disk_io_bps",
)
_NEW_VIEWS = ("instance_utilization", "host_utilization")


def _host() -> sa.Column[str]:
    return sa.Column(
        "host_id",
        sa.String(length=255),
        sa.ForeignKey("hosts.host_id", name=None, ondelete="CASCADE"),
        primary_key=True,
    )


def _summaries() -> list[sa.Column[float]]:
    stats = ("p50", "p95", "max")
    return [sa.Column(f"{m}_{s}", sa.Float(), nullable=True) for m in _MEASURES for s in stats]


def upgrade() -> None:
    op.create_table(
        "usage_latest",
        _host(),
        sa.Column("instance_id", sa.String(length=255), primary_key=True),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("unmeasured_reason", sa.Text(), nullable=True),
        sa.Column("cpu_vcpus", sa.Float(), nullable=True),
        sa.Column("cpu_seconds_total", sa.Float(), nullable=True),
        sa.Column("memory_rss_bytes", sa.BigInteger(), nullable=True),
        sa.Column("memory_pss_bytes", sa.BigInteger(), nullable=True),
        sa.Column("memory_uss_bytes", sa.BigInteger(), nullable=True),
        sa.Column("disk_read_bps", sa.Float(), nullable=True),
        sa.Column("disk_write_bps", sa.Float(), nullable=True),
        sa.Column("disk_read_bytes_total", sa.BigInteger(), nullable=True),
        sa.Column("disk_write_bytes_total", sa.BigInteger(), nullable=True),
        sa.Column("network_rx_bps", sa.Float(), nullable=True),
        sa.Column("network_tx_bps", sa.Float(), nullable=True),
        sa.Column("network_rx_bytes_total", sa.BigInteger(), nullable=True),
        sa.Column("network_tx_bytes_total", sa.BigInteger(), nullable=True),
    )
    op.create_table(
        "usage_samples",
        _host(),
        sa.Column("instance_id", sa.String(length=255), primary_key=True),
        sa.Column("at", UTCDateTime(), primary_key=True),
        *(sa.Column(m, sa.Float(), nullable=True) for m in _MEASURES),
    )
    op.create_table(
        "usage_hourly",
        _host(),
        sa.Column("instance_id", sa.String(length=255), primary_key=True),
        sa.Column("hour", UTCDateTime(), primary_key=True),
        sa.Column("samples", sa.Integer(), nullable=False),
        *_summaries(),
    )
    op.create_index("ix_usage_hourly_hour", "usage_hourly", ["hour"])
    op.create_table(
        "host_usage_hourly",
        _host(),
        sa.Column("hour", UTCDateTime(), primary_key=True),
        sa.Column("samples", sa.Integer(), nullable=False),
        *_summaries(),
    )
    op.create_index("ix_host_usage_hourly_hour", "host_usage_hourly", ["hour"])
    for name, select in views_v4(op.get_bind().dialect.name):
        if name in _NEW_VIEWS:
            op.execute(f"CREATE VIEW {name} AS {select}")


def downgrade() -> None:
    for name in reversed(_NEW_VIEWS):
        op.execute(f"DROP VIEW IF EXISTS {name}")
    op.drop_index("ix_host_usage_hourly_hour", table_name="host_usage_hourly")
    op.drop_table("host_usage_hourly")
    op.drop_index("ix_usage_hourly_hour", table_name="usage_hourly")
    op.drop_table("usage_hourly")
    op.drop_table("usage_samples")
    op.drop_table("usage_latest")
