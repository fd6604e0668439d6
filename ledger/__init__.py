"""ledger: a host-capacity ledger that never promises more than a host has."""

__version__ = "0.1.0"
