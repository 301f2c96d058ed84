"""The budget service: fair permits from the fleet's sliding window, waits, cooldown, outages.

A request is granted at once when it may be; otherwise the store queues it fairly (token
requests first, then callers by `budget_weight`; see `app.budget.fair`) and predicts when a
slot will be free for it. We sleep until then and ask again with the same id, until it is
granted or the caller's wait runs out (BudgetExhausted). A caller that goes away leaves the
queue; a waiter that dies is dropped when its lease lapses.

While the shared store is unreachable this instance grants from its own share of the limit
(`app.budget.outage`), or fails closed when the policy says so. Its local grants are fenced
when the store answers again: the shared window does not know them, so the store grants
nothing until they have left the window (plus `RETURN_GRACE_SECONDS` for instances that notice
the return a little later).
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from app.budget.fair import SlidingLog
from app.budget.model import (
    ANONYMOUS,
    TOKEN_CALLER,
    Answer,
    BudgetPolicy,
    Outcome,
    PermitRequest,
    ShareUsage,
    Usage,
)
from app.budget.outage import Observed, OutageWindow, share_capacity
from app.budget.ports import NO_EVENTS, BudgetEvents, BudgetStore, FleetSize
from app.clock import Clock
from app.errors import BudgetExhausted, StoreUnavailable

MAX_COOLDOWN_SECONDS = 3600.0
SNAPSHOT_EVERY_SECONDS = 0.2  # how fresh the view of the shared window kept for an outage is
STORE_RETRY_SECONDS = 0.5  # while granting alone, how often the shared store is tried again
RETURN_GRACE_SECONDS = 2.0  # local grants are fenced this much longer than their window


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
    """One budget for the whole fleet and all clients, shared fairly by the callers."""

    def __init__(
        self,
        policy: BudgetPolicy,
        store: BudgetStore,
        *,
        clock: Clock,
        events: BudgetEvents = NO_EVENTS,
        fleet_size: FleetSize | None = None,
    ) -> None:
        """`fleet_size` tells how many instances this one last saw (for the outage share)."""
        self.policy = policy
        self.window = policy.window
        self._store = store
        self._clock = clock
        self._events = events
        self._fleet_size = fleet_size
        self._observed: Observed | None = None  # the last snapshot of the shared window
        self._own = SlidingLog()  # grants made alone, kept across outages
        self._outage: OutageWindow | None = None
        self._retry_store_at = -math.inf
        self._local_cooldown_until = -math.inf

    async def acquire(
        self, client: str, wait: float, *, caller: str = ANONYMOUS, token_request: bool = False
    ) -> Grant:
        """A permit within `wait` seconds (capped at `max_wait_seconds`), else BudgetExhausted.

        `caller` decides the fair share (its `budget_weight`); `token_request` marks the
        broker's own token requests, which come first and may use the token reserve.
        """
        started = self._clock.monotonic()
        deadline = started + min(max(0.0, wait), self.policy.max_wait_seconds)
        request = PermitRequest(
            secrets.token_hex(12),
            TOKEN_CALLER if token_request else caller,
            self.policy.cost_of(caller),
            token_request,
        )
        try:
            while True:
                limit, answer = await self._ask(
                    request, max(0.0, deadline - self._clock.monotonic())
                )
                if answer.outcome is Outcome.GRANTED:
                    self._events.granted(client, self._clock.monotonic() - started)
                    return Grant(limit, answer.remaining, math.ceil(answer.reset))
                if answer.outcome is Outcome.DENIED:
                    self._events.denied(client)
                    delay = answer.delay if math.isfinite(answer.delay) else self.window.seconds
                    raise BudgetExhausted(
                        f"no upstream permit within the wait for client {client!r}",
                        client=client,
                        retry_after=delay,
                        limit=limit,
                    )
                await self._clock.sleep(answer.delay)
        except asyncio.CancelledError:
            await asyncio.shield(self._leave_quietly(request.id))
            raise

    async def _ask(self, request: PermitRequest, max_wait: float) -> tuple[int, Answer]:
        """Ask the shared store (or, while it is unreachable, this instance's share)."""
        now = self._clock.monotonic()
        if self._outage is None or now >= self._retry_store_at:
            fence = self._own.times[-1] + self.window.seconds - now if self._own.times else 0.0
            asked = dataclasses.replace(
                request,
                snapshot=self.policy.outage_share
                and (self._observed is None or now - self._observed.sent >= SNAPSHOT_EVERY_SECONDS),
                fence=fence + RETURN_GRACE_SECONDS if fence > 0 else 0.0,
            )
            try:
                answer = await self._store.ask(self.window, asked, max_wait)
            except StoreUnavailable:
                self._events.store_error()
                self._retry_store_at = self._clock.monotonic() + STORE_RETRY_SECONDS
                if not self.policy.outage_share:
                    raise  # fail closed: the budget is a hard limit
            else:
                if answer.snapshot is not None:
                    self._observed = Observed(answer.snapshot, now, self._clock.monotonic())
                self._end_outage()
                return self.window.limit, answer
        outage = self._outage or self._begin_outage()
        answer = outage.ask(self._clock.monotonic(), self.window, request, max_wait)
        return outage.capacity(self.window).limit, answer

    def _begin_outage(self) -> OutageWindow:
        now = self._clock.monotonic()
        seen = self._fleet_size() if self._fleet_size is not None else None
        fleet = max(1, seen or self.policy.expected_instances)
        capacity = share_capacity(self.window, fleet, self._observed, now, self._own)
        self._outage = OutageWindow(capacity)
        self._outage.cool_down(now, self._local_cooldown_until - now)
        self._events.local_share(True, capacity.limit)
        return self._outage

    def _end_outage(self) -> None:
        if self._outage is not None:
            self._outage = None
            self._events.local_share(False, 0)

    async def _leave_quietly(self, request_id: str) -> None:
        if self._outage is not None:
            self._outage.leave(request_id)
        try:
            await self._store.leave(request_id)
        except StoreUnavailable:
            pass  # its lease lapses within a second or so

    async def report(self, status: int, headers: Mapping[str, str]) -> float | None:
        """Apply an upstream answer; returns the cooldown started, if any."""
        seconds = cooldown_from_report(status, headers, self.policy.window_seconds)
        if seconds is None:
            return None
        self._events.cooldown(seconds)
        now = self._clock.monotonic()
        self._local_cooldown_until = max(self._local_cooldown_until, now + seconds)
        if self._outage is not None:
            self._outage.cool_down(now, seconds)
        try:
            return await self._store.cool_down(seconds)
        except StoreUnavailable:
            self._events.store_error()
            if self.policy.outage_share and self._outage is None:
                self._begin_outage()  # the pause applies to the share from now on
            raise

    async def usage(self) -> Usage:
        """The shared window's use and waiters (StoreUnavailable when the store is down)."""
        return await self._store.usage(self.window)

    def local_share(self) -> ShareUsage | None:
        """While granting alone: the share, the fleet size it came from, and the local use."""
        if self._outage is None:
            return None
        capacity = self._outage.capacity(self.window)
        usage = self._outage.usage(self._clock.monotonic(), self.window)
        return ShareUsage(capacity.limit, capacity.fleet, usage)
