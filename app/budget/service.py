"""The budget service: permits from the fleet's sliding window, waits, cooldown after a 429.

Waiting is by reservation: the store grants a future slot and says how long until it; we sleep
exactly that long (first come, first served, no polling). A cooldown reported while we slept
voids the slot, and we queue again. A waiter that goes away gives its slot back, which can only
lower a window's count.
"""

from __future__ import annotations

import asyncio
import math
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from app.budget.model import BudgetPolicy, Reservation, Usage, Window
from app.budget.ports import NO_EVENTS, BudgetEvents, BudgetStore
from app.clock import Clock
from app.errors import BudgetExhausted, StoreUnavailable

MAX_COOLDOWN_SECONDS = 3600.0


@dataclass(frozen=True, slots=True)
class Grant:
    """A permit the caller may use now, with the upstream-style rate-limit figures."""

    limit: int
    remaining: int
    reset: int  # whole seconds until the oldest grant leaves the window

    def headers(self) -> dict[str, str]:
        """`X-RateLimit-*` as the upstream sends them."""
        return rate_limit_headers(self.limit, self.remaining, self.reset)


def rate_limit_headers(limit: int, remaining: int, reset: float) -> dict[str, str]:
    """The three `X-RateLimit-*` headers."""
    return {
        "X-RateLimit-Limit": str(limit),
        "X-RateLimit-Remaining": str(remaining),
        "X-RateLimit-Reset": str(max(0, math.ceil(reset))),
    }


def cooldown_from_report(status: int, headers: Mapping[str, str], default: float) -> float | None:
    """How long the fleet must pause after an upstream answer, or None if it need not.

    An upstream 429, or `X-RateLimit-Remaining: 0`, pauses until `X-RateLimit-Reset` (or
    `Retry-After`) seconds from now; without either, for `default` seconds.
    """
    lower = {key.lower(): value.strip() for key, value in headers.items()}
    if status != 429 and lower.get("x-ratelimit-remaining") != "0":
        return None
    for name in ("x-ratelimit-reset", "retry-after"):
        try:
            seconds = float(lower[name])
        except (KeyError, ValueError):
            continue
        if math.isfinite(seconds):
            return min(MAX_COOLDOWN_SECONDS, max(1.0, seconds))
    return default


class BudgetService:
    """One budget for the whole fleet and all clients."""

    def __init__(
        self,
        policy: BudgetPolicy,
        store: BudgetStore,
        *,
        local: BudgetStore | None,
        clock: Clock,
        events: BudgetEvents = NO_EVENTS,
    ) -> None:
        """`local` is this instance's own counter, granting `policy.local_share` per window
        while the shared store is unreachable; None to fail closed instead."""
        self.policy = policy
        self._events = events
        self.window = policy.window
        self._store = store
        self._clock = clock
        # No share (None, or 0 of a limit split over more instances than permits): fail closed.
        self._local = local if policy.local_share else None
        self._local_window = Window(policy.local_share or 1, self.window.seconds)

    async def acquire(self, client: str, wait: float) -> Grant:
        """A permit within `wait` seconds (capped at `max_wait_seconds`), else BudgetExhausted."""
        started = self._clock.monotonic()
        deadline = started + min(max(0.0, wait), self.policy.max_wait_seconds)
        while True:
            store, window, reservation = await self._reserve(deadline)
            if not reservation.granted:
                self._events.denied(client)
                raise BudgetExhausted(
                    f"no upstream permit within the wait for client {client!r}",
                    client=client,
                    retry_after=reservation.delay,
                    limit=window.limit,
                )
            if reservation.delay <= 0 or await self._use_when_due(store, reservation):
                self._events.granted(client, self._clock.monotonic() - started)
                return Grant(window.limit, reservation.remaining, math.ceil(reservation.reset))

    async def _reserve(self, deadline: float) -> tuple[BudgetStore, Window, Reservation]:
        permit_id = secrets.token_hex(12)
        max_wait = max(0.0, deadline - self._clock.monotonic())
        try:
            return (
                self._store,
                self.window,
                await self._store.reserve(self.window, max_wait, permit_id),
            )
        except StoreUnavailable:
            self._events.store_error()
            if self._local is None:
                raise  # fail closed: the budget is a hard limit
            local = await self._local.reserve(self._local_window, max_wait, permit_id)
            return self._local, self._local_window, local

    async def _use_when_due(self, store: BudgetStore, reservation: Reservation) -> bool:
        """Sleep until the reserved slot; False if a cooldown voided it meanwhile."""
        try:
            await self._clock.sleep(reservation.delay)
        except asyncio.CancelledError:
            await asyncio.shield(self._withdraw_quietly(store, reservation.permit_id))
            raise
        return await store.confirm(reservation.permit_id) <= 0

    async def _withdraw_quietly(self, store: BudgetStore, permit_id: str) -> None:
        try:
            await store.withdraw(permit_id)
        except StoreUnavailable:
            pass  # the slot stays counted: safe, only wasteful

    async def report(self, status: int, headers: Mapping[str, str]) -> float | None:
        """Apply an upstream answer; returns the cooldown started, if any."""
        seconds = cooldown_from_report(status, headers, self.policy.window_seconds)
        if seconds is None:
            return None
        self._events.cooldown(seconds)
        if self._local is not None:
            await self._local.cool_down(seconds)
        try:
            return await self._store.cool_down(seconds)
        except StoreUnavailable:
            self._events.store_error()
            raise

    async def usage(self) -> Usage:
        """The window's current use (StoreUnavailable when the store is down)."""
        return await self._store.usage(self.window)
