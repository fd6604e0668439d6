"""The ledger's contract, written once and run on SQLite and PostgreSQL (the `ledger` fixture is per engine).

Each test names one behaviour of the seed's resources API or of ours (holds, idempotency, versions, audit).
The `ledger` fixture asserts after every test that the running totals equal the recomputed sums.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text

from ledger.core.charges import AllocationRequest, DefaultBandwidth
from ledger.core.errors import (
    Conflict,
    InsufficientResources,
    InvalidRequest,
    LedgerError,
    NotFound,
    UnknownHost,
)
from ledger.core.gpu import GPUProfile, GPUStatus, PassthroughDevice
from ledger.core.records import ImageRecord, InstanceRecord, OciCacheRecord, VolumeRecord
from ledger.core.resources import Capacity, ResourceType, Source
from ledger.core.units import MAX_AMOUNT
from ledger.store.ledger import EventMark, Ledger
from tests.conftest import FakeClock, capacities

GIB = 2**30
GB = 10**9
CPU, MEMORY, DISK, NETWORK, DISK_IO = (
    ResourceType.CPU,
    ResourceType.MEMORY,
    ResourceType.DISK,
    ResourceType.NETWORK,
    ResourceType.DISK_IO,
)
ONE_TO_ONE = {r: 1.0 for r in ResourceType}


def register(
    ledger: Ledger, host_id: str, ratios: dict[ResourceType, float] | None = None, **caps: int
) -> None:
    ledger.register_host(host_id, capacities(**caps), ONE_TO_ONE if ratios is None else ratios)


def running(instance_id: str, state: str = "Running", **amounts: Any) -> InstanceRecord:
    return InstanceRecord(id=instance_id, state=state, **amounts)


def usage(ledger: Ledger, host_id: str) -> dict[str, tuple[int, int, int]]:
    """(allocated, pending, available) per resource."""
    status = ledger.full_status(host_id, limit=0)
    return {r.value: (s.allocated, s.pending, s.available) for r, s in status.resources.items()}


def row_counts(ledger: Ledger, host_id: str) -> dict[str, int]:
    tables = (
        "reservations",
        "instances",
        "volumes",
        "images",
        "oci_cache",
        "allocation_log",
        "processed_events",
    )
    with ledger.engine.connect() as conn:
        return {
            t: conn.execute(text(f"SELECT COUNT(*) FROM {t} WHERE host_id = :h"), {"h": host_id}).scalar_one()
            for t in tables
        }


def reservation_status(ledger: Ledger, reservation_id: str) -> str:
    return ledger.reservation(reservation_id).status


# ---- what counts ------------------------------------------------------------------------------


@pytest.mark.parametrize("state", ["Created", "Running", "Paused", "Unknown", "SomethingNew"])
def test_active_states_count_toward_allocation(ledger: Ledger, host_id: str, state: str) -> None:
    register(ledger, host_id)
    ledger.apply_instance(host_id, running("vm", state, vcpus=2, memory_bytes=GIB))
    assert usage(ledger, host_id)["cpu"][0] == 2
    assert usage(ledger, host_id)["memory"][0] == GIB


@pytest.mark.parametrize("state", ["Stopped", "Standby", "Shutdown"])
def test_resting_states_do_not_count(ledger: Ledger, host_id: str, state: str) -> None:
    register(ledger, host_id)
    ledger.apply_instance(host_id, running("vm", state, vcpus=2, memory_bytes=GIB, overlay_bytes=GB))
    assert usage(ledger, host_id)["cpu"] == (0, 0, 16)
    assert usage(ledger, host_id)["disk"][0] == 0
    assert ledger.full_status(host_id).allocations == []


def test_a_state_change_moves_the_totals(ledger: Ledger, host_id: str) -> None:
    register(ledger, host_id)
    ledger.apply_instance(host_id, running("vm", "Running", vcpus=3), version=1)
    assert usage(ledger, host_id)["cpu"][0] == 3
    ledger.apply_instance(host_id, running("vm", "Stopped", vcpus=3), version=2)
    assert usage(ledger, host_id)["cpu"][0] == 0
    ledger.apply_instance(host_id, running("vm", "Running", vcpus=5), version=3)
    assert usage(ledger, host_id)["cpu"][0] == 5


def test_network_allocated_is_the_sum_of_each_instances_larger_direction(
    ledger: Ledger, host_id: str
) -> None:
    register(ledger, host_id)
    ledger.apply_instance(host_id, running("a", network_download_bps=100, network_upload_bps=30))
    ledger.apply_instance(host_id, running("b", network_download_bps=10, network_upload_bps=50))
    assert usage(ledger, host_id)["network"][0] == 150


def test_disk_allocated_adds_images_oci_cache_all_volumes_and_active_overlays(
    ledger: Ledger, host_id: str
) -> None:
    register(ledger, host_id)
    ledger.apply_image(host_id, ImageRecord(id="img", size_bytes=10 * GB))
    ledger.apply_oci_cache(host_id, OciCacheRecord(total_bytes=3 * GB))
    ledger.apply_volume(host_id, VolumeRecord(id="attached", size_bytes=20 * GB, attached_to="a"))
    ledger.apply_volume(host_id, VolumeRecord(id="loose", size_bytes=5 * GB))
    ledger.apply_instance(
        host_id, running("a", overlay_bytes=2 * GB, volume_overlay_bytes=GB, volume_bytes=20 * GB)
    )
    ledger.apply_instance(host_id, running("stopped", "Stopped", overlay_bytes=7 * GB))

    status = ledger.full_status(host_id)
    assert status.disk_breakdown.to_dict() == {
        "images_bytes": 10 * GB,
        "oci_cache_bytes": 3 * GB,
        "volumes_bytes": 25 * GB,
        "overlays_bytes": 3 * GB,
    }
    assert status.resources[DISK].allocated == 41 * GB
    [vm] = status.allocations
    assert vm.disk_bytes == 23 * GB  # per instance: its overlays and its attached volumes


def test_deleting_records_gives_their_disk_back(ledger: Ledger, host_id: str) -> None:
    register(ledger, host_id)
    ledger.apply_image(host_id, ImageRecord(id="img", size_bytes=10 * GB))
    ledger.apply_volume(host_id, VolumeRecord(id="v", size_bytes=5 * GB))
    ledger.apply_instance(host_id, running("a", overlay_bytes=GB))
    ledger.delete_image(host_id, "img")
    ledger.delete_volume(host_id, "v")
    ledger.delete_instance(host_id, "a")
    assert ledger.full_status(host_id).disk_breakdown.to_dict() == dict.fromkeys(
        ("images_bytes", "oci_cache_bytes", "volumes_bytes", "overlays_bytes"), 0
    )


def test_available_is_never_negative_when_an_instance_arrives_after_its_hold_expired(
    timed: Ledger, clock: FakeClock, host_id: str
) -> None:
    register(timed, host_id, cpu=4)
    grant = timed.reserve(host_id, AllocationRequest(vcpus=4), ttl=10)
    clock.advance(11)
    timed.reserve(host_id, AllocationRequest(vcpus=4))  # the expired hold no longer counts
    timed.apply_instance(host_id, running("late", vcpus=4, reservation_id=grant.reservation_id))
    cpu = timed.status(host_id, CPU)
    assert (cpu.allocated, cpu.pending, cpu.available) == (4, 4, 0)
    assert reservation_status(timed, grant.reservation_id) == "expired"


def test_available_is_never_negative_when_capacity_is_lowered(ledger: Ledger, host_id: str) -> None:
    register(ledger, host_id, cpu=8)
    ledger.apply_instance(host_id, running("a", vcpus=8))
    register(ledger, host_id, cpu=2)
    cpu = ledger.status(host_id, CPU)
    assert (cpu.capacity, cpu.effective_limit, cpu.allocated, cpu.available) == (2, 2, 8, 0)


# ---- ratios -----------------------------------------------------------------------------------


def test_missing_ratios_fall_back_to_the_defaults(ledger: Ledger, host_id: str) -> None:
    ledger.register_host(host_id, capacities(cpu=4, network=1000, disk_io=500), {})
    status = ledger.full_status(host_id).resources
    assert {r.value: s.oversub_ratio for r, s in status.items()} == {
        "cpu": 4.0,
        "memory": 1.0,
        "disk": 1.0,
        "network": 2.0,
        "disk_io": 2.0,
    }
    assert status[CPU].effective_limit == 16
    assert status[NETWORK].effective_limit == 2000
    assert status[DISK_IO].effective_limit == 1000


def test_registering_again_with_a_new_ratio_moves_the_effective_limit(ledger: Ledger, host_id: str) -> None:
    register(ledger, host_id, cpu=10)
    ledger.reserve(host_id, AllocationRequest(vcpus=4))
    register(ledger, host_id, {CPU: 2.5}, cpu=10)
    cpu = ledger.status(host_id, CPU)
    assert (cpu.oversub_ratio, cpu.effective_limit, cpu.pending, cpu.available) == (2.5, 25, 4, 21)


@pytest.mark.parametrize("ratio", [0.0, -2.0, math.inf])
def test_register_host_refuses_a_ratio_that_is_not_positive_and_finite_and_writes_nothing(
    ledger: Ledger, host_id: str, ratio: float
) -> None:
    with pytest.raises(InvalidRequest) as refused:
        ledger.register_host(host_id, capacities(), {CPU: ratio})
    assert refused.value.code == "invalid_request"
    assert host_id not in ledger.host_ids()
    register(ledger, host_id, cpu=10)
    with pytest.raises(InvalidRequest):
        ledger.register_host(host_id, capacities(cpu=10), {CPU: ratio})
    assert ledger.status(host_id, CPU).oversub_ratio == 1.0


def test_a_huge_ratio_clamps_the_effective_limit_to_what_bigint_holds(ledger: Ledger, host_id: str) -> None:
    register(ledger, host_id, {CPU: 1e300}, cpu=10)
    assert ledger.status(host_id, CPU).effective_limit == MAX_AMOUNT
    ledger.register_host(host_id, capacities(memory=MAX_AMOUNT), {MEMORY: 2.0})
    assert ledger.status(host_id, MEMORY).effective_limit == MAX_AMOUNT


# ---- refusals ---------------------------------------------------------------------------------


def test_refusal_names_the_resource_with_the_seeds_wording_and_structured_fields(
    ledger: Ledger, host_id: str
) -> None:
    register(ledger, host_id, cpu=16)
    ledger.apply_instance(host_id, running("a", vcpus=10))
    with pytest.raises(InsufficientResources) as refused:
        ledger.reserve(host_id, AllocationRequest(vcpus=20))
    assert refused.value.message == (
        "insufficient CPU: requested 20 vCPUs, but only 6 available "
        "(currently allocated: 10, effective limit: 16 with 1.0x oversubscription)"
    )
    assert refused.value.code == "insufficient_resources"
    assert refused.value.to_dict() == {
        "code": "insufficient_resources",
        "message": refused.value.message,
        "resource": "cpu",
        "requested": 20,
        "available": 6,
        "allocated": 10,
        "pending": 0,
        "effective_limit": 16,
        "ratio": 1.0,
        "host": host_id,
    }


def test_refusal_mentions_pending_reservations_when_there_are_some(ledger: Ledger, host_id: str) -> None:
    ledger.register_host(host_id, capacities(memory=8 * GIB), {MEMORY: 1.5})
    ledger.reserve(host_id, AllocationRequest(memory_bytes=4 * GIB))
    with pytest.raises(InsufficientResources) as refused:
        ledger.reserve(host_id, AllocationRequest(memory_bytes=10 * GIB))
    assert refused.value.message == (
        "insufficient memory: requested 10.0 GiB, but only 8.0 GiB available "
        "(currently allocated: 0 B, pending reservations: 4.0 GiB, effective limit: 12.0 GiB "
        "with 1.5x oversubscription)"
    )
    assert refused.value.details["pending"] == 4 * GIB


def test_network_refusal_reads_in_bits_per_second(ledger: Ledger, host_id: str) -> None:
    register(ledger, host_id, network=1_250_000_000)
    with pytest.raises(InsufficientResources) as refused:
        ledger.reserve(host_id, AllocationRequest(network_download_bps=10, network_upload_bps=2_500_000_000))
    assert refused.value.message.startswith(
        "insufficient network bandwidth: requested 20.0 Gbps, but only 10.0 Gbps available"
    )
    assert refused.value.details["requested"] == 2_500_000_000


# The host is 16 vCPUs, 64 GiB, 1 TB disk, 10 Gbps, 1 GB/s, no GPU; each request overflows its resource and
# everything after it in the seed's order, so the first name proves the order.
_OVER = {
    "cpu": {"vcpus": 17},
    "memory": {"memory_bytes": 65 * GIB},
    "network": {"network_download_bps": 2 * 10**9},
    "disk_io": {"disk_io_bps": 2 * 10**9},
    "disk": {"disk_bytes": 2000 * GB},
    "gpu": {"needs_gpu": True},
}
_ORDER = list(_OVER)


@pytest.mark.parametrize("first", _ORDER)
def test_admission_checks_cpu_memory_network_disk_io_disk_then_gpu(
    ledger: Ledger, host_id: str, first: str
) -> None:
    register(ledger, host_id)
    request: dict[str, Any] = {}
    for name in _ORDER[_ORDER.index(first) :]:
        request.update(_OVER[name])
    with pytest.raises(InsufficientResources) as refused:
        ledger.reserve(host_id, AllocationRequest(**request))
    assert refused.value.details["resource"] == first
    assert row_counts(ledger, host_id)["reservations"] == 0


def test_a_request_that_fits_exactly_is_granted(ledger: Ledger, host_id: str) -> None:
    register(ledger, host_id, cpu=4)
    ledger.reserve(host_id, AllocationRequest(vcpus=4))
    assert ledger.status(host_id, CPU).available == 0
    with pytest.raises(InsufficientResources):
        ledger.reserve(host_id, AllocationRequest(vcpus=1))


# ---- GPU --------------------------------------------------------------------------------------


def _passthrough(slots: int = 1) -> GPUStatus:
    devices = tuple(
        PassthroughDevice(f"0000:0{i}:00.0", "10de", "2330", "NVIDIA H100", "nvidia", True)
        for i in range(slots)
    )
    return GPUStatus(mode="passthrough", total_slots=slots, used_slots=0, devices=devices)


def _vgpu() -> GPUStatus:
    profile = GPUProfile(name="NVIDIA H100-20C", type_id="nvidia-1061", framebuffer_mb=20480, available=4)
    return GPUStatus(mode="vgpu", total_slots=4, used_slots=0, profiles=(profile,))


def test_passthrough_host_grants_one_gpu_slot_then_refuses(ledger: Ledger, host_id: str) -> None:
    ledger.register_host(host_id, capacities(), ONE_TO_ONE, _passthrough())
    ledger.reserve(host_id, AllocationRequest(vcpus=1, needs_gpu=True))
    with pytest.raises(InsufficientResources) as refused:
        ledger.reserve(host_id, AllocationRequest(vcpus=1, needs_gpu=True))
    assert refused.value.details["resource"] == "gpu"
    assert refused.value.message == "insufficient GPU: all 1 passthrough slots are in use"
    gpu = ledger.full_status(host_id).gpu
    assert gpu is not None and gpu["pending_slots"] == 1


def test_a_gpu_instance_takes_its_slot(ledger: Ledger, host_id: str) -> None:
    ledger.register_host(host_id, capacities(), ONE_TO_ONE, _passthrough())
    ledger.apply_instance(host_id, running("a", gpu="0000:00:00.0"))
    with pytest.raises(InsufficientResources):
        ledger.reserve(host_id, AllocationRequest(needs_gpu=True))
    gpu = ledger.full_status(host_id).gpu
    assert gpu is not None and gpu["used_slots"] == 1


def test_host_without_gpu_refuses_a_gpu_request(ledger: Ledger, host_id: str) -> None:
    register(ledger, host_id)
    with pytest.raises(InsufficientResources) as refused:
        ledger.reserve(host_id, AllocationRequest(gpu_profile="NVIDIA H100-20C"))
    assert refused.value.message == "insufficient GPU: no GPU available on this host"


def test_vgpu_known_profile_is_granted_unknown_profile_is_invalid(ledger: Ledger, host_id: str) -> None:
    ledger.register_host(host_id, capacities(), ONE_TO_ONE, _vgpu())
    ledger.reserve(host_id, AllocationRequest(gpu_profile="NVIDIA H100-20C"))
    with pytest.raises(InvalidRequest) as refused:
        ledger.reserve(host_id, AllocationRequest(gpu_profile="NVIDIA A100-40C"))
    assert refused.value.code == "invalid_request"
    assert "NVIDIA H100-20C" in refused.value.message
    assert row_counts(ledger, host_id)["reservations"] == 1


# ---- idempotency ------------------------------------------------------------------------------


def test_same_idempotency_key_returns_the_same_reservation_and_holds_once(
    ledger: Ledger, host_id: str
) -> None:
    register(ledger, host_id)
    request = AllocationRequest(vcpus=2, memory_bytes=GIB)
    first = ledger.reserve(host_id, request, idempotency_key="k1")
    again = ledger.reserve(host_id, request, idempotency_key="k1")
    assert again.reservation_id == first.reservation_id
    assert (first.replayed, again.replayed) == (False, True)
    assert usage(ledger, host_id)["cpu"][1] == 2
    assert row_counts(ledger, host_id)["reservations"] == 1


def test_same_key_with_different_amounts_is_a_conflict(ledger: Ledger, host_id: str) -> None:
    register(ledger, host_id)
    first = ledger.reserve(host_id, AllocationRequest(vcpus=2), idempotency_key="k1")
    with pytest.raises(Conflict) as conflict:
        ledger.reserve(host_id, AllocationRequest(vcpus=3), idempotency_key="k1")
    assert conflict.value.code == "conflict"
    assert conflict.value.details["reservation_id"] == first.reservation_id
    assert usage(ledger, host_id)["cpu"][1] == 2


def test_an_idempotency_key_is_scoped_to_its_host(ledger: Ledger, host_id: str) -> None:
    other = host_id + "-b"
    register(ledger, host_id)
    register(ledger, other)
    a = ledger.reserve(host_id, AllocationRequest(vcpus=1), idempotency_key="k")
    b = ledger.reserve(other, AllocationRequest(vcpus=1), idempotency_key="k")
    assert a.reservation_id != b.reservation_id
    assert not b.replayed


def test_replaying_the_key_of_an_expired_hold_reports_it_expired(
    timed: Ledger, clock: FakeClock, host_id: str
) -> None:
    register(timed, host_id)
    timed.reserve(host_id, AllocationRequest(vcpus=1), idempotency_key="k", ttl=5)
    clock.advance(6)
    again = timed.reserve(host_id, AllocationRequest(vcpus=1), idempotency_key="k")
    assert again.status == "expired"


# ---- TTL, release, consume --------------------------------------------------------------------


def test_an_expired_hold_stops_counting_and_ends_expired(
    timed: Ledger, clock: FakeClock, host_id: str
) -> None:
    register(timed, host_id, cpu=4)
    grant = timed.reserve(host_id, AllocationRequest(vcpus=3), ttl=30)
    clock.advance(29)
    assert timed.status(host_id, CPU).pending == 3
    clock.advance(1)
    assert timed.status(host_id, CPU).pending == 0
    info = timed.reservation(grant.reservation_id)
    assert info.status == "expired"
    assert info.ended_at == clock.now


def test_locking_the_host_sweeps_every_hold_whose_time_has_come(
    timed: Ledger, clock: FakeClock, host_id: str
) -> None:
    register(timed, host_id)
    early = [timed.reserve(host_id, AllocationRequest(vcpus=1), ttl=5) for _ in range(2)]
    late = timed.reserve(host_id, AllocationRequest(vcpus=1), ttl=50)
    clock.advance(10)
    assert usage(timed, host_id)["cpu"][1] == 1
    assert [timed.reservation(g.reservation_id).status for g in (*early, late)] == ["expired"] * 2 + ["held"]


def test_release_gives_the_hold_back_and_a_second_release_is_a_no_op(ledger: Ledger, host_id: str) -> None:
    register(ledger, host_id)
    grant = ledger.reserve(host_id, AllocationRequest(vcpus=2))
    assert ledger.release(grant.reservation_id).status == "released"
    logged = row_counts(ledger, host_id)["allocation_log"]
    assert ledger.release(grant.reservation_id).status == "released"
    assert row_counts(ledger, host_id)["allocation_log"] == logged
    assert usage(ledger, host_id)["cpu"] == (0, 0, 16)


def test_releasing_an_expired_hold_says_it_expired(timed: Ledger, clock: FakeClock, host_id: str) -> None:
    register(timed, host_id)
    grant = timed.reserve(host_id, AllocationRequest(vcpus=2), ttl=1)
    clock.advance(2)
    assert timed.release(grant.reservation_id).status == "expired"


def test_releasing_an_unknown_reservation_is_not_found(ledger: Ledger) -> None:
    with pytest.raises(NotFound) as missing:
        ledger.release("no-such-reservation")
    assert missing.value.code == "not_found"


def test_an_instance_consumes_its_reservation_and_is_counted_once(ledger: Ledger, host_id: str) -> None:
    register(ledger, host_id)
    amounts = {"vcpus": 2, "memory_bytes": GIB, "network_download_bps": 100, "network_upload_bps": 0}
    grant = ledger.reserve(host_id, AllocationRequest(**amounts, disk_io_bps=0))
    record = running("vm", **amounts, disk_io_bps=0, reservation_id=grant.reservation_id)
    ledger.apply_instance(host_id, record, version=1)
    assert usage(ledger, host_id)["cpu"] == (2, 0, 14)
    assert usage(ledger, host_id)["network"][:2] == (100, 0)
    info = ledger.reservation(grant.reservation_id)
    assert (info.status, info.instance_id) == ("consumed", "vm")
    ledger.apply_instance(host_id, record, version=2)  # a later update of the same instance
    assert usage(ledger, host_id)["cpu"] == (2, 0, 14)
    assert ledger.release(grant.reservation_id).status == "consumed"


def test_a_consumed_reservation_cannot_be_consumed_by_a_second_instance(ledger: Ledger, host_id: str) -> None:
    register(ledger, host_id)
    grant = ledger.reserve(host_id, AllocationRequest(vcpus=2))
    ledger.apply_instance(host_id, running("a", vcpus=2, reservation_id=grant.reservation_id))
    ledger.apply_instance(host_id, running("b", vcpus=2, reservation_id=grant.reservation_id))
    assert usage(ledger, host_id)["cpu"][:2] == (4, 0)
    assert ledger.reservation(grant.reservation_id).instance_id == "a"


# ---- versions and events ----------------------------------------------------------------------


def test_a_stale_version_is_ignored(ledger: Ledger, host_id: str) -> None:
    register(ledger, host_id)
    assert ledger.apply_instance(host_id, running("vm", vcpus=4), version=5).outcome == "applied"
    result = ledger.apply_instance(host_id, running("vm", vcpus=1), version=4)
    assert (result.outcome, result.version) == ("stale", 4)
    assert ledger.apply_instance(host_id, running("vm", vcpus=1), version=5).outcome == "stale"
    assert usage(ledger, host_id)["cpu"][0] == 4


def test_delete_leaves_a_tombstone_so_a_late_start_cannot_resurrect(ledger: Ledger, host_id: str) -> None:
    register(ledger, host_id)
    ledger.apply_instance(host_id, running("vm", vcpus=4), version=1)
    assert ledger.delete_instance(host_id, "vm", version=3).outcome == "applied"
    late = ledger.apply_instance(host_id, running("vm", vcpus=4), version=2, action="started")
    assert late.outcome == "stale"
    assert usage(ledger, host_id)["cpu"][0] == 0
    assert ledger.full_status(host_id).allocations == []


def test_a_delete_that_arrives_first_still_keeps_the_older_create_out(ledger: Ledger, host_id: str) -> None:
    register(ledger, host_id)
    ledger.delete_volume(host_id, "v", version=2)
    assert ledger.apply_volume(host_id, VolumeRecord(id="v", size_bytes=GB), version=1).outcome == "stale"
    assert ledger.full_status(host_id).disk_breakdown.volumes_bytes == 0


def test_without_a_version_each_write_supersedes_the_last(ledger: Ledger, host_id: str) -> None:
    register(ledger, host_id)
    assert ledger.apply_image(host_id, ImageRecord(id="i", size_bytes=1)).version == 1
    assert ledger.apply_image(host_id, ImageRecord(id="i", size_bytes=2)).version == 2
    assert ledger.full_status(host_id).disk_breakdown.images_bytes == 2


def test_a_redelivered_event_is_a_duplicate_and_changes_nothing(ledger: Ledger, host_id: str) -> None:
    register(ledger, host_id)
    mark = EventMark(event_id=f"evt-{host_id}", event_type="instance.started", stream_seq=7)
    assert ledger.apply_instance(host_id, running("vm", vcpus=2), version=1, mark=mark).outcome == "applied"
    before = row_counts(ledger, host_id)
    again = ledger.apply_instance(host_id, running("vm", vcpus=8), version=2, mark=mark)
    assert again.outcome == "duplicate"
    assert row_counts(ledger, host_id) == before
    assert usage(ledger, host_id)["cpu"][0] == 2


def test_a_stale_event_is_recorded_as_processed(ledger: Ledger, host_id: str) -> None:
    register(ledger, host_id)
    ledger.apply_instance(host_id, running("vm", vcpus=2), version=2)
    mark = EventMark(event_id=f"old-{host_id}", event_type="instance.updated")
    assert ledger.apply_instance(host_id, running("vm", vcpus=8), version=1, mark=mark).outcome == "stale"
    assert ledger.apply_instance(host_id, running("vm", vcpus=8), version=9, mark=mark).outcome == "duplicate"
    with ledger.engine.connect() as conn:
        outcome = conn.execute(
            text("SELECT outcome FROM processed_events WHERE event_id = :e"), {"e": mark.event_id}
        ).scalar_one()
    assert outcome == "stale"


# ---- hosts ------------------------------------------------------------------------------------


def test_an_unknown_host_is_refused_by_reserve_and_status(ledger: Ledger, host_id: str) -> None:
    for call in (
        lambda: ledger.reserve(host_id, AllocationRequest(vcpus=1)),
        lambda: ledger.status(host_id, CPU),
        lambda: ledger.full_status(host_id),
        lambda: ledger.default_bandwidth(host_id, 2),
    ):
        with pytest.raises(UnknownHost) as unknown:
            call()
        assert unknown.value.code == "unknown_host"
        assert "ledger host refresh" in unknown.value.message
    assert host_id not in ledger.host_ids()


def test_records_for_an_unregistered_host_are_still_counted(ledger: Ledger, host_id: str) -> None:
    ledger.apply_instance(host_id, running("early", vcpus=3))
    assert host_id in ledger.host_ids()
    cpu = ledger.status(host_id, CPU)
    assert (cpu.capacity, cpu.source, cpu.allocated, cpu.available) == (0, Source.UNDETECTED, 3, 0)
    register(ledger, host_id, cpu=8)
    assert ledger.status(host_id, CPU).allocated == 3  # registration leaves usage alone


# ---- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        {"vcpus": -1},
        {"memory_bytes": -5},
        {"vcpus": True},
        {"disk_bytes": 1.5},
        {"network_upload_bps": MAX_AMOUNT + 1},
        {"needs_gpu": "yes"},
    ],
)
def test_a_malformed_request_is_invalid(fields: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest) as invalid:
        AllocationRequest(**fields)
    assert invalid.value.code == "invalid_request"


@pytest.mark.parametrize(
    "options",
    [
        {"ttl": 0},
        {"ttl": -1},
        {"ttl": 24 * 3600 + 1},
        {"ttl": math.nan},
        {"ttl": True},
        {"idempotency_key": ""},
        {"idempotency_key": "k" * 256},
    ],
)
def test_bad_reserve_options_are_invalid_and_write_nothing(
    ledger: Ledger, host_id: str, options: dict[str, Any]
) -> None:
    register(ledger, host_id)
    before = (usage(ledger, host_id), row_counts(ledger, host_id))
    with pytest.raises(InvalidRequest):
        ledger.reserve(host_id, AllocationRequest(vcpus=1), **options)
    assert (usage(ledger, host_id), row_counts(ledger, host_id)) == before


def test_a_huge_request_is_refused_not_overflowed(ledger: Ledger, host_id: str) -> None:
    register(ledger, host_id)
    with pytest.raises(InsufficientResources):
        ledger.reserve(host_id, AllocationRequest(memory_bytes=MAX_AMOUNT))


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda led, h: led.apply_instance(h, running("vm", vcpus=1), version=-1), "version"),
        (lambda led, h: led.apply_volume(h, VolumeRecord(id="v"), version=True), "version"),
        (lambda led, h: led.default_bandwidth(h, -2), "vcpus"),
        (lambda led, h: led.release(""), "reservation_id"),
        (lambda led, h: led.register_host("", capacities(), {}), "host"),
    ],
)
def test_bad_arguments_are_invalid_and_write_nothing(
    ledger: Ledger, host_id: str, call: Any, field: str
) -> None:
    register(ledger, host_id)
    before = (usage(ledger, host_id), row_counts(ledger, host_id))
    with pytest.raises(InvalidRequest) as invalid:
        call(ledger, host_id)
    assert invalid.value.details["field"] == field
    assert (usage(ledger, host_id), row_counts(ledger, host_id)) == before


@pytest.mark.parametrize(
    "data",
    [
        {"id": "vm", "state": "Running", "vcpus": -1},
        {"id": "vm", "state": "Running", "vcpus": "2"},
        {"id": "", "state": "Running"},
        {"id": "vm"},
        {"id": "vm", "state": "Running", "cores": 2},
        [],
    ],
)
def test_a_malformed_instance_record_is_invalid(data: Any) -> None:
    with pytest.raises(InvalidRequest):
        InstanceRecord.from_dict(data)


def test_an_instance_with_more_vcpus_than_the_schema_holds_is_invalid_on_every_engine(
    ledger: Ledger, host_id: str
) -> None:
    register(ledger, host_id)
    with pytest.raises(InvalidRequest):
        ledger.apply_instance(host_id, running("vm", vcpus=2**31))
    with pytest.raises(InvalidRequest):
        ledger.reserve(host_id, AllocationRequest(vcpus=2**31))


# ---- the seed's checks ------------------------------------------------------------------------


def test_default_bandwidth_is_the_instances_share_of_host_vcpus(ledger: Ledger, host_id: str) -> None:
    ledger.register_host(
        host_id,
        capacities(cpu=16, network=1_250_000_000, disk_io=1_000_000_000),
        {NETWORK: 2.0, DISK_IO: 3.0},
    )
    assert ledger.default_bandwidth(host_id, 4) == {
        "network_download_bps": 312_500_000,
        "network_upload_bps": 312_500_000,
        "disk_io_bps": 250_000_000,
        "disk_io_burst_bps": 1_000_000_000,
    }
    seeds_old_rule = Ledger(ledger.engine, defaults=DefaultBandwidth(uses_ratio=True))
    assert seeds_old_rule.default_bandwidth(host_id, 4) == {
        "network_download_bps": 625_000_000,
        "network_upload_bps": 625_000_000,
        "disk_io_bps": 750_000_000,
        "disk_io_burst_bps": 3_000_000_000,
    }
    assert ledger.default_bandwidth(host_id, 4, burst_multiplier=2.0)["disk_io_burst_bps"] == 500_000_000
    assert ledger.default_bandwidth(host_id, 0)["network_download_bps"] == 0


def test_default_bandwidth_rounds_down_to_whole_bytes(ledger: Ledger, host_id: str) -> None:
    register(ledger, host_id, cpu=3, network=1000, disk_io=1000)
    assert ledger.default_bandwidth(host_id, 1)["network_download_bps"] == 333


def test_image_pull_needs_five_gib_of_disk_available(ledger: Ledger, host_id: str) -> None:
    register(ledger, host_id, disk=100 * GIB)
    ledger.apply_volume(host_id, VolumeRecord(id="v", size_bytes=95 * GIB))
    assert ledger.image_pull_check(host_id)["disk_available"] == 5 * GIB
    ledger.apply_volume(host_id, VolumeRecord(id="v", size_bytes=95 * GIB + 1))
    with pytest.raises(InsufficientResources, match="insufficient disk space for image pull"):
        ledger.image_pull_check(host_id)


def test_image_pull_is_refused_once_images_and_oci_cache_reach_the_storage_cap(
    ledger: Ledger, host_id: str
) -> None:
    register(ledger, host_id, disk=1000 * GB)
    ledger.apply_image(host_id, ImageRecord(id="i", size_bytes=150 * GB))
    ledger.apply_oci_cache(host_id, OciCacheRecord(total_bytes=50 * GB - 1))
    assert ledger.image_pull_check(host_id)["max_image_storage_bytes"] == 200 * GB
    ledger.apply_oci_cache(host_id, OciCacheRecord(total_bytes=50 * GB))
    with pytest.raises(InsufficientResources, match="image storage limit exceeded"):
        ledger.image_pull_check(host_id)
    assert ledger.image_pull_check(host_id, max_image_storage=0.5)["image_storage_bytes"] == 200 * GB


# ---- the SQL views ----------------------------------------------------------------------------


def _populate(ledger: Ledger, host_id: str) -> str:
    ledger.register_host(host_id, capacities(), {CPU: 2.0}, _passthrough(2))
    ledger.apply_image(host_id, ImageRecord(id="img", size_bytes=10 * GB))
    ledger.apply_oci_cache(host_id, OciCacheRecord(total_bytes=2 * GB))
    ledger.apply_volume(host_id, VolumeRecord(id="v", size_bytes=20 * GB, attached_to="a"))
    ledger.apply_instance(
        host_id,
        running(
            "a",
            vcpus=4,
            memory_bytes=8 * GIB,
            overlay_bytes=GB,
            volume_overlay_bytes=GB,
            volume_bytes=20 * GB,
            network_download_bps=1000,
            network_upload_bps=3000,
            disk_io_bps=500,
            gpu="0000:00:00.0",
        ),
        mark=EventMark(event_id=f"evt-a-{host_id}", event_type="instance.started"),
    )
    ledger.apply_instance(host_id, running("stopped", "Stopped", vcpus=8))
    grant = ledger.reserve(
        host_id, AllocationRequest(vcpus=2, memory_bytes=GIB, disk_bytes=GB, needs_gpu=True)
    )
    return grant.reservation_id


def _view(ledger: Ledger, sql: str, host_id: str) -> list[dict[str, Any]]:
    with ledger.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(text(sql), {"h": host_id})]


def test_resource_status_view_agrees_with_full_status(ledger: Ledger, host_id: str) -> None:
    _populate(ledger, host_id)
    status = ledger.full_status(host_id)
    rows = _view(ledger, "SELECT * FROM resource_status WHERE host_id = :h ORDER BY resource", host_id)
    assert {
        r["resource"]: {k: v for k, v in r.items() if k not in {"host_id", "resource"}} for r in rows
    } == {
        r.value: {
            "capacity": s.capacity,
            "effective_limit": s.effective_limit,
            "allocated": s.allocated,
            "pending": s.pending,
            "available": s.available,
            "oversub_ratio": s.oversub_ratio,
            "source": s.source.value,
        }
        for r, s in status.resources.items()
    }


def test_instance_allocations_and_disk_breakdown_views_agree_with_full_status(
    ledger: Ledger, host_id: str
) -> None:
    _populate(ledger, host_id)
    status = ledger.full_status(host_id)
    rows = _view(
        ledger, "SELECT * FROM instance_allocations WHERE host_id = :h ORDER BY instance_id", host_id
    )
    assert [{k: v for k, v in r.items() if k not in {"host_id", "version"}} for r in rows] == [
        a.to_dict() for a in status.allocations
    ]
    [disk] = _view(ledger, "SELECT * FROM disk_breakdown WHERE host_id = :h", host_id)
    assert disk == {
        "host_id": host_id,
        **status.disk_breakdown.to_dict(),
        "total_bytes": status.resources[DISK].allocated,
    }


def test_views_stop_counting_an_expired_hold_before_it_is_swept(ledger: Ledger, host_id: str) -> None:
    register(ledger, host_id)
    past = Ledger(ledger.engine, clock=lambda: datetime.now(UTC) - timedelta(hours=1))
    past.reserve(host_id, AllocationRequest(vcpus=2), ttl=60)  # expired an hour minus a minute ago
    [row] = _view(
        ledger, "SELECT pending FROM resource_status WHERE host_id = :h AND resource = 'cpu'", host_id
    )
    assert row["pending"] == 0
    assert ledger.drift() == []  # the unswept hold is still in the running totals, and in ledger_audit
    assert ledger.status(host_id, CPU).pending == 0


def test_allocation_history_records_every_change_with_its_cause(ledger: Ledger, host_id: str) -> None:
    reservation_id = _populate(ledger, host_id)
    ledger.release(reservation_id)
    rows = _view(
        ledger,
        "SELECT entity_kind, entity_id, action, bucket, cause, cpu, disk_bytes, gpu "
        "FROM allocation_history WHERE host_id = :h ORDER BY id",
        host_id,
    )
    assert [(r["entity_kind"], r["entity_id"], r["action"], r["bucket"], r["cause"]) for r in rows] == [
        ("image", "img", "pulled", "allocated", "api"),
        ("oci_cache", host_id, "measured", "allocated", "api"),
        ("volume", "v", "updated", "allocated", "api"),
        ("instance", "a", "updated", "allocated", f"evt-a-{host_id}"),
        ("reservation", reservation_id, "reserved", "pending", "api"),
        ("reservation", reservation_id, "released", "pending", "api"),
    ]
    assert [(r["cpu"], r["disk_bytes"], r["gpu"]) for r in rows[3:]] == [
        (4, 2 * GB, 1),
        (2, GB, 1),
        (-2, -GB, -1),
    ]


def test_allocation_history_sums_to_the_current_totals(ledger: Ledger, host_id: str) -> None:
    _populate(ledger, host_id)
    ledger.apply_instance(host_id, running("a", "Stopped", vcpus=4))
    [total] = _view(
        ledger,
        "SELECT SUM(cpu) AS cpu, SUM(disk_bytes) AS disk FROM allocation_history WHERE host_id = :h",
        host_id,
    )
    status = ledger.full_status(host_id).resources
    assert total == {
        "cpu": status[CPU].allocated + status[CPU].pending,
        "disk": status[DISK].allocated + status[DISK].pending,
    }


def test_consuming_and_expiry_are_logged_with_their_causes(
    timed: Ledger, clock: FakeClock, host_id: str
) -> None:
    register(timed, host_id)
    consumed = timed.reserve(host_id, AllocationRequest(vcpus=1))
    expiring = timed.reserve(host_id, AllocationRequest(vcpus=1), ttl=1)
    mark = EventMark(event_id=f"evt-{host_id}", event_type="instance.created")
    timed.apply_instance(host_id, running("vm", vcpus=1, reservation_id=consumed.reservation_id), mark=mark)
    clock.advance(2)
    timed.status(host_id, CPU)  # any read of the host sweeps what expired
    rows = _view(
        timed,
        "SELECT entity_id, action, cause FROM allocation_history "
        "WHERE host_id = :h AND entity_kind = 'reservation' AND action <> 'reserved' ORDER BY id",
        host_id,
    )
    assert [tuple(r.values()) for r in rows] == [
        (consumed.reservation_id, "consumed", mark.event_id),
        (expiring.reservation_id, "expired", "ttl"),
    ]


def test_every_error_carries_a_stable_code() -> None:
    assert {cls.code for cls in (InvalidRequest, UnknownHost, NotFound, Conflict, InsufficientResources)} == {
        "invalid_request",
        "unknown_host",
        "not_found",
        "conflict",
        "insufficient_resources",
    }
    assert issubclass(InsufficientResources, LedgerError)


NETWORK_HINT = "eth0 reports no link speed; set NETWORK_LIMIT, e.g. NETWORK_LIMIT=10Gbps"


def _register_with_undetected_network(ledger: Ledger, host_id: str) -> str:
    """The host with every capacity known but the network's, which discovery explains; returns the hint."""
    found = capacities()
    found[NETWORK] = Capacity(0, Source.UNDETECTED, NETWORK_HINT)
    ledger.register_host(host_id, found, {})
    return NETWORK_HINT


