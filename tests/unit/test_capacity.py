"""The capacity formula, amounts, and how refusals word them (the decision itself:
test_admission_decision.py)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.core.capacity import (
    MAX_VCPUS,
    MIN_DISK_FOR_PULL,
    ResourceStatus,
    available,
    check_disk_for_pull,
    check_image_storage,
    effective_limit,
    format_amount,
    insufficient,
    link_share,
    max_image_storage_bytes,
    oversub_ratio,
    proportional_share,
)
from ledger.core.charges import AllocationRequest
from ledger.core.errors import InsufficientResources, InvalidRequest
from ledger.core.resources import DEFAULT_RATIOS, ResourceType, Source
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


BANDWIDTHS = ("network_download_bps", "network_upload_bps", "disk_io_bps")
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
    if value is None and name in BANDWIDTHS:
        return  # a bandwidth left unstated: see test_an_unstated_bandwidth_is_none
    with pytest.raises(InvalidRequest, match="must be a whole number") as caught:
        AllocationRequest(**{name: value})  # type: ignore[arg-type]
    assert caught.value.details["field"] == name


def test_an_unstated_bandwidth_is_none_and_charged_the_default_later() -> None:
    request = AllocationRequest(vcpus=2)
    assert [getattr(request, name) for name in BANDWIDTHS] == [None, None, None]


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


def test_the_uplink_takes_the_larger_direction() -> None:
    assert link_share(100, 300) == 300
    assert link_share(500, 300) == 500
    assert link_share(0, 0) == 0


# --------------------------------------------------------------------------------------- admission


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
    assert caught.value.message == (
        "insufficient disk space for image pull: 5368709119 bytes available, "
        "minimum 5368709120 bytes required"
    )


def test_image_pull_refused_on_an_empty_disk() -> None:
    with pytest.raises(InsufficientResources, match=r": 0 bytes available"):
        check_disk_for_pull(0)


def test_max_image_storage_is_a_fraction_of_disk_capacity() -> None:
    assert max_image_storage_bytes(1000 * GIB, 0.2) == 200 * GIB
    assert max_image_storage_bytes(10, 0.2) == 2
    assert max_image_storage_bytes(0, 0.2) == 0


def test_image_storage_below_the_cap_is_allowed() -> None:
    check_image_storage(199 * GIB, 200 * GIB, 0.2)


def test_image_storage_at_or_over_the_cap_is_refused_in_the_seeds_words() -> None:
    for current in (200 * GIB, 300 * GIB):
        with pytest.raises(InsufficientResources) as caught:
            check_image_storage(current, 200 * GIB, 0.2)
        assert caught.value.message == (
            f"image storage limit exceeded: {current} bytes used, limit is {200 * GIB} bytes (20% of disk)"
        )
        assert caught.value.details["allocated"] == current
        assert caught.value.details["effective_limit"] == 200 * GIB
