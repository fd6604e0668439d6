"""Operating the ledger: Prometheus metrics and the health endpoints of `ledger serve` and `ledger agent`
(docs/metrics.md). Nothing here decides anything: it reads what the ledger keeps and counts what it does."""
