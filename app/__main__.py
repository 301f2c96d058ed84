"""`python -m app` is `token-broker`."""

from app.cli import main

raise SystemExit(main())
