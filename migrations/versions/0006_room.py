"""A host's room: `hosts.room`, core.placement.room of its `avail_*`, written with them, and on PostgreSQL
an index on it, so spread placement walks hosts from the most room down instead of scoring every host.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 14:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from ledger.core.placement import room

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_RESOURCES = ("cpu", "memory", "disk", "network", "disk_io")  # as of this revision
_BATCH = 1000


def upgrade() -> None:
    op.add_column("hosts", sa.Column("room", sa.Float(), nullable=False, server_default="1.0"))
    bind = op.get_bind()
    hosts = sa.table(
        "hosts",
        sa.column("host_id", sa.String()),
        sa.column("room", sa.Float()),
        *(sa.column(f"limit_{r}", sa.BigInteger()) for r in _RESOURCES),
        *(sa.column(f"avail_{r}", sa.BigInteger()) for r in _RESOURCES),
    )
    rows = bind.execute(
        sa.select(
            hosts.c.host_id,
            *(hosts.c[f"limit_{r}"] for r in _RESOURCES),
            *(hosts.c[f"avail_{r}"] for r in _RESOURCES),
        )
    ).all()
    n = len(_RESOURCES)
    update = hosts.update().where(hosts.c.host_id == sa.bindparam("id")).values(room=sa.bindparam("r"))
    values = [{"id": row[0], "r": room(row[1 : 1 + n], row[1 + n :])} for row in rows]
    for start in range(0, len(values), _BATCH):
        bind.execute(update, values[start : start + _BATCH])
    if bind.dialect.name == "postgresql":
        op.execute("CREATE INDEX ix_hosts_room ON hosts (room DESC, host_id)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP INDEX IF EXISTS ix_hosts_room")
    op.drop_column("hosts", "room")  # SQLite ≥ 3.35 drops it in place: the views on hosts stay
