"""One host's sampler: each Running instance's process tree and TAP device, turned into a UsageReport.

It remembers the previous reading of each instance, so counters become rates over the real time between
two looks (not the nominal interval), and a process whose start time changed between two looks is a reused
pid, not a VM that did a lot of work. Whatever cannot be read makes that instance `unmeasured` with the
reason; sampling never raises for one VM's sake.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from ledger.core.results import InstanceUtilizationInfo
from ledger.core.usage import InstanceUsage, Unmeasured, UsageReport
from ledger.usage.links import LinkCounters, read_links
from ledger.usage.processes import ProcessGone, ProcessTable, TreeReading, read_tree


@dataclass(frozen=True, slots=True)
class _Look:
    """What one look at an instance found: the counters the next look subtracts."""

    at: float  # monotonic seconds
    tree: TreeReading
    tap_device: str
    link: LinkCounters | None


def _rate(now: float, before: float, elapsed: float) -> float | None:
    """Per second; None when a counter went backwards (a reset: the rate is unknown, not negative)."""
    return (now - before) / elapsed if now >= before else None


class Sampler:
    """Samples `host`'s Running instances; keep one per host for the life of the agent."""

    def __init__(
        self,
        host: str,
        *,
        netns: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.host = host
        self.netns = netns
        self._clock = clock
        self._wall_clock = wall_clock
        self._looks: dict[str, _Look] = {}

    def sample(self, instances: Sequence[InstanceUtilizationInfo], interval_s: float) -> UsageReport:
        """A report on `instances` (the host's Running ones) now."""
        at = self._wall_clock()
        table = ProcessTable.scan()
        links, links_problem = self._links(instances)
        now = self._clock()
        measured: list[InstanceUsage] = []
        unmeasured: list[Unmeasured] = []
        looks: dict[str, _Look] = {}
        for instance in instances:
            try:
                look = self._look(instance, table, links, links_problem, now)
            except ProcessGone as gone:
                unmeasured.append(Unmeasured(instance.id, gone.reason))
                continue
            measured.append(self._usage(instance.id, look, self._looks.get(instance.id)))
            looks[instance.id] = look
        self._looks = looks  # an instance no longer running is forgotten
        return UsageReport(self.host, at, interval_s, tuple(measured), tuple(unmeasured))

    def _links(self, instances: Sequence[InstanceUtilizationInfo]) -> tuple[dict[str, LinkCounters], str]:
        if not any(instance.tap_device for instance in instances):
            return {}, ""
        try:
            return read_links(self.netns), ""
        except Exception as exc:  # netlink refused (seccomp, no CAP_NET_ADMIN in a namespace): say so per VM
            return {}, f"cannot read network devices over netlink: {exc}"

    def _look(
        self,
        instance: InstanceUtilizationInfo,
        table: ProcessTable,
        links: dict[str, LinkCounters],
        links_problem: str,
        now: float,
    ) -> _Look:
        if instance.hypervisor_pid is None:
            raise ProcessGone("its instance record has no hypervisor_pid")
        before = self._looks.get(instance.id)
        expected = before.tree.create_time if before and before.tree.pid == instance.hypervisor_pid else None
        tree = read_tree(instance.hypervisor_pid, table, expected)
        link = None
        if instance.tap_device:
            if links_problem:
                raise ProcessGone(links_problem)
            link = links.get(instance.tap_device)
            if link is None:
                raise ProcessGone(f"TAP device {instance.tap_device} does not exist")
        return _Look(now, tree, instance.tap_device, link)

    @staticmethod
    def _usage(instance_id: str, look: _Look, before: _Look | None) -> InstanceUsage:
        tree, link = look.tree, look.link
        # the TAP device's counters are the host's side: what it transmits, the VM receives
        vm_rx = link.tx_bytes if link else None
        vm_tx = link.rx_bytes if link else None
        rates: dict[str, float | None] = {}
        same = (
            before is not None
            and before.tree.pid == tree.pid
            and before.tap_device == look.tap_device
            and look.at > before.at
        )
        if same and before is not None:
            elapsed = look.at - before.at
            rates["cpu_vcpus"] = _rate(tree.cpu_seconds, before.tree.cpu_seconds, elapsed)
            rates["disk_read_bps"] = _rate(tree.read_bytes, before.tree.read_bytes, elapsed)
            rates["disk_write_bps"] = _rate(tree.write_bytes, before.tree.write_bytes, elapsed)
            if link is not None and before.link is not None:
                rates["network_rx_bps"] = _rate(link.tx_bytes, before.link.tx_bytes, elapsed)
                rates["network_tx_bps"] = _rate(link.rx_bytes, before.link.rx_bytes, elapsed)
        return InstanceUsage(
            id=instance_id,
            cpu_seconds_total=tree.cpu_seconds,
            memory_rss_bytes=tree.rss_bytes,
            disk_read_bytes_total=tree.read_bytes,
            disk_write_bytes_total=tree.write_bytes,
            memory_pss_bytes=tree.pss_bytes,
            memory_uss_bytes=tree.uss_bytes,
            network_rx_bytes_total=vm_rx,
            network_tx_bytes_total=vm_tx,
            **rates,
        )
