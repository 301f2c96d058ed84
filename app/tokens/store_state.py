"""Whether the shared store answers, as the token core last saw it."""

from __future__ import annotations

from app.clock import Clock
from app.tokens.ports import TokenEvents

STORE_RETRY_SECONDS = 1.0
"""After a store failure, how long the slow path goes straight to the local fallback."""


class StoreState:
    """The shared store's health: ok, or failed and not to be asked again for a moment."""

    def __init__(self, clock: Clock, events: TokenEvents) -> None:
        self._clock = clock
        self._events = events
        self.ok = True
        self.failures = 0  # every failure noted so far; lets a caller see one happened meanwhile
        self._retry_at = 0.0  # monotonic

    def worth_trying(self) -> bool:
        """Whether the slow path should ask the shared store (not within a pause after a
        failure)."""
        return self._clock.monotonic() >= self._retry_at

    def note(self, *, ok: bool) -> None:
        """Record that a store operation succeeded or failed."""
        if ok:
            self._retry_at = 0.0  # back on the shared store at once, not after the pause
        else:
            self._retry_at = self._clock.monotonic() + STORE_RETRY_SECONDS
            self.failures += 1
            self._events.store_error()
        if ok != self.ok:
            self._events.store_state(ok)
        self.ok = ok
