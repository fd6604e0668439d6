"""The admission decision (`ledger.core.admission.decide`): the seed's wording and order, GPU slots and
profiles, replays and conflicts, default bandwidths, and a property test against a naive oracle that
decides request by request from the sums."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.core.admission import Admit, EarlierHold, Replay, Reused, check_totals, decide
from ledger.core.capacity import effective_limit, oversub_ratio
from ledger.core.charges import AllocationRequest, Ask, Charge, DefaultBandwidth
from ledger.core.errors import InsufficientResources, InvalidRequest, LedgerError
from ledger.core.host import GpuSlots, HostState, ResourceLimit
from ledger.core.resources import ADMISSION_ORDER, RESOURCES, ResourceType, Source
from ledger.core.units import MAX_AMOUNT

GIB = 2**30
CPU, MEMORY, DISK, NETWORK, DISK_IO = (
    ResourceType.CPU,
    ResourceType.MEMORY,
    ResourceType.DISK,
    ResourceType.NETWORK,
    ResourceType.DISK_IO,
)
NO_DEFAULTS = DefaultBandwidth(enabled=False)
LATER = datetime(2027, 1, 1, tzinfo=UTC)


def host(
    capacity: dict[ResourceType, int] | None = None,
    ratios: dict[ResourceType, float] | None = None,
    allocated: dict[ResourceType, int] | None = None,
    pending: dict[ResourceType, int] | None = None,
    gpu: GpuSlots | None = None,
    undetected: dict[ResourceType, str] | None = None,
) -> HostState:
    """A host with 10¹⁵ of everything unless told otherwise."""
    capacity, ratios, undetected = capacity or {}, ratios or {}, undetected or {}
    limits = []
    for r in RESOURCES:
        cap = capacity.get(r, 10**15)
        ratio = oversub_ratio(r, ratios.get(r))
        source = Source.UNDETECTED if r in undetected else Source.DETECTED
        limits.append(ResourceLimit(cap, effective_limit(cap, ratio), ratio, source, undetected.get(r)))
    return HostState(
        "h1",
        tuple(limits),
        tuple((allocated or {}).get(r, 0) for r in RESOURCES),
        tuple((pending or {}).get(r, 0) for r in RESOURCES),
        gpu,
    )


def one(state: HostState, request: AllocationRequest, defaults: DefaultBandwidth = NO_DEFAULTS) -> Any:
    return decide(state, [Ask(request)], {}, defaults, 60.0).outcomes[0]


def refusal(state: HostState, request: AllocationRequest, **kw: Any) -> LedgerError:
    outcome = one(state, request, **kw)
    assert isinstance(outcome, LedgerError), outcome
    return outcome


# ---- the seed's wording and order ----------------------------------------------------------------------


def test_the_seeds_cpu_refusal_word_for_word() -> None:
    state = host({CPU: 16}, {CPU: 4.0}, allocated={CPU: 60})
    refused = refusal(state, AllocationRequest(vcpus=8))
    assert refused.message == (
        "insufficient CPU: requested 8 vCPUs, but only 4 available "
        "(currently allocated: 60, effective limit: 64 with 4.0x oversubscription)"
    )
    assert refused.details == {
        "resource": "cpu",
        "requested": 8,
        "available": 4,
        "allocated": 60,
        "pending": 0,
        "effective_limit": 64,
        "ratio": 4.0,
        "host": "h1",
    }


def test_pending_reservations_are_named_inside_the_parenthesis() -> None:
    state = host({CPU: 16}, {CPU: 4.0}, allocated={CPU: 50}, pending={CPU: 10})
    assert refusal(state, AllocationRequest(vcpus=8)).message == (
        "insufficient CPU: requested 8 vCPUs, but only 4 available "
        "(currently allocated: 50, pending reservations: 10, effective limit: 64 with 4.0x oversubscription)"
    )


def test_the_seeds_disk_io_refusal_word_for_word() -> None:
    state = host({DISK_IO: 500_000_000}, {DISK_IO: 2.0}, allocated={DISK_IO: 600_000_000})
    refused = refusal(state, AllocationRequest(disk_io_bps=1_000_000_000))
    assert refused.message == (
        "insufficient disk I/O: requested 1.0 GB/s, but only 400.0 MB/s available "
        "(currently allocated: 600.0 MB/s, effective limit: 1.0 GB/s with 2.0x oversubscription)"
    )


def test_the_seeds_gpu_refusals_word_for_word() -> None:
    assert refusal(host(), AllocationRequest(needs_gpu=True)).message == (
        "insufficient GPU: no GPU available on this host"
    )
    full = host(gpu=GpuSlots("vgpu", total=16, used=12, pending=4))
    refused = refusal(full, AllocationRequest(gpu_profile="L40S-1Q"))
    assert refused.message == "insufficient GPU: all 16 vgpu slots are in use"
    assert (refused.details["allocated"], refused.details["pending"]) == (12, 4)


@pytest.mark.parametrize("expected", ADMISSION_ORDER)
def test_the_first_resource_in_the_seeds_order_that_does_not_fit_is_named(expected: ResourceType) -> None:
    position = ADMISSION_ORDER.index(expected)
    state = host({r: 0 if ADMISSION_ORDER.index(r) >= position else 10**12 for r in RESOURCES})
    request = AllocationRequest(1, 1, 1, 1, 1, 1)
    assert refusal(state, request).details["resource"] == expected.value


def test_gpu_comes_after_every_resource() -> None:
    state = host({MEMORY: 0})
    assert refusal(state, AllocationRequest(memory_bytes=1, needs_gpu=True)).details["resource"] == "memory"


def test_exactly_what_is_available_fits_and_one_more_does_not() -> None:
    state = host({CPU: 16}, {CPU: 4.0}, allocated={CPU: 60})
    assert isinstance(one(state, AllocationRequest(vcpus=4)), Admit)
    assert isinstance(one(state, AllocationRequest(vcpus=5)), InsufficientResources)


def test_nothing_asked_is_nothing_checked_even_on_a_full_host() -> None:
    state = host({r: 0 for r in RESOURCES})
    assert isinstance(one(state, AllocationRequest(0, 0, 0, 0, 0, 0)), Admit)


def test_the_uplink_is_charged_the_larger_direction() -> None:
    state = host({NETWORK: 50}, {NETWORK: 2.0})  # 100 available
    granted = one(state, AllocationRequest(network_download_bps=100, network_upload_bps=90))
    assert isinstance(granted, Admit) and granted.charge.amounts()[RESOURCES.index(NETWORK)] == 100
    assert (
        refusal(state, AllocationRequest(network_download_bps=10, network_upload_bps=101)).details[
            "requested"
        ]
        == 101
    )


def test_a_refusal_on_an_undetected_capacity_says_what_fixes_it() -> None:
    state = host({NETWORK: 0}, undetected={NETWORK: "set NETWORK_LIMIT, e.g. NETWORK_LIMIT=10Gbps"})
    refused = refusal(state, AllocationRequest(network_download_bps=1, network_upload_bps=1))
    assert refused.message.endswith(
        "; this host's capacity was not detected: set NETWORK_LIMIT, e.g. NETWORK_LIMIT=10Gbps"
    )
    assert refused.details["hint"] == "set NETWORK_LIMIT, e.g. NETWORK_LIMIT=10Gbps"


def test_a_profile_the_host_does_not_offer_is_invalid_once_a_slot_is_free() -> None:
    state = host(gpu=GpuSlots("vgpu", 4, 0, profiles={"H100-20C": 4}))
    refused = refusal(state, AllocationRequest(gpu_profile="A100-40C"))
    assert isinstance(refused, InvalidRequest)
    assert refused.details["field"] == "gpu_profile"
    assert "H100-20C" in refused.message
    assert isinstance(one(state, AllocationRequest(gpu_profile="H100-20C")), Admit)


@pytest.mark.parametrize("ttl", [0, -1, 24 * 3600 + 1, 10**400, True, "60"])
def test_a_bad_ttl_is_invalid_naming_the_field(ttl: Any) -> None:
    refused = decide(host(), [Ask(AllocationRequest(), None, ttl)], {}, NO_DEFAULTS, 60).outcomes[0]
    assert isinstance(refused, InvalidRequest)
    assert refused.details["field"] == "ttl_seconds"
    assert len(refused.message) < 200  # a 400-digit number is cut short


# ---- groups, replays, conflicts --------------------------------------------------------------------------


def test_each_request_is_decided_against_what_its_predecessors_left() -> None:
    state = host({CPU: 4}, {CPU: 1.0})
    asks = [Ask(AllocationRequest(vcpus=3)), Ask(AllocationRequest(vcpus=2)), Ask(AllocationRequest(vcpus=1))]
    decision = decide(state, asks, {}, NO_DEFAULTS, 60)
    assert [type(o).__name__ for o in decision.outcomes] == ["Admit", "InsufficientResources", "Admit"]
    refused = decision.outcomes[1]
    assert isinstance(refused, LedgerError) and refused.details["pending"] == 3
    assert decision.pending[RESOURCES.index(CPU)] == 4


def test_the_same_key_in_one_group_replays_or_conflicts() -> None:
    asks = [
        Ask(AllocationRequest(vcpus=1), "k"),
        Ask(AllocationRequest(vcpus=1), "k"),
        Ask(AllocationRequest(vcpus=2), "k"),
    ]
    decision = decide(host(), asks, {}, NO_DEFAULTS, 60)
    assert decision.outcomes[1] == Replay(0)
    assert decision.outcomes[2] == Reused("k", 0)
    assert decision.pending[RESOURCES.index(CPU)] == 1


def _earlier(request: AllocationRequest, defaults: DefaultBandwidth) -> EarlierHold:
    granted = one(host({CPU: 16}), request, defaults)
    assert isinstance(granted, Admit)
    return EarlierHold("r1", "h1", "k", "held", LATER, granted.charge)


@pytest.mark.parametrize("defaults", [NO_DEFAULTS, DefaultBandwidth()])
def test_a_retry_leaves_the_same_bandwidths_unstated_to_replay(defaults: DefaultBandwidth) -> None:
    asked = AllocationRequest(vcpus=2, network_download_bps=5)
    earlier = {"k": _earlier(asked, defaults)}
    state = host({CPU: 16})
    assert decide(state, [Ask(asked, "k")], earlier, defaults, 60).outcomes == [Replay(earlier["k"])]
    stated = AllocationRequest(vcpus=2, network_download_bps=5, network_upload_bps=0, disk_io_bps=0)
    outcome = decide(state, [Ask(stated, "k")], earlier, defaults, 60).outcomes[0]
    assert outcome == Reused("k", earlier["k"])


# ---- default bandwidths ----------------------------------------------------------------------------------


def test_unstated_bandwidths_are_charged_the_vcpu_share_and_named() -> None:
    state = host({CPU: 64, NETWORK: 1_250_000_000, DISK_IO: 1_000_000_000})
    granted = one(state, AllocationRequest(vcpus=4, network_download_bps=10), DefaultBandwidth())
    assert isinstance(granted, Admit)
    assert granted.charge.to_dict() == {
        "vcpus": 4,
        "memory_bytes": 0,
        "disk_bytes": 0,
        "network_download_bps": 10,
        "network_upload_bps": 78_125_000,
        "disk_io_bps": 62_500_000,
        "gpu": 0,
    }
    assert granted.charge.defaulted == ("network_upload_bps", "disk_io_bps")


def test_an_explicit_zero_is_charged_as_zero() -> None:
    granted = one(host({CPU: 4}), AllocationRequest(1, 0, 0, 0, 0, 0), DefaultBandwidth())
    assert isinstance(granted, Admit) and granted.charge.defaulted == ()
    assert granted.charge.amounts() == (1, 0, 0, 0, 0)


def test_the_seeds_old_rule_multiplies_the_default_by_the_ratio() -> None:
    state = host({CPU: 16, NETWORK: 1600}, {NETWORK: 2.0})
    granted = one(state, AllocationRequest(vcpus=4), DefaultBandwidth(uses_ratio=True))
    assert isinstance(granted, Admit) and granted.charge.network_download_bps == 800


def test_a_default_that_does_not_fit_is_refused_like_any_amount() -> None:
    state = host({CPU: 4, NETWORK: 100}, {NETWORK: 1.0}, allocated={NETWORK: 90})
    refused = refusal(state, AllocationRequest(vcpus=2), defaults=DefaultBandwidth())
    assert refused.details["resource"] == "network" and refused.details["requested"] == 50


def test_a_total_past_what_a_bigint_holds_is_refused() -> None:
    check_totals("h1", (MAX_AMOUNT - 1, 0, 0, 0, 0), (1, 0, 0, 0, 0))
    with pytest.raises(InvalidRequest, match="beyond the largest amount") as refused:
        check_totals("h1", (MAX_AMOUNT, 0, 0, 0, 0), (1, 0, 0, 0, 0))
    assert refused.value.details["field"] == "cpu"


# ---- the oracle ------------------------------------------------------------------------------------------


@dataclass
class Oracle:
    """Request by request, from the sums: what should be granted, recomputed from scratch every time."""

    capacity: dict[str, int]
    ratio: dict[str, float]
    allocated: dict[str, int]
    earlier_pending: dict[str, int]
    gpu_total: int
    gpu_used: int
    defaults: bool
    granted: list[dict[str, int]] = field(default_factory=list)
    keys: dict[str, AllocationRequest] = field(default_factory=dict)

    def charge(self, request: AllocationRequest) -> dict[str, int]:
        def share(resource: str) -> int:
            if not self.defaults or self.capacity["cpu"] == 0:
                return 0
            return request.vcpus * self.capacity[resource] // self.capacity["cpu"]

        down = request.network_download_bps
        up = request.network_upload_bps
        io = request.disk_io_bps
        down = share("network") if down is None else down
        up = share("network") if up is None else up
        io = share("disk_io") if io is None else io
        return {
            "cpu": request.vcpus,
            "memory": request.memory_bytes,
            "network": max(down, up),
            "disk_io": io,
            "disk": request.disk_bytes,
            "gpu": 1 if request.wants_gpu else 0,
        }

    def decide(self, request: AllocationRequest, key: str | None) -> str:
        if key is not None and key in self.keys:
            return "replay" if self.keys[key] == request else "conflict"
        wanted = self.charge(request)
        for name in ("cpu", "memory", "network", "disk_io", "disk"):
            limit = min(int(self.capacity[name] * self.ratio[name]), MAX_AMOUNT)
            pending = self.earlier_pending[name] + sum(g[name] for g in self.granted)
            left = limit - self.allocated[name] - pending
            if wanted[name] and wanted[name] > max(0, left):
                return f"refused {name}"
        if wanted["gpu"]:
            used = self.gpu_used + sum(g["gpu"] for g in self.granted)
            if self.gpu_total == 0 or used >= self.gpu_total:
                return "refused gpu"
        self.granted.append(wanted)
        if key is not None:
            self.keys[key] = request
        return "granted"


bandwidth = st.one_of(st.none(), st.integers(0, 3).map(lambda n: n * 100))
oracle_requests = st.builds(
    AllocationRequest,
    vcpus=st.integers(0, 4),
    memory_bytes=st.integers(0, 4).map(lambda n: n * GIB),
    disk_bytes=st.integers(0, 3).map(lambda n: n * 100),
    network_download_bps=bandwidth,
    network_upload_bps=bandwidth,
    disk_io_bps=bandwidth,
    needs_gpu=st.sampled_from([False, False, False, True]),
)
amount = st.integers(0, 12)


@settings(max_examples=400, deadline=None)
@given(
    capacity=st.fixed_dictionaries({r.value: amount for r in RESOURCES}),
    ratio=st.fixed_dictionaries({r.value: st.sampled_from([0.5, 1.0, 1.5, 4.0]) for r in RESOURCES}),
    allocated=st.fixed_dictionaries({r.value: amount for r in RESOURCES}),
    pending=st.fixed_dictionaries({r.value: amount for r in RESOURCES}),
    gpu=st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(0, 2)),
    defaults=st.booleans(),
    asks=st.lists(st.tuples(oracle_requests, st.sampled_from([None, None, "a", "b"])), max_size=12),
)
def test_decide_agrees_with_a_naive_oracle(
    capacity: dict[str, int],
    ratio: dict[str, float],
    allocated: dict[str, int],
    pending: dict[str, int],
    gpu: tuple[int, int, int],
    defaults: bool,
    asks: list[tuple[AllocationRequest, str | None]],
) -> None:
    capacity = {**capacity, "memory": capacity["memory"] * GIB}
    allocated = {**allocated, "memory": allocated["memory"] * GIB}
    pending = {**pending, "memory": pending["memory"] * GIB}
    total, used, held = gpu
    slots = GpuSlots("passthrough", total, used, held) if total else None
    state = host(
        {ResourceType(k): v for k, v in capacity.items()},
        {ResourceType(k): v for k, v in ratio.items()},
        {ResourceType(k): v for k, v in allocated.items()},
        {ResourceType(k): v for k, v in pending.items()},
        slots,
    )
    oracle = Oracle(capacity, ratio, allocated, pending, total, used + held if total else 0, defaults)
    policy = DefaultBandwidth(enabled=defaults)

    decision = decide(state, [Ask(r, k) for r, k in asks], {}, policy, 60)

    expected = [oracle.decide(r, k) for r, k in asks]
    got = []
    for outcome in decision.outcomes:
        if isinstance(outcome, Admit):
            got.append("granted")
        elif isinstance(outcome, Replay):
            got.append("replay")
        elif isinstance(outcome, Reused):
            got.append("conflict")
        else:
            assert isinstance(outcome, InsufficientResources), outcome
            got.append(f"refused {outcome.details['resource']}")
    assert got == expected
    after = {name: pending[name] + sum(g[name] for g in oracle.granted) for name in pending}
    assert decision.pending == tuple(after[r.value] for r in RESOURCES)
    assert decision.gpu_pending == (held if total else 0) + sum(g["gpu"] for g in oracle.granted)


def test_charge_is_what_decide_holds() -> None:
    granted = one(host(), AllocationRequest(1, 2, 3, 4, 5, 6, needs_gpu=False))
    assert isinstance(granted, Admit)
    assert granted.charge == Charge(1, 2, 3, 4, 5, 6, 0, None, ())
