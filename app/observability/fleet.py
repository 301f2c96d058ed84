"""Fleet membership for /health: every instance heartbeats into the store with its version.

An instance counts as alive while its last heartbeat is younger than `HEARTBEAT_TTL_SECONDS`
(measured by the store: Redis time for the Redis store), so a crashed instance drops out of
the fleet view within that time, and a clean stop needs no goodbye.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
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


async def heartbeat_once(
    store: InstanceRegistry, instance: str, version: str, ttl: float = HEARTBEAT_TTL_SECONDS
) -> bool:
    """One heartbeat, bounded in time; False (logged at debug) when the store did not take it."""
    try:
        await asyncio.wait_for(store.heartbeat(instance, version, ttl), HEARTBEAT_TIMEOUT_SECONDS)
    except (StoreUnavailable, TimeoutError) as exc:
        log_event(log, logging.DEBUG, "fleet.heartbeat_failed", error=type(exc).__name__)
        return False
    return True


async def heartbeat_forever(
    store: InstanceRegistry,
    instance: str,
    version: str,
    interval: float = HEARTBEAT_INTERVAL_SECONDS,
) -> None:
    """Heartbeat every `interval` seconds of real time (not the injectable clock: a test clock
    that advances on sleep would spin this loop) until cancelled."""
    while True:
        await heartbeat_once(store, instance, version, max(HEARTBEAT_TTL_SECONDS, 3 * interval))
        await asyncio.sleep(interval)


@asynccontextmanager
async def heartbeating(store: InstanceRegistry, instance: str, version: str) -> AsyncIterator[None]:
    """Announce this instance at once (so /health lists it from the start), then keep beating."""
    await heartbeat_once(store, instance, version)
    task = asyncio.create_task(heartbeat_forever(store, instance, version))
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
