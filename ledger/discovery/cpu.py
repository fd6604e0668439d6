"""vCPU capacity: logical processors in /proc/cpuinfo, capped by the cgroup quota and the affinity mask.

psutil and os.cpu_count() ignore both caps, so a container limited to 2 CPUs on a 64-core host would be
told it has 64; the ledger must promise only what this process can actually use.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from ledger.core.resources import Capacity, Source
from ledger.discovery.sysfs import REAL_ROOT, is_real_root, read_text, under

HINT = "cannot count processors in {path}; set CPU_LIMIT, e.g. CPU_LIMIT=16"


def count_processors(cpuinfo: str) -> int:
    """Number of `processor : N` entries (one per logical CPU on every architecture Linux prints)."""
    return sum(1 for line in cpuinfo.splitlines() if line.split(":", 1)[0].strip() == "processor")


def cgroup_cpu_limit(root: Path) -> int | None:
    """ceil(quota / period) from cgroup v2 `cpu.max`, or None when unlimited ("max") or absent."""
    text = read_text(under(root, "/sys/fs/cgroup/cpu.max"))
    if not text:
        return None
    parts = text.split()
    if parts[0] == "max":
        return None
    try:
        quota = int(parts[0])
        period = int(parts[1]) if len(parts) > 1 else 100_000
    except ValueError:
        return None
    if quota <= 0 or period <= 0:
        return None
    return max(1, math.ceil(quota / period))


def affinity_limit(root: Path) -> int | None:
    """CPUs this process may run on; only meaningful for the real root, not a fixture tree."""
    if not is_real_root(root):
        return None
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return None


def detect_cpu(root: Path = REAL_ROOT) -> Capacity:
    """Detected vCPUs, or `undetected` with a hint if /proc/cpuinfo has no processors."""
    path = under(root, "/proc/cpuinfo")
    text = read_text(path)
    count = count_processors(text) if text else 0
    if count <= 0:
        return Capacity(0, Source.UNDETECTED, HINT.format(path=path))
    caps = [c for c in (cgroup_cpu_limit(root), affinity_limit(root)) if c is not None]
    return Capacity(min([count, *caps]), Source.DETECTED)


def cpu_capacity(limit: int | None, root: Path = REAL_ROOT) -> Capacity:
    """The configured CPU_LIMIT if set, else what the host shows."""
    if limit is not None:
        return Capacity(limit, Source.CONFIGURED)
    return detect_cpu(root)
