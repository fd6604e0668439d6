"""SQL storage: models, engine set-up per dialect, the ledger's transactions, reporting views."""
