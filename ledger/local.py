"""Wiring for this host: open the configured ledger and register this host from discovery and config."""

from __future__ import annotations

from pathlib import Path

from ledger.config import Settings
from ledger.core.charges import DefaultBandwidth
from ledger.core.resources import ResourceType
from ledger.discovery import HostCapacities, discover
from ledger.store.ledger import Ledger


def open_ledger(settings: Settings, *, migrate: bool = True) -> Ledger:
    """The ledger on the configured database (migrated on first use)."""
    defaults = DefaultBandwidth(settings.default_bandwidth, settings.default_bandwidth_uses_ratio)
    return Ledger.open(
        settings.database_url, migrate=migrate, reservation_ttl=settings.reservation_ttl, defaults=defaults
    )


def refresh_host(ledger: Ledger, settings: Settings, root: Path = Path("/")) -> HostCapacities:
    """Discover this host's capacities and record them with the configured ratios."""
    found = discover(settings, root=root)
    ledger.register_host(
        settings.host_id,
        {r: found.get(r) for r in ResourceType},
        {r: settings.ratio(r) for r in ResourceType},
        found.gpu,
        labels=settings.host_labels,
    )
    return found


def ensure_host(ledger: Ledger, settings: Settings, host_id: str | None) -> str:
    """The host a command is about; the local host is registered on first use (even if events about it
    arrived first and made an empty host row)."""
    target = host_id or settings.host_id
    if target == settings.host_id and not ledger.is_registered(target):
        refresh_host(ledger, settings)
    return target
