"""Fleet membership for /health: every instance heartbeats into the store with its version.

An instance counts as alive while its last heartbeat is younger than `HEARTBEAT_TTL_SECONDS`
(measured by the store: Redis time for the Redis store), so a crashed instance drops out of
the fleet view within that time, and a clean stop needs no goodbye.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

from app.errors import StoreUnavailable
from app.observability.logs import log_event

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL_SECONDS = 5.0
HEARTBEAT_TTL_SECONDS = 15.0  # three missed beats
HEARTBEAT_TIMEOUT_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class InstanceInfo:
    """One broker instance that heartbeats into the store."""

    instance: str
    version: str
    expires_in: float  # seconds until it counts as gone unless it heartbeats again


class InstanceRegistry(Protocol):
    """The fleet view for /health: which instances are alive, with their versions."""

    async def heartbeat(self, instance: str, version: str, ttl: float) -> None:
        """Record that `instance` (running `version`) is alive for the next `ttl` seconds."""
        ...

    async def instances(self) -> list[InstanceInfo]:
        """The instances whose last heartbeat has not yet lapsed, sorted by name."""
        ...


class FleetView:
    """The fleet size this instance last saw (the budget's outage share divides by it).

    Conservative on purpose: the largest count seen within the heartbeat TTL (an instance that
    died moments ago may still be granting), and, until this instance has watched the fleet for
    a whole TTL (instances started together see each other only at their next beat), never
    below `expected`.
    """

    def __init__(self, expected: int = 1, clock: Callable[[], float] = time.monotonic) -> None:
        self._expected = expected
        self._clock = clock
        self._started = clock()
        self._seen: list[tuple[float, int]] = []  # (when, how many)

    def seen(self, alive: list[InstanceInfo]) -> None:
        """Record a fresh list of live instances (never fewer than this one)."""
        now = self._clock()
        self._seen = [(t, n) for t, n in self._seen if now - t <= HEARTBEAT_TTL_SECONDS]
        self._seen.append((now, max(1, len(alive))))

    def last_size(self) -> int | None:
        """The size to divide by; None before the first look."""
        if not self._seen:
            return None
        size = max(n for _, n in self._seen)
        if self._clock() - self._started < HEARTBEAT_TTL_SECONDS:
            size = max(size, self._expected)
        return size


async def heartbeat_once(
    store: InstanceRegistry,
    instance: str,
    version: str,
    ttl: float = HEARTBEAT_TTL_SECONDS,
    view: FleetView | None = None,
) -> bool:
    """One heartbeat (and, with a `view`, a look at the fleet), bounded in time; False (logged
    at debug) when the store did not take it."""
    try:
        await asyncio.wait_for(store.heartbeat(instance, version, ttl), HEARTBEAT_TIMEOUT_SECONDS)
        if view is not None:
            view.seen(await asyncio.wait_for(store.instances(), HEARTBEAT_TIMEOUT_SECONDS))
    except (StoreUnavailable, TimeoutError) as exc:
        log_event(log, logging.DEBUG, "fleet.heartbeat_failed", error=type(exc).__name__)
        return False
    return True


async def heartbeat_forever(
    store: InstanceRegistry,
    instance: str,
    version: str,
    interval: float = HEARTBEAT_INTERVAL_SECONDS,
    view: FleetView | None = None,
) -> None:
    """Heartbeat every `interval` seconds of real time (not the injectable clock: a test clock
    that advances on sleep would spin this loop) until cancelled."""
    while True:
        ttl = max(HEARTBEAT_TTL_SECONDS, 3 * interval)
        await heartbeat_once(store, instance, version, ttl, view)
        await asyncio.sleep(interval)


@asynccontextmanager
async def heartbeating(
    store: InstanceRegistry, instance: str, version: str, view: FleetView | None = None
) -> AsyncIterator[None]:
    """Announce this instance at once (so /health lists it from the start), then keep beating;
    `view` follows the fleet's size."""
    await heartbeat_once(store, instance, version, view=view)
    task = asyncio.create_task(heartbeat_forever(store, instance, version, view=view))
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
