"""Host discovery tests: every reader on recorded and hand-made host trees, and `ledger discover`."""
