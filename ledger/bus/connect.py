"""Connecting to NATS the way a long-running service should: reconnect forever, quietly, with credentials."""

from __future__ import annotations

import contextlib
import logging
import ssl
from typing import Any

from nats.aio.client import Client

from ledger.bus.ordered_client import OrderedFlushClient
from ledger.config import Settings
from ledger.core.errors import Unavailable

log = logging.getLogger("ledger.nats")


async def _on_error(exc: Exception) -> None:
    log.warning("nats: %s", exc)


async def _quiet(exc: Exception) -> None:
    log.debug("nats: %s", exc)


async def _on_disconnected() -> None:
    log.debug("nats: disconnected")  # also fires on a normal close; reconnects are logged when they happen


async def _on_reconnected() -> None:
    log.info("nats: reconnected")


def connect_options(settings: Settings | None) -> dict[str, Any]:
    """nats-py options for the credentials and TLS in `settings`."""
    options: dict[str, Any] = {}
    if settings is None:
        return options
    if settings.nats_user:
        options["user"] = settings.nats_user
        options["password"] = settings.nats_password or ""
    if settings.nats_token:
        options["token"] = settings.nats_token
    if settings.nats_nkey_seed:
        options["nkeys_seed"] = str(settings.nats_nkey_seed)
    if settings.nats_creds:
        options["user_credentials"] = str(settings.nats_creds)
    if settings.nats_tls_ca or settings.nats_tls_cert:
        context = ssl.create_default_context(
            cafile=str(settings.nats_tls_ca) if settings.nats_tls_ca else None
        )
        if settings.nats_tls_cert:
            keyfile = str(settings.nats_tls_key) if settings.nats_tls_key else None
            context.load_cert_chain(str(settings.nats_tls_cert), keyfile)
        options["tls"] = context
    return options


async def connect(
    url: str,
    settings: Settings | None = None,
    *,
    name: str = "ledger",
    reconnect_forever: bool = True,
    connect_timeout: float = 5.0,
) -> Client:
    """A connected client; a service reconnects forever, a CLI call fails fast with `Unavailable`."""
    servers = [u.strip() for u in url.split(",") if u.strip()]
    options: dict[str, Any] = {  # nats-py annotates the timeouts as int; it takes seconds as float
        "connect_timeout": connect_timeout,
        "reconnect_time_wait": 0.5,
        # nats-py reads 0 as "no limit": a one-shot caller needs 1 to fail fast.
        "max_reconnect_attempts": -1 if reconnect_forever else 1,
        **connect_options(settings),
    }
    nc = OrderedFlushClient()
    try:
        await nc.connect(
            servers=servers,
            name=name,
            allow_reconnect=reconnect_forever,
            error_cb=_on_error if reconnect_forever else _quiet,
            disconnected_cb=_on_disconnected,
            reconnected_cb=_on_reconnected,
            **options,
        )
    except Exception as exc:
        with contextlib.suppress(Exception):  # release the socket a refused connect may hold
            await nc.close()
        raise Unavailable(f"cannot connect to NATS at {url}: {exc or type(exc).__name__}") from None
    return nc
