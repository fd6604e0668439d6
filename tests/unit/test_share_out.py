"""`core.placement.share_out`: a group of identical `place` calls goes where the calls would go one after
another. The oracle places them one by one the slow way: every host decided again by `decide` after each
grant, ranked by the policy (`ranked`, ties by host id), the first taking the ask."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from hypothesis import given
from hypothesis import strategies as st

from ledger.core.admission import Admit, decide
from ledger.core.capacity import effective_limit, oversub_ratio
from ledger.core.charges import AllocationRequest, Ask, DefaultBandwidth
from ledger.core.host import HostState, ResourceLimit
from ledger.core.placement import PACK, POLICIES, SPREAD, ranked, room_after, share_out
from ledger.core.resources import RESOURCES, Source

DEFAULTS = DefaultBandwidth()


def _host(name: str, capacity: Sequence[int], used: Sequence[int]) -> HostState:
    limits = []
    for resource, cap in zip(RESOURCES, capacity, strict=True):
        ratio = oversub_ratio(resource, None)
        limits.append(ResourceLimit(cap, effective_limit(cap, ratio), ratio, Source.DETECTED))
    return HostState(name, tuple(limits), tuple(used), (0,) * len(RESOURCES))


def _pending_with(request: AllocationRequest) -> Callable[[HostState, int], tuple[int, ...] | None]:
    def pending_with(host: HostState, n: int) -> tuple[int, ...] | None:
        decision = decide(host, [Ask(request)] * n, {}, DEFAULTS, 60.0)
        return decision.pending if isinstance(decision.outcomes[-1], Admit) else None

    return pending_with


def _one_by_one(hosts: list[HostState], count: int, policy: str, request: AllocationRequest) -> list[str]:
    states = {h.host_id: h for h in hosts}
    chosen = []
    for _ in range(count):
        scored = []
        for state in states.values():
            outcome = decide(state, [Ask(request)], {}, DEFAULTS, 60.0).outcomes[0]
            if isinstance(outcome, Admit):
                scored.append((state.host_id, room_after(state, outcome.charge)))
        if not scored:
            break
        best = ranked(scored, policy)[0][0]
        chosen.append(best)
        granted = decide(states[best], [Ask(request)], {}, DEFAULTS, 60.0)
        states[best] = dataclasses.replace(states[best], pending=granted.pending)
    return chosen


sizes = st.tuples(
    st.integers(0, 64), st.integers(0, 256), st.integers(0, 400), st.integers(0, 100), st.integers(0, 100)
)
fleets = st.lists(
    st.tuples(sizes, st.integers(0, 32)).map(lambda t: (t[0], (t[1], 0, 0, 0, 0))), min_size=1, max_size=8
)
requests = st.builds(
    AllocationRequest,
    vcpus=st.integers(0, 8),
    memory_bytes=st.integers(0, 32),
    disk_bytes=st.integers(0, 50),
    network_download_bps=st.one_of(st.none(), st.integers(0, 20)),
    network_upload_bps=st.one_of(st.none(), st.integers(0, 20)),
    disk_io_bps=st.one_of(st.none(), st.integers(0, 20)),
)


@given(fleet=fleets, request=requests, count=st.integers(1, 24), policy=st.sampled_from(POLICIES))
def test_a_group_goes_where_one_by_one_calls_would(
    fleet: list[tuple[tuple[int, ...], tuple[int, ...]]], request: AllocationRequest, count: int, policy: str
) -> None:
    hosts = [_host(f"h{i}", capacity, used) for i, (capacity, used) in enumerate(fleet)]
    expected = _one_by_one(hosts, count, policy, request)
    assert share_out(hosts, count, policy, _pending_with(request)) == expected


def test_spread_takes_turns_and_pack_fills_one_host_first() -> None:
    hosts = [_host("a", (8, 64, 100, 0, 0), (0,) * 5), _host("b", (8, 64, 100, 0, 0), (0,) * 5)]
    request = AllocationRequest(vcpus=2, memory_bytes=1, disk_bytes=1)
    assert share_out(hosts, 5, SPREAD, _pending_with(request)) == ["a", "b", "a", "b", "a"]
    # CPU's default ratio is 4: 32 vCPUs to promise per host, room for 16 asks of 2 on each
    assert share_out(hosts, 18, PACK, _pending_with(request)) == ["a"] * 16 + ["b"] * 2
    assert len(share_out(hosts, 100, SPREAD, _pending_with(request))) == 32
