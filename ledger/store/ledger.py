"""The ledger over one database: the one object the service, the event consumer and the CLI use.

It puts together the store's parts, each with one job: transactions and locking (`database`, `tx`), hosts
and capacities (`hosts`), admission (`admission`, and PostgreSQL's one-round-trip strategy in
`optimistic`), reservations after the grant (`reservations`), entity records from events (`entities`),
reading a host (`status`), the event journal (`journal`, `dead_letters`) and sampled usage (`usage`). Every
write that changes what a host owes takes the host's lock and moves its running totals in the same
transaction, so a reservation turning into an instance is counted once; `ledger_drift` proves the totals
against the rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError

from ledger.core.advice import Advice, advise
from ledger.core.capacity import ResourceStatus
from ledger.core.charges import AllocationRequest, Ask, DefaultBandwidth
from ledger.core.errors import LedgerError, Unavailable
from ledger.core.gpu import GPUStatus
from ledger.core.placement import PlaceCall
from ledger.core.records import ImageRecord, InstanceRecord, OciCacheRecord, VolumeRecord
from ledger.core.resources import Capacity, ResourceType
from ledger.core.results import ApplyResult, FullStatus, Grant, InstanceUtilizationInfo, ReservationInfo
from ledger.store import journal
from ledger.store.admission import Admission, Answer, HostAsk
from ledger.store.database import Database
from ledger.store.dead_letters import DeadLetters
from ledger.store.engine import make_engine
from ledger.store.entities import Change, Entities
from ledger.store.fleet import Fleet, Search
from ledger.store.hosts import Hosts
from ledger.store.journal import EventMark
from ledger.store.migrate import ensure_schema
from ledger.store.models import utcnow
from ledger.store.optimistic import OptimisticAdmission
from ledger.store.place import Placer
from ledger.store.reservations import Reservations
from ledger.store.status import Status
from ledger.store.usage import UsageStore

__all__ = ["Change", "EventMark", "HostAsk", "Ledger"]


class Ledger:
    """The allocation ledger over one database; safe to use from many threads and processes at once."""

    def __init__(
        self,
        engine: Engine,
        *,
        reservation_ttl: float = 60.0,
        defaults: DefaultBandwidth | None = None,
        optimistic: bool = True,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.engine = engine
        self.owns_engine = False  # `open` made it: `close` disposes it
        self.clock = clock
        self.defaults = defaults or DefaultBandwidth()
        self.db = Database(engine, clock)
        self.hosts = Hosts(self.db)
        self.reservations = Reservations(self.db)
        self.admission = Admission(
            self.db.sql, self.hosts, self.reservations, self.defaults, reservation_ttl, clock
        )
        self.entities = Entities(self.db, self.hosts, self.reservations, self.defaults)
        self._status = Status(self.db, self.hosts)
        self.fleet = Fleet(self.db, self.hosts, self.defaults, reservation_ttl)
        self.letters = DeadLetters(self.db)  # events that could not be applied
        self.usage = UsageStore(self.db)  # what VMs really use: beside the ledger, never part of its totals
        # PostgreSQL only (one round trip instead of four); `optimistic=False` measures what it is worth
        self.optimistic = (
            OptimisticAdmission(self.db, self.admission) if optimistic and not self.db.sqlite else None
        )
        self.placer = Placer(self.db, self.fleet, self.admission, self.optimistic)

    @classmethod
    def open(cls, url: str, *, migrate: bool = True, read_only: bool = False, **options: Any) -> Ledger:
        """A ledger on `url`, migrated unless told not to; `read_only`: it must be current, writes refused."""
        from ledger.store.migrate import require_current

        engine = make_engine(url, read_only=read_only)
        try:
            if read_only:
                require_current(engine)
            elif migrate:
                ensure_schema(engine)
        except BaseException as exc:
            engine.dispose()
            if isinstance(exc, OperationalError):
                raise Unavailable(f"cannot reach the database at {engine.url!r}: {exc.orig}") from None
            raise
        ledger = cls(engine, **({"optimistic": False} | options if read_only else options))
        ledger.owns_engine = True
        return ledger

    def close(self) -> None:
        """Close this ledger's own connections (and its engine, if `open` made it)."""
        if self.optimistic is not None:
            self.optimistic.close()
        self.fleet.close()
        self.db.close()
        if self.owns_engine:
            self.engine.dispose()

    async def aclose(self) -> None:
        """Close what lives on the caller's event loop; `close` does the rest."""
        if self.optimistic is not None:
            await self.optimistic.aclose()

    @contextmanager
    def batch(self, hosts: Iterable[str] = ()) -> Iterator[None]:
        """Run every write in the block in one transaction (committed at the end, rolled back on error),
        with `hosts` locked first, in sorted order. The event consumer applies a fetched batch this way:
        one commit for many events, acked after it."""
        with self.db.batch() as tx:
            tx.lock_all(hosts, create=True)
            yield

    # ---- admission ----------------------------------------------------------------------------------

    def reserve(
        self,
        host_id: str,
        request: AllocationRequest,
        *,
        idempotency_key: str | None = None,
        ttl: float | None = None,
    ) -> Grant:
        """Validate = reserve: check every requested resource against what is left and hold it, atomically.

        Raises InsufficientResources naming the first resource (cpu, memory, network, disk I/O, disk, GPU)
        that does not fit. The same idempotency key returns the same grant and holds nothing more.
        """
        answer = self.reserve_many([(host_id, Ask(request, idempotency_key, ttl))])[0]
        if isinstance(answer, LedgerError):
            raise answer
        return answer

    def reserve_many(self, asks: Sequence[HostAsk], *, optimistic: bool = True) -> list[Answer]:
        """Admit many asks in arrival order in ONE transaction (group commit): each is decided against what
        its predecessors left, exactly as if reserved one by one, and a refusal is answered in its place
        without spoiling the others. `optimistic=False` skips the one-round-trip strategy when the caller
        has just tried it."""
        if optimistic and self.optimistic is not None and asks and not self.db.in_batch:
            answers = self.optimistic.admit(asks)
            if answers is not None:
                return answers
        return self.db.retrying(lambda tx: self.admission.admit(tx, asks))

    def try_reserve_many(self, asks: Sequence[HostAsk]) -> list[Answer] | None:
        """SQLite: `reserve_many` right here when the write lock is free (a few local statements, cheaper
        for an event loop than two thread hops), else None at once. None on PostgreSQL."""
        return self.db.try_now(lambda tx: self.admission.admit(tx, asks))

    async def try_reserve_many_async(self, asks: Sequence[HostAsk]) -> tuple[list[Answer] | None, bool]:
        """PostgreSQL, for an event loop: a one-host group granted by the one-round-trip strategy on an
        async connection (the loop never blocks); None otherwise, and always on SQLite. Also says whether
        the strategy was tried, so that `reserve_many(..., optimistic=False)` does not repeat it."""
        if self.optimistic is None or not asks:
            return None, False
        return await self.optimistic.admit_async(asks), True

    # ---- the fleet ----------------------------------------------------------------------------------------

    def candidates(
        self,
        request: AllocationRequest,
        *,
        labels: Mapping[str, str] | None = None,
        exclude: Sequence[str] = (),
        policy: str = "spread",
        limit: int = 10,
    ) -> Search:
        """The hosts `request` fits on, best first for `policy` (reads only; holds nothing)."""
        return self.fleet.search(request, labels=labels or {}, exclude=exclude, policy=policy, limit=limit)

    def fleet_status(self) -> list[dict[str, Any]]:
        """Every host's labels and resources in one query (the `fleet_status` view's running totals)."""
        return self.fleet.status()

    def place(
        self,
        ask: Ask,
        *,
        labels: Mapping[str, str] | None = None,
        exclude: Sequence[str] = (),
        policy: str = "spread",
        attempts: int = 3,
    ) -> Grant:
        """Hold `ask` on the best host that takes it, trying the next candidate when a concurrent caller
        took the room first (up to `attempts`); the key is unique across the fleet. Raises the refusal."""
        answer = self.placer.place(
            ask, labels=labels or {}, exclude=exclude, policy=policy, attempts=attempts
        )
        if isinstance(answer, LedgerError):
            raise answer
        return answer

    def place_many(self, calls: Sequence[PlaceCall]) -> list[Answer]:
        """`place` for calls that arrived together, each answered (grant or refusal) in order as `place`
        would answer it; on PostgreSQL settled as a group (store/place.py)."""
        return self.placer.place_many(calls)

    # ---- reservations -----------------------------------------------------------------------------------

    def reservation(self, reservation_id: str) -> ReservationInfo:
        return self.reservations.find(reservation_id)

    def reservation_by_key(self, host_id: str, idempotency_key: str) -> ReservationInfo:
        return self.reservations.find_by_key(host_id, idempotency_key)

    def list_reservations(
        self,
        *,
        host_id: str | None = None,
        status: str | None = None,
        limit: int = 100,
        after: str | None = None,
    ) -> tuple[list[ReservationInfo], int]:
        """A page of reservations in id order after `after`, and how many match in all."""
        return self.reservations.listing(host_id=host_id, status=status, limit=limit, after=after)

    def release(self, reservation_id: str) -> ReservationInfo:
        """Give a held reservation back; releasing one that already ended says how it ended."""
        return self.reservations.release(reservation_id)

    def sweep_due(self, limit: int = 100) -> int:
        """End the holds past their TTL on up to `limit` hosts where one is due; how many hosts."""
        return self.reservations.sweep_due(limit)

    # ---- hosts and status ---------------------------------------------------------------------------

    def register_host(
        self,
        host_id: str,
        found: Mapping[ResourceType, Capacity],
        ratios: Mapping[ResourceType, float],
        gpu: GPUStatus | None = None,
        *,
        labels: Mapping[str, str] | None = None,
        version: int | None = None,
        mark: EventMark | None = None,
    ) -> ApplyResult:
        """Create or refresh a host's capacities, ratios, GPU inventory and labels (usage is left alone)."""
        return self.hosts.register(
            host_id,
            found,
            ratios,
            gpu,
            labels=labels,
            version=version,
            mark=mark,
            then=self.entities.recharge_defaults,
        )

    def host_ids(self) -> list[str]:
        return self.hosts.ids()

    def is_registered(self, host_id: str) -> bool:
        return self.hosts.is_registered(host_id)

    def status(self, host_id: str, resource: ResourceType) -> ResourceStatus:
        """One resource's status on a host (expired holds swept first)."""
        return self._status.resource(host_id, resource)

    def full_status(self, host_id: str, *, limit: int | None = None, after: str | None = None) -> FullStatus:
        """The seed's FullResourceStatus for a host, plus `pending`, with `limit` instances (all: None)."""
        return self._status.full(host_id, limit=limit, after=after)

    def running_instances(self, host_id: str) -> list[InstanceUtilizationInfo]:
        """The seed's InstanceUtilizationInfo of each Running instance of the host (for usage samplers)."""
        return self._status.running(host_id)

    def advise(self, host_id: str, *, window_days: float, **thresholds: Any) -> list[Advice]:
        """Per resource, the ratio the host's observed usage supports (core.advice; `thresholds` are its
        headroom, min_samples and min_days). Changes nothing."""
        resources = self.full_status(host_id, limit=0).resources
        evidence = self.usage.evidence(host_id, window_days)
        return [
            advise(r, status.oversub_ratio, status.allocated, evidence[r], **thresholds)
            for r, status in resources.items()
        ]

    def default_bandwidth(self, host_id: str, vcpus: int, *, burst_multiplier: float = 4.0) -> dict[str, int]:
        """What an instance of `vcpus` that states no bandwidth is charged (the seed's defaults)."""
        return self._status.default_bandwidth(host_id, vcpus, self.defaults, burst_multiplier)

    def image_pull_check(self, host_id: str, max_image_storage: float = 0.2) -> dict[str, int]:
        """Raise InsufficientResources unless an image pull fits (the seed's two checks)."""
        return self._status.image_pull_check(host_id, max_image_storage)

    # ---- records (what the lifecycle events apply) --------------------------------------------------

    def apply(self, changes: Sequence[Change]) -> list[ApplyResult]:
        """Apply entity changes in order, in one transaction (the current batch's, if any)."""
        return self.entities.apply(changes)

    def apply_instance(
        self,
        host_id: str,
        record: InstanceRecord,
        *,
        version: int | None = None,
        action: str = "updated",
        mark: EventMark | None = None,
    ) -> ApplyResult:
        """Record an instance's full current state; a `reservation_id` in it is consumed in the same
        transaction, so the hold becomes the allocation without being counted twice or not at all."""
        return self.apply([Change(host_id, "instance", record.id, record, version, action, mark)])[0]

    def delete_instance(
        self, host_id: str, instance_id: str, *, version: int | None = None, mark: EventMark | None = None
    ) -> ApplyResult:
        return self.apply([Change(host_id, "instance", instance_id, None, version, "deleted", mark)])[0]

    def apply_volume(
        self,
        host_id: str,
        record: VolumeRecord,
        *,
        version: int | None = None,
        action: str = "updated",
        mark: EventMark | None = None,
    ) -> ApplyResult:
        return self.apply([Change(host_id, "volume", record.id, record, version, action, mark)])[0]

    def delete_volume(
        self, host_id: str, volume_id: str, *, version: int | None = None, mark: EventMark | None = None
    ) -> ApplyResult:
        return self.apply([Change(host_id, "volume", volume_id, None, version, "deleted", mark)])[0]

    def apply_image(
        self, host_id: str, record: ImageRecord, *, version: int | None = None, mark: EventMark | None = None
    ) -> ApplyResult:
        return self.apply([Change(host_id, "image", record.id, record, version, "pulled", mark)])[0]

    def delete_image(
        self, host_id: str, image_id: str, *, version: int | None = None, mark: EventMark | None = None
    ) -> ApplyResult:
        return self.apply([Change(host_id, "image", image_id, None, version, "deleted", mark)])[0]

    def apply_oci_cache(
        self,
        host_id: str,
        record: OciCacheRecord,
        *,
        version: int | None = None,
        mark: EventMark | None = None,
    ) -> ApplyResult:
        return self.apply([Change(host_id, "oci_cache", host_id, record, version, "measured", mark)])[0]

    # ---- the event journal --------------------------------------------------------------------------

    def stream_position(self, consumer: str) -> int:
        """The low-water mark of what this database has handled for `consumer`: all sequences up to it."""
        with self.db.transaction() as tx:
            assert tx.conn is not None
            return journal.last_stream_seq(tx.conn, consumer)

    def advance_position(self, consumer: str, handled: Iterable[int], floor: int = 0) -> int:
        """Record handled stream sequences (joins the current batch); returns the low-water mark."""
        with self.db.transaction() as tx:
            assert tx.conn is not None
            return journal.advance(tx.conn, consumer, handled, floor)

    # ---- audit --------------------------------------------------------------------------------------

    def drift(self) -> list[dict[str, Any]]:
        """Rows where a running total differs from the recomputed sum; must always be empty."""
        with self.db.transaction() as tx:
            assert tx.conn is not None
            rows = tx.conn.execute(
                text("SELECT host_id, total, stored, recomputed, drift FROM ledger_drift WHERE drift <> 0")
            )
            return [dict(r._mapping) for r in rows]

    @property
    def in_batch(self) -> bool:
        return self.db.in_batch
