"""The event consumer: fetch a batch, apply it in one transaction that also records each event id and the
stream position, then ack. Poison events are dead-lettered and terminated; database trouble naks with a delay.

Nothing is acked before it is committed, so a crash at any point loses nothing (the server redelivers) and
doubles nothing (a redelivered event id is already recorded as processed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from ledger.bus.jetstream import DURABLE, STREAM, ensure_consumer, ensure_stream, stream_config
from ledger.core.errors import LedgerError, TransientConflict, Unavailable
from ledger.core.results import ApplyResult
from ledger.events.apply import apply_event, apply_events
from ledger.events.contract import Event, InvalidEvent, parse_event
from ledger.observe.events import EventMetrics
from ledger.store.ledger import Ledger

log = logging.getLogger("ledger.events")

APPLIED_SUBJECT = "ledger.applied"  # outcomes are announced here (core NATS) for `ledger events tail`
DEAD_LETTERED = "dead_letter"
RETRY = "retry"
CONFLICT = "conflict"
CONFLICT_DELAY_S = 0.05
LAG_TIMEOUT_S = 2.0


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one delivered message."""

    stream_seq: int
    subject: str
    outcome: str  # applied | stale | duplicate | dead_letter | retry
    event_id: str | None = None
    event_type: str | None = None
    host: str | None = None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            k: v
            for k, v in {
                "stream_seq": self.stream_seq,
                "subject": self.subject,
                "outcome": self.outcome,
                "event_id": self.event_id,
                "type": self.event_type,
                "host": self.host,
                "reason": self.reason,
            }.items()
            if v is not None
        }


@dataclass(frozen=True, slots=True)
class _Delivery:
    msg: Msg
    seq: int
    event: Event | None
    error: str | None


def _host_from_subject(subject: str) -> str | None:
    parts = subject.split(".")
    return parts[2] if len(parts) > 2 and parts[:2] == ["ledger", "events"] else None


