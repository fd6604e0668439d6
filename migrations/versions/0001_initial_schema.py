"""Initial schema: hosts, capacities, instances, volumes, images, OCI cache, reservations,
the allocation log, processed events, dead letters, and the reporting views.

Revision ID: 0001
Revises:
Create Date: 2026-11-26 02:25:47.464295
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from ledger.store.views import views_v1

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "consumer_positions",
        sa.Column("consumer", sa.String(length=255), nullable=False),
        sa.Column("stream_seq", sa.BigInteger(), nullable=False),
        sa.Column("handled_above", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("consumer", name=op.f("pk_consumer_positions")),
    )
    op.create_table(
        "dead_letters",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("host_id", sa.String(length=255), nullable=True),
        sa.Column("stream_seq", sa.BigInteger(), nullable=True),
        sa.Column("subject", sa.String(length=512), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("replayed_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dead_letters")),
    )
    with op.batch_alter_table("dead_letters", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_dead_letters_host_id"), ["host_id"], unique=False)

    op.create_table(
        "hosts",
        sa.Column("host_id", sa.String(length=255), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("capacity_version", sa.Integer(), nullable=False),
        sa.Column("reported_version", sa.BigInteger(), nullable=True),
        sa.Column("next_expiry", sa.DateTime(), nullable=True),
        sa.Column("gpu_status", sa.Text(), nullable=True),
        sa.Column("gpu_total", sa.Integer(), nullable=False),
        sa.Column("gpu_busy", sa.Integer(), nullable=False),
        sa.Column("alloc_cpu", sa.BigInteger(), nullable=False),
        sa.Column("alloc_memory", sa.BigInteger(), nullable=False),
        sa.Column("alloc_network", sa.BigInteger(), nullable=False),
        sa.Column("alloc_disk_io", sa.BigInteger(), nullable=False),
        sa.Column("alloc_gpu", sa.Integer(), nullable=False),
        sa.Column("images_bytes", sa.BigInteger(), nullable=False),
        sa.Column("oci_cache_bytes", sa.BigInteger(), nullable=False),
        sa.Column("volumes_bytes", sa.BigInteger(), nullable=False),
        sa.Column("overlays_bytes", sa.BigInteger(), nullable=False),
        sa.Column("pend_cpu", sa.BigInteger(), nullable=False),
        sa.Column("pend_memory", sa.BigInteger(), nullable=False),
        sa.Column("pend_disk", sa.BigInteger(), nullable=False),
        sa.Column("pend_network", sa.BigInteger(), nullable=False),
        sa.Column("pend_disk_io", sa.BigInteger(), nullable=False),
        sa.Column("pend_gpu", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("host_id", name=op.f("pk_hosts")),
    )
    op.create_table(
        "processed_events",
        sa.Column("event_id", sa.String(length=255), nullable=False),
        sa.Column("host_id", sa.String(length=255), nullable=False),
        sa.Column("stream_seq", sa.BigInteger(), nullable=True),
        sa.Column("event_type", sa.String(length=64), nullable=False),
        sa.Column("entity_id", sa.String(length=255), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("processed_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_processed_events")),
    )
    with op.batch_alter_table("processed_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_processed_events_host_id"), ["host_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_processed_events_stream_seq"), ["stream_seq"], unique=False)

    op.create_table(
        "allocation_log",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("host_id", sa.String(length=255), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("entity_kind", sa.String(length=16), nullable=False),
        sa.Column("entity_id", sa.String(length=255), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("bucket", sa.String(length=16), nullable=False),
        sa.Column("cause", sa.String(length=255), nullable=False),
        sa.Column("cpu", sa.BigInteger(), nullable=False),
        sa.Column("memory_bytes", sa.BigInteger(), nullable=False),
        sa.Column("disk_bytes", sa.BigInteger(), nullable=False),
        sa.Column("network_bps", sa.BigInteger(), nullable=False),
        sa.Column("disk_io_bps", sa.BigInteger(), nullable=False),
        sa.Column("gpu", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["host_id"], ["hosts.host_id"], name=op.f("fk_allocation_log_host_id_hosts"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_allocation_log")),
    )
    with op.batch_alter_table("allocation_log", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_allocation_log_host_id"), ["host_id"], unique=False)

    op.create_table(
        "capacities",
        sa.Column("host_id", sa.String(length=255), nullable=False),
        sa.Column("resource", sa.String(length=16), nullable=False),
        sa.Column("capacity", sa.BigInteger(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("hint", sa.Text(), nullable=True),
        sa.Column("oversub_ratio", sa.Float(), nullable=False),
        sa.Column("effective_limit", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["host_id"], ["hosts.host_id"], name=op.f("fk_capacities_host_id_hosts"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("host_id", "resource", name=op.f("pk_capacities")),
    )
    op.create_table(
        "images",
        sa.Column("host_id", sa.String(length=255), nullable=False),
        sa.Column("image_id", sa.String(length=255), nullable=False),
        sa.Column("name", sa.String(length=512), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["host_id"], ["hosts.host_id"], name=op.f("fk_images_host_id_hosts"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("host_id", "image_id", name=op.f("pk_images")),
    )
    op.create_table(
        "instances",
        sa.Column("host_id", sa.String(length=255), nullable=False),
        sa.Column("instance_id", sa.String(length=255), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("vcpus", sa.Integer(), nullable=False),
        sa.Column("memory_bytes", sa.BigInteger(), nullable=False),
        sa.Column("overlay_bytes", sa.BigInteger(), nullable=False),
        sa.Column("volume_overlay_bytes", sa.BigInteger(), nullable=False),
        sa.Column("volume_bytes", sa.BigInteger(), nullable=False),
        sa.Column("network_download_bps", sa.BigInteger(), nullable=False),
        sa.Column("network_upload_bps", sa.BigInteger(), nullable=False),
        sa.Column("disk_io_bps", sa.BigInteger(), nullable=False),
        sa.Column("gpu", sa.String(length=255), nullable=True),
        sa.Column("reservation_id", sa.String(length=64), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["host_id"], ["hosts.host_id"], name=op.f("fk_instances_host_id_hosts"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("host_id", "instance_id", name=op.f("pk_instances")),
    )
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_instances_host_id_active"), ["host_id", "active"], unique=False)

    op.create_table(
        "oci_cache",
        sa.Column("host_id", sa.String(length=255), nullable=False),
        sa.Column("total_bytes", sa.BigInteger(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["host_id"], ["hosts.host_id"], name=op.f("fk_oci_cache_host_id_hosts"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("host_id", name=op.f("pk_oci_cache")),
    )
    op.create_table(
        "reservations",
        sa.Column("reservation_id", sa.String(length=64), nullable=False),
        sa.Column("host_id", sa.String(length=255), nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("vcpus", sa.Integer(), nullable=False),
        sa.Column("memory_bytes", sa.BigInteger(), nullable=False),
        sa.Column("disk_bytes", sa.BigInteger(), nullable=False),
        sa.Column("network_download_bps", sa.BigInteger(), nullable=False),
        sa.Column("network_upload_bps", sa.BigInteger(), nullable=False),
        sa.Column("disk_io_bps", sa.BigInteger(), nullable=False),
        sa.Column("gpu", sa.Integer(), nullable=False),
        sa.Column("gpu_profile", sa.String(length=255), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.Column("ended_at", sa.DateTime(), nullable=True),
        sa.Column("instance_id", sa.String(length=255), nullable=True),
        sa.ForeignKeyConstraint(
            ["host_id"], ["hosts.host_id"], name=op.f("fk_reservations_host_id_hosts"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("reservation_id", name=op.f("pk_reservations")),
        sa.UniqueConstraint(
            "host_id", "idempotency_key", name=op.f("uq_reservations_host_id_idempotency_key")
        ),
    )
    with op.batch_alter_table("reservations", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_reservations_host_id_status_expires_at"),
            ["host_id", "status", "expires_at"],
            unique=False,
        )

    op.create_table(
        "volumes",
        sa.Column("host_id", sa.String(length=255), nullable=False),
        sa.Column("volume_id", sa.String(length=255), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("attached_to", sa.String(length=255), nullable=True),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["host_id"], ["hosts.host_id"], name=op.f("fk_volumes_host_id_hosts"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("host_id", "volume_id", name=op.f("pk_volumes")),
    )

    for name, select in views_v1(op.get_bind().dialect.name):
        op.execute(f"CREATE VIEW {name} AS {select}")


def downgrade() -> None:
    for name, _ in reversed(views_v1(op.get_bind().dialect.name)):
        op.execute(f"DROP VIEW IF EXISTS {name}")
    op.drop_table("volumes")
    with op.batch_alter_table("reservations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_reservations_host_id_status_expires_at"))

    op.drop_table("reservations")
    op.drop_table("oci_cache")
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_instances_host_id_active"))

    op.drop_table("instances")
    op.drop_table("images")
    op.drop_table("capacities")
    with op.batch_alter_table("allocation_log", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_allocation_log_host_id"))

    op.drop_table("allocation_log")
    with op.batch_alter_table("processed_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_processed_events_stream_seq"))
        batch_op.drop_index(batch_op.f("ix_processed_events_host_id"))

    op.drop_table("processed_events")
    op.drop_table("hosts")
    with op.batch_alter_table("dead_letters", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_dead_letters_host_id"))

    op.drop_table("dead_letters")
    op.drop_table("consumer_positions")
