"""Charges stored with each row, and a revision per host row.

- `instances.network_bps`, `reservations.network_bps`: what the row takes of the uplink (the larger of its
  two directions), `instances.gpu_slots`: the GPU slots an instance holds. Computed once, in
  `ledger.core`, when the row is written; the views add them up instead of restating the rules
  (an instance with `"gpu": ""` holds no slot, in the totals and the views alike).
- `reservations.defaulted`, `instances.defaulted`: the bandwidths a validate or an instance record left
  unstated and was charged the default for (an instance's are charged again when its host's capacities
  change).
- `hosts.revision`: bumped by every transaction that changes the host row (admission's one-round-trip
  strategy writes only onto the revision it read).
- The reporting views, version 2.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03 17:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from ledger.store.views import views_v1, views_v2

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# the existing rows' uplink charge, once (from now on core.capacity.link_share computes it)
_LARGER = (
    "CASE WHEN network_download_bps > network_upload_bps "
    "THEN network_download_bps ELSE network_upload_bps END"
)


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    for name, _ in reversed(views_v1(dialect)):  # SQLite's batch table rebuilds fail under a view
        op.execute(f"DROP VIEW IF EXISTS {name}")
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("revision", sa.BigInteger(), nullable=False, server_default="0"))
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.add_column(sa.Column("network_bps", sa.BigInteger(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("gpu_slots", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("defaulted", sa.String(length=64), nullable=False, server_default=""))
    with op.batch_alter_table("reservations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("network_bps", sa.BigInteger(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("defaulted", sa.String(length=64), nullable=False, server_default=""))
    op.execute(f"UPDATE instances SET network_bps = {_LARGER}")
    op.execute("UPDATE instances SET gpu_slots = CASE WHEN gpu IS NOT NULL AND gpu <> '' THEN 1 ELSE 0 END")
    op.execute("UPDATE instances SET gpu = NULL WHERE gpu = ''")
    op.execute(f"UPDATE reservations SET network_bps = {_LARGER}")
    # The model sets these in Python: drop the server defaults that only served the existing rows.
    for table, columns in (
        ("hosts", ("revision",)),
        ("instances", ("network_bps", "gpu_slots", "defaulted")),
        ("reservations", ("network_bps", "defaulted")),
    ):
        with op.batch_alter_table(table, schema=None) as batch_op:
            for column in columns:
                batch_op.alter_column(column, server_default=None)
    for name, select in views_v2(dialect):
        op.execute(f"CREATE VIEW {name} AS {select}")


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    for name, _ in reversed(views_v2(dialect)):
        op.execute(f"DROP VIEW IF EXISTS {name}")
    with op.batch_alter_table("reservations", schema=None) as batch_op:
        batch_op.drop_column("defaulted")
        batch_op.drop_column("network_bps")
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.drop_column("defaulted")
        batch_op.drop_column("gpu_slots")
        batch_op.drop_column("network_bps")
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.drop_column("revision")
    for name, select in views_v1(dialect):
        op.execute(f"CREATE VIEW {name} AS {select}")
