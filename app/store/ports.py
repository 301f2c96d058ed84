"""Everything one store backend provides: the ports of the core and of the fleet view.

The ports themselves belong to their consumers (`app.tokens.ports`, `app.budget.ports`,
`app.observability.fleet`); an adapter (`memory.py`, `redis.py`) implements them all and
translates its own failures into `app.errors.StoreUnavailable`.
"""

from __future__ import annotations

from typing import Protocol

from app.budget.ports import BudgetStore
from app.observability.fleet import InstanceRegistry
from app.tokens.ports import ChangeFeed, RefreshLock, TokenStore


class Store(TokenStore, RefreshLock, ChangeFeed, BudgetStore, InstanceRegistry, Protocol):
    """Everything one backend provides, plus its lifecycle."""

    kind: str

    async def start(self) -> None:
        """Open connections and background listeners."""
        ...

    async def close(self) -> None:
        """Release every connection and task."""
        ...
