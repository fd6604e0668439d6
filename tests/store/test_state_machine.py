"""A stateful model test of the ledger: random sequences of reservations, releases, expiries and instance
events, checked after every step against a plain Python model and against the SQL views, on both engines.

The model knows what should be true (active instances and their amounts, held unexpired reservations and
their amounts, each reservation's end state, each instance's version); every step the ledger's status, its
`resource_status` view, its `ledger_drift` audit and its rows must agree with it. Admission is checked in the
reserve rule itself: a grant only when the model says the request fits, a refusal only when it does not,
naming the first resource (cpu, memory, network, disk_io, disk) that does not fit.

Instances are facts, not requests: one that arrives without a live hold (or grows, or consumes a hold that
already expired) is counted anyway and may push a host past its limit. The model records which resources a
fact grew, and the over-commit invariant allows allocated + pending > limit only for those.

Time is a fake clock that starts a day ahead of the real one, so every hold's `expires_at` lies in the
database's future and the views (which filter holds by the database's `now`) count exactly the holds the
ledger's clock still counts once they are swept.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import Engine, text

from ledger.core.charges import AllocationRequest
from ledger.core.errors import Conflict, InsufficientResources
from ledger.core.records import InstanceRecord
from ledger.core.resources import Capacity, ResourceType, Source
from ledger.core.units import MAX_AMOUNT
from ledger.store.ledger import Ledger

GIB = 2**30
GB = 10**9
NET = 125_000_000  # 1 Gbps in bytes/s
IO = 100_000_000  # 100 MB/s
CPU, MEMORY, DISK, NETWORK, DISK_IO = (
    ResourceType.CPU,
    ResourceType.MEMORY,
    ResourceType.DISK,
    ResourceType.NETWORK,
    ResourceType.DISK_IO,
)
ORDER = (CPU, MEMORY, NETWORK, DISK_IO, DISK)  # the admission order of DESIGN §4
DEFAULTS = {CPU: 4.0, MEMORY: 1.0, DISK: 1.0, NETWORK: 2.0, DISK_IO: 2.0}  # DESIGN §2
COUNTING = frozenset({"Created", "Running", "Paused", "Unknown"})  # Unknown counts (ledger.core.resources)
STATES = ("Created", "Running", "Paused", "Stopped", "Standby", "Shutdown", "Unknown")
TTLS = (2.5, 5, 10, 30, 60)

MAX_EXAMPLES = 25
STEPS = 50

# The engine of the test that is running: one per engine, shared by every example (each on its own host).
_ENGINE: dict[str, Engine] = {}


class FakeClock:
    """Moved by the machine only; starts a day ahead of the database's clock (see the module docstring)."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Hold:
    request: AllocationRequest
    ttl: float
    expires_at: datetime
    key: str | None
    status: str = "held"


@dataclass
class Vm:
    record: InstanceRecord
    version: int
    deleted: bool = False


def hold_usage(request: AllocationRequest) -> dict[ResourceType, int]:
    return {
        CPU: request.vcpus,
        MEMORY: request.memory_bytes,
        NETWORK: max(request.network_download_bps, request.network_upload_bps),
        DISK_IO: request.disk_io_bps,
        DISK: request.disk_bytes,
    }


def vm_usage(vm: Vm) -> dict[ResourceType, int]:
    rec = vm.record
    if vm.deleted or rec.state not in COUNTING:
        return dict.fromkeys(ORDER, 0)
    return {
        CPU: rec.vcpus,
        MEMORY: rec.memory_bytes,
        NETWORK: max(rec.network_download_bps, rec.network_upload_bps),
        DISK_IO: rec.disk_io_bps,
        DISK: rec.overlay_bytes + rec.volume_overlay_bytes,  # volume_bytes is reporting only
    }


# ---- strategies -----------------------------------------------------------------------------------

ratio_choice = st.sampled_from([None, 0.5, 1.0, 1.5, 2.5, 4.0])  # None: omitted, the default applies

