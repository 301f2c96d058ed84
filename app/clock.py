"""Time sources, injectable so tests can move time instead of sleeping."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Protocol


class Clock(Protocol):
    """Wall time for expiries, monotonic time for ages, and sleeping."""

    def time(self) -> float:
        """Unix seconds."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary start; never goes back."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Suspend the calling task for `seconds`."""
        ...


@dataclass(frozen=True)
class SystemClock:
    """The process's real clocks; `offset` shifts wall time (failure drills of a skewed host)."""

    offset: float = 0.0

    def time(self) -> float:
        """Unix seconds, shifted by `offset`."""
        return time.time() + self.offset

    def monotonic(self) -> float:
        """`time.monotonic()`."""
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        """`asyncio.sleep(seconds)`."""
        await asyncio.sleep(seconds)


SYSTEM_CLOCK = SystemClock()
