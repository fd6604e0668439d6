"""Candidate searches across a fleet, on both engines: every candidate fits by the core decision, every host
the decision says fits is found, the counts of shortfalls are the decision's, and the ranking is the policy's.
The search renders the decision in SQL to narrow and rank; these tests hold the two equal on random fleets."""

from __future__ import annotations

import contextlib
import uuid
from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.core.admission import Admit, decide
from ledger.core.charges import AllocationRequest, Ask, DefaultBandwidth
from ledger.core.errors import InsufficientResources
from ledger.core.gpu import GPUProfile, GPUStatus
from ledger.core.placement import GPU, PACK, SPREAD, room_after
from ledger.core.records import InstanceRecord
from ledger.core.resources import Capacity, ResourceType, Source
from ledger.store.ledger import Ledger

GIB = 2**30
CPU, MEMORY, DISK, NETWORK, DISK_IO = (
    ResourceType.CPU,
    ResourceType.MEMORY,
    ResourceType.DISK,
    ResourceType.NETWORK,
    ResourceType.DISK_IO,
)


def _capacities(cpu: int, memory: int, disk: int, network: int, disk_io: int) -> dict[ResourceType, Capacity]:
    return {
        CPU: Capacity(cpu, Source.DETECTED if cpu else Source.UNDETECTED),
        MEMORY: Capacity(memory, Source.DETECTED),
        DISK: Capacity(disk, Source.DETECTED),
        NETWORK: Capacity(network, Source.UNDETECTED if network == 0 else Source.CONFIGURED),
        DISK_IO: Capacity(disk_io, Source.DEFAULT),
    }


hosts = st.lists(
    st.fixed_dictionaries(
        {
            "cpu": st.integers(0, 8),
            "memory": st.integers(0, 8).map(lambda n: n * GIB),
            "disk": st.integers(0, 4).map(lambda n: n * 100),
            "network": st.sampled_from([0, 800, 1600]),
            "disk_io": st.sampled_from([0, 1000]),
            "ratio": st.sampled_from([None, 1.0, 2.0]),
            "used_cpu": st.integers(0, 6),
            "gpu": st.sampled_from([None, "passthrough", "vgpu"]),
            "zone": st.sampled_from(["a", "b", None]),
            "instances": st.integers(0, 2),
        }
    ),
    min_size=1,
    max_size=10,
)
bandwidth = st.one_of(st.none(), st.sampled_from([0, 100, 400]))
requests = st.builds(
    AllocationRequest,
    vcpus=st.integers(0, 6),
    memory_bytes=st.integers(0, 4).map(lambda n: n * GIB),
    disk_bytes=st.sampled_from([0, 100, 300]),
    network_download_bps=bandwidth,
    network_upload_bps=bandwidth,
    disk_io_bps=bandwidth,
    needs_gpu=st.sampled_from([False, False, True]),
    gpu_profile=st.sampled_from([None, None, "A16-4Q", "A16-8Q"]),
)
GPUS = {
    "passthrough": GPUStatus(mode="passthrough", total_slots=1, used_slots=0),
    "vgpu": GPUStatus(
        mode="vgpu",
        total_slots=2,
        used_slots=0,
        profiles=(GPUProfile(name="A16-4Q", type_id="nvidia-1", framebuffer_mb=4096, available=2),),
    ),
}


def _fleet(ledger: Ledger, specs: list[dict[str, Any]]) -> list[str]:
    run = uuid.uuid4().hex[:8]
    names = []
    for index, spec in enumerate(specs):
        host = f"f{run}-{index:02d}"
        names.append(host)
        ratios = {} if spec["ratio"] is None else {r: spec["ratio"] for r in ResourceType}
        labels = {"zone": spec["zone"]} if spec["zone"] else {}
        caps = _capacities(spec["cpu"], spec["memory"], spec["disk"], spec["network"], spec["disk_io"])
        ledger.register_host(host, caps, ratios, GPUS.get(spec["gpu"] or ""), labels=labels)
        if spec["used_cpu"]:  # a hold, so pending counts too
            request = AllocationRequest(spec["used_cpu"], 0, 0, 0, 0, 0)
            with contextlib.suppress(InsufficientResources):  # does not fit: the host stays as it is
                ledger.reserve(host, request)
        for n in range(spec["instances"]):  # facts: an instance may take a host past its limits
            record = InstanceRecord(
                id=f"vm{n}", state="Running", vcpus=1, memory_bytes=GIB, gpu="x" if n else None
            )
            ledger.apply_instance(host, record)
    return names


def _decided(
    ledger: Ledger, names: list[str], request: AllocationRequest, labels: dict[str, str]
) -> dict[str, Any]:
    """Per host: "labels", a refused resource, or the core decision's grant (with its score)."""
    states = ledger.fleet.states(names)
    verdicts: dict[str, Any] = {}
    host_labels = _labels(ledger, names)
    for host in names:
        if any(host_labels[host].get(k) != v for k, v in labels.items()):
            verdicts[host] = "labels"
            continue
        outcome = decide(states[host], [Ask(request)], {}, ledger.defaults, 60).outcomes[0]
        if isinstance(outcome, Admit):
            verdicts[host] = ("fit", room_after(states[host], outcome.charge))
        else:
            verdicts[host] = str(outcome.details.get("resource", GPU))
    return verdicts