def test_a_refusal_on_an_undetected_capacity_names_the_setting_that_fixes_it(
    ledger: Ledger, host_id: str
) -> None:
    hint = _register_with_undetected_network(ledger, host_id)

    with pytest.raises(InsufficientResources) as refused:
        ledger.reserve(host_id, AllocationRequest(vcpus=1, network_download_bps=1000))

    assert refused.value.details["resource"] == "network"
    assert refused.value.details["hint"] == hint
    assert refused.value.message.endswith(f"this host's capacity was not detected: {hint}")


def test_status_carries_the_hint_of_an_undetected_capacity_and_only_that(
    ledger: Ledger, host_id: str
) -> None:
    hint = _register_with_undetected_network(ledger, host_id)

    status = ledger.full_status(host_id).to_dict()
    assert status["network"]["source"] == "undetected" and status["network"]["hint"] == hint
    assert all("hint" not in status[r.value] for r in ResourceType if r is not NETWORK)
    assert ledger.status(host_id, NETWORK).hint == hint


# ---- no total and no report can overflow ------------------------------------------------------------

HUGE = 2**62  # two of these pass 2⁶³−1


def _every_view_reads(ledger: Ledger, host_id: str) -> None:
    """Each reporting view answers for the host (an overflowed total made every one fail, for every host)."""
    for view in ("resource_status", "instance_allocations", "disk_breakdown", "ledger_usage", "ledger_drift"):
        _view(ledger, f"SELECT * FROM {view} WHERE host_id = :h", host_id)


