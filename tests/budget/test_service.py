"""BudgetService over the memory budget: grants, denials, waits, cooldowns, the local share."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from app.budget.model import Answer, BudgetPolicy, PermitRequest, Usage, Window
from app.budget.ports import BudgetEvents
from app.budget.service import BudgetService, cooldown_from_report
from app.errors import BudgetExhausted, StoreUnavailable
from app.store.memory_budget import MemoryBudget
from tests.support.clock import FakeClock, SteppedClock

CLIENT = "checkout"
POLICY = BudgetPolicy(limit=3, window_seconds=60.0, max_wait_seconds=30.0)
SLOT_EPSILON = 0.001  # the store spaces a slot 1 ms past the window, as the Lua scripts do


@dataclass
class SwitchableBudget:
    """A shared budget store (the memory one) that a test can make unreachable."""

    inner: MemoryBudget
    down: bool = False

    def _check(self) -> None:
        if self.down:
            raise StoreUnavailable("the store is down (test)")

    async def ask(self, window: Window, request: PermitRequest, max_wait: float) -> Answer:
        """The inner store's answer, unless down."""
        self._check()
        return await self.inner.ask(window, request, max_wait)

    async def leave(self, request_id: str) -> None:
        """The inner store's, unless down."""
        self._check()
        await self.inner.leave(request_id)

    async def cool_down(self, seconds: float) -> float:
        """The inner store's, unless down."""
        self._check()
        return await self.inner.cool_down(seconds)

    async def usage(self, window: Window) -> Usage:
        """The inner store's, unless down."""
        self._check()
        return await self.inner.usage(window)


@dataclass
class RecordingEvents(BudgetEvents):
    """Budget events kept as (name, *details) tuples."""

    seen: list[tuple[Any, ...]] = field(default_factory=list)

    def named(self, name: str) -> list[tuple[Any, ...]]:
        """The events called `name`, without their name."""
        return [event[1:] for event in self.seen if event[0] == name]

    def granted(self, client: str, waited: float) -> None:
        """Recorded."""
        self.seen.append(("granted", client, waited))

    def denied(self, client: str) -> None:
        """Recorded."""
        self.seen.append(("denied", client))

    def cooldown(self, seconds: float) -> None:
        """Recorded."""
        self.seen.append(("cooldown", seconds))

    def store_error(self) -> None:
        """Recorded."""
        self.seen.append(("store_error",))


async def settle() -> None:
    """Let every ready task run until it blocks."""
    for _ in range(20):
        await asyncio.sleep(0)


@dataclass
class Budget:
    """A BudgetService and what a test inspects."""

    clock: FakeClock
    store: MemoryBudget
    shared: SwitchableBudget
    events: RecordingEvents
    service: BudgetService


def build(
    policy: BudgetPolicy = POLICY,
    clock: FakeClock | None = None,
    *,
    shared_down: bool = False,
    fleet: int | None = None,
) -> Budget:
    """A service over a memory budget that can be made unreachable, seeing `fleet` instances."""
    clock = clock or FakeClock()
    store = MemoryBudget(clock=clock)
    shared = SwitchableBudget(store, down=shared_down)
    events = RecordingEvents()
    service = BudgetService(policy, shared, clock=clock, events=events, fleet_size=lambda: fleet)
    return Budget(clock, store, shared, events, service)


async def test_grants_permits_up_to_the_limit_with_the_rate_limit_figures() -> None:
    """Permits are granted at once until the limit, each with the limit, the permits left and
    the whole seconds until the window frees one."""
    budget = build()
    grants = [await budget.service.acquire(CLIENT, 0) for _ in range(3)]
    assert [(g.limit, g.remaining, g.reset) for g in grants] == [(3, 2, 61), (3, 1, 61), (3, 0, 61)]
    assert grants[0].headers() == {
        "X-RateLimit-Limit": "3",
        "X-RateLimit-Remaining": "2",
        "X-RateLimit-Reset": "61",
    }
    assert budget.events.named("granted") == [(CLIENT, 0.0)] * 3


