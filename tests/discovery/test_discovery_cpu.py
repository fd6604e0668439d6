"""CPU reader: processors in /proc/cpuinfo, capped by cgroup cpu.max; CPU_LIMIT wins."""

from __future__ import annotations

import os
from pathlib import Path

from ledger.core.resources import Capacity, Source
from ledger.discovery.cpu import cgroup_cpu_limit, count_processors, cpu_capacity, detect_cpu
from tests.hosttree import HostTree


def _write(root: Path, path: str, text: str) -> None:
    target = root / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text + "\n")


def test_counts_every_processor_entry_in_cpuinfo(host_tree: HostTree) -> None:
    assert detect_cpu(host_tree("h200-vm")) == Capacity(16, Source.DETECTED)
    assert detect_cpu(host_tree("cpu-vm")) == Capacity(2, Source.DETECTED)


def test_cgroup_quota_caps_cpus_at_the_rounded_up_share(host_tree: HostTree) -> None:
    root = host_tree("no-route-host")  # 4 processors
    _write(root, "sys/fs/cgroup/cpu.max", "150000 100000")
    assert detect_cpu(root) == Capacity(2, Source.DETECTED)


def test_cgroup_quota_above_the_processor_count_does_not_raise_it(host_tree: HostTree) -> None:
    root = host_tree("no-route-host")
    _write(root, "sys/fs/cgroup/cpu.max", "1600000 100000")
    assert detect_cpu(root).capacity == 4


def test_cgroup_max_means_no_quota(host_tree: HostTree) -> None:
    root = host_tree("passthrough-host")  # cpu.max is "max 100000"
    assert cgroup_cpu_limit(root) is None
    assert detect_cpu(root) == Capacity(8, Source.DETECTED)


def test_configured_cpu_limit_wins_over_detection(host_tree: HostTree) -> None:
    assert cpu_capacity(64, host_tree("cpu-vm")) == Capacity(64, Source.CONFIGURED)


def test_missing_cpuinfo_is_undetected_with_a_hint(tmp_path: Path) -> None:
    capacity = detect_cpu(tmp_path)
    assert capacity.capacity == 0
    assert capacity.source is Source.UNDETECTED
    assert capacity.hint is not None and "CPU_LIMIT" in capacity.hint


def test_count_ignores_lines_that_only_mention_processor() -> None:
    text = "processor\t: 0\nmodel name\t: some processor\n\nprocessor\t: 1\n"
    assert count_processors(text) == 2


def test_real_host_is_capped_by_the_affinity_mask() -> None:
    capacity = detect_cpu(Path("/"))
    assert capacity.source is Source.DETECTED
    assert 1 <= capacity.capacity <= len(os.sched_getaffinity(0))
