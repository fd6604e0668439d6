"""The schema as typed SQLAlchemy models; Alembic migrations in migrations/ must match it (`ledger db check`).

Every table carries `host_id`: one ledger database can serve a fleet. The `hosts` row is the lock every write
that changes a host's usage takes, and it holds the host's running totals, so admission costs the same with
ten instances or ten thousand. The totals are a cache: the `ledger_drift` view recomputes them from the rows.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Stores naive UTC (sortable text on SQLite, `timestamp` on PostgreSQL); returns aware UTC."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


Amount = BigInteger


class Host(Base):
    """A host, its GPU inventory, and its running totals (allocated by active entities, pending in holds)."""

    __tablename__ = "hosts"

    host_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # Bumped whenever capacities or ratios change, so processes may cache them between transactions.
    capacity_version: Mapped[int] = mapped_column(Integer, default=0)
    # Bumped by every transaction that changes the row: a process that read it at revision n knows its
    # totals are still the ones it read while the revision is still n (see store/admission.py).
    revision: Mapped[int] = mapped_column(BigInteger, default=0)
    # The version of the last host.capacity event applied (None when registered locally).
    reported_version: Mapped[int | None] = mapped_column(BigInteger)
    # No held reservation expires before this (a lower bound): admission skips the expiry sweep until then.
    next_expiry: Mapped[datetime | None] = mapped_column(UTCDateTime())
    gpu_status: Mapped[str | None] = mapped_column(Text)  # discovery's GPUStatus as JSON
    # the host's labels ({"zone": "a", ...}), from host.capacity or `ledger host refresh`
    labels: Mapped[dict[str, str]] = mapped_column(JSON().with_variant(JSONB(), "postgresql"), default=dict)
    # what placement reads of the capacities table, kept on the row so a fleet search reads one row a host:
    # each resource's effective limit, and the raw capacities default bandwidths are shares of
    limit_cpu: Mapped[int] = mapped_column(Amount, default=0)
    limit_memory: Mapped[int] = mapped_column(Amount, default=0)
    limit_disk: Mapped[int] = mapped_column(Amount, default=0)
    limit_network: Mapped[int] = mapped_column(Amount, default=0)
    limit_disk_io: Mapped[int] = mapped_column(Amount, default=0)
    capacity_cpu: Mapped[int] = mapped_column(Amount, default=0)
    capacity_network: Mapped[int] = mapped_column(Amount, default=0)
    capacity_disk_io: Mapped[int] = mapped_column(Amount, default=0)
    # what is left of each effective limit (core.capacity.available), written with the totals
    avail_cpu: Mapped[int] = mapped_column(Amount, default=0)
    avail_memory: Mapped[int] = mapped_column(Amount, default=0)
    avail_disk: Mapped[int] = mapped_column(Amount, default=0)
    avail_network: Mapped[int] = mapped_column(Amount, default=0)
    avail_disk_io: Mapped[int] = mapped_column(Amount, default=0)
    # core.placement.room of the avail_* above, written with them (it may lag a small fall: an upper bound,
    # store/totals.derived): spread placement walks its index
    room: Mapped[float] = mapped_column(Float, default=1.0, server_default="1.0")
    gpu_total: Mapped[int] = mapped_column(Integer, default=0)
    gpu_busy: Mapped[int] = mapped_column(Integer, default=0)  # slots discovery saw in use (vfio / mdev)
    # allocated = what active instances, volumes, images and the OCI cache hold
    alloc_cpu: Mapped[int] = mapped_column(Amount, default=0)
    alloc_memory: Mapped[int] = mapped_column(Amount, default=0)
    alloc_network: Mapped[int] = mapped_column(Amount, default=0)
    alloc_disk_io: Mapped[int] = mapped_column(Amount, default=0)
    alloc_gpu: Mapped[int] = mapped_column(Integer, default=0)
    images_bytes: Mapped[int] = mapped_column(Amount, default=0)
    oci_cache_bytes: Mapped[int] = mapped_column(Amount, default=0)
    volumes_bytes: Mapped[int] = mapped_column(Amount, default=0)
    overlays_bytes: Mapped[int] = mapped_column(Amount, default=0)
    # pending = what held reservations hold (including expired ones not yet swept)
    pend_cpu: Mapped[int] = mapped_column(Amount, default=0)
    pend_memory: Mapped[int] = mapped_column(Amount, default=0)
    pend_disk: Mapped[int] = mapped_column(Amount, default=0)
    pend_network: Mapped[int] = mapped_column(Amount, default=0)
    pend_disk_io: Mapped[int] = mapped_column(Amount, default=0)
    pend_gpu: Mapped[int] = mapped_column(Integer, default=0)


# Spread placement walks hosts from the most room down (store/fleet.py). PostgreSQL only: on SQLite it would
# add a b-tree write to every admission, and a search there reads its few thousand hosts at once anyway.
ROOM_INDEX = "ix_hosts_room"
Index(ROOM_INDEX, Host.room.desc(), Host.host_id).ddl_if(dialect="postgresql")
POSTGRESQL_ONLY_INDEXES = frozenset({ROOM_INDEX})


class HostCapacity(Base):
    """One resource's capacity on a host, how it was found, and the ratio and limit in force."""

    __tablename__ = "capacities"

    host_id: Mapped[str] = mapped_column(ForeignKey("hosts.host_id", ondelete="CASCADE"), primary_key=True)
    resource: Mapped[str] = mapped_column(String(16), primary_key=True)
    capacity: Mapped[int] = mapped_column(Amount)
    source: Mapped[str] = mapped_column(String(16))
    hint: Mapped[str | None] = mapped_column(Text)
    oversub_ratio: Mapped[float] = mapped_column(Float)
    effective_limit: Mapped[int] = mapped_column(Amount)  # int(capacity × ratio), computed in one place
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class Instance(Base):
    """The latest known record of an instance (the seed's InstanceAllocation), or its tombstone."""

    __tablename__ = "instances"

    host_id: Mapped[str] = mapped_column(ForeignKey("hosts.host_id", ondelete="CASCADE"), primary_key=True)
    instance_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    name: Mapped[str] = mapped_column(String(255), default="")
    state: Mapped[str] = mapped_column(String(32))
    active: Mapped[bool] = mapped_column(Boolean)  # state counts toward allocation (core.resources)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)  # tombstone: stale events stay out
    version: Mapped[int] = mapped_column(BigInteger)
    vcpus: Mapped[int] = mapped_column(Integer, default=0)
    memory_bytes: Mapped[int] = mapped_column(Amount, default=0)
    overlay_bytes: Mapped[int] = mapped_column(Amount, default=0)
    volume_overlay_bytes: Mapped[int] = mapped_column(Amount, default=0)
    volume_bytes: Mapped[int] = mapped_column(Amount, default=0)
    network_download_bps: Mapped[int] = mapped_column(Amount, default=0)  # as charged (defaults filled in)
    network_upload_bps: Mapped[int] = mapped_column(Amount, default=0)
    network_bps: Mapped[int] = mapped_column(
        Amount, default=0
    )  # what it takes of the uplink (core.link_share)
    disk_io_bps: Mapped[int] = mapped_column(Amount, default=0)
    gpu: Mapped[str | None] = mapped_column(String(255))
    gpu_slots: Mapped[int] = mapped_column(Integer, default=0)  # the GPU slots it holds while active
    reservation_id: Mapped[str | None] = mapped_column(String(64))
    # the bandwidths the record left unstated (comma-separated), charged the default: charged again when
    # the host's capacities change, so the totals do not depend on which arrived first
    defaulted: Mapped[str] = mapped_column(String(64), default="")
    # the seed's InstanceUtilizationInfo: where a usage sampler finds the VM on its host
    hypervisor_pid: Mapped[int | None] = mapped_column(Integer)
    tap_device: Mapped[str | None] = mapped_column(String(15))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    __table_args__ = (Index(None, "host_id", "active"),)


