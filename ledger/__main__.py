from ledger.cli.main import main

raise SystemExit(main())
