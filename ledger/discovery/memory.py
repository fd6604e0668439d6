"""Memory capacity: MemTotal from /proc/meminfo, capped by the cgroup v2 `memory.max` when it is a number.

Like CPUs, /proc/meminfo shows the whole machine even inside a memory-limited container.
"""

from __future__ import annotations

from pathlib import Path

from ledger.core.resources import Capacity, Source
from ledger.discovery.sysfs import REAL_ROOT, read_int, read_text, under

HINT = "cannot read MemTotal from {path}; set MEMORY_LIMIT, e.g. MEMORY_LIMIT=128GiB"


def mem_total(meminfo: str) -> int | None:
    """MemTotal in bytes (the file says kB, meaning KiB), or None if absent."""
    for line in meminfo.splitlines():
        key, _, rest = line.partition(":")
        if key.strip() == "MemTotal":
            fields = rest.split()
            if fields and fields[0].isdigit():
                return int(fields[0]) * 1024
    return None


def cgroup_memory_limit(root: Path) -> int | None:
    """The cgroup v2 `memory.max` in bytes, or None when it is "max" or absent."""
    limit = read_int(under(root, "/sys/fs/cgroup/memory.max"))
    return limit if limit is not None and limit > 0 else None


def detect_memory(root: Path = REAL_ROOT) -> Capacity:
    """Detected memory bytes, or `undetected` with a hint."""
    path = under(root, "/proc/meminfo")
    text = read_text(path)
    total = mem_total(text) if text else None
    if not total:
        return Capacity(0, Source.UNDETECTED, HINT.format(path=path))
    cap = cgroup_memory_limit(root)
    return Capacity(min(total, cap) if cap is not None else total, Source.DETECTED)


def memory_capacity(limit: int | None, root: Path = REAL_ROOT) -> Capacity:
    """The configured MEMORY_LIMIT if set, else what the host shows."""
    if limit is not None:
        return Capacity(limit, Source.CONFIGURED)
    return detect_memory(root)
