"""`python -m tests.soak`: see `tests.soak.run`."""

from tests.soak.run import main

raise SystemExit(main())
