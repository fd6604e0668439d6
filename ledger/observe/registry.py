"""A process's own metrics registry, with what every ledger process exports: build info and the standard
process metrics."""

from __future__ import annotations

import platform

from prometheus_client import (
    CollectorRegistry,
    Info,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)

from ledger import __version__


def new_registry() -> CollectorRegistry:
    """A registry of this process's own, never prometheus_client's global one: tests (and anyone embedding
    the service) may run several in one process, and a metric registered twice on one registry fails."""
    # `*_created` series double what a scrape carries and tell nothing a restart of process_start_time_seconds
    # does not; the switch is process-wide, and this is the process's only registry.
    disable_created_metrics()  # type: ignore[no-untyped-call]  # unannotated in prometheus_client
    registry = CollectorRegistry(auto_describe=True)
    build = Info("ledger_build", "The ledger's version and the Python that runs it", registry=registry)
    build.info({"version": __version__, "python": platform.python_version()})
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry
