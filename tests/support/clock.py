"""A clock tests move by hand."""

from __future__ import annotations

from dataclasses import dataclass


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
