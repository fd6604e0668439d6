"""Wiring for this host: open the configured ledger the way a command needs it, and register this host.

Three ways to open, one per kind of command: `open_ledger` migrates (only `ledger serve`; `ledger db upgrade`
migrates on its own), `open_writer` writes to a database that must already be at the current schema, and
`open_reader` cannot write at all (see `ledger.store.engine`). Neither of the last two creates a database,
and only `refresh_host` registers a host.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from ledger.config import Settings
from ledger.core.charges import DefaultBandwidth
from ledger.core.errors import ConfigError, UnknownHost
from ledger.core.resources import ResourceType
from ledger.discovery import HostCapacities, discover
from ledger.store.engine import describe, make_engine
from ledger.store.ledger import Ledger
from ledger.store.migrate import require_current
from ledger.store.tx import unknown_host

T = TypeVar("T")
HOSTS_LISTED = 20  # at most this many known hosts named when the local one is missing


def open_ledger(settings: Settings, *, migrate: bool = True) -> Ledger:
    """The ledger on the configured database, migrated to the current schema first (for `ledger serve`)."""
    return _open(settings, migrate=migrate, read_only=False)


def open_writer(settings: Settings) -> Ledger:
    """The ledger for a command that writes (validate, release, host refresh, ...): never created or
    migrated here, so the database must exist at the current schema."""
    engine = _with_source(settings, lambda: make_engine(settings.database_url, read_only=True))
    try:
        _with_source(settings, lambda: require_current(engine))
    finally:
        engine.dispose()
    return _open(settings, migrate=False, read_only=False)


def open_reader(settings: Settings) -> Ledger:
    """The ledger for a command that only reads: the database refuses writes, and is never created."""
    return _open(settings, migrate=False, read_only=True)


def _open(settings: Settings, *, migrate: bool, read_only: bool) -> Ledger:
    defaults = DefaultBandwidth(settings.default_bandwidth, settings.default_bandwidth_uses_ratio)
    return _with_source(
        settings,
        lambda: Ledger.open(
            settings.database_url,
            migrate=migrate,
            read_only=read_only,
            reservation_ttl=settings.reservation_ttl,
            defaults=defaults,
            **({} if read_only else {"optimistic": settings.one_round_trip_admission}),
        ),
    )


def _with_source(settings: Settings, action: Callable[[], T]) -> T:
    """Run `action`; a problem with the database URL also says where the URL came from."""
    try:
        return action()
    except ConfigError as exc:
        if exc.details.get("setting") != "database_url":
            raise
        source = settings.sources.get("database_url", "default")
        raise ConfigError(f"{exc.message} [database_url from {source}]", **exc.details) from None


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


def target_host(ledger: Ledger, settings: Settings, host_id: str | None) -> str:
    """The host a command is about: `host_id`, else this host, which must be registered already (no
    command but `ledger host refresh` and `ledger serve` registers one). UnknownHost names the hosts the
    database has and how to register this one."""
    if host_id is not None:
        if not ledger.is_registered(host_id):
            raise unknown_host(host_id)
        return host_id
    if ledger.is_registered(settings.host_id):
        return settings.host_id
    known = ledger.host_ids()
    shown = ", ".join(known[:HOSTS_LISTED]) + (
        f" and {len(known) - HOSTS_LISTED} more" if len(known) > HOSTS_LISTED else ""
    )
    register = "register this host with `ledger host refresh` (`ledger serve` registers its host too)"
    advice = (
        f"it has {shown}: name one with --host, or {register}" if known else f"it has no hosts: {register}"
    )
    source = settings.sources.get("host_id", "default")
    raise UnknownHost(
        f"this host, {settings.host_id!r} (host_id from {source}), is not registered in the database at "
        f"{describe(settings.database_url)}; {advice}",
        host=settings.host_id,
        hosts=known,
    )