class EventConsumer:
    """One durable pull consumer feeding one ledger; several replicas may share the durable."""

    def __init__(
        self,
        nc: Client,
        ledger: Ledger,
        *,
        stream: str = STREAM,
        durable: str = DURABLE,
        batch_size: int = 128,
        fetch_timeout: float = 1.0,
        nak_delay: float = 1.0,
        announce: bool = True,
        on_outcome: Callable[[Outcome], None] | None = None,
        metrics: EventMetrics | None = None,
        replicas: int = 1,
    ) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.ledger = ledger
        self.stream = stream
        self.durable = durable
        self.batch_size = batch_size
        self.fetch_timeout = fetch_timeout
        self.nak_delay = nak_delay
        self.announce = announce
        self.on_outcome = on_outcome
        self.metrics = metrics
        self.replicas = replicas  # of the stream, which this consumer's service owns (ensure_stream)
        self._sub: JetStreamContext.PullSubscription | None = None
        self.handled = 0
        self.conflicts = 0  # batches a concurrent transaction made the database roll back
        self._returned = RETRY  # how the last batch handed back whole counts in the metrics
        self.applying = False  # a batch is being applied on a thread
        self.running = False  # the fetch loop is running
        self.fetch_error: str | None = None  # why the last fetch failed (None: it worked, or found nothing)

    async def start(self) -> None:
        """Ensure the stream and the consumer (rewound to the database's position if it is behind)."""
        await ensure_stream(self.js, stream_config(self.stream, replicas=self.replicas))
        # Events the stream no longer holds (limits, purges) can never arrive: start the mark above them.
        info = await self.js.stream_info(self.stream)
        gone = max(0, (info.state.first_seq or 1) - 1)
        position = await asyncio.to_thread(self.ledger.advance_position, self.durable, [], gone)
        await ensure_consumer(self.js, self.stream, self.durable, position)
        self._sub = await self.js.pull_subscribe_bind(durable=self.durable, stream=self.stream)

    async def close(self) -> None:
        """Unsubscribe (a pull subscription left open makes a connection drain wait out its timeout)."""
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def run(self, stop: asyncio.Event) -> None:
        """Fetch and apply until `stop` is set; the batch in hand is finished (applied and acked) first."""
        if self._sub is None:
            await self.start()
        assert self._sub is not None
        self.running = True
        try:
            while not stop.is_set():
                try:
                    msgs = await self._sub.fetch(self.batch_size, timeout=self.fetch_timeout)
                except TimeoutError:  # nothing to fetch: nats-py's own, or asyncio's when its deadline races
                    self.fetch_error = None
                    continue
                except Exception as exc:  # disconnected, server restarting: nats-py reconnects by itself
                    self.fetch_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                    log.warning("fetch failed (%s); retrying", self.fetch_error)
                    await asyncio.sleep(0.5)
                    continue
                self.fetch_error = None
                if msgs:
                    await self.process(msgs)
        finally:
            self.running = False

    def health(self) -> str | None:
        """None while the fetch loop runs and its last fetch worked; otherwise why not (for /readyz)."""
        if not self.running:
            return "not running"
        if self.fetch_error is not None:
            return f"cannot fetch events ({self.fetch_error})"
        return None

    async def lag(self) -> tuple[int, int]:
        """What the durable consumer has not delivered yet, and what it delivered and awaits acks for."""
        info = await self.js.consumer_info(self.stream, self.durable, timeout=LAG_TIMEOUT_S)
        return info.num_pending or 0, info.num_ack_pending or 0

    async def process(self, msgs: list[Msg]) -> list[Outcome]:
        self.applying = True
        started = time.perf_counter()
        try:
            outcomes = await self._process(msgs)
        finally:
            self.applying = False
        if self.metrics is not None:
            # no outcomes: the whole batch went back for redelivery (a conflict, or the database unavailable)
            handled = [o.outcome for o in outcomes] if outcomes else [self._returned] * len(msgs)
            self.metrics.batch(time.perf_counter() - started, handled)
        return outcomes

    async def _process(self, msgs: list[Msg]) -> list[Outcome]:
        deliveries = [self._parse(msg) for msg in msgs]
        self._returned = RETRY
        try:
            outcomes = await asyncio.to_thread(self._apply_batch, deliveries)
        except TransientConflict as exc:  # e.g. another replica's batch: nothing written, try again soon
            self._returned = CONFLICT
            self.conflicts += 1
            log.info("batch of %d events conflicted and is retried: %s", len(msgs), exc.message)
            delay = CONFLICT_DELAY_S * (1 + random.random())  # apart, so the two do not meet again
            await asyncio.gather(*(self._settle(m.nak, delay=delay) for m in msgs))
            return []
        except Unavailable as exc:
            log.warning("database unavailable (%s): %d events will be redelivered", exc.message, len(msgs))
            await asyncio.gather(*(self._settle(m.nak, delay=self.nak_delay) for m in msgs))
            return []
        except Exception as exc:  # one bad event spoils the batch: apply them one by one to find it
            log.info("batch failed (%s); applying its %d events one by one", exc, len(msgs))
            outcomes = []
            for delivery in deliveries:
                try:
                    outcomes.append(await asyncio.to_thread(self._apply_one, delivery))
                except Unavailable as exc2:
                    log.warning(
                        "database unavailable (%s): event %d will be redelivered", exc2.message, delivery.seq
                    )
                    await self._settle(delivery.msg.nak, delay=self.nak_delay)
                    outcomes.append(Outcome(delivery.seq, delivery.msg.subject, RETRY))
        for delivery, outcome in zip(deliveries, outcomes, strict=True):
            if outcome.outcome == RETRY:
                continue
            if outcome.outcome == DEAD_LETTERED:
                await self._settle(delivery.msg.term)
            else:
                await self._settle(delivery.msg.ack)
            await self._report(outcome)
        self.handled += len(outcomes)
        return outcomes

    @staticmethod
    async def _settle(action: Callable[..., Any], **kwargs: Any) -> None:
        try:
            await action(**kwargs)
        except Exception as exc:  # the connection dropped: the server redelivers, and the ledger dedupes
            log.warning("could not acknowledge (%s); the event will be redelivered and deduplicated", exc)

    async def _report(self, outcome: Outcome) -> None:
        if outcome.outcome == DEAD_LETTERED:
            log.warning(
                "dead-lettered stream seq %d (%s): %s", outcome.stream_seq, outcome.subject, outcome.reason
            )
        if self.on_outcome is not None:
            self.on_outcome(outcome)
        if self.announce:
            subject = f"{APPLIED_SUBJECT}.{outcome.host or '_'}"
            try:
                await self.nc.publish(subject, json.dumps(outcome.to_dict()).encode())
            except Exception as exc:
                log.debug("could not announce outcome: %s", exc)

    @staticmethod
    def _parse(msg: Msg) -> _Delivery:
        seq = msg.metadata.sequence.stream
        try:
            return _Delivery(msg, seq, parse_event(msg.data, msg.subject), None)
        except InvalidEvent as exc:
            return _Delivery(msg, seq, None, exc.reason)

    def _apply_batch(self, deliveries: list[_Delivery]) -> list[Outcome]:
        """Every delivery in one transaction, with the stream position; raises if any one fails. The events
        are applied together (a statement per table, not per event); a bad one is dead-lettered."""
        events = [(d.event, d.seq) for d in deliveries if d.event is not None]
        with self.ledger.batch(hosts=[event.host for event, _ in events]):
            results = iter(apply_events(self.ledger, events))
            outcomes = [
                self._dead_letter(d) if d.event is None else self._applied(d, d.event, next(results))
                for d in deliveries
            ]
            self.ledger.advance_position(self.durable, [d.seq for d in deliveries])
        return outcomes

    def _apply_one(self, delivery: _Delivery) -> Outcome:
        """One delivery on its own; an event the ledger refuses is dead-lettered with why. (Not in a batch,
        so a concurrent redelivery that recorded the event id first reads as a duplicate, not an error.)"""
        try:
            outcome = self._handle(delivery)
        except Unavailable:
            raise
        except LedgerError as exc:
            outcome = self._handle(_Delivery(delivery.msg, delivery.seq, None, f"{exc.code}: {exc.message}"))
        except Exception as exc:  # the database refused it (e.g. a value its column cannot hold)
            detail = str(exc).splitlines()[0][:300] if str(exc) else ""
            reason = f"the database refused the event: {type(exc).__name__}: {detail}"
            outcome = self._handle(_Delivery(delivery.msg, delivery.seq, None, reason))
        self.ledger.advance_position(self.durable, [delivery.seq])
        return outcome

    def _handle(self, delivery: _Delivery) -> Outcome:
        if delivery.event is None:
            return self._dead_letter(delivery)
        return self._applied(delivery, delivery.event, apply_event(self.ledger, delivery.event, delivery.seq))

    def _dead_letter(self, delivery: _Delivery) -> Outcome:
        subject = delivery.msg.subject
        self.ledger.letters.record(
            payload=delivery.msg.data,
            reason=delivery.error or "invalid event",
            subject=subject,
            stream_seq=delivery.seq,
            host_id=_host_from_subject(subject),
        )
        return Outcome(
            delivery.seq, subject, DEAD_LETTERED, host=_host_from_subject(subject), reason=delivery.error
        )

    @staticmethod
    def _applied(delivery: _Delivery, event: Event, result: ApplyResult) -> Outcome:
        return Outcome(delivery.seq, delivery.msg.subject, result.outcome, event.id, event.type, event.host)
