"""A VM's hypervisor process tree, read with psutil: CPU seconds, memory and disk bytes of the whole tree.

A hypervisor may fork helpers (virtiofsd, a vhost-user backend, swtpm): what the VM costs the host is the
tree. Finding each tree with psutil's `children()` would scan every process once per VM, so the sampler
takes one `ProcessTable` per interval (each process's parent, read once) and walks it per VM.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import psutil

# /proc/<pid>/smaps_rollup (Linux 4.14+) gives PSS and USS in one read; without it psutil would parse the
# whole of /proc/<pid>/smaps, which is slow for a VM with many mappings: then only RSS is reported.
HAS_CHEAP_PSS = bool(getattr(psutil._pslinux, "HAS_PROC_SMAPS_ROLLUP", False)) if psutil.LINUX else False


class ProcessGone(Exception):
    """The hypervisor process is not there, or is another process now; `reason` says which."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class TreeReading:
    """Cumulative counters of a process tree at one instant (rates come from two readings)."""

    pid: int
    create_time: float  # of the root process, seconds since the epoch: tells a reused pid apart
    cpu_seconds: float  # user + system of every live process, plus the reaped children of each
    rss_bytes: int
    pss_bytes: int | None
    uss_bytes: int | None
    read_bytes: int
    write_bytes: int


class ProcessTable:
    """Each process's children, from one pass over the process list."""

    def __init__(self, parents: Iterable[tuple[int, int]]) -> None:
        self._children: dict[int, list[int]] = defaultdict(list)
        for pid, ppid in parents:
            if pid != ppid:
                self._children[ppid].append(pid)

    @classmethod
    def scan(cls) -> ProcessTable:
        pairs = []
        for process in psutil.process_iter(["ppid"]):
            ppid = process.info.get("ppid")
            if isinstance(ppid, int):
                pairs.append((process.pid, ppid))
        return cls(pairs)

    def descendants(self, pid: int) -> list[int]:
        found: list[int] = []
        stack = list(self._children.get(pid, ()))
        while stack:
            child = stack.pop()
            found.append(child)
            stack.extend(self._children.get(child, ()))
        return found


def read_tree(pid: int, table: ProcessTable, expected_create_time: float | None = None) -> TreeReading:
    """The counters of `pid` and its descendants; ProcessGone if the root is gone or (when
    `expected_create_time` is given) was started at another time, i.e. the pid now belongs to another
    process. A descendant that exits while being read is left out: its time moves to its parent's reaped
    children once waited for."""
    try:
        root = psutil.Process(pid)
        create_time = root.create_time()
    except psutil.NoSuchProcess:
        raise ProcessGone(f"hypervisor process {pid} is gone") from None
    except psutil.AccessDenied:
        raise ProcessGone(f"hypervisor process {pid} cannot be read (permission denied)") from None
    if expected_create_time is not None and abs(create_time - expected_create_time) > 0.01:
        raise ProcessGone(f"pid {pid} now belongs to another process (started at {create_time:.0f})")
    totals = _Totals()
    try:
        totals.add(root)
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        raise ProcessGone(f"hypervisor process {pid} exited while being read") from None
    except psutil.AccessDenied:
        raise ProcessGone(f"hypervisor process {pid} cannot be read (permission denied)") from None
    for child in table.descendants(pid):
        try:
            totals.add(psutil.Process(child))
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            continue
    return TreeReading(
        pid=pid,
        create_time=create_time,
        cpu_seconds=totals.cpu_seconds,
        rss_bytes=totals.rss,
        pss_bytes=totals.pss,
        uss_bytes=totals.uss,
        read_bytes=totals.read_bytes,
        write_bytes=totals.write_bytes,
    )


class _Totals:
    def __init__(self) -> None:
        self.cpu_seconds = 0.0
        self.rss = 0
        self.pss: int | None = 0 if HAS_CHEAP_PSS else None
        self.uss: int | None = 0 if HAS_CHEAP_PSS else None
        self.read_bytes = 0
        self.write_bytes = 0

    def add(self, process: psutil.Process) -> None:
        with process.oneshot():
            times = process.cpu_times()
            # a live child counts with its own times; once its parent has reaped it, in the parent's
            # children_* times: summed over the live tree, each second is counted once
            cpu = times.user + times.system + times.children_user + times.children_system
            if HAS_CHEAP_PSS:
                full = process.memory_full_info()
                rss, pss, uss = full.rss, full.pss, full.uss
            else:
                rss, pss, uss = process.memory_info().rss, 0, 0
            try:
                io = process.io_counters()
                read_bytes, write_bytes = io.read_bytes, io.write_bytes
            except (psutil.AccessDenied, AttributeError):
                read_bytes = write_bytes = 0
        self.cpu_seconds += cpu
        self.rss += rss
        if self.pss is not None and self.uss is not None:
            self.pss += pss
            self.uss += uss
        self.read_bytes += read_bytes
        self.write_bytes += write_bytes
