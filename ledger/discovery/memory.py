"""Memory capacity: MemTotal (psutil's `virtual_memory().total`, read from the root's /proc/meminfo), capped
by the cgroup v2 `memory.max` when it is a number.

Like CPUs, /proc/meminfo shows the whole machine even inside a memory-limited container.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import psutil

from ledger.core.resources import Capacity, Source
from ledger.discovery.procfs import procfs
from ledger.discovery.sysfs import REAL_ROOT, read_int, under

HINT = "cannot read MemTotal from {path}; set MEMORY_LIMIT, e.g. MEMORY_LIMIT=128GiB"


def mem_total(root: Path) -> int | None:
    """MemTotal in bytes, or None if /proc/meminfo under `root` cannot say."""
    with procfs(root), warnings.catch_warnings():
        # psutil warns when a meminfo lacks fields it reports beside the total; only the total is used
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            total = psutil.virtual_memory().total
        except (OSError, ValueError, KeyError, IndexError):
            return None
    return total if total > 0 else None


def cgroup_memory_limit(root: Path) -> int | None:
    """The cgroup v2 `memory.max` in bytes, or None when it is "max" or absent."""
    limit = read_int(under(root, "/sys/fs/cgroup/memory.max"))
    return limit if limit is not None and limit > 0 else None


def detect_memory(root: Path = REAL_ROOT) -> Capacity:
    """Detected memory bytes, or `undetected` with a hint."""
    total = mem_total(root)
    if not total:
        return Capacity(0, Source.UNDETECTED, HINT.format(path=under(root, "/proc/meminfo")))
    cap = cgroup_memory_limit(root)
    return Capacity(min(total, cap) if cap is not None else total, Source.DETECTED)


def memory_capacity(limit: int | None, root: Path = REAL_ROOT) -> Capacity:
    """The configured MEMORY_LIMIT if set, else what the host shows."""
    if limit is not None:
        return Capacity(limit, Source.CONFIGURED)
    return detect_memory(root)
