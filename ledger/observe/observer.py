"""What a process exports and how: its registry, its readiness checks, and the server that serves both on
LEDGER_METRICS_ADDR (none when that is turned off: the metrics are still counted, nobody reads them)."""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry

from ledger.observe.health import Readiness
from ledger.observe.http import ObserveServer
from ledger.observe.registry import new_registry

log = logging.getLogger("ledger.observe")


class Observer:
    """A process's registry, readiness checks and HTTP server."""

    def __init__(
        self, registry: CollectorRegistry, readiness: Readiness, server: ObserveServer | None
    ) -> None:
        self.registry = registry
        self.readiness = readiness
        self.server = server

    @classmethod
    def start(cls, addr: str | None) -> Observer:
        """Bind `addr` (ConfigError, one line naming it, when it cannot be bound) and start serving."""
        registry, readiness = new_registry(), Readiness()
        server = ObserveServer.start(addr, registry, readiness) if addr else None
        if server is not None:
            log.info("metrics on %s/metrics, health on /livez and /readyz", server.url)
        return cls(registry, readiness, server)

    @property
    def metrics_url(self) -> str | None:
        return f"{self.server.url}/metrics" if self.server is not None else None

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
