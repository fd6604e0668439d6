"""Alembic environment: runs on the connection ledger.store.migrate hands over (or a URL from alembic.ini)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import text

from ledger.store.engine import make_engine
from ledger.store.schema import metadata

config = context.config
target_metadata = metadata


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        engine = make_engine(config.get_main_option("sqlalchemy.url") or "", for_migration=True)
        with engine.connect() as connection:
            _run(connection)
        engine.dispose()
    else:
        _run(connection)


def _run(connection: object) -> None:
    context.configure(
        connection=connection,  # type: ignore[arg-type]
        target_metadata=target_metadata,
        render_as_batch=True,  # SQLite cannot ALTER most things: rebuild tables in batches
        compare_type=True,
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":  # type: ignore[attr-defined]
            # Two replicas starting at once must not both migrate (SQLite's BEGIN IMMEDIATE does this there).
            connection.execute(text("SELECT pg_advisory_xact_lock(727274)"))  # type: ignore[attr-defined]
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run `ledger db upgrade`")
run_migrations_online()
