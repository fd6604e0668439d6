"""Events applied to the ledger on SQLite and PostgreSQL: the lifecycle lands as the orchestrator sees it,
whatever the order and however often each event arrives."""

from __future__ import annotations

import json
import random
import uuid
from typing import Any

import pytest

from ledger.core.charges import AllocationRequest
from ledger.core.resources import ResourceType, Source
from ledger.core.results import ApplyResult
from ledger.events import make_event, parse_event, subject_for
from ledger.events.apply import apply_event
from ledger.store.ledger import Ledger

GB, GIB = 10**9, 2**30
CAPACITY = {
    "cpu": {"capacity": 16, "source": "detected"},
    "memory": {"capacity": 64 * GIB, "source": "detected"},
    "disk": {"capacity": 1000 * GB, "source": "detected"},
    "network": {"capacity": 1_250_000_000, "source": "configured"},
    "disk_io": {"capacity": 1_000_000_000, "source": "default"},
    "gpu": None,
    "ratios": {"cpu": 2.0},
}
Step = tuple[str, dict[str, Any], int]  # (type, record, version)


def _instance(iid: str, state: str, vcpus: int, memory_gib: int, **amounts: int) -> dict[str, Any]:
    return {
        "id": iid,
        "name": f"vm-{iid}",
        "state": state,
        "vcpus": vcpus,
        "memory_bytes": memory_gib * GIB,
        **amounts,
    }


LIFECYCLE: list[Step] = [
    ("host.capacity", CAPACITY, 1),
    # a: create → start → resize → pause → stop → delete
    ("instance.created", _instance("a", "Created", 2, 4, overlay_bytes=10 * GB), 1),
    ("instance.started", _instance("a", "Running", 2, 4, overlay_bytes=10 * GB), 2),
    ("instance.resized", _instance("a", "Running", 4, 8, overlay_bytes=20 * GB), 3),
    ("instance.paused", _instance("a", "Paused", 4, 8, overlay_bytes=20 * GB), 4),
    ("instance.stopped", _instance("a", "Stopped", 4, 8, overlay_bytes=20 * GB), 5),
    ("instance.deleted", {"id": "a"}, 6),
    # b: create → start → resize → pause (a paused instance still holds its resources)
    ("instance.created", _instance("b", "Created", 1, 2, overlay_bytes=5 * GB, volume_overlay_bytes=GB), 1),
    ("instance.started", _instance("b", "Running", 1, 2, overlay_bytes=5 * GB, volume_overlay_bytes=GB), 2),
    ("instance.resized", _instance("b", "Running", 2, 4, overlay_bytes=5 * GB, volume_overlay_bytes=GB), 3),
    ("instance.paused", _instance("b", "Paused", 2, 4, overlay_bytes=5 * GB, volume_overlay_bytes=GB), 4),
    # c: create → start, with bandwidths
    ("instance.created", _instance("c", "Created", 4, 16, overlay_bytes=20 * GB), 1),
    (
        "instance.started",
        _instance(
            "c",
            "Running",
            4,
            16,
            overlay_bytes=20 * GB,
            network_download_bps=100_000_000,
            network_upload_bps=50_000_000,
            disk_io_bps=200_000_000,
        ),
        2,
    ),
    # d: create → stop → standby (nothing held)
    ("instance.created", _instance("d", "Created", 8, 8), 1),
    ("instance.stopped", _instance("d", "Stopped", 8, 8), 2),
    ("instance.standby", _instance("d", "Standby", 8, 8), 3),
    ("volume.created", {"id": "v1", "name": "data", "size_bytes": 100 * GB, "attached_to": None}, 1),
    ("volume.attached", {"id": "v1", "name": "data", "size_bytes": 100 * GB, "attached_to": "b"}, 2),
    ("volume.resized", {"id": "v1", "name": "data", "size_bytes": 200 * GB, "attached_to": "b"}, 3),
    ("volume.created", {"id": "v2", "name": "scratch", "size_bytes": 50 * GB}, 1),
    ("volume.deleted", {"id": "v2"}, 2),
    ("image.pulled", {"id": "img-1", "name": "ubuntu:24.04", "size_bytes": GB}, 1),
    ("image.pulled", {"id": "img-2", "name": "nginx:1.27", "size_bytes": 2 * GB}, 1),
    ("image.deleted", {"id": "img-2"}, 2),
    ("oci_cache.measured", {"total_bytes": 3 * GB}, 1),
    ("oci_cache.measured", {"total_bytes": 5 * GB}, 2),
]


