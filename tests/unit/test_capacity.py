"""The capacity formula and the admission rules."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.core.capacity import (
    MAX_VCPUS,
    MIN_DISK_FOR_PULL,
    AllocationRequest,
    GpuSlots,
    ResourceStatus,
    available,
    check_disk_for_pull,
    check_image_storage,
    effective_limit,
    first_shortfall,
    format_amount,
    gpu_shortfall,
    insufficient,
    max_image_storage_bytes,
    oversub_ratio,
    proportional_share,
)
from ledger.core.errors import InsufficientResources, InvalidRequest
from ledger.core.resources import ADMISSION_ORDER, DEFAULT_RATIOS, ResourceType, Source
from ledger.core.units import MAX_AMOUNT

GIB = 2**30
CPU, MEMORY, DISK, NETWORK, DISK_IO = (
    ResourceType.CPU,
    ResourceType.MEMORY,
    ResourceType.DISK,
    ResourceType.NETWORK,
    ResourceType.DISK_IO,
)


def status(
    resource: ResourceType, capacity: int, allocated: int = 0, pending: int = 0, ratio: float | None = None
) -> ResourceStatus:
    return ResourceStatus.compute(resource, capacity, ratio, Source.DETECTED, allocated, pending)


def roomy() -> dict[ResourceType, ResourceStatus]:
    """A host with plenty of everything."""
    return {r: status(r, 10**15) for r in ResourceType}


# ------------------------------------------------------------------------------------------ formula


def test_effective_limit_is_capacity_times_ratio_truncated() -> None:
    assert effective_limit(16, 4.0) == 64
    assert effective_limit(10, 1.5) == 15
    assert effective_limit(3, 1.5) == 4
    assert effective_limit(0, 4.0) == 0


def test_available_is_limit_minus_allocated_minus_pending() -> None:
    assert available(64, 60) == 4
    assert available(64, 50, 10) == 4
    assert available(64, 0) == 64


def test_available_is_never_negative_when_over_committed() -> None:
    assert available(64, 100) == 0
    assert available(64, 60, 10) == 0


@given(st.integers(0, MAX_AMOUNT), st.integers(0, MAX_AMOUNT), st.integers(0, MAX_AMOUNT))
def test_available_is_never_negative_and_never_above_the_limit(
    limit: int, allocated: int, pending: int
) -> None:
    assert 0 <= available(limit, allocated, pending) <= limit


@pytest.mark.parametrize("ratio", [None, 0, 0.0, -1.0, -0.5, math.nan, math.inf])
@pytest.mark.parametrize("resource", list(ResourceType))
def test_missing_non_positive_or_non_finite_ratio_falls_back_to_the_default(
    resource: ResourceType, ratio: float | None
) -> None:
    assert oversub_ratio(resource, ratio) == DEFAULT_RATIOS[resource]


def test_positive_ratio_is_used_as_given() -> None:
    assert oversub_ratio(CPU, 8.0) == 8.0
    assert oversub_ratio(MEMORY, 0.5) == 0.5


def test_default_ratios_are_the_seeds() -> None:
    assert DEFAULT_RATIOS == {CPU: 4.0, MEMORY: 1.0, DISK: 1.0, NETWORK: 2.0, DISK_IO: 2.0}


def test_resource_status_applies_the_formula_and_keeps_pending_apart() -> None:
    s = status(CPU, 16, allocated=40, pending=8, ratio=None)
    assert s.effective_limit == 64
    assert s.oversub_ratio == 4.0
    assert s.allocated == 40
    assert s.pending == 8
    assert s.available == 16


def test_resource_status_to_dict_uses_the_seed_names() -> None:
    data = status(NETWORK, 1_250_000_000, allocated=10, ratio=2.0).to_dict()
    assert data == {
        "type": "network",
        "capacity": 1_250_000_000,
        "effective_limit": 2_500_000_000,
        "allocated": 10,
        "pending": 0,
        "available": 2_499_999_990,
        "oversub_ratio": 2.0,
        "source": "detected",
    }


# ---------------------------------------------------------------------------------------- requests


AMOUNT_FIELDS = (
    "vcpus",
    "memory_bytes",
    "disk_bytes",
    "network_download_bps",
    "network_upload_bps",
    "disk_io_bps",
)


@pytest.mark.parametrize("name", AMOUNT_FIELDS)
def test_negative_amount_is_an_invalid_request_naming_the_field(name: str) -> None:
    with pytest.raises(InvalidRequest, match="cannot be negative") as caught:
        AllocationRequest(**{name: -1})  # type: ignore[arg-type]
    assert caught.value.details["field"] == name
    assert caught.value.code == "invalid_request"


@pytest.mark.parametrize("name", AMOUNT_FIELDS)
@pytest.mark.parametrize("value", [True, False, 1.5, 2.0, "4", None])
def test_non_integer_amount_is_an_invalid_request_naming_the_field(name: str, value: object) -> None:
    with pytest.raises(InvalidRequest, match="must be a whole number") as caught:
        AllocationRequest(**{name: value})  # type: ignore[arg-type]
    assert caught.value.details["field"] == name


@pytest.mark.parametrize("name", AMOUNT_FIELDS)
def test_amount_beyond_int64_is_an_invalid_request_naming_the_field(name: str) -> None:
    maximum = MAX_VCPUS if name == "vcpus" else MAX_AMOUNT
    with pytest.raises(InvalidRequest, match="too large") as caught:
        AllocationRequest(**{name: maximum + 1})  # type: ignore[arg-type]
    assert caught.value.details["field"] == name
    AllocationRequest(**{name: maximum})  # type: ignore[arg-type]


def test_needs_gpu_must_be_a_bool() -> None:
    with pytest.raises(InvalidRequest) as caught:
        AllocationRequest(needs_gpu=1)  # type: ignore[arg-type]
    assert caught.value.details["field"] == "needs_gpu"


def test_gpu_profile_must_be_a_string() -> None:
    with pytest.raises(InvalidRequest) as caught:
        AllocationRequest(gpu_profile=3)  # type: ignore[arg-type]
    assert caught.value.details["field"] == "gpu_profile"


def test_wants_gpu_when_needed_or_a_profile_is_named() -> None:
    assert not AllocationRequest().wants_gpu
    assert AllocationRequest(needs_gpu=True).wants_gpu
    assert AllocationRequest(gpu_profile="L40S-1Q").wants_gpu
    assert not AllocationRequest(gpu_profile="").wants_gpu


def test_network_demand_is_the_larger_of_download_and_upload() -> None:
    assert AllocationRequest(network_download_bps=100, network_upload_bps=300).demand(NETWORK) == 300
    assert AllocationRequest(network_download_bps=500, network_upload_bps=300).demand(NETWORK) == 500


def test_demand_per_resource() -> None:
    request = AllocationRequest(vcpus=2, memory_bytes=3, disk_bytes=4, disk_io_bps=5)
    assert [request.demand(r) for r in (CPU, MEMORY, DISK, DISK_IO)] == [2, 3, 4, 5]


# --------------------------------------------------------------------------------------- admission


def test_seed_cpu_refusal_message() -> None:
    statuses = roomy()
    statuses[CPU] = status(CPU, 16, allocated=60, ratio=4.0)
    refusal = first_shortfall(AllocationRequest(vcpus=8), statuses)
    assert refusal is not None
    assert refusal.message == (
        "insufficient CPU: requested 8 vCPUs, but only 4 available "
        "(currently allocated: 60, effective limit: 64 with 4.0x oversubscription)"
    )
    assert refusal.code == "insufficient_resources"
    assert refusal.details == {
        "resource": "cpu",
        "requested": 8,
        "available": 4,
        "allocated": 60,
        "pending": 0,
        "effective_limit": 64,
        "ratio": 4.0,
    }


def test_refusal_mentions_pending_reservations_when_there_are_some() -> None:
    refusal = insufficient(CPU, 8, status(CPU, 16, allocated=50, pending=10, ratio=4.0))
    assert refusal.message == (
        "insufficient CPU: requested 8 vCPUs, but only 4 available "
        "(currently allocated: 50, pending reservations: 10, effective limit: 64 with 4.0x oversubscription)"
    )


def test_memory_refusal_shows_sizes() -> None:
    refusal = insufficient(MEMORY, 8 * GIB, status(MEMORY, 16 * GIB, allocated=12 * GIB, ratio=1.0))
    assert refusal.message == (
        "insufficient memory: requested 8.0 GiB, but only 4.0 GiB available "
        "(currently allocated: 12.0 GiB, effective limit: 16.0 GiB with 1.0x oversubscription)"
    )


def test_format_amount_per_resource() -> None:
    assert format_amount(CPU, 4) == "4 vCPUs"
    assert format_amount(DISK, GIB) == "1.0 GiB"
    assert format_amount(NETWORK, 1_250_000_000) == "10.0 Gbps"
    assert format_amount(DISK_IO, 10**9) == "1.0 GB/s"


def test_request_that_fits_has_no_shortfall() -> None:
    request = AllocationRequest(vcpus=4, memory_bytes=GIB, network_download_bps=10, disk_io_bps=10)
    assert first_shortfall(request, roomy()) is None


def test_exactly_the_available_amount_fits() -> None:
    statuses = roomy()
    statuses[CPU] = status(CPU, 16, allocated=60, ratio=4.0)
    assert first_shortfall(AllocationRequest(vcpus=4), statuses) is None
    assert first_shortfall(AllocationRequest(vcpus=5), statuses) is not None


def test_zero_demand_is_not_checked_even_on_a_full_host() -> None:
    statuses = {r: status(r, 0) for r in ResourceType}
    assert first_shortfall(AllocationRequest(), statuses) is None


def test_admission_order_is_cpu_memory_network_disk_io_disk() -> None:
    assert ADMISSION_ORDER == (CPU, MEMORY, NETWORK, DISK_IO, DISK)


@pytest.mark.parametrize("expected", [CPU, MEMORY, NETWORK, DISK_IO, DISK])
def test_first_shortfall_reports_resources_in_the_seed_order(expected: ResourceType) -> None:
    # Everything from `expected` on is full; only `expected` may be reported.
    position = ADMISSION_ORDER.index(expected)
    statuses = {r: status(r, 0 if ADMISSION_ORDER.index(r) >= position else 10**12) for r in ResourceType}
    request = AllocationRequest(
        vcpus=1, memory_bytes=1, disk_bytes=1, network_download_bps=1, network_upload_bps=1, disk_io_bps=1
    )
    refusal = first_shortfall(request, statuses)
    assert refusal is not None
    assert refusal.details["resource"] == expected.value


def test_network_shortfall_uses_the_larger_direction() -> None:
    statuses = roomy()
    statuses[NETWORK] = status(NETWORK, 50, ratio=2.0)  # 100 available
    assert (
        first_shortfall(AllocationRequest(network_download_bps=100, network_upload_bps=90), statuses) is None
    )
    refusal = first_shortfall(AllocationRequest(network_download_bps=10, network_upload_bps=101), statuses)
    assert refusal is not None
    assert refusal.details["requested"] == 101


# --------------------------------------------------------------------------------------------- GPU


def test_no_gpu_wanted_means_no_gpu_shortfall() -> None:
    assert gpu_shortfall(AllocationRequest(), None) is None
    assert gpu_shortfall(AllocationRequest(), GpuSlots("passthrough", 1, 1)) is None


def test_gpu_wanted_on_a_host_without_gpu_is_refused() -> None:
    for slots in (None, GpuSlots("passthrough", 0, 0)):
        refusal = gpu_shortfall(AllocationRequest(needs_gpu=True), slots)
        assert refusal is not None
        assert refusal.message == "insufficient GPU: this host has no GPU"
        assert refusal.details["resource"] == "gpu"


def test_gpu_wanted_with_all_slots_used_is_refused() -> None:
    refusal = gpu_shortfall(AllocationRequest(gpu_profile="L40S-1Q"), GpuSlots("vgpu", 4, 4))
    assert refusal is not None
    assert refusal.message == "insufficient GPU: all 4 GPU slots are in use (vgpu mode)"
    assert refusal.details["allocated"] == 4
    assert refusal.details["effective_limit"] == 4


def test_gpu_wanted_with_a_free_slot_fits() -> None:
    assert gpu_shortfall(AllocationRequest(needs_gpu=True), GpuSlots("passthrough", 2, 1)) is None


def test_gpu_free_slots_never_negative() -> None:
    assert GpuSlots("passthrough", 1, 3).free == 0


# ------------------------------------------------------------------------------- default bandwidth


def test_proportional_share_is_the_vcpu_share_of_capacity() -> None:
    # 10 Gbps link, 64 vCPUs, a 4-vCPU instance: 1/16 of 1,250,000,000 bytes/s.
    assert proportional_share(4, 64, 1_250_000_000) == 78_125_000
    assert proportional_share(1, 3, 10) == 3  # integer, rounded down


def test_proportional_share_with_ratio_multiplies_by_it() -> None:
    assert proportional_share(4, 64, 1_250_000_000, ratio=2.0) == 156_250_000


def test_proportional_share_of_nothing_is_zero() -> None:
    assert proportional_share(0, 64, 1000) == 0
    assert proportional_share(4, 0, 1000) == 0
    assert proportional_share(-1, 64, 1000) == 0


@given(st.integers(1, 1024), st.integers(1, 1024), st.integers(0, 10**12))
def test_proportional_share_matches_integer_arithmetic(vcpus: int, cpus: int, capacity: int) -> None:
    assert proportional_share(vcpus, cpus, capacity) == vcpus * capacity // cpus


# ------------------------------------------------------------------------------------------ images


def test_image_pull_needs_five_gib_available() -> None:
    assert MIN_DISK_FOR_PULL == 5 * GIB
    check_disk_for_pull(5 * GIB)
    check_disk_for_pull(100 * GIB)
    with pytest.raises(InsufficientResources) as caught:
        check_disk_for_pull(5 * GIB - 1)
    assert caught.value.details["resource"] == "disk"
    assert caught.value.details["requested"] == 5 * GIB
    assert "need at least 5.0 GiB" in caught.value.message


def test_image_pull_refused_on_an_empty_disk() -> None:
    with pytest.raises(InsufficientResources, match=r"0 B available"):
        check_disk_for_pull(0)


def test_max_image_storage_is_a_fraction_of_disk_capacity() -> None:
    assert max_image_storage_bytes(1000 * GIB, 0.2) == 200 * GIB
    assert max_image_storage_bytes(10, 0.2) == 2
    assert max_image_storage_bytes(0, 0.2) == 0


def test_image_storage_below_the_cap_is_allowed() -> None:
    check_image_storage(199 * GIB, 200 * GIB)


def test_image_storage_at_or_over_the_cap_is_refused() -> None:
    for current in (200 * GIB, 300 * GIB):
        with pytest.raises(InsufficientResources, match="image storage limit exceeded") as caught:
            check_image_storage(current, 200 * GIB)
        assert caught.value.details["allocated"] == current
        assert caught.value.details["effective_limit"] == 200 * GIB


@pytest.mark.parametrize(("down", "up", "network"), [(7, 11, 11), (11, 7, 11), (0, 0, 0)])
def test_each_resources_demand_and_network_takes_the_larger_direction(
    down: int, up: int, network: int
) -> None:
    request = AllocationRequest(
        vcpus=2,
        memory_bytes=3,
        disk_bytes=5,
        network_download_bps=down,
        network_upload_bps=up,
        disk_io_bps=13,
    )
    expected = {
        ResourceType.CPU: 2,
        ResourceType.MEMORY: 3,
        ResourceType.DISK: 5,
        ResourceType.NETWORK: network,
        ResourceType.DISK_IO: 13,
    }
    assert {r: request.demand(r) for r in ResourceType} == expected
    assert request.demands() == tuple(expected[r] for r in ResourceType)