class Volume(Base):
    """A volume's latest record; every volume's size counts toward disk, attached or not."""

    __tablename__ = "volumes"

    host_id: Mapped[str] = mapped_column(ForeignKey("hosts.host_id", ondelete="CASCADE"), primary_key=True)
    volume_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    name: Mapped[str] = mapped_column(String(255), default="")
    size_bytes: Mapped[int] = mapped_column(Amount, default=0)
    attached_to: Mapped[str | None] = mapped_column(String(255))
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    version: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class Image(Base):
    """An image's exported rootfs on disk."""

    __tablename__ = "images"

    host_id: Mapped[str] = mapped_column(ForeignKey("hosts.host_id", ondelete="CASCADE"), primary_key=True)
    image_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    name: Mapped[str] = mapped_column(String(512), default="")
    size_bytes: Mapped[int] = mapped_column(Amount, default=0)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    version: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class OciCache(Base):
    """The measured size of a host's OCI layer cache (shared blobs)."""

    __tablename__ = "oci_cache"

    host_id: Mapped[str] = mapped_column(ForeignKey("hosts.host_id", ondelete="CASCADE"), primary_key=True)
    total_bytes: Mapped[int] = mapped_column(Amount, default=0)
    version: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class Reservation(Base):
    """A hold on a host's resources between validate and the instance event that consumes it."""

    __tablename__ = "reservations"

    reservation_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    host_id: Mapped[str] = mapped_column(ForeignKey("hosts.host_id", ondelete="CASCADE"))
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16))  # held | consumed | released | expired
    vcpus: Mapped[int] = mapped_column(Integer, default=0)
    memory_bytes: Mapped[int] = mapped_column(Amount, default=0)
    disk_bytes: Mapped[int] = mapped_column(Amount, default=0)
    network_download_bps: Mapped[int] = mapped_column(Amount, default=0)  # as charged (defaults filled in)
    network_upload_bps: Mapped[int] = mapped_column(Amount, default=0)
    network_bps: Mapped[int] = mapped_column(
        Amount, default=0
    )  # what it takes of the uplink (core.link_share)
    disk_io_bps: Mapped[int] = mapped_column(Amount, default=0)
    gpu: Mapped[int] = mapped_column(Integer, default=0)
    gpu_profile: Mapped[str | None] = mapped_column(String(255))
    # the bandwidths the request left unstated (comma-separated), charged the default: a retry with the
    # same key must leave the same ones unstated
    defaulted: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    instance_id: Mapped[str | None] = mapped_column(String(255))

    __table_args__ = (
        UniqueConstraint("host_id", "idempotency_key"),
        Index(None, "host_id", "status", "expires_at"),
    )