def test_records_that_would_push_a_total_past_a_bigint_are_refused_and_the_views_still_read(
    ledger: Ledger, host_id: str
) -> None:
    register(ledger, host_id, {MEMORY: 4.0, DISK: 4.0}, memory=MAX_AMOUNT // 2, disk=MAX_AMOUNT // 2)
    ledger.apply_volume(host_id, VolumeRecord(id="v1", size_bytes=HUGE))
    ledger.apply_image(host_id, ImageRecord(id="i1", size_bytes=HUGE - 1))  # disk total: exactly 2⁶³−1
    with pytest.raises(InvalidRequest, match="beyond the largest amount") as refused:
        ledger.apply_volume(host_id, VolumeRecord(id="v2", size_bytes=1))
    assert refused.value.details["field"] == "disk"
    ledger.apply_instance(host_id, running("a", memory_bytes=HUGE))
    with pytest.raises(InvalidRequest, match="beyond the largest amount"):
        ledger.apply_instance(host_id, running("b", memory_bytes=HUGE))
    with pytest.raises(InvalidRequest, match="overlay_bytes"):
        running("c", overlay_bytes=HUGE, volume_bytes=HUGE)
    assert usage(ledger, host_id)["disk"][0] == MAX_AMOUNT
    assert usage(ledger, host_id)["memory"][0] == HUGE
    _every_view_reads(ledger, host_id)


def test_a_hold_and_an_instance_together_cannot_pass_a_bigint_either(ledger: Ledger, host_id: str) -> None:
    register(ledger, host_id, {MEMORY: 4.0}, memory=MAX_AMOUNT // 2)
    ledger.reserve(host_id, AllocationRequest(memory_bytes=HUGE))
    with pytest.raises(InsufficientResources):  # what is left: 2⁶³−1 − 2⁶² < 2⁶²
        ledger.reserve(host_id, AllocationRequest(memory_bytes=HUGE))
    with pytest.raises(InvalidRequest, match="beyond the largest amount"):
        ledger.apply_instance(host_id, running("a", memory_bytes=HUGE))  # allocated + pending would pass it
    allocated, pending, _ = usage(ledger, host_id)["memory"]
    assert (allocated, pending) == (0, HUGE)
    _every_view_reads(ledger, host_id)
