"""Values the budget service and its store exchange."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Window:
    """At most `limit` permits in any `seconds` (the window plus the safety margin)."""

    limit: int
    seconds: float


@dataclass(frozen=True, slots=True)
class Reservation:
    """A store's answer to a permit request.

    Granted: use the permit after `delay` seconds (0 for now). Not granted: the earliest permit
    would come after `delay` seconds, longer than the caller wanted to wait.
    """

    granted: bool
    delay: float
    remaining: int
    reset: float  # seconds from the slot until the oldest grant then in the window leaves it
    permit_id: str = ""


@dataclass(frozen=True, slots=True)
class Usage:
    """Grants in the current window (reserved future slots included) and the cooldown left."""

    used: int
    cooldown: float


@dataclass(frozen=True, slots=True)
class BudgetPolicy:
    """The fleet budget's rules (built from `[budget]` by `app.main`)."""

    limit: int = 50
    window_seconds: float = 60.0
    max_wait_seconds: float = 30.0
    safety_margin_seconds: float = 1.0
    local_share: int | None = None  # permits per window granted alone while the store is down

    @property
    def window(self) -> Window:
        """The window the store enforces: `window_seconds` plus the safety margin."""
        return Window(self.limit, self.window_seconds + self.safety_margin_seconds)
