"""Alembic environment: runs on the connection ledger.store.migrate hands over (or a URL from alembic.ini)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import text

from ledger.store.engine import make_engine
from ledger.store.models import POSTGRESQL_ONLY_INDEXES
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
    dialect = connection.dialect.name  # type: ignore[attr-defined]

    def include_object(
        obj: object, name: str | None, type_: str, reflected: bool, compare_to: object
    ) -> bool:
        """Compare an index that exists on one engine only on that engine."""
        return not (type_ == "index" and name in POSTGRESQL_ONLY_INDEXES and dialect != "postgresql")

    context.configure(
        connection=connection,  # type: ignore[arg-type]
        target_metadata=target_metadata,
        render_as_batch=True,  # SQLite cannot ALTER most things: rebuild tables in batches
        compare_type=True,
        include_object=include_object,
    )
    with context.begin_transaction():
        if dialect == "postgresql":
            # Two replicas starting at once must not both migrate (SQLite's BEGIN IMMEDIATE does this there).
            connection.execute(text("SELECT pg_advisory_xact_lock(727274)"))  # type: ignore[attr-defined]
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run `ledger db upgrade`")
run_migrations_online()