class Placement(Base):
    """Which host a `place` call's idempotency key reserved on: unique across the fleet, so a retry on any
    replica finds the same reservation on the same host."""

    __tablename__ = "placements"

    idempotency_key: Mapped[str] = mapped_column(String(255), primary_key=True)
    host_id: Mapped[str] = mapped_column(ForeignKey("hosts.host_id", ondelete="CASCADE"), index=True)
    reservation_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class AllocationLog(Base):
    """Append-only: every change to what a host owes or holds, how much, why and when.

    Analysts read it through the `allocation_history` view.
    """

    __tablename__ = "allocation_log"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    host_id: Mapped[str] = mapped_column(ForeignKey("hosts.host_id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    entity_kind: Mapped[str] = mapped_column(
        String(16)
    )  # instance | volume | image | oci_cache | reservation
    entity_id: Mapped[str] = mapped_column(String(255))
    action: Mapped[str] = mapped_column(String(32))
    bucket: Mapped[str] = mapped_column(String(16))  # allocated | pending
    cause: Mapped[str] = mapped_column(String(255))  # event id, reservation id, or "api"
    cpu: Mapped[int] = mapped_column(Amount, default=0)
    memory_bytes: Mapped[int] = mapped_column(Amount, default=0)
    disk_bytes: Mapped[int] = mapped_column(Amount, default=0)
    network_bps: Mapped[int] = mapped_column(Amount, default=0)
    disk_io_bps: Mapped[int] = mapped_column(Amount, default=0)
    gpu: Mapped[int] = mapped_column(Integer, default=0)


class ProcessedEvent(Base):
    """Every event the ledger has handled, recorded in the transaction that applied it."""

    __tablename__ = "processed_events"

    event_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    host_id: Mapped[str] = mapped_column(String(255), index=True)
    stream_seq: Mapped[int | None] = mapped_column(BigInteger, index=True)
    event_type: Mapped[str] = mapped_column(String(64))
    entity_id: Mapped[str] = mapped_column(String(255))
    version: Mapped[int] = mapped_column(BigInteger)
    outcome: Mapped[str] = mapped_column(String(16))  # applied | stale
    processed_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class DeadLetter(Base):
    """An event that could not be applied, with its raw payload and the reason."""

    __tablename__ = "dead_letters"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    host_id: Mapped[str | None] = mapped_column(String(255), index=True)  # unknown if unparseable
    stream_seq: Mapped[int | None] = mapped_column(BigInteger)
    subject: Mapped[str] = mapped_column(String(512), default="")
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    replayed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class ConsumerPosition(Base):
    """How far an event consumer has got in its stream, written in the transaction that applied the events.

    `stream_seq` is a low-water mark: every sequence up to it is handled. Redeliveries arrive after newer
    events, so the handled sequences above it are kept too, until the gap below them closes. Not per host
    (one durable consumer feeds every host), so it has no host_id.
    """

    __tablename__ = "consumer_positions"

    consumer: Mapped[str] = mapped_column(String(255), primary_key=True)
    stream_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    handled_above: Mapped[str] = mapped_column(Text, default="[]")  # JSON list of sequences > stream_seq
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
