"""The budget in memory: `app.budget.fair.FairWindow` on this process's clock.

The same semantics as `lua/budget_ask.lua` (which mirrors `FairWindow`), for one process.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from app.budget.fair import FairWindow
from app.budget.model import Answer, PermitRequest, Usage, Window
from app.clock import SYSTEM_CLOCK, Clock


@dataclass
class MemoryBudget:
    """`BudgetStore` in memory."""

    clock: Clock = SYSTEM_CLOCK
    budget: FairWindow = field(default_factory=FairWindow)

    async def ask(self, window: Window, request: PermitRequest, max_wait: float) -> Answer:
        """See `BudgetStore.ask` (one process: no snapshot, no fence)."""
        return self.budget.ask(self.clock.monotonic(), window, request, max_wait)

    async def leave(self, request_id: str) -> None:
        """See `BudgetStore.leave`."""
        self.budget.leave(request_id)

    async def cool_down(self, seconds: float) -> float:
        """See `BudgetStore.cool_down`."""
        return self.budget.cool_down(self.clock.monotonic(), seconds)

    async def usage(self, window: Window) -> Usage:
        """See `BudgetStore.usage`."""
        return self.budget.usage(self.clock.monotonic(), window)
