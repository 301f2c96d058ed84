"""Started store adapters for the suites that run on both backends (memory and a real Redis).

A test asks for the `store_config` fixture of `tests/conftest.py` (parametrised over "memory"
and "redis") and opens a `Backend` from it; the store is built as `app.main.build_store` builds
it, from `app.config.StoreSettings`.

Time: the memory store runs on a `FakeClock`, so waiting costs nothing and its figures are exact.
Redis decides on its own clock (`TIME` inside the scripts, key expiry), which no test can move,
so the Redis case really waits: tests use sub-second TTLs and compare within `tolerance`.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from app.clock import SYSTEM_CLOCK, Clock
from app.config import StoreSettings
from app.main import build_store
from app.store.ports import Store
from app.tokens.model import TokenChange
from tests.support.clock import FakeClock

REDIS_TOLERANCE = 0.1
"""Seconds a Redis figure may be off from the ideal: round trips and scheduling of a loaded CI
machine between the test's calls, while Redis' clock keeps running."""


@dataclass
class Backend:
    """A started store, a second instance on the same shared state, and how time passes."""

    store: Store
    peer: Store  # another broker instance's store; the memory store has only itself
    clock: Clock
    fake_clock: FakeClock | None  # the memory store's clock, None for Redis

    @property
    def kind(self) -> str:
        """ "memory" or "redis"."""
        return self.store.kind

    @property
    def tolerance(self) -> float:
        """How far a measured duration may stray: 0 on the fake clock."""
        return 0.0 if self.fake_clock is not None else REDIS_TOLERANCE

    def about(self, measured: float, expected: float) -> bool:
        """Whether a time left is `expected`, or up to `tolerance` less (Redis' clock ran on).

        1 µs of slack either way: the fake clock counts from 1.8e9, where a float resolves
        about 0.2 µs.
        """
        return expected - self.tolerance - 1e-6 <= measured <= expected + 1e-6

    async def elapse(self, seconds: float) -> None:
        """Let `seconds` pass for the store: move the fake clock, or really wait for Redis'."""
        if self.fake_clock is None:
            await asyncio.sleep(seconds)
        else:
            self.fake_clock.advance(seconds)


def fresh_prefix(store_config: dict[str, Any]) -> dict[str, Any]:
    """The same [store] table with a key prefix nobody used yet (no change for memory)."""
    if "redis_url" not in store_config:
        return dict(store_config)
    return {**store_config, "key_prefix": f"t{uuid.uuid4().hex[:12]}"}


@asynccontextmanager
async def open_backend(store_config: dict[str, Any]) -> AsyncIterator[Backend]:
    """Build and start the store of `store_config` (and, for Redis, a peer); close them after."""
    settings = StoreSettings(**store_config)
    async with AsyncExitStack() as stack:
        if settings.redis_url is None:
            fake = FakeClock()
            store = await stack.enter_async_context(started(settings, fake))
            yield Backend(store, store, fake, fake)
            return
        store = await stack.enter_async_context(started(settings, SYSTEM_CLOCK))
        peer = await stack.enter_async_context(started(settings, SYSTEM_CLOCK))
        yield Backend(store, peer, SYSTEM_CLOCK, None)


@asynccontextmanager
async def started(settings: StoreSettings, clock: Clock) -> AsyncIterator[Store]:
    """One store, started, and closed on the way out."""
    store = build_store(settings, clock)
    await store.start()
    try:
        yield store
    finally:
        await store.close()


@dataclass
class Feed:
    """Collects the changes a store's subscribers receive (Redis delivers them asynchronously)."""

    changes: list[TokenChange] = field(default_factory=list)

    def __call__(self, change: TokenChange) -> None:
        """The listener."""
        self.changes.append(change)

    async def wait_for(self, count: int, timeout: float = 3.0) -> list[TokenChange]:
        """The changes once at least `count` arrived (fails after `timeout` seconds)."""
        async with asyncio.timeout(timeout):
            while len(self.changes) < count:
                await asyncio.sleep(0.005)
        return self.changes
