"""The sliding-window log with reservations, in memory (mirrors lua/budget_*.lua)."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from app.budget.model import Reservation, Usage, Window
from app.clock import SYSTEM_CLOCK, Clock

_EPSILON = 0.001  # the Lua scripts work in whole ms and add 1 ms; so do we


@dataclass
class MemoryBudget:
    """Permit slots (monotonic seconds) kept sorted; at most `limit` in any window."""

    clock: Clock = SYSTEM_CLOCK
    _slots: list[float] = field(default_factory=list)
    _ids: dict[str, float] = field(default_factory=dict)
    _cooldown_until: float = 0.0

    def _trim(self, now: float, window: Window) -> None:
        # Windows are closed intervals: a slot at exactly now - window still shares one with now.
        horizon = now - window.seconds
        cut = bisect.bisect_left(self._slots, horizon)
        if cut:
            del self._slots[:cut]
            self._ids = {k: v for k, v in self._ids.items() if v >= horizon}

    async def reserve(self, window: Window, max_wait: float, permit_id: str) -> Reservation:
        """See `BudgetStore.reserve`."""
        now = self.clock.monotonic()
        self._trim(now, window)
        slot = max(now, self._cooldown_until)
        if self._slots:
            slot = max(slot, self._slots[-1])
        if len(self._slots) >= window.limit:
            slot = max(slot, self._slots[-window.limit] + window.seconds + _EPSILON)
        delay = slot - now
        if delay > max_wait:
            return Reservation(False, delay, 0, delay)
        self._slots.append(slot)  # slot >= every stored slot: the list stays sorted
        self._ids[permit_id] = slot
        # remaining and reset count from the slot, when the caller uses the permit (see
        # budget_reserve.lua)
        first = bisect.bisect_left(self._slots, slot - window.seconds)
        remaining = max(0, window.limit - (len(self._slots) - first))
        reset = self._slots[first] + window.seconds - slot
        return Reservation(True, delay, remaining, reset, permit_id)

    async def confirm(self, permit_id: str) -> float:
        """See `BudgetStore.confirm`."""
        left = self._cooldown_until - self.clock.monotonic()
        if left > 0:
            await self.withdraw(permit_id)
            return left
        return 0.0

    async def withdraw(self, permit_id: str) -> None:
        """See `BudgetStore.withdraw`."""
        slot = self._ids.pop(permit_id, None)
        if slot is not None:
            index = bisect.bisect_left(self._slots, slot)
            if index < len(self._slots) and self._slots[index] == slot:
                del self._slots[index]

    async def cool_down(self, seconds: float) -> float:
        """See `BudgetStore.cool_down`."""
        now = self.clock.monotonic()
        self._cooldown_until = max(self._cooldown_until, now + seconds)
        return self._cooldown_until - now

    async def usage(self, window: Window) -> Usage:
        """See `BudgetStore.usage`."""
        now = self.clock.monotonic()
        used = len(self._slots) - bisect.bisect_right(self._slots, now - window.seconds)
        return Usage(used, max(0.0, self._cooldown_until - now))
