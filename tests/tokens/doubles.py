"""Test doubles of the token core's ports, for unit tests of its pure logic.

The real store adapter (`MemoryStore`) is used wherever a working store is wanted; these stand
in only for what a unit test cannot get from it: an upstream that counts and fails on demand, a
store that is down, a store whose reads can be held open, and events that are recorded.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from app.clock import Clock
from app.errors import StoreUnavailable, UpstreamError
from app.store.memory import MemoryStore
from app.tokens.model import DiscardResult, HoldReason, Lease, Token, TokenRecord
from app.tokens.ports import TokenEvents

CLIENT = "checkout"


def token_of(clock: Clock, lifetime: float = 3600.0, name: str = "a", age: float = 0.0) -> Token:
    """A token named `name`, obtained `age` seconds ago, living `lifetime` seconds in all."""
    obtained = clock.time() - age
    return Token(f"token-{name}", obtained + lifetime, obtained)


class CountingFetcher:
    """The upstream port: mints a new token per call, counts calls, fails when told to.

    `gate`, when set, keeps every call open until the test sets it, so concurrent callers pile up.
    `during` runs inside each call (e.g. to move the clock, as a slow upstream would).
    """

    def __init__(self, clock: Clock, lifetime: float = 3600.0) -> None:
        self.clock = clock
        self.lifetime = lifetime
        self.calls = 0
        self.error: UpstreamError | None = None
        self.gate: asyncio.Event | None = None
        self.during: Callable[[], None] | None = None

    async def fetch(self, client: str) -> Token:
        """A fresh token `token-<client>-<n>`, or `self.error`."""
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.during is not None:
            self.during()
        if self.error is not None:
            raise self.error
        now = self.clock.time()
        return Token(f"token-{client}-{self.calls}", now + self.lifetime, now)


class BrokenStore:
    """A shared store that is unreachable: every operation raises StoreUnavailable."""

    def __init__(self) -> None:
        self.calls = 0

    def _down(self) -> StoreUnavailable:
        self.calls += 1
        return StoreUnavailable("the store is down (test)")

    async def load(self, client: str) -> TokenRecord:
        """Unreachable."""
        raise self._down()

    async def save(self, client: str, token: Token) -> Token:
        """Unreachable."""
        raise self._down()

    async def discard(self, client: str, access_token: str, min_interval: float) -> DiscardResult:
        """Unreachable."""
        raise self._down()

    async def hold(self, client: str, reason: HoldReason, seconds: float) -> None:
        """Unreachable."""
        raise self._down()

    async def ping(self) -> bool:
        """Unreachable."""
        return False

    async def acquire(self, client: str, ttl: float) -> Lease:
        """Unreachable."""
        raise self._down()

    async def release(self, lease: Lease) -> bool:
        """Unreachable."""
        raise self._down()


@dataclass
class GatedStore(MemoryStore):
    """The memory store, counting reads; while `gate` is set and clear, reads wait for it."""

    loads: int = 0
    gate: asyncio.Event | None = None
    failing: bool = False  # reads raise StoreUnavailable

    async def load(self, client: str) -> TokenRecord:
        """Count, wait for the gate, then read (or fail)."""
        self.loads += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.failing:
            raise StoreUnavailable("the store is down (test)")
        return await super().load(client)


@dataclass
class RecordingEvents(TokenEvents):
    """Token events kept as (name, client, *details) tuples."""

    seen: list[tuple[Any, ...]] = field(default_factory=list)

    def named(self, name: str) -> list[tuple[Any, ...]]:
        """The events called `name`, without their name."""
        return [event[1:] for event in self.seen if event[0] == name]

    def cache_hit(self, client: str, level: str) -> None:
        """Recorded."""
        self.seen.append(("cache_hit", client, level))

    def lock_wait(self, client: str) -> None:
        """Recorded."""
        self.seen.append(("lock_wait", client))

    def lease_lapsed(self, client: str) -> None:
        """Recorded."""
        self.seen.append(("lease_lapsed", client))

    def upstream_request(
        self, client: str, outcome: str, seconds: float, detail: str | None
    ) -> None:
        """Recorded."""
        self.seen.append(("upstream_request", client, outcome))

    def served_stale(self, client: str, token: Token, seconds_left: float, hold: str) -> None:
        """Recorded."""
        self.seen.append(("served_stale", client, token, seconds_left, hold))

    def store_state(self, ok: bool) -> None:
        """Recorded."""
        self.seen.append(("store_state", ok))


async def settle(rounds: int = 20) -> None:
    """Let every ready task run until it blocks (several event-loop turns)."""
    for _ in range(rounds):
        await asyncio.sleep(0)
