"""The seed's InstanceUtilizationInfo: each instance's hypervisor process and TAP device.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 21:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from ledger.store.views import views_v3

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    for name, _ in reversed(views_v3(dialect)):  # SQLite's batch table rebuilds fail under a view
        op.execute(f"DROP VIEW IF EXISTS {name}")
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.add_column(sa.Column("hypervisor_pid", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("tap_device", sa.String(length=15), nullable=True))
    for name, select in views_v3(dialect):
        op.execute(f"CREATE VIEW {name} AS {select}")


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    for name, _ in reversed(views_v3(dialect)):
        op.execute(f"DROP VIEW IF EXISTS {name}")
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.drop_column("tap_device")
        batch_op.drop_column("hypervisor_pid")
    for name, select in views_v3(dialect):
        op.execute(f"CREATE VIEW {name} AS {select}")
