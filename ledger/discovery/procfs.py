"""psutil reading a discovery root's /proc: `psutil.PROCFS_PATH` pointed at `<root>/proc` for one call.

PROCFS_PATH is a process-wide setting, so it is changed under a lock and only for a root that is not this
machine's own `/` (a fixture tree in tests); on the real root psutil reads /proc as always.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

from ledger.discovery.sysfs import is_real_root, under

_LOCK = threading.Lock()


@contextmanager
def procfs(root: Path) -> Iterator[None]:
    """psutil reads `root`'s /proc inside the block."""
    if is_real_root(root):
        yield
        return
    with _LOCK:
        saved = psutil.PROCFS_PATH
        psutil.PROCFS_PATH = str(under(root, "/proc"))
        try:
            yield
        finally:
            psutil.PROCFS_PATH = saved
