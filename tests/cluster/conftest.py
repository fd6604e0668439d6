"""The cluster tests start `ledger serve` processes the way the service tests do."""

from tests.service.conftest import serve_factory

__all__ = ["serve_factory"]
