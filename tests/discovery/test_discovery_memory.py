"""Memory reader: MemTotal * 1024, capped by cgroup memory.max; MEMORY_LIMIT wins."""

from __future__ import annotations

from pathlib import Path

from ledger.core.resources import Capacity, Source
from ledger.discovery.memory import detect_memory, memory_capacity
from tests.hosttree import HostTree


def test_memtotal_kib_becomes_bytes(host_tree: HostTree) -> None:
    assert detect_memory(host_tree("h200-vm")) == Capacity(131981020 * 1024, Source.DETECTED)


def test_cgroup_memory_max_caps_memory(host_tree: HostTree) -> None:
    root = host_tree("no-route-host")  # 8053240 kB
    (root / "sys/fs/cgroup").mkdir(parents=True)
    (root / "sys/fs/cgroup/memory.max").write_text("2147483648\n")
    assert detect_memory(root) == Capacity(2 * 1024**3, Source.DETECTED)


def test_cgroup_memory_max_of_max_is_no_cap(host_tree: HostTree) -> None:
    root = host_tree("passthrough-host")
    assert detect_memory(root) == Capacity(263846580 * 1024, Source.DETECTED)


def test_configured_memory_limit_wins(host_tree: HostTree) -> None:
    assert memory_capacity(1024, host_tree("h200-vm")) == Capacity(1024, Source.CONFIGURED)


def test_meminfo_without_memtotal_is_undetected_with_a_hint(tmp_path: Path) -> None:
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/meminfo").write_text("MemFree: 10 kB\n")
    capacity = detect_memory(tmp_path)
    assert (capacity.capacity, capacity.source) == (0, Source.UNDETECTED)
    assert capacity.hint is not None and "MEMORY_LIMIT" in capacity.hint
