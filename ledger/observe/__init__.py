"""Watching a running ledger: Prometheus metrics, liveness and readiness over HTTP."""