def envelopes(host: str, steps: list[Step]) -> list[dict[str, Any]]:
    return [make_event(t, host, record, version) for t, record, version in steps]


def deliver(ledger: Ledger, envelope: dict[str, Any], seq: int | None = None) -> ApplyResult:
    """What the consumer does with one message: parse it from its subject, then apply it."""
    subject = subject_for(envelope["host"], envelope["type"])
    return apply_event(ledger, parse_event(json.dumps(envelope).encode(), subject), seq)


def allocated(ledger: Ledger, host: str) -> dict[str, int]:
    status = ledger.full_status(host)
    return {r.value: status.resources[r].allocated for r in ResourceType}


def test_a_lifecycle_of_instances_volumes_and_images_gives_the_full_status(
    ledger: Ledger, host_id: str
) -> None:
    outcomes = [deliver(ledger, e, seq).outcome for seq, e in enumerate(envelopes(host_id, LIFECYCLE), 1)]

    assert outcomes == ["applied"] * len(LIFECYCLE)
    status = ledger.full_status(host_id)
    # b states no bandwidth: it is charged its share of the host's 16 vCPUs (2/16) of each capacity
    b_network, b_disk_io = 1_250_000_000 * 2 // 16, 1_000_000_000 * 2 // 16
    assert allocated(ledger, host_id) == {
        "cpu": 2 + 4,
        "memory": (4 + 16) * GIB,
        "disk": GB + 5 * GB + 200 * GB + (5 * GB + GB) + 20 * GB,
        "network": 100_000_000 + b_network,
        "disk_io": 200_000_000 + b_disk_io,
    }
    assert status.disk_breakdown.to_dict() == {
        "images_bytes": GB,
        "oci_cache_bytes": 5 * GB,
        "volumes_bytes": 200 * GB,
        "overlays_bytes": 26 * GB,
    }
    assert [(a.instance_id, a.state, a.cpu) for a in status.allocations] == [
        ("b", "Paused", 2),
        ("c", "Running", 4),
    ]
    assert status.resources[ResourceType.CPU].effective_limit == 32


def test_a_redelivered_event_is_applied_once(ledger: Ledger, host_id: str) -> None:
    events = envelopes(host_id, LIFECYCLE)
    for seq, event in enumerate(events, 1):
        deliver(ledger, event, seq)
    once = ledger.full_status(host_id).to_dict()

    again = [
        deliver(ledger, e, seq).outcome for seq, e in enumerate(events, 1) if e["type"] != "host.capacity"
    ]

    assert again == ["duplicate"] * (len(LIFECYCLE) - 1)
    assert ledger.full_status(host_id).to_dict() == once


def test_a_duplicate_reports_the_entity_it_names(ledger: Ledger, host_id: str) -> None:
    created = make_event("instance.created", host_id, _instance("x", "Running", 1, 1), 1)

    assert deliver(ledger, created) == ApplyResult("applied", "x", 1)
    assert deliver(ledger, created).outcome == "duplicate"
    assert allocated(ledger, host_id)["cpu"] == 1


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_shuffled_events_converge_to_the_ordered_state(ledger: Ledger, host_id: str, seed: int) -> None:
    ordered_host, shuffled_host = f"{host_id}-ordered", f"{host_id}-shuffled"
    for event in envelopes(ordered_host, LIFECYCLE):
        deliver(ledger, event)
    shuffled = envelopes(shuffled_host, LIFECYCLE)
    random.Random(seed).shuffle(shuffled)

    outcomes = {deliver(ledger, event).outcome for event in shuffled}

    assert "stale" in outcomes  # some older version did arrive after a newer one
    expected = ledger.full_status(ordered_host).to_dict()
    assert ledger.full_status(shuffled_host).to_dict() == {**expected, "host": shuffled_host}


