"""Connecting to NATS the way a long-running service should: reconnect forever, quietly, with credentials."""

from __future__ import annotations

import contextlib
import logging
import random
import ssl
import time
from collections.abc import Callable
from typing import Any

from nats.aio.client import Client, Server
from nats.errors import AuthorizationError, StaleConnectionError

from ledger.bus.ordered_client import OrderedFlushClient
from ledger.config import Settings, mask_url
from ledger.core.errors import Unavailable

log = logging.getLogger("ledger.nats")

START_ATTEMPTS = 20  # a service's first connection: this many tries, START_WAIT_S apart, then it gives up
START_WAIT_S = 0.5
BACKOFF_FIRST_S = 0.25  # once connected, a lost connection is retried at once, then after 0.25, 0.5, 1, ...
BACKOFF_MAX_S = 5.0  # ... seconds, never more than this apart (with ±20 % jitter, so a fleet spreads out)


def _refused(exc: BaseException) -> bool:
    """The server said no to the credentials (nats-py reports its -ERR as a plain Error)."""
    return isinstance(exc, AuthorizationError) or "authorization violation" in str(exc).lower()


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "no cause given"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def backoff_s(attempt: int, jitter: float = 0.0) -> float:
    """Seconds to wait before reconnect attempt `attempt` (0 = the first after the connection was lost)."""
    if attempt <= 0:
        return 0.0
    return float(min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (attempt - 1)) * (1.0 + jitter))


class _Watch:
    """The connection's callbacks: one log line per change of state (lost, still down for a new reason,
    back, closed for good), never one per attempt; reconnects back off exponentially; while the first
    connection is being made, a server that refuses the credentials ends it at once."""

    def __init__(self, nc: OrderedFlushClient, url: str, on_closed: Callable[[], None] | None) -> None:
        self.nc = nc
        self.reporting = False  # set once a long-running caller's first connection is made
        self.url = mask_url(url)
        self.on_closed = on_closed
        self.cause: str | None = None
        self.down_since: float | None = None
        self.attempts = 0

    @property
    def quiet(self) -> bool:
        """A one-shot caller (its errors are raised, not logged), or a close on purpose."""
        return not self.reporting or self.nc.closing_on_purpose

    def _where(self) -> str:
        current = self.nc.connected_url
        return mask_url(current.geturl()) if current is not None else self.url

    async def error(self, exc: Exception) -> None:
        cause = _describe(exc)
        if not self.reporting:
            self.cause = cause
            if _refused(exc):
                raise exc  # out of nats-py's connect loop: the caller reports it
            return
        if self.down_since is None:
            if isinstance(exc, OSError | StaleConnectionError | TimeoutError):
                self.cause = cause  # the connection is going down: the next line reports it
            else:
                log.warning("nats: %s at %s", cause, self._where())
        elif cause != self.cause:
            self.cause = cause
            log.warning(
                "nats: still down at %s (%s); next try in %.1f s", self.url, cause, backoff_s(self.attempts)
            )

    def next_server(self, servers: list[Server], _info: dict[str, Any]) -> tuple[Server | None, float]:
        """nats-py's reconnect hook: the server tried least, after an exponentially growing pause."""
        delay = backoff_s(self.attempts, random.uniform(-0.2, 0.2))
        self.attempts += 1
        return (min(servers, key=lambda server: server.reconnects) if servers else None), delay

    async def disconnected(self) -> None:
        if (
            not self.reporting
            or self.nc.is_closed
            or self.nc.closing_on_purpose
            or self.down_since is not None
        ):
            return  # a close reports itself (closed); an outage is reported once
        self.down_since = time.monotonic()
        self.attempts = 0
        log.warning(
            "nats: lost %s (%s); retrying at once, then backing off to every %.0f s",
            self._where(),
            self.cause or "connection closed",
            BACKOFF_MAX_S,
        )

    async def reconnected(self) -> None:
        if self.down_since is not None:
            elapsed = time.monotonic() - self.down_since
            log.info("nats: back at %s after %.1f s (%d tries)", self._where(), elapsed, self.attempts)
        self.down_since = None
        self.cause = None

    async def closed(self) -> None:
        if self.quiet:
            return
        cause = _describe(self.nc.last_error) if self.nc.last_error else self.cause
        log.error("nats: the connection to %s closed for good (%s)", self.url, cause or "no cause given")
        if self.on_closed is not None:
            self.on_closed()


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
    on_closed: Callable[[], None] | None = None,
) -> Client:
    """A connected client. A service (`reconnect_forever`) tries its first connection START_ATTEMPTS times,
    then reconnects forever and logs one line per change of state; `on_closed` runs if the connection ends
    for good. A one-shot caller tries once. Either way a failure is `Unavailable` naming the URL (its
    password masked) and the cause, and refused credentials fail at once."""
    servers = [u.strip() for u in url.split(",") if u.strip()]
    nc = OrderedFlushClient()
    watch = _Watch(nc, url, on_closed)
    options: dict[str, Any] = {  # nats-py annotates the timeouts as int; it takes seconds as float
        "connect_timeout": connect_timeout,
        "reconnect_time_wait": START_WAIT_S,
        # nats-py reads 0 as "no limit": a one-shot caller needs 1 to fail fast
        "max_reconnect_attempts": START_ATTEMPTS if reconnect_forever else 1,
        **connect_options(settings),
    }
    try:
        await nc.connect(
            servers=servers,
            name=name,
            allow_reconnect=reconnect_forever,
            error_cb=watch.error,
            disconnected_cb=watch.disconnected,
            reconnected_cb=watch.reconnected,
            closed_cb=watch.closed,
            reconnect_to_server_handler=watch.next_server,
            **options,
        )
    except Exception as exc:
        nc.closing_on_purpose = True
        with contextlib.suppress(Exception):  # release the socket a refused connect may hold
            await nc.close()
        cause = watch.cause or _describe(exc)
        refused = _refused(exc)
        if refused:
            cause = "the server refused the credentials (check LEDGER_NATS_USER/PASSWORD/TOKEN/CREDS)"
        tries = f" after {START_ATTEMPTS} tries" if reconnect_forever and not refused else ""
        raise Unavailable(f"cannot connect to NATS at {mask_url(url)}{tries}: {cause}") from None
    if reconnect_forever:
        nc.options["max_reconnect_attempts"] = -1  # connected once: from now on, never give up
        watch.reporting = True
    return nc