async def test_denies_past_the_limit_with_retry_after_and_limit() -> None:
    """With the window full and no wait, BudgetExhausted says when a permit frees and the limit."""
    budget = build()
    for _ in range(3):
        await budget.service.acquire(CLIENT, 0)
    with pytest.raises(BudgetExhausted) as raised:
        await budget.service.acquire(CLIENT, 0)
    assert raised.value.retry_after == pytest.approx(61.0 + SLOT_EPSILON)
    assert (raised.value.limit, raised.value.client) == (3, CLIENT)
    assert budget.events.named("denied") == [(CLIENT,)]


async def test_a_long_enough_wait_is_granted_when_a_slot_frees() -> None:
    """A caller willing to wait gets the permit exactly when the oldest grant leaves the window."""
    budget = build()
    started = budget.clock.time()
    for _ in range(3):
        await budget.service.acquire(CLIENT, 0)
    budget.clock.advance(50.0)
    grant = await budget.service.acquire(CLIENT, 20.0)
    assert grant.remaining == 2  # the three earlier grants have left its window
    assert budget.clock.time() - started == pytest.approx(61.0 + SLOT_EPSILON)
    [(_, waited)] = budget.events.named("granted")[3:]
    assert waited == pytest.approx(11.0 + SLOT_EPSILON)


@pytest.mark.parametrize(("max_wait", "granted"), [(5.0, False), (100.0, True)])
async def test_the_wait_is_capped_at_max_wait_seconds(max_wait: float, granted: bool) -> None:
    """A caller asking to wait longer than max_wait_seconds waits at most that long."""
    budget = build(BudgetPolicy(limit=3, window_seconds=60.0, max_wait_seconds=max_wait))
    for _ in range(3):
        await budget.service.acquire(CLIENT, 0)
    if granted:
        await budget.service.acquire(CLIENT, 100.0)
    else:
        with pytest.raises(BudgetExhausted):
            await budget.service.acquire(CLIENT, 100.0)
        assert budget.clock.time() == FakeClock().time()  # nothing slept


@pytest.mark.parametrize(
    ("status", "headers", "cooldown"),
    [
        (200, {}, None),
        (200, {"X-RateLimit-Remaining": "3", "X-RateLimit-Reset": "9"}, None),
        (429, {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "17"}, 17.0),
        (200, {"x-ratelimit-remaining": " 0 ", "x-ratelimit-reset": "9"}, 9.0),
        (429, {"Retry-After": "5"}, 5.0),
        (429, {"Retry-After": "0.2"}, 1.0),
        (429, {"X-RateLimit-Reset": "99999"}, 3600.0),
        (429, {}, 60.0),
        (429, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, 60.0),
        (429, {"Retry-After": "nan"}, 60.0),
    ],
)
def test_cooldown_from_report_pauses_until_the_upstreams_reset(
    status: int, headers: Mapping[str, str], cooldown: float | None
) -> None:
    """A 429 or `X-RateLimit-Remaining: 0` pauses for the reset (1 s to 1 h), or the window if
    the upstream gave no usable figure; other answers do not pause."""
    assert cooldown_from_report(status, headers, 60.0) == cooldown


async def test_a_reported_429_pauses_the_grants_until_its_reset() -> None:
    """After an upstream 429 with a reset, no permit is granted until the reset has passed."""
    budget = build()
    assert await budget.service.report(200, {}) is None
    assert await budget.service.report(429, {"X-RateLimit-Reset": "17"}) == pytest.approx(17.0)
    with pytest.raises(BudgetExhausted) as raised:
        await budget.service.acquire(CLIENT, 0)
    assert raised.value.retry_after == pytest.approx(17.0)
    budget.clock.advance(17.0)
    await budget.service.acquire(CLIENT, 0)
    assert budget.events.named("cooldown") == [(17.0,)]


