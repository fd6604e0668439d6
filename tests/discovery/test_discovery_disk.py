"""Disk reader: the size of the data dir's filesystem (created if missing); DISK_LIMIT wins."""

from __future__ import annotations

import os
from pathlib import Path

from ledger.core.resources import Capacity, Source
from ledger.discovery.disk import detect_disk, disk_capacity


def test_disk_is_the_size_of_the_data_dir_filesystem(tmp_path: Path) -> None:
    stats = os.statvfs(tmp_path)
    assert detect_disk(tmp_path) == Capacity(stats.f_blocks * stats.f_frsize, Source.DETECTED)


def test_missing_data_dir_is_created_then_measured(tmp_path: Path) -> None:
    data_dir = tmp_path / "a" / "b"
    capacity = detect_disk(data_dir)
    assert data_dir.is_dir()
    assert capacity.source is Source.DETECTED and capacity.capacity > 0


def test_data_dir_that_cannot_be_created_is_undetected_with_a_hint(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    capacity = detect_disk(blocker / "data")
    assert (capacity.capacity, capacity.source) == (0, Source.UNDETECTED)
    assert capacity.hint is not None and "DISK_LIMIT" in capacity.hint and str(blocker) in capacity.hint


def test_configured_disk_limit_wins_without_touching_the_data_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "never-created"
    assert disk_capacity(500 * 10**9, data_dir) == Capacity(500 * 10**9, Source.CONFIGURED)
    assert not data_dir.exists()
