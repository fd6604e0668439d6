"""The whole schema in one metadata, as Alembic compares it: the ledger's models and the usage tables."""

from __future__ import annotations

from ledger.store import usage_tables
from ledger.store.models import Base

metadata = Base.metadata

__all__ = ["metadata", "usage_tables"]
