"""Usage metrics: `ledger_used` per host and resource for `ledger serve`, per-instance figures for the process
that samples them (`ledger agent`, or `ledger serve` for its own host), and the ingest's counts.

Per-instance series come from the sampler's newest report in memory, as cAdvisor and hypeman export theirs
from the node that runs the VMs: a fleet is scraped host by host, never through one endpoint with a series
per VM of every host. A host exports at most MAX_INSTANCE_SERIES instances (by id); the rest are counted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Connection, select

from ledger.core.usage import RESOURCE_MEASURES, UsageReport
from ledger.store.usage import hour_of
from ledger.store.usage_tables import host_usage_hourly

MAX_INSTANCE_SERIES = 1000  # per host


class HourlyUsed:
    """`ledger_used`: the p95 of the host's total use in its newest hourly summary (the current hour so far,
    brought up to date every minute). One row per host: the summaries of the last two hours only."""

    def __init__(self, clock: Callable[[], datetime]) -> None:
        self._clock = clock

    def used(self, conn: Connection) -> Mapping[tuple[str, str], float]:
        since = hour_of(self._clock()) - timedelta(hours=1)
        newest: dict[str, Any] = {}
        query = select(host_usage_hourly).where(host_usage_hourly.c.hour >= since).order_by("hour")
        for row in conn.execute(query):
            newest[row.host_id] = row  # ordered by hour: the last one kept is the newest
        used: dict[tuple[str, str], float] = {}
        for host_id, row in newest.items():
            for resource, measure in RESOURCE_MEASURES.items():
                value = getattr(row, f"{measure}_p95")
                if value is not None:
                    used[(host_id, resource.value)] = float(value)
        return used


class SampledUsage(Collector):
    """Per-instance series from the newest report a sampler made (`report()`; None before the first)."""

    def __init__(self, report: Callable[[], UsageReport | None]) -> None:
        self._report = report

    def describe(self) -> Iterable[Metric]:
        return _InstanceFamilies().all()

    def collect(self) -> Iterable[Metric]:
        families = _InstanceFamilies()
        report = self._report()
        if report is not None:
            families.add(report)
        return families.all()


class _InstanceFamilies:
    def __init__(self) -> None:
        labels = ["host", "instance"]
        self.cpu = CounterMetricFamily(
            "ledger_instance_cpu_seconds",
            "CPU seconds used by the VM's hypervisor process tree (user + system)",
            labels=labels,
        )
        self.rss = GaugeMetricFamily(
            "ledger_instance_memory_rss_bytes", "Resident memory of the VM's process tree", labels=labels
        )
        self.read = CounterMetricFamily(
            "ledger_instance_disk_read_bytes",
            "Bytes the VM's process tree read from block devices",
            labels=labels,
        )
        self.written = CounterMetricFamily(
            "ledger_instance_disk_written_bytes",
            "Bytes the VM's process tree wrote to block devices",
            labels=labels,
        )
        self.received = CounterMetricFamily(
            "ledger_instance_network_receive_bytes",
            "Bytes the VM received (its TAP device transmitted them)",
            labels=labels,
        )
        self.sent = CounterMetricFamily(
            "ledger_instance_network_transmit_bytes",
            "Bytes the VM sent (its TAP device received them)",
            labels=labels,
        )
        self.unmeasured = GaugeMetricFamily(
            "ledger_instances_unmeasured",
            "Running instances the newest sample could not measure",
            labels=["host"],
        )
        self.dropped = GaugeMetricFamily(
            "ledger_instance_series_dropped",
            f"Instances measured but not exported (over {MAX_INSTANCE_SERIES} a host)",
            labels=["host"],
        )

    def all(self) -> list[Metric]:
        return [
            self.cpu,
            self.rss,
            self.read,
            self.written,
            self.received,
            self.sent,
            self.unmeasured,
            self.dropped,
        ]

    def add(self, report: UsageReport) -> None:
        shown = sorted(report.instances, key=lambda usage: usage.id)[:MAX_INSTANCE_SERIES]
        for usage in shown:
            labels = [report.host, usage.id]
            self.cpu.add_metric(labels, usage.cpu_seconds_total)
            self.rss.add_metric(labels, usage.memory_rss_bytes)
            self.read.add_metric(labels, usage.disk_read_bytes_total)
            self.written.add_metric(labels, usage.disk_write_bytes_total)
            if usage.network_rx_bytes_total is not None:
                self.received.add_metric(labels, usage.network_rx_bytes_total)
            if usage.network_tx_bytes_total is not None:
                self.sent.add_metric(labels, usage.network_tx_bytes_total)
        self.unmeasured.add_metric([report.host], len(report.unmeasured))
        self.dropped.add_metric([report.host], len(report.instances) - len(shown))


class IngestedUsage(Collector):
    """`ledger_usage_stored_total` and `ledger_usage_dropped_total{reason}` from the service's ingest."""

    def __init__(self, stored: Callable[[], int], dropped: Callable[[], Mapping[str, int]]) -> None:
        self._stored = stored
        self._dropped = dropped

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterable[Metric]:
        return self._families(self._stored(), self._dropped())

    @staticmethod
    def _families(stored: int = 0, dropped: Mapping[str, int] | None = None) -> list[Metric]:
        stored_family = CounterMetricFamily(
            "ledger_usage_stored", "Instance figures (or unmeasured reasons) stored from usage reports"
        )
        stored_family.add_metric([], stored)
        dropped_family = CounterMetricFamily(
            "ledger_usage_dropped",
            "Usage reports, or instances in them, dropped by reason (usage is lossy by design)",
            labels=["reason"],
        )
        for reason, count in sorted((dropped or {}).items()):
            dropped_family.add_metric([reason], count)
        return [stored_family, dropped_family]
