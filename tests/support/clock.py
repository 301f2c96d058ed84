"""A clock tests move by hand."""

from __future__ import annotations

import asyncio
import heapq
from dataclasses import dataclass, field


@dataclass
class FakeClock:
    """Wall and monotonic time advance only through `advance` or `sleep`."""

    now: float = 1_800_000_000.0

    def time(self) -> float:
        """Unix seconds."""
        return self.now

    def monotonic(self) -> float:
        """Same as `time()`: tests care about differences only."""
        return self.now

    async def sleep(self, seconds: float) -> None:
        """Advance time instead of waiting."""
        self.now += max(0.0, seconds)

    def advance(self, seconds: float) -> None:
        """Move time forward."""
        self.now += seconds


@dataclass
class SteppedClock(FakeClock):
    """Like FakeClock, but `sleep` suspends the task until `advance` moves time past its end.

    Background loops (refresh ahead, budget waits) then wait for the test instead of racing
    time forward without ever yielding to the event loop.
    """

    _sleepers: list[tuple[float, int, asyncio.Future[None]]] = field(default_factory=list)

    async def sleep(self, seconds: float) -> None:
        """Wait until time reaches now + `seconds` (a non-positive sleep only yields)."""
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        woken = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + seconds, id(woken), woken))
        await woken

    def advance(self, seconds: float) -> None:
        """Move time forward and wake every sleeper whose end has come (they run on the next
        yield to the event loop)."""
        self.now += seconds
        while self._sleepers and self._sleepers[0][0] <= self.now:
            _, _, woken = heapq.heappop(self._sleepers)
            if not woken.done():
                woken.set_result(None)

    @property
    def sleeping(self) -> int:
        """How many tasks are waiting in `sleep`."""
        return sum(not woken.done() for _, _, woken in self._sleepers)
