"""What the budget core needs from outside: the shared counter, and the events it emits."""

from __future__ import annotations

from typing import Protocol

from app.budget.model import Reservation, Usage, Window


class BudgetStore(Protocol):
    """The fleet's sliding window of upstream permits, decided on the store's clock."""

    async def reserve(self, window: Window, max_wait: float, permit_id: str) -> Reservation:
        """Reserve the earliest permit; granted only if it comes within `max_wait` seconds."""
        ...

    async def confirm(self, permit_id: str) -> float:
        """When a reserved slot arrives: 0 if the permit stands, else the cooldown left (the
        permit is withdrawn because the upstream asked the fleet to pause meanwhile)."""
        ...

    async def withdraw(self, permit_id: str) -> None:
        """Give back a reserved permit not yet used (removing one only lowers counts)."""
        ...

    async def cool_down(self, seconds: float) -> float:
        """Grant nothing for `seconds` (extends, never shortens); returns the cooldown left."""
        ...

    async def usage(self, window: Window) -> Usage:
        """The window's current use, for /health."""
        ...


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


NO_EVENTS = BudgetEvents()
