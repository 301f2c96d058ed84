"""What the budget core needs from outside: the shared window, the fleet size, its events."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from app.budget.model import Answer, PermitRequest, Usage, Window


class BudgetStore(Protocol):
    """The fleet's sliding window of upstream permits and its fair queue, on the store's clock."""

    async def ask(self, window: Window, request: PermitRequest, max_wait: float) -> Answer:
        """Grant `request` now, or queue it (same id: it keeps its place) and say when to ask
        again, or deny it when its permit would come after `max_wait` seconds."""
        ...

    async def leave(self, request_id: str) -> None:
        """Take a queued request out (its caller went away)."""
        ...

    async def cool_down(self, seconds: float) -> float:
        """Grant nothing for `seconds` (extends, never shortens); returns the cooldown left."""
        ...

    async def usage(self, window: Window) -> Usage:
        """The window's current use and the requests waiting, for /health and /metrics."""
        ...


FleetSize = Callable[[], int | None]
"""How many broker instances this one last saw alive (None: it has not seen the fleet yet)."""


class BudgetEvents:
    """Hook points for metrics: these defaults do nothing; `app.observability` counts them.

    Implementations must be cheap and must not raise; the core imports no metrics library.
    """

    def granted(self, client: str, waited: float) -> None:
        """A permit was granted after `waited` seconds (0 when one was free at once)."""

    def denied(self, client: str) -> None:
        """No permit came within the caller's wait (BudgetExhausted)."""

    def cooldown(self, seconds: float) -> None:
        """An upstream answer paused the fleet for `seconds`."""

    def store_error(self) -> None:
        """The budget store could not be reached."""

    def local_share(self, active: bool, share: int) -> None:
        """This instance began (`active`) or stopped granting from its own share per window."""


NO_EVENTS = BudgetEvents()
