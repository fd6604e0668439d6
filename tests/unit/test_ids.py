"""Reservation ids: UUIDv7 layout as 32 hex digits, unique, and sorting by the millisecond they were made."""

from __future__ import annotations

import time
import uuid

from ledger.store.ids import reservation_id


def test_an_id_is_a_version_7_uuid_in_32_hex_digits_carrying_its_creation_time() -> None:
    before = time.time_ns() // 1_000_000
    rid = reservation_id()
    after = time.time_ns() // 1_000_000
    assert len(rid) == 32 and rid == rid.lower() and int(rid, 16) >= 0
    parsed = uuid.UUID(rid)
    assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
    assert before <= int(rid[:12], 16) <= after


def test_ids_are_unique_and_sort_by_the_millisecond_they_were_made() -> None:
    first = [reservation_id() for _ in range(50_000)]
    assert len(set(first)) == len(first)
    time.sleep(0.002)
    later = reservation_id()
    assert later > max(first)
    assert len({rid[12] for rid in first}) == 1  # the version digit never varies
    assert len({rid[16] for rid in first}) == 4  # the variant's two bits leave 8, 9, a, b