requests = st.builds(
    AllocationRequest,
    vcpus=st.integers(0, 6),
    memory_bytes=st.integers(0, 8).map(lambda n: n * GIB // 2),
    disk_bytes=st.integers(0, 6).map(lambda n: n * 10 * GB),
    network_download_bps=st.integers(0, 6).map(lambda n: n * NET),
    network_upload_bps=st.integers(0, 6).map(lambda n: n * NET),
    disk_io_bps=st.integers(0, 6).map(lambda n: n * IO),
)


small_requests = st.builds(
    AllocationRequest,
    vcpus=st.integers(0, 2),
    memory_bytes=st.integers(0, 3).map(lambda n: n * GIB // 2),
    disk_bytes=st.integers(0, 2).map(lambda n: n * 10 * GB),
    network_download_bps=st.integers(0, 2).map(lambda n: n * NET),
    network_upload_bps=st.integers(0, 2).map(lambda n: n * NET),
    disk_io_bps=st.integers(0, 2).map(lambda n: n * IO),
)


@st.composite
def instance_amounts(draw: st.DrawFn) -> dict[str, int]:
    return {
        "vcpus": draw(st.integers(0, 3)),
        "memory_bytes": draw(st.integers(0, 4)) * GIB // 2,
        "overlay_bytes": draw(st.integers(0, 2)) * 10 * GB,
        "volume_overlay_bytes": draw(st.integers(0, 2)) * 5 * GB,
        "volume_bytes": draw(st.integers(0, 3)) * 20 * GB,
        "network_download_bps": draw(st.integers(0, 3)) * NET,
        "network_upload_bps": draw(st.integers(0, 3)) * NET,
        "disk_io_bps": draw(st.integers(0, 3)) * IO,
    }


def amounts_of(request: AllocationRequest, split: int) -> dict[str, int]:
    """An instance's amounts equal to what its hold asked for (disk split between the two overlays)."""
    return {
        "vcpus": request.vcpus,
        "memory_bytes": request.memory_bytes,
        "overlay_bytes": request.disk_bytes - split,
        "volume_overlay_bytes": split,
        "network_download_bps": request.network_download_bps,
        "network_upload_bps": request.network_upload_bps,
        "disk_io_bps": request.disk_io_bps,
    }


# ---- the machine ----------------------------------------------------------------------------------


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.ledger = Ledger(_ENGINE["engine"], clock=self.clock)
        self.host = f"sm-{uuid.uuid4().hex[:12]}"
        self.limits: dict[ResourceType, int] = {}
        self.holds: dict[str, Hold] = {}
        self.vms: dict[str, Vm] = {}
        self.fact_grew: set[ResourceType] = set()  # resources a fact (not admission) pushed up
        self.counter = 0
        self.checks = 0
        self.registered = False

    # ---- the model ---------------------------------------------------------------------------

    def _sweep_model(self) -> int:
        """What every locked operation does first: holds whose time is up end as `expired`."""
        swept = 0
        for hold in self.holds.values():
            if hold.status == "held" and hold.expires_at <= self.clock.now:
                hold.status = "expired"
                swept += 1
        return swept

    def allocated(self) -> dict[ResourceType, int]:
        totals = dict.fromkeys(ORDER, 0)
        for vm in self.vms.values():
            for r, v in vm_usage(vm).items():
                totals[r] += v
        return totals

    def pending(self) -> dict[ResourceType, int]:
        totals = dict.fromkeys(ORDER, 0)
        for hold in self.holds.values():
            if hold.status == "held" and hold.expires_at > self.clock.now:
                for r, v in hold_usage(hold.request).items():
                    totals[r] += v
        return totals

    def committed(self) -> dict[ResourceType, int]:
        alloc, pend = self.allocated(), self.pending()
        return {r: alloc[r] + pend[r] for r in ORDER}

    def _note_fact(self, before: dict[ResourceType, int]) -> None:
        after = self.committed()
        self.fact_grew.update(r for r in ORDER if after[r] > before[r])

    def _consume_model(self, reservation_id: str | None, instance_id: str) -> None:
        hold = self.holds.get(reservation_id or "")
        if hold is not None and hold.status == "held":  # swept already if its time was up
            hold.status = "consumed"

    def _new_id(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}-{self.counter}"

    # ---- set-up ------------------------------------------------------------------------------

    @initialize(
        cpu=st.integers(2, 8),
        memory=st.integers(4, 16),
        disk=st.integers(5, 20),
        network=st.integers(2, 12),
        disk_io=st.integers(2, 12),
        odd=st.booleans(),
        ratios=st.fixed_dictionaries({r: ratio_choice for r in ORDER}),
    )
    def register(
        self,
        cpu: int,
        memory: int,
        disk: int,
        network: int,
        disk_io: int,
        odd: bool,
        ratios: dict[ResourceType, float | None],
    ) -> None:
        extra = 1 if odd else 0  # an odd byte, so capacity × ratio has a fraction to truncate
        caps = {
            CPU: cpu,
            MEMORY: memory * GIB + extra,
            DISK: disk * 10 * GB + extra,
            NETWORK: network * NET + extra,
            DISK_IO: disk_io * IO + extra,
        }
        given = {r: v for r, v in ratios.items() if v is not None}
        self.ledger.register_host(
            self.host, {r: Capacity(c, Source.CONFIGURED) for r, c in caps.items()}, given
        )
        for r in ORDER:
            ratio = given.get(r, DEFAULTS[r])
            self.limits[r] = min(int(caps[r] * ratio), MAX_AMOUNT)
        self.registered = True

    # ---- reservations ------------------------------------------------------------------------

    @rule(request=requests, ttl=st.sampled_from(TTLS), keyed=st.booleans())
    def reserve(self, request: AllocationRequest, ttl: float, keyed: bool) -> None:
        self._reserve(request, ttl, keyed)

    @rule(request=small_requests, ttl=st.sampled_from(TTLS), keyed=st.booleans())
    def reserve_small(self, request: AllocationRequest, ttl: float, keyed: bool) -> None:
        self._reserve(request, ttl, keyed)

    @rule(
        request=small_requests,
        state=st.sampled_from(STATES),
        split=st.integers(0, 10 * GB),
        volumes=st.integers(0, 3),
    )
    def reserve_then_create(self, request: AllocationRequest, state: str, split: int, volumes: int) -> None:
        """The orchestrator's path: validate (= reserve), then the instance event that consumes the hold."""
        reservation_id = self._reserve(request, 60, keyed=False)
        if reservation_id is not None:
            amounts = {
                **amounts_of(request, min(split, request.disk_bytes)),
                "volume_bytes": volumes * 20 * GB,
            }
            self._create(state, 1, amounts, reservation_id)

    def _reserve(self, request: AllocationRequest, ttl: float, keyed: bool) -> str | None:
        """Reserve and check the answer against the model; the new hold's id, or None if refused."""
        self._sweep_model()
        alloc, pend = self.allocated(), self.pending()
        shortfall = None
        for r in ORDER:
            wanted = hold_usage(request)[r]
            if wanted and wanted > max(0, self.limits[r] - alloc[r] - pend[r]):
                shortfall = r
                break
        key = self._new_id("key") if keyed else None
        try:
            grant = self.ledger.reserve(self.host, request, ttl=ttl, idempotency_key=key)
        except InsufficientResources as exc:
            assert shortfall is not None, f"refused although the model says it fits: {exc.message}"
            r = shortfall
            avail = max(0, self.limits[r] - alloc[r] - pend[r])
            assert exc.details["resource"] == r.value, exc.message
            assert exc.details["requested"] == hold_usage(request)[r]
            assert exc.details["available"] == avail
            assert exc.details["allocated"] == alloc[r]
            assert exc.details["pending"] == pend[r]
            assert exc.details["effective_limit"] == self.limits[r]
            assert exc.details["host"] == self.host
            return None
        assert shortfall is None, f"granted although {shortfall} does not fit"
        assert (grant.status, grant.replayed, grant.idempotency_key) == ("held", False, key)
        assert grant.expires_at == self.clock.now + timedelta(seconds=ttl)
        assert grant.reservation_id not in self.holds
        self.holds[grant.reservation_id] = Hold(request, ttl, grant.expires_at, key)
        after = self.committed()  # a grant never takes a resource past its limit
        assert all(after[r] <= self.limits[r] or after[r] == alloc[r] + pend[r] for r in ORDER)
        return grant.reservation_id

    @precondition(lambda self: any(h.key for h in self.holds.values()))
    @rule(data=st.data(), different=st.booleans())
    def replay(self, data: st.DataObject, different: bool) -> None:
        """A retry with the same idempotency key returns the same grant and holds nothing more."""
        rid = data.draw(st.sampled_from([i for i, h in self.holds.items() if h.key]))
        hold = self.holds[rid]
        self._sweep_model()
        request = hold.request
        if different:
            request = replace(request, vcpus=request.vcpus + 1)
            with pytest.raises(Conflict):
                self.ledger.reserve(self.host, request, ttl=hold.ttl, idempotency_key=hold.key)
            return
        grant = self.ledger.reserve(self.host, request, ttl=hold.ttl, idempotency_key=hold.key)
        assert (grant.reservation_id, grant.replayed) == (rid, True)
        assert (grant.status, grant.expires_at) == (hold.status, hold.expires_at)

    @precondition(lambda self: bool(self.holds))
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        rid = data.draw(st.sampled_from(list(self.holds)))
        hold = self.holds[rid]
        self._sweep_model()
        expected = "released" if hold.status == "held" else hold.status
        info = self.ledger.release(rid)
        assert info.status == expected
        hold.status = expected

    @rule(data=st.data(), via=st.sampled_from(["full status", "status", "next step"]))
    def advance(self, data: st.DataObject, via: str) -> None:
        """Move the clock (sometimes exactly onto, or just short of, a hold's expiry), then sweep."""
        live = sorted(
            (h.expires_at - self.clock.now for h in self.holds.values() if h.status == "held"),
        )
        choices = [st.integers(1, 90).map(lambda s: timedelta(seconds=s))]
        if live:
            exact = st.sampled_from(live)
            choices.append(exact)
            choices.append(exact.map(lambda d: d - timedelta(microseconds=1)))
        step = data.draw(st.one_of(choices))  # zero when a hold is 1 µs from its end: harmless
        self.clock.now += step
        if via == "full status":
            self.ledger.full_status(self.host, limit=0)
            self._sweep_model()
        elif via == "status":
            self.ledger.status(self.host, data.draw(st.sampled_from(ORDER)))
            self._sweep_model()

    # ---- instances ---------------------------------------------------------------------------

    @rule(
        data=st.data(),
        state=st.sampled_from(STATES),
        version=st.integers(0, 3),
        amounts=instance_amounts(),
    )
    def new_instance(self, data: st.DataObject, state: str, version: int, amounts: dict[str, int]) -> None:
        self._sweep_model()
        held = [i for i, h in self.holds.items() if h.status == "held"]
        how = data.draw(st.sampled_from(["as reserved", "any hold", "no hold"]), label="how")
        reservation_id = None
        if how == "as reserved" and held:  # the orchestrator's normal path: reserve, then create
            reservation_id = data.draw(st.sampled_from(held), label="hold")
            request = self.holds[reservation_id].request
            split = data.draw(st.integers(0, request.disk_bytes), label="split")
            amounts = {**amounts, **amounts_of(request, split)}
        elif how == "any hold" and self.holds:  # any amounts, naming a hold in any state
            reservation_id = data.draw(st.sampled_from(list(self.holds)), label="hold")
        self._create(state, version, amounts, reservation_id)

    def _create(self, state: str, version: int, amounts: dict[str, int], reservation_id: str | None) -> None:
        vm_id = self._new_id("vm")
        record = InstanceRecord(id=vm_id, state=state, reservation_id=reservation_id, **amounts)
        before = self.committed()
        result = self.ledger.apply_instance(self.host, record, version=version, action="created")
        assert (result.outcome, result.entity_id, result.version) == ("applied", vm_id, version)
        self.vms[vm_id] = Vm(record, version)
        self._consume_model(reservation_id, vm_id)
        self._note_fact(before)

    @precondition(lambda self: any(not vm.deleted for vm in self.vms.values()))
    @rule(
        data=st.data(),
        state=st.sampled_from(STATES),
        bump=st.one_of(st.none(), st.integers(1, 3)),
        resize=st.one_of(st.none(), instance_amounts()),
    )
    def change_instance(
        self, data: st.DataObject, state: str, bump: int | None, resize: dict[str, int] | None
    ) -> None:
        """A state change or a resize (the full record again, its reservation id too) at a higher version."""
        vm_id = data.draw(st.sampled_from(sorted(i for i, vm in self.vms.items() if not vm.deleted)))
        vm = self.vms[vm_id]
        self._sweep_model()
        record = replace(vm.record, state=state, **(resize or {}))
        held = [i for i, h in self.holds.items() if h.status == "held"]
        if held and data.draw(st.booleans(), label="names another hold"):
            record = replace(record, reservation_id=data.draw(st.sampled_from(held)))
        version = None if bump is None else vm.version + bump  # None: the ledger takes the next one
        before = self.committed()
        result = self.ledger.apply_instance(self.host, record, version=version)
        expected = vm.version + 1 if bump is None else vm.version + bump
        assert (result.outcome, result.version) == ("applied", expected)
        vm.record, vm.version = record, expected
        self._consume_model(record.reservation_id, vm_id)
        self._note_fact(before)

    @rule(data=st.data(), bump=st.integers(1, 2), unseen=st.booleans())
    def delete_instance(self, data: st.DataObject, bump: int, unseen: bool) -> None:
        """A tombstone: of a live instance, or of one never seen (so its late creation stays out)."""
        live = sorted(i for i, vm in self.vms.items() if not vm.deleted)
        self._sweep_model()
        if unseen or not live:
            vm_id = self._new_id("ghost")
            version = bump
            self.vms[vm_id] = Vm(InstanceRecord(id=vm_id, state="Running"), 0, deleted=True)
        else:
            vm_id = data.draw(st.sampled_from(live))
            version = self.vms[vm_id].version + bump
        result = self.ledger.delete_instance(self.host, vm_id, version=version)
        assert (result.outcome, result.version) == ("applied", version)
        self.vms[vm_id].deleted = True
        self.vms[vm_id].version = version

    @precondition(lambda self: bool(self.vms))
    @rule(
        data=st.data(),
        state=st.sampled_from(STATES),
        amounts=instance_amounts(),
        as_delete=st.booleans(),
    )
    def stale_event(self, data: st.DataObject, state: str, amounts: dict[str, int], as_delete: bool) -> None:
        """A late event (version ≤ the one applied) changes nothing, not even the hold it names."""
        vm_id = data.draw(st.sampled_from(sorted(self.vms)))
        vm = self.vms[vm_id]
        version = data.draw(st.integers(0, vm.version))
        self._sweep_model()
        if as_delete:
            result = self.ledger.delete_instance(self.host, vm_id, version=version)
        else:
            held = [i for i, h in self.holds.items() if h.status == "held"]
            reservation_id = data.draw(st.sampled_from([None, *held]))
            record = InstanceRecord(id=vm_id, state=state, reservation_id=reservation_id, **amounts)
            result = self.ledger.apply_instance(self.host, record, version=version)
        assert (result.outcome, result.version) == ("stale", version)

    # ---- invariants --------------------------------------------------------------------------

    @invariant()
    def ledger_agrees_with_model_and_views(self) -> None:
        if not self.registered:
            return
        full = self.ledger.full_status(self.host)  # a locked operation: sweeps expired holds
        self._sweep_model()
        alloc, pend = self.allocated(), self.pending()
        for r in ORDER:
            s = full.resources[r]
            expected = (self.limits[r], alloc[r], pend[r], max(0, self.limits[r] - alloc[r] - pend[r]))
            assert (s.effective_limit, s.allocated, s.pending, s.available) == expected, r
        # `status` of one resource agrees with the full report (one resource per step, in turn: on
        # PostgreSQL each locked read is a commit that waits for the disk).
        self.checks += 1
        r = ORDER[self.checks % len(ORDER)]
        assert self.ledger.status(self.host, r) == full.resources[r]
        assert full.disk_breakdown.overlays_bytes == alloc[DISK]
        assert full.disk_breakdown.volumes_bytes == 0  # no volume records in this machine
        active = {i for i, vm in self.vms.items() if not vm.deleted and vm.record.state in COUNTING}
        assert {a.instance_id for a in full.allocations} == active
        for a in full.allocations:
            rec = self.vms[a.instance_id].record
            assert (a.cpu, a.memory_bytes, a.state) == (rec.vcpus, rec.memory_bytes, rec.state)
            assert a.disk_bytes == rec.overlay_bytes + rec.volume_overlay_bytes + rec.volume_bytes

        with self.ledger.engine.connect() as conn:
            view = {
                row.resource: (row.effective_limit, row.allocated, row.pending, row.available)
                for row in conn.execute(
                    text(
                        "SELECT resource, effective_limit, allocated, pending, available "
                        "FROM resource_status WHERE host_id = :h"
                    ),
                    {"h": self.host},
                )
            }
            drift = conn.execute(
                text("SELECT total, stored, recomputed FROM ledger_drift WHERE host_id = :h AND drift <> 0"),
                {"h": self.host},
            ).all()
            holds = dict(
                conn.execute(
                    text("SELECT reservation_id, status FROM reservations WHERE host_id = :h"),
                    {"h": self.host},
                ).all()
            )
            rows = {
                row.instance_id: (row.version, bool(row.deleted))
                for row in conn.execute(
                    text("SELECT instance_id, version, deleted FROM instances WHERE host_id = :h"),
                    {"h": self.host},
                )
            }
        assert drift == [], f"running totals drifted from the recomputed sums: {drift}"
        assert view == {
            r.value: (s.effective_limit, s.allocated, s.pending, s.available)
            for r, s in full.resources.items()
        }
        assert holds == {i: h.status for i, h in self.holds.items()}
        assert rows == {i: (vm.version, vm.deleted) for i, vm in self.vms.items()}

    @invariant()
    def only_facts_over_commit(self) -> None:
        """Admission never passes a limit: allocated + pending beyond it only where a fact pushed it."""
        if not self.registered:
            return
        committed = self.committed()
        for r in ORDER:
            if committed[r] > self.limits[r]:
                assert r in self.fact_grew, f"{r} over-committed without an instance fact to explain it"
            else:
                self.fact_grew.discard(r)

    def teardown(self) -> None:
        try:
            if self.registered:
                assert [d for d in self.ledger.drift() if d["host_id"] == self.host] == []
        finally:
            self.ledger.close()  # its own connections; the engine is the test's


def test_state_machine(db_url: str) -> None:
    ledger = Ledger.open(db_url, migrate=False)
    _ENGINE["engine"] = ledger.engine
    try:
        run_state_machine_as_test(
            LedgerMachine,
            settings=settings(
                max_examples=MAX_EXAMPLES,
                stateful_step_count=STEPS,
                deadline=None,
                database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
            ),
        )
    finally:
        _ENGINE.clear()
        ledger.close()
