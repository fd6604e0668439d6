"""Disk capacity: the size of the filesystem holding the data dir (psutil's `disk_usage`), or DISK_LIMIT.

The data dir is a path on the running host, not under the discovery root: a fixture tree has no real
filesystem to measure, so tests point `data_dir` at a temporary directory.
"""

from __future__ import annotations

from pathlib import Path

import psutil

from ledger.core.resources import Capacity, Source

HINT = "cannot measure the data dir {path} ({reason}); set DISK_LIMIT, e.g. DISK_LIMIT=500GB"


def filesystem_size(path: Path) -> int:
    """Total bytes of the filesystem holding `path`, creating `path` if missing."""
    path.mkdir(parents=True, exist_ok=True)
    return int(psutil.disk_usage(str(path)).total)


def detect_disk(data_dir: Path) -> Capacity:
    """Detected disk bytes, or `undetected` with a hint when the data dir cannot be created or statted."""
    try:
        size = filesystem_size(data_dir)
    except OSError as exc:
        return Capacity(0, Source.UNDETECTED, HINT.format(path=data_dir, reason=exc.strerror or exc))
    if size <= 0:
        return Capacity(0, Source.UNDETECTED, HINT.format(path=data_dir, reason="its filesystem says size 0"))
    return Capacity(size, Source.DETECTED)


def disk_capacity(limit: int | None, data_dir: Path) -> Capacity:
    """The configured DISK_LIMIT if set, else the data dir's filesystem size."""
    if limit is not None:
        return Capacity(limit, Source.CONFIGURED)
    return detect_disk(data_dir)