def _labels(ledger: Ledger, names: list[str]) -> dict[str, dict[str, str]]:
    from sqlalchemy import select

    from ledger.store.sql import hosts as table

    with ledger.engine.connect() as conn:
        rows = conn.execute(select(table.c.host_id, table.c.labels).where(table.c.host_id.in_(names))).all()
    return {host: dict(labels or {}) for host, labels in rows}


def _check(
    ledger: Ledger, names: list[str], request: AllocationRequest, zone: str | None, policy: str
) -> None:
    labels = {"zone": zone} if zone else {}
    others = [h for h in ledger.host_ids() if h not in names]
    found = ledger.candidates(request, labels=labels, exclude=others, policy=policy, limit=1000)
    verdicts = _decided(ledger, names, request, labels)
    fitting = {h: v[1] for h, v in verdicts.items() if isinstance(v, tuple)}
    assert {c.host_id for c in found.candidates} == set(fitting)
    for candidate in found.candidates:
        assert candidate.score == fitting[candidate.host_id]
    keys = [(-c.score if policy == SPREAD else c.score, c.host_id) for c in found.candidates]
    assert keys == sorted(keys)  # best first, ties by host id
    assert found.shortfalls.considered == len(names)
    assert found.shortfalls.fitting == len(fitting)
    short = Counter(v for v in verdicts.values() if isinstance(v, str) and v != "labels")
    assert {k: n for k, n in found.shortfalls.by_resource.items() if n} == dict(short)
    assert sum(found.shortfalls.by_label.values()) == sum(1 for v in verdicts.values() if v == "labels")
    # place's search (no counts) finds the same hosts in the same order
    best = ledger.fleet.best(request, labels=labels, exclude=others, policy=policy, limit=1000)
    assert best == found.candidates


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    specs=hosts,
    asks=st.lists(
        st.tuples(requests, st.sampled_from([None, "a"]), st.sampled_from([SPREAD, PACK])), max_size=4
    ),
)
def test_the_search_finds_exactly_the_hosts_the_decision_fits(
    db_url: str, specs: list[dict[str, Any]], asks: list[tuple[AllocationRequest, str | None, str]]
) -> None:
    ledger = Ledger.open(db_url, migrate=False)
    try:
        names = _fleet(ledger, specs)
        for request, zone, policy in asks:
            _check(ledger, names, request, zone, policy)
        assert ledger.drift() == []
    finally:
        ledger.close()


def test_a_search_with_the_seeds_old_default_rule_is_confirmed_by_the_decision(db_url: str) -> None:
    """With `uses_ratio` the SQL's default bandwidth may round differently; what it returns still fits."""
    ledger = Ledger.open(db_url, migrate=False, defaults=DefaultBandwidth(uses_ratio=True))
    try:
        names = _fleet(
            ledger,
            [
                dict(
                    cpu=3,
                    memory=GIB,
                    disk=100,
                    network=1000,
                    disk_io=1000,
                    ratio=1.5,
                    used_cpu=0,
                    gpu=None,
                    zone=None,
                    instances=0,
                )
            ]
            * 3,
        )
        found = ledger.candidates(
            AllocationRequest(vcpus=1), exclude=[h for h in ledger.host_ids() if h not in names]
        )
        states = ledger.fleet.states(names)
        for candidate in found.candidates:
            outcome = decide(
                states[candidate.host_id], [Ask(AllocationRequest(vcpus=1))], {}, ledger.defaults, 60
            )
            assert isinstance(outcome.outcomes[0], Admit)
        assert len(found.candidates) == 3
    finally:
        ledger.close()


def test_the_summary_names_what_is_short_and_the_labels_missing(sqlite_url: str) -> None:
    ledger = Ledger.open(sqlite_url, migrate=False)
    try:
        names = _fleet(
            ledger,
            [
                dict(
                    cpu=2,
                    memory=GIB,
                    disk=100,
                    network=1000,
                    disk_io=1000,
                    ratio=1.0,
                    used_cpu=0,
                    gpu=None,
                    zone=zone,
                    instances=0,
                )
                for zone in ("a", "a", "b")
            ],
        )
        others = [h for h in ledger.host_ids() if h not in names]
        found = ledger.candidates(AllocationRequest(vcpus=4), labels={"zone": "a"}, exclude=others)
        assert found.candidates == []
        assert (
            found.shortfalls.summary()
            == "no host fits: 2 short of cpu, 1 without label zone=a (3 considered)"
        )
    finally:
        ledger.close()


@pytest.mark.parametrize("policy", [SPREAD, PACK])
def test_policies_order_by_the_room_left_after_placement(sqlite_url: str, policy: str) -> None:
    ledger = Ledger.open(sqlite_url, migrate=False)
    try:
        names = _fleet(
            ledger,
            [
                dict(
                    cpu=cpu,
                    memory=8 * GIB,
                    disk=100,
                    network=1000,
                    disk_io=1000,
                    ratio=1.0,
                    used_cpu=0,
                    gpu=None,
                    zone=None,
                    instances=0,
                )
                for cpu in (4, 8, 2, 8)
            ],
        )
        others = [h for h in ledger.host_ids() if h not in names]
        found = ledger.candidates(AllocationRequest(vcpus=1), exclude=others, policy=policy, limit=3)
        order = [names.index(c.host_id) for c in found.candidates]
        # room after one vCPU: 3/4, 7/8, 1/2, 7/8 (the tightest resource is the CPU on every host)
        assert order == ([1, 3, 0] if policy == SPREAD else [2, 0, 1])
    finally:
        ledger.close()
