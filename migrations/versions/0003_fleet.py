"""The fleet: host labels, what placement reads kept on the host row, fleet-wide place keys, fleet_status.

- `hosts.labels` (JSON; JSONB on PostgreSQL): the host's labels from host.capacity or `ledger host refresh`.
- `hosts.limit_*` (each resource's effective limit) and `hosts.capacity_cpu/network/disk_io` (what default
  bandwidths are shares of): copies of the capacities table's, written with it; `hosts.avail_*`: what is
  left of each limit, written with the totals. A fleet search reads one row a host and compares columns.
- `placements`: a `place` idempotency key and the host and reservation it got, unique across the fleet.
- The reporting views, version 3: `fleet_status`.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03 19:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from ledger.store.views import available_sql, views_v2, views_v3

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_LIMITS = ("cpu", "memory", "disk", "network", "disk_io")
_CAPACITIES = ("cpu", "network", "disk_io")
# the host row's running totals each resource's allocated amount adds up (as of this revision)
_ALLOCATED = {
    "cpu": "alloc_cpu",
    "memory": "alloc_memory",
    "disk": "images_bytes + oci_cache_bytes + volumes_bytes + overlays_bytes",
    "network": "alloc_network",
    "disk_io": "alloc_disk_io",
}


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    for name, _ in reversed(views_v2(dialect)):  # SQLite's batch table rebuilds fail under a view
        op.execute(f"DROP VIEW IF EXISTS {name}")
    labels_type = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("labels", labels_type, nullable=False, server_default="{}"))
        for resource in _LIMITS:
            batch_op.add_column(
                sa.Column(f"limit_{resource}", sa.BigInteger(), nullable=False, server_default="0")
            )
        for resource in _CAPACITIES:
            batch_op.add_column(
                sa.Column(f"capacity_{resource}", sa.BigInteger(), nullable=False, server_default="0")
            )
        for resource in _LIMITS:
            batch_op.add_column(
                sa.Column(f"avail_{resource}", sa.BigInteger(), nullable=False, server_default="0")
            )
    for resource in _LIMITS:
        op.execute(
            f"UPDATE hosts SET limit_{resource} = COALESCE((SELECT c.effective_limit FROM capacities c "
            f"WHERE c.host_id = hosts.host_id AND c.resource = '{resource}'), 0)"
        )
    for resource in _CAPACITIES:
        op.execute(
            f"UPDATE hosts SET capacity_{resource} = COALESCE((SELECT c.capacity FROM capacities c "
            f"WHERE c.host_id = hosts.host_id AND c.resource = '{resource}'), 0)"
        )
    for resource, allocated in _ALLOCATED.items():
        left = available_sql(f"limit_{resource}", allocated, f"pend_{resource}")
        op.execute(f"UPDATE hosts SET avail_{resource} = {left}")
    added = (
        "labels",
        *(f"limit_{r}" for r in _LIMITS),
        *(f"capacity_{r}" for r in _CAPACITIES),
        *(f"avail_{r}" for r in _LIMITS),
    )
    with op.batch_alter_table("hosts", schema=None) as batch_op:  # the model sets them in Python
        for column in added:
            batch_op.alter_column(column, server_default=None)
    op.create_table(
        "placements",
        sa.Column("idempotency_key", sa.String(length=255), nullable=False),
        sa.Column("host_id", sa.String(length=255), nullable=False),
        sa.Column("reservation_id", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["host_id"], ["hosts.host_id"], name=op.f("fk_placements_host_id_hosts"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("idempotency_key", name=op.f("pk_placements")),
    )
    with op.batch_alter_table("placements", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_placements_host_id"), ["host_id"], unique=False)
    for name, select in views_v3(dialect):
        op.execute(f"CREATE VIEW {name} AS {select}")


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    for name, _ in reversed(views_v3(dialect)):
        op.execute(f"DROP VIEW IF EXISTS {name}")
    with op.batch_alter_table("placements", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_placements_host_id"))
    op.drop_table("placements")
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        for resource in reversed(_LIMITS):
            batch_op.drop_column(f"avail_{resource}")
        for resource in reversed(_CAPACITIES):
            batch_op.drop_column(f"capacity_{resource}")
        for resource in reversed(_LIMITS):
            batch_op.drop_column(f"limit_{resource}")
        batch_op.drop_column("labels")
    for name, select in views_v2(dialect):
        op.execute(f"CREATE VIEW {name} AS {select}")