async def test_a_cooldown_reported_while_waiting_voids_the_reserved_slot() -> None:
    """A waiter whose slot comes during a cooldown reported meanwhile queues again and gets its
    permit only after the cooldown."""
    clock = SteppedClock()
    budget = build(BudgetPolicy(limit=1, window_seconds=10.0, safety_margin_seconds=0.0), clock)
    started = clock.time()
    await budget.service.acquire(CLIENT, 0)
    waiter = asyncio.ensure_future(budget.service.acquire(CLIENT, 30.0))
    await settle()
    assert clock.sleeping == 1  # holding a slot 10 s ahead
    await budget.service.report(429, {"X-RateLimit-Reset": "20"})
    clock.advance(10.0 + SLOT_EPSILON)
    await settle()
    assert not waiter.done()
    clock.advance(20.0 - (clock.time() - started))
    await waiter
    assert clock.time() - started == pytest.approx(20.0)


async def test_a_waiter_that_goes_away_gives_its_slot_back() -> None:
    """Cancelling a waiting acquire withdraws its reserved slot, so it does not count."""
    clock = SteppedClock()
    budget = build(BudgetPolicy(limit=1, window_seconds=10.0, safety_margin_seconds=0.0), clock)
    await budget.service.acquire(CLIENT, 0)
    waiter = asyncio.ensure_future(budget.service.acquire(CLIENT, 30.0))
    await settle()
    assert clock.sleeping == 1
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    clock.advance(10.0 + SLOT_EPSILON)
    await budget.service.acquire(CLIENT, 0)  # the slot the waiter held would have blocked this


async def test_the_local_share_grants_while_the_shared_store_is_unreachable() -> None:
    """With the shared store down, permits come from this instance's share of the limit
    (limit 10 over a fleet of 5: 2 per window), once the grants it last saw have left."""
    budget = build(BudgetPolicy(limit=10, window_seconds=60.0), fleet=5)
    await budget.service.acquire(CLIENT, 0)  # the shared window, seen with one grant
    budget.shared.down = True
    with pytest.raises(BudgetExhausted):  # others may have filled the window meanwhile
        await budget.service.acquire(CLIENT, 0)
    budget.clock.advance(61.0 + SLOT_EPSILON)
    grants = [await budget.service.acquire(CLIENT, 0) for _ in range(2)]
    assert [(g.limit, g.remaining) for g in grants] == [(2, 1), (2, 0)]
    with pytest.raises(BudgetExhausted) as raised:
        await budget.service.acquire(CLIENT, 0)
    assert raised.value.limit == 2
    assert len(budget.events.named("store_error")) == 2  # asked again once the retry pause passed


async def test_without_a_local_share_the_budget_fails_closed() -> None:
    """With the shared store down and the outage share switched off, acquire raises
    StoreUnavailable instead of granting."""
    budget = build(BudgetPolicy(limit=10, outage_share=False), shared_down=True, fleet=2)
    with pytest.raises(StoreUnavailable):
        await budget.service.acquire(CLIENT, 0)


async def test_a_report_while_the_shared_store_is_down_pauses_the_local_share() -> None:
    """A 429 reported while the shared store is unreachable still pauses the local grants, and
    the report itself fails with StoreUnavailable."""
    budget = build(BudgetPolicy(limit=10, window_seconds=20.0), shared_down=True, fleet=5)
    budget.clock.advance(0.0)
    with pytest.raises(StoreUnavailable):
        await budget.service.report(429, {"Retry-After": "30"})
    budget.clock.advance(21.0 + SLOT_EPSILON)  # the window it never saw has passed
    with pytest.raises(BudgetExhausted) as raised:
        await budget.service.acquire(CLIENT, 0)
    assert raised.value.retry_after == pytest.approx(30.0 - 21.0 - SLOT_EPSILON)


async def test_a_local_share_of_zero_grants_nothing_while_the_store_is_down() -> None:
    """A fleet larger than the limit (a share of 0) grants no permit while the shared store is
    unreachable, not even after a window."""
    budget = build(BudgetPolicy(limit=10), shared_down=True, fleet=11)
    budget.clock.advance(100.0)
    try:
        grant = await budget.service.acquire(CLIENT, 0)
    except (BudgetExhausted, StoreUnavailable):
        return
    raise AssertionError(f"granted alone with a local share of 0: {grant}")
