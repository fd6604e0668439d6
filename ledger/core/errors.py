"""Errors as values with a stable `code`; the doors (CLI, NATS) map them and never leak a traceback."""

from __future__ import annotations

from typing import Any, ClassVar


class LedgerError(Exception):
    """The ledger could not do what was asked."""

    code: ClassVar[str] = "internal"

    def __init__(self, message: str | None = None, **details: Any) -> None:
        self.message = message or (self.__doc__ or self.code).strip()
        self.details = details
        super().__init__(self.message)

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape used in replies: code, message, and structured fields."""
        return {"code": self.code, "message": self.message, **self.details}


class InvalidRequest(LedgerError):
    """The request is malformed or asks for an impossible amount."""

    code = "invalid_request"


class UnknownHost(LedgerError):
    """No such host is registered in the ledger; run `ledger host refresh` on it first."""

    code = "unknown_host"


class NotFound(LedgerError):
    """No such record."""

    code = "not_found"


class Conflict(LedgerError):
    """The request conflicts with the ledger's current state (for example an idempotency key reused)."""

    code = "conflict"


class Unavailable(LedgerError):
    """The ledger service or its database cannot be reached right now; retry later."""

    code = "unavailable"


class TransientConflict(Unavailable):
    """A concurrent transaction conflicted with this one (PostgreSQL detected a deadlock, or could not
    serialise them) and the database rolled it back; nothing was written, and running it again succeeds."""


class InsufficientResources(LedgerError):
    """The host does not have enough of a resource left."""

    code = "insufficient_resources"


class ConfigError(LedgerError):
    """A configuration value is missing or malformed."""

    code = "invalid_config"


class AlreadyRunning(Unavailable):
    """Another process already runs what this one would start (a `ledger serve` on the same data dir)."""

    code = "already_running"
