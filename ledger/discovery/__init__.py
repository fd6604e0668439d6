"""Host discovery: what this host has (CPU, memory, disk, network, disk I/O, GPUs) and how each was found.

Every reader takes a root directory and reads `<root>/proc` and `<root>/sys`, so the same code measures the
real host (`/`) and the recorded trees under tests/fixtures.
"""

from __future__ import annotations

from ledger.discovery.host import DEFAULT_DISK_IO, HostCapacities, discover

__all__ = ["DEFAULT_DISK_IO", "HostCapacities", "discover"]
