"""A host's room as stored (store/totals.derived): spread placement walks down it as an upper bound on every
host's score, so it may over-state the true room (by less than ROOM_SLACK, to spare PostgreSQL an index
write per admission) but never under-state it."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ledger.core.placement import room
from ledger.store.totals import ROOM_SLACK, TOTAL_COLUMNS, derived, left

amounts = st.integers(0, 10**6)
limits = st.tuples(*(st.integers(0, 10**6) for _ in range(5)))
totals = st.fixed_dictionaries({column: amounts for column in TOTAL_COLUMNS})


@given(limits=limits, totals=totals, stored=st.one_of(st.none(), st.floats(-1.0, 2.0)))
def test_the_stored_room_never_understates_and_lags_a_fall_by_less_than_the_slack(
    limits: tuple[int, ...], totals: dict[str, int], stored: float | None
) -> None:
    written = derived(totals, limits, stored)
    free = left(totals, limits)
    exact = room(limits, free)
    assert written[:-1] == free
    assert written[-1] >= exact
    assert written[-1] == exact or (written[-1] == stored and stored - exact < ROOM_SLACK)


def test_a_small_fall_keeps_the_stored_room_and_a_rise_or_a_large_fall_writes_the_true_one() -> None:
    limits = (100, 100, 100, 100, 100)
    empty = dict.fromkeys(TOTAL_COLUMNS, 0)
    assert derived(empty, limits)[-1] == 1.0
    one_percent = {**empty, "alloc_cpu": 1}
    assert ROOM_SLACK < 0.01
    assert derived(one_percent, limits, 1.0)[-1] == 0.99  # a fall past the slack is written
    tiny_limits = (100_000, 100, 100, 100, 100)
    tiny = {**empty, "alloc_cpu": 1}  # 0.001 % of the CPU: well inside the slack
    assert derived(tiny, tiny_limits, 1.0)[-1] == 1.0
    half = {**empty, "alloc_cpu": 50}
    assert derived(half, limits, 1.0)[-1] == 0.5  # a large fall is written
    assert derived(empty, limits, 0.5)[-1] == 1.0  # a rise is always written
