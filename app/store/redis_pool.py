"""A bound on this instance's Redis connections, waiting at the bound: the connection gate.

Without a bound, a burst of cold requests opens one Redis connection per concurrent request.
redis-py bounds its pools differently per topology: `ConnectionPool` (also Sentinel's) fails at
once with "Too many connections" at its `max_connections`, `BlockingConnectionPool` waits but
serves a single server only, and the Cluster client's per-node pools fail at once. So the bound
is kept here, one way for all three: every command of the store's client first takes a slot of
the `ConnectionGate` (`store.max_connections` slots), waiting up to `store.pool_timeout_seconds`
for one. A command holds one connection at a time (a script call is EVALSHA, then SCRIPT LOAD
and EVALSHA again on a cache miss, one after the other), so no more than `max_connections`
commands means no more than that many connections; the change feed's subscription is one more,
outside the gate. The pools are sized `max_connections + 1` as a backstop.

A command that gets no slot in time raises `PoolExhausted` (a redis-py `ConnectionError`, so
the store translates it into `StoreUnavailable` like any failure), is counted by the injected
callback and logged as `store.pool_exhausted`, at most once a second with the count since.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError

from app.observability.logs import log_event

log = logging.getLogger(__name__)

LOG_EVERY_SECONDS = 1.0


class PoolExhausted(RedisConnectionError):
    """Every connection of this instance stayed busy for the whole wait."""


class ConnectionGate:
    """At most `limit` concurrent Redis commands; a command waits up to `wait` seconds for one
    of the others to finish, then fails with `PoolExhausted`."""

    def __init__(
        self, limit: int, wait: float, on_exhausted: Callable[[], None] | None = None
    ) -> None:
        self.limit = limit
        self.wait = wait
        self._slots = asyncio.Semaphore(limit)
        self.in_use = 0  # slots held right now
        self._on_exhausted = on_exhausted
        self._unlogged = 0  # exhaustions since the last log line
        self._logged_at = float("-inf")  # monotonic

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one of the `limit` slots for the duration of a command."""
        try:
            async with asyncio.timeout(self.wait):
                await self._slots.acquire()
        except TimeoutError:
            self._exhausted()
            raise PoolExhausted(
                f"no Redis connection free within {self.wait} s ({self.limit} in use)"
            ) from None
        self.in_use += 1
        try:
            yield
        finally:
            self.in_use -= 1
            self._slots.release()

    def _exhausted(self) -> None:
        if self._on_exhausted is not None:
            self._on_exhausted()
        self._unlogged += 1
        now = time.monotonic()
        if now - self._logged_at >= LOG_EVERY_SECONDS:
            log_event(
                log,
                logging.WARNING,
                "store.pool_exhausted",
                max_connections=self.limit,
                waited_seconds=self.wait,
                count=self._unlogged,
            )
            self._unlogged, self._logged_at = 0, now


class GatedRedis(aioredis.Redis):
    """redis-py's client (one server, or Sentinel's primary) whose commands pass the gate."""

    gate: ConnectionGate | None = None

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        """Run the command once the gate gives it a slot."""
        if self.gate is None:
            return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]
        async with self.gate.slot():
            return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]


class GatedRedisCluster(RedisCluster):
    """redis-py's Cluster client whose commands pass the gate (a command sent to several nodes,
    such as PING to every primary, holds one slot and one connection per node)."""

    gate: ConnectionGate | None = None

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        """Run the command once the gate gives it a slot."""
        if self.gate is None:
            return await super().execute_command(*args, **kwargs)
        async with self.gate.slot():
            return await super().execute_command(*args, **kwargs)
