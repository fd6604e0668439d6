"""The database as monitoring reads it: an engine of its own with short timeouts, so a scrape or a readiness
probe against a database that hangs gives up within seconds, and monitoring never takes a connection the
service's own pool needs for admission."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.pool import NullPool

from ledger.store.engine import normalize_url

TIMEOUT_S = 2  # libpq's connect_timeout takes whole seconds (and at least 2)


class ObserveDatabase:
    """Read-only access for scrapes and probes (see the module docstring)."""

    def __init__(self, url: str) -> None:
        self.engine = _engine(url)

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A connection for a few reads; whatever it began is rolled back on the way out."""
        with self.engine.connect() as conn:
            yield conn

    def probe(self) -> str | None:
        """None when the database answers a trivial query within the timeout; otherwise why not."""
        try:
            with self.read() as conn:
                conn.execute(text("SELECT 1")).scalar_one()
        except Exception as exc:
            return describe(exc)
        return None

    def close(self) -> None:
        self.engine.dispose()


def describe(exc: BaseException) -> str:
    """The driver's first line (it names the server, never the URL's password), without SQLAlchemy's
    statement and background-link noise."""
    orig = getattr(exc, "orig", None) or exc
    lines = str(orig).strip().splitlines()
    return lines[0] if lines else type(orig).__name__


def _engine(url: str) -> Engine:
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        # a local file: a fresh connection is cheaper than a pool to keep right; readers never wait on the
        # writer in WAL mode, and `timeout` bounds the rare wait on a checkpoint
        return create_engine(
            parsed, poolclass=NullPool, connect_args={"timeout": TIMEOUT_S, "check_same_thread": False}
        )
    # Pre-ping: after the server restarts, the first probe must say "ready", not report the dead connection
    # the pool still holds. One connection is what a scrape every few seconds needs; two more cover a probe
    # arriving during one.
    return create_engine(
        parsed,
        pool_size=1,
        max_overflow=2,
        pool_timeout=TIMEOUT_S,
        pool_pre_ping=True,
        connect_args={
            "connect_timeout": TIMEOUT_S,
            "options": f"-c statement_timeout={TIMEOUT_S * 1000} -c default_transaction_read_only=on",
        },
    )
