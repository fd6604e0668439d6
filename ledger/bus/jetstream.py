"""The events stream and its durable consumer: created or updated explicitly, never silently kept stale."""

from __future__ import annotations

import logging

from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import APIError, NotFoundError

from ledger.core.errors import ConfigError

log = logging.getLogger("ledger.events")

STREAM = "LEDGER_EVENTS"
SUBJECTS = ["ledger.events.>"]
DURABLE = "ledger"
DUPLICATE_WINDOW_S = 120.0
ACK_WAIT_S = 60.0
MAX_MSG_BYTES = 1024 * 1024


USAGE_STREAM = "LEDGER_USAGE"
USAGE_SUBJECTS = ["ledger.usage.>"]
USAGE_DURABLE = "ledger-usage"
USAGE_MAX_AGE_S = 3600.0  # usage older than the previous hour is dropped on arrival anyway
USAGE_MAX_BYTES = 256 * 2**20


def usage_subject(host_id: str) -> str:
    return f"ledger.usage.{host_id}"


def usage_stream_config(replicas: int = 1) -> StreamConfig:
    """Usage samples: a stream of their own, so they can never slow or fill the lifecycle stream. Lossy by
    design: bounded in age and size, and the oldest go when it is full."""
    return StreamConfig(
        name=USAGE_STREAM,
        num_replicas=replicas,
        subjects=USAGE_SUBJECTS,
        storage=StorageType.FILE,
        retention=RetentionPolicy.LIMITS,
        discard=DiscardPolicy.OLD,
        max_age=USAGE_MAX_AGE_S,
        max_bytes=USAGE_MAX_BYTES,
        max_msg_size=MAX_MSG_BYTES,
    )


def usage_consumer_config() -> ConsumerConfig:
    """Acked after the batch is stored; a few redeliveries at most (a sample is worth little once late)."""
    return ConsumerConfig(
        durable_name=USAGE_DURABLE,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ACK_WAIT_S,
        max_deliver=3,
        deliver_policy=DeliverPolicy.ALL,
    )


def stream_config(
    name: str = STREAM, subjects: list[str] | None = None, *, replicas: int = 1
) -> StreamConfig:
    """File storage, limits retention, a duplicate window, `replicas` copies (3 on a NATS cluster, so the
    stream survives a node); `discard=new` so a full stream refuses publishes (the publisher sees it) rather
    than dropping events the ledger has not applied."""
    return StreamConfig(
        name=name,
        num_replicas=replicas,
        subjects=subjects or SUBJECTS,
        storage=StorageType.FILE,
        retention=RetentionPolicy.LIMITS,
        discard=DiscardPolicy.NEW,
        duplicate_window=DUPLICATE_WINDOW_S,
        max_msg_size=MAX_MSG_BYTES,
    )


async def ensure_stream(js: JetStreamContext, config: StreamConfig, *, owner: bool = True) -> None:
    """Create the stream if it is missing. Its owner (`ledger serve`) also updates an existing one to
    `config`, saying so when the replica count changes; anyone else (a publisher, an agent) leaves an
    existing stream as it is, so a client with other settings can never shrink the owner's stream. A
    replica count the NATS servers cannot hold is a ConfigError that says what to set."""
    name = config.name or STREAM
    try:
        info = await js.stream_info(name)
    except NotFoundError:
        try:
            await js.add_stream(config)
        except APIError as exc:
            raise _replicas_error(name, config, exc) from None
        log.info("created stream %s with %d replica(s)", name, config.num_replicas or 1)
        return
    if not owner:
        return
    had, wanted = info.config.num_replicas or 1, config.num_replicas or 1
    try:
        await js.update_stream(config)
    except APIError as exc:
        raise _replicas_error(name, config, exc) from None
    if had != wanted:
        log.warning("stream %s had %d replica(s): updated to %d (LEDGER_STREAM_REPLICAS)", name, had, wanted)


def _replicas_error(name: str, config: StreamConfig, exc: APIError) -> Exception:
    wanted = config.num_replicas or 1
    detail = exc.description or str(exc)
    if wanted > 1 and ("replica" in detail.lower() or "cluster" in detail.lower()):
        return ConfigError(
            f"cannot keep stream {name} in {wanted} replicas: NATS says {detail!r}. "
            f"A replica count needs a JetStream cluster of at least that many servers; "
            f"set LEDGER_STREAM_REPLICAS=1 for a single server",
            setting="stream_replicas",
        )
    return exc


def consumer_config(durable: str, start_seq: int | None = None) -> ConsumerConfig:
    """Explicit acks (after the database commit); unlimited redelivery for transient failures (poison
    events are terminated by the consumer, never retried forever)."""
    config = ConsumerConfig(
        durable_name=durable,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ACK_WAIT_S,
        max_deliver=-1,
        max_ack_pending=20_000,
    )
    if start_seq is not None:
        config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
        config.opt_start_seq = start_seq
    else:
        config.deliver_policy = DeliverPolicy.ALL
    return config


async def ensure_consumer(js: JetStreamContext, stream: str, durable: str, db_position: int) -> None:
    """Create or update the durable consumer, and rewind it to the database's position if the server
    acknowledged events whose commits the database lost (SQLite, synchronous=NORMAL, a power cut)."""
    try:
        info = await js.consumer_info(stream, durable)
    except NotFoundError:
        start = db_position + 1 if db_position > 0 else None
        await js.add_consumer(stream, consumer_config(durable, start))
        log.info("created consumer %s on %s from %s", durable, stream, start or "the start")
        return
    acked = info.ack_floor.stream_seq if info.ack_floor and info.ack_floor.stream_seq else 0
    if acked > db_position:
        log.warning(
            "consumer %s acknowledged up to %d but the database has only %d: replaying from %d",
            durable,
            acked,
            db_position,
            db_position + 1,
        )
        await js.delete_consumer(stream, durable)
        await js.add_consumer(stream, consumer_config(durable, db_position + 1))
        return
    current = info.config
    wanted = consumer_config(durable)
    wanted.deliver_policy, wanted.opt_start_seq = current.deliver_policy, current.opt_start_seq
    await js.add_consumer(stream, wanted)  # same name: the server updates the mutable fields