def test_a_late_start_after_the_delete_does_not_resurrect(ledger: Ledger, host_id: str) -> None:
    created, started, deleted = envelopes(
        host_id,
        [
            ("instance.created", _instance("z", "Created", 2, 2), 1),
            ("instance.started", _instance("z", "Running", 2, 2), 2),
            ("instance.deleted", {"id": "z"}, 3),
        ],
    )
    deliver(ledger, created)
    deliver(ledger, deleted)

    assert deliver(ledger, started) == ApplyResult("stale", "z", 2)
    assert ledger.full_status(host_id).allocations == []
    assert allocated(ledger, host_id)["cpu"] == 0


def test_an_instance_event_consumes_its_reservation(ledger: Ledger, host_id: str) -> None:
    deliver(ledger, make_event("host.capacity", host_id, CAPACITY, 1))
    grant = ledger.reserve(host_id, AllocationRequest(vcpus=4, memory_bytes=8 * GIB))
    assert ledger.full_status(host_id).resources[ResourceType.CPU].pending == 4

    record = {**_instance("r", "Created", 4, 8), "reservation_id": grant.reservation_id}
    deliver(ledger, make_event("instance.created", host_id, record, 1))

    cpu = ledger.full_status(host_id).resources[ResourceType.CPU]
    assert (cpu.pending, cpu.allocated) == (0, 4)
    reservation = ledger.reservation(grant.reservation_id)
    assert (reservation.status, reservation.instance_id) == ("consumed", "r")


def test_host_capacity_registers_a_remote_host(ledger: Ledger, host_id: str) -> None:
    gpu = {"mode": "passthrough", "total_slots": 1, "used_slots": 0}
    event = make_event("host.capacity", host_id, {**CAPACITY, "gpu": gpu, "ratios": {"memory": 1.5}}, 9)

    assert deliver(ledger, event) == ApplyResult("applied", host_id, 9)
    assert host_id in ledger.host_ids()
    status = ledger.full_status(host_id)
    memory = status.resources[ResourceType.MEMORY]
    assert (memory.capacity, memory.oversub_ratio, memory.effective_limit) == (64 * GIB, 1.5, 96 * GIB)
    assert status.resources[ResourceType.NETWORK].source is Source.CONFIGURED
    assert status.resources[ResourceType.CPU].oversub_ratio == 4.0  # the default, as no ratio was sent
    assert status.gpu is not None and status.gpu["total_slots"] == 1


def test_a_late_older_host_capacity_snapshot_is_stale_and_a_redelivery_a_duplicate(
    ledger: Ledger, host_id: str
) -> None:
    newer = make_event("host.capacity", host_id, {**CAPACITY, "ratios": {"cpu": 8.0}}, 5)
    older = make_event("host.capacity", host_id, {**CAPACITY, "ratios": {"cpu": 2.0}}, 4)

    assert deliver(ledger, newer).outcome == "applied"
    assert deliver(ledger, newer).outcome == "duplicate"
    assert deliver(ledger, older).outcome == "stale"
    assert ledger.status(host_id, ResourceType.CPU).oversub_ratio == 8.0


def test_records_for_an_unregistered_host_are_still_counted(ledger: Ledger, host_id: str) -> None:
    deliver(ledger, make_event("image.pulled", host_id, {"id": "i", "size_bytes": GB}, 1))

    assert ledger.full_status(host_id).disk_breakdown.images_bytes == GB


def test_event_ids_are_unique_across_hosts(ledger: Ledger, host_id: str) -> None:
    shared_id = uuid.uuid4().hex
    first = make_event("image.pulled", f"{host_id}-1", {"id": "i", "size_bytes": GB}, 1, id=shared_id)
    second = make_event("image.pulled", f"{host_id}-2", {"id": "i", "size_bytes": GB}, 1, id=shared_id)

    deliver(ledger, first)

    assert deliver(ledger, second).outcome == "duplicate"
