"""Oversubscription ratios that the configuration sets but the ledger does not use yet.

A host's ratios are stored when it registers (`ledger host refresh`, `ledger serve` at start, or an agent's
`host.capacity`). Changing OVERSUB_CPU afterwards changes nothing until then, which is easy to miss:
`ledger status` and `ledger config` say so. Only ratios set on purpose (a flag, the environment or the
config file) are compared; a default is not a statement about the host.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ledger.config import Settings
from ledger.core.resources import ResourceType

if TYPE_CHECKING:
    from ledger.core.results import FullStatus

APPLY = "ledger host refresh"


@dataclass(frozen=True, slots=True)
class RatioDrift:
    """A ratio the configuration sets that differs from the one in force for `host`."""

    host: str
    resource: ResourceType
    configured: float
    source: str
    stored: float

    @property
    def key(self) -> str:
        return f"oversub_{self.resource.value}"

    def describe(self) -> str:
        return (
            f"{self.key} is {self.configured} in this configuration ({self.source}), but host {self.host} "
            f"was registered with {self.stored}, which is in force: run `{APPLY}` with this configuration "
            "to apply it (or restart `ledger serve` with it)"
        )


def configured_ratios(settings: Settings) -> dict[ResourceType, str]:
    """The resources whose ratio is set on purpose, with where it came from."""
    sources = {r: settings.sources.get(f"oversub_{r.value}", "default") for r in ResourceType}
    return {r: source for r, source in sources.items() if source != "default"}


def drifts(settings: Settings, status: FullStatus) -> list[RatioDrift]:
    """The configured ratios that differ from those `status` (this host's) was computed with."""
    if status.host_id != settings.host_id:
        return []  # the configuration describes this host only
    return [
        RatioDrift(status.host_id, r, settings.ratio(r), source, status.resources[r].oversub_ratio)
        for r, source in configured_ratios(settings).items()
        if not math.isclose(settings.ratio(r), status.resources[r].oversub_ratio)
    ]


def this_hosts_status(settings: Settings) -> FullStatus:
    """This host's status without its instances, from the service when a NATS URL is set, else from the
    database (read-only)."""
    if settings.nats_url:
        from ledger.cli.remote import via_service

        return via_service(settings, lambda client: client.status(host=settings.host_id, limit=0))
    from ledger.local import open_reader

    ledger = open_reader(settings)
    try:
        return ledger.full_status(settings.host_id, limit=0)
    finally:
        ledger.close()
