"""The last few kinds of error an instance saw, for the /health report and its dashboard."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from app.clock import SYSTEM_CLOCK, Clock

RECENT_ERRORS = 20


@dataclass
class RecentError:
    """One kind of error seen lately, with how often and when it was last seen."""

    source: str  # upstream, store or budget
    client: str | None
    category: str
    message: str  # our own text: never a token, secret or key
    last_at: float  # unix seconds
    count: int = 1


class RecentErrors:
    """The last few kinds of error (source, client, category), newest first, for the dashboard.

    A repeat raises the count and keeps the latest message, so an outage is one line, not twenty.
    """

    def __init__(self, clock: Clock = SYSTEM_CLOCK, size: int = RECENT_ERRORS) -> None:
        self._clock = clock
        self._size = size
        self._errors: OrderedDict[tuple[str, str | None, str], RecentError] = OrderedDict()

    def add(self, source: str, client: str | None, category: str, message: str) -> None:
        """Record an error; a repeat of a recorded kind moves it to the front."""
        key = (source, client, category)
        now = self._clock.time()
        seen = self._errors.pop(key, None)
        if seen is None:
            seen = RecentError(source, client, category, message, now, 0)
        seen.count += 1
        seen.last_at, seen.message = now, message
        self._errors[key] = seen
        while len(self._errors) > self._size:
            self._errors.popitem(last=False)

    def latest(self) -> list[RecentError]:
        """Newest first."""
        return list(reversed(self._errors.values()))
