"""The sliding-window limiter: properties on the memory adapter, the same invariant on Redis."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from app.budget.model import Window
from app.budget.service import cooldown_from_report
from app.config import StoreSettings
from app.store.memory_budget import MemoryBudget
from app.store.redis import RedisStore
from tests.support.clock import FakeClock
from tests.support.redis import RedisServer


def worst_window(slots: list[float], seconds: float) -> int:
    """Brute force: the most grants in any closed window [s, s + seconds]."""
    ordered = sorted(slots)
    return max((sum(1 for t in ordered if s <= t <= s + seconds) for s in ordered), default=0)


arrivals = st.lists(
    st.tuples(
        st.floats(min_value=0, max_value=3, allow_nan=False),  # gap before this arrival
        st.floats(min_value=0, max_value=10, allow_nan=False),  # how long it will wait
    ),
    max_size=120,
)


@settings(max_examples=300, deadline=None)
@given(limit=st.integers(1, 8), window=st.floats(0.5, 5), pattern=arrivals)
def test_no_window_ever_holds_more_than_limit_grants(
    limit: int, window: float, pattern: list[tuple[float, float]]
) -> None:
    """For random arrivals and waits, every window holds at most `limit` grants, and no grant
    is later than its caller agreed to wait."""
    clock = FakeClock()
    budget = MemoryBudget(clock=clock)
    spec = Window(limit, window)
    slots = []
    for gap, wait in pattern:
        clock.advance(gap)
        reservation = asyncio.run(budget.reserve(spec, wait, uuid.uuid4().hex))
        assert reservation.delay >= 0
        if reservation.granted:
            assert reservation.delay <= wait
            slots.append(clock.now + reservation.delay)
        else:
            assert reservation.delay > wait
    assert worst_window(slots, window) <= limit


@settings(max_examples=100, deadline=None)
@given(limit=st.integers(1, 5), pattern=arrivals)
def test_withdrawn_reservations_never_break_the_invariant(
    limit: int, pattern: list[tuple[float, float]]
) -> None:
    """Giving back every other future slot (a waiter that went away) keeps every window legal."""
    clock = FakeClock()
    budget = MemoryBudget(clock=clock)
    spec = Window(limit, 2.0)
    kept = []
    for i, (gap, wait) in enumerate(pattern):
        clock.advance(gap)
        permit = uuid.uuid4().hex
        reservation = asyncio.run(budget.reserve(spec, wait, permit))
        if reservation.granted and reservation.delay > 0 and i % 2:
            asyncio.run(budget.withdraw(permit))
        elif reservation.granted:
            kept.append(clock.now + reservation.delay)
    assert worst_window(kept, 2.0) <= limit


def test_reservations_are_first_come_first_served() -> None:
    """Later requests never get an earlier slot than earlier ones."""
    clock = FakeClock()
    budget = MemoryBudget(clock=clock)
    delays = [asyncio.run(budget.reserve(Window(2, 1.0), 10, str(i))).delay for i in range(7)]
    assert delays == sorted(delays)
    assert delays[:2] == [0, 0] and delays[2] > 1.0


def test_cooldown_blocks_until_it_ends_and_voids_reserved_slots() -> None:
    """After a cooldown starts, new slots begin after it and reserved ones are withdrawn."""
    clock = FakeClock()
    budget = MemoryBudget(clock=clock)
    window = Window(1, 1.0)
    asyncio.run(budget.reserve(window, 5, "a"))
    second = asyncio.run(budget.reserve(window, 5, "b"))
    assert second.granted and second.delay > 1.0
    asyncio.run(budget.cool_down(3.0))
    assert asyncio.run(budget.confirm("b")) == pytest.approx(3.0)
    third = asyncio.run(budget.reserve(window, 10, "c"))
    assert third.delay >= 3.0


@pytest.mark.parametrize(
    ("status", "headers", "expected"),
    [
        (200, {"X-RateLimit-Remaining": "3"}, None),
        (429, {"X-RateLimit-Reset": "17"}, 17.0),
        (200, {"x-ratelimit-remaining": "0", "x-ratelimit-reset": "5"}, 5.0),
        (429, {"Retry-After": "9"}, 9.0),
        (429, {}, 60.0),
        (429, {"X-RateLimit-Reset": "nonsense"}, 60.0),
        (429, {"X-RateLimit-Reset": "0"}, 1.0),
        (429, {"X-RateLimit-Reset": "999999"}, 3600.0),
    ],
)
def test_cooldown_from_report(status: int, headers: dict[str, str], expected: float | None) -> None:
    """An upstream 429 or Remaining 0 pauses until its reset (clamped to 1 s..1 h)."""
    assert cooldown_from_report(status, headers, 60.0) == expected


async def test_redis_script_keeps_the_invariant_under_concurrent_instances(
    redis_server: RedisServer,
) -> None:
    """120 concurrent reservations from 3 connections: the zset's slots (Redis time) never put
    more than `limit` grants in one window."""
    prefix = f"b{uuid.uuid4().hex[:8]}"
    stores = [
        RedisStore(StoreSettings(redis_url=SecretStr(redis_server.url), key_prefix=prefix))
        for _ in range(3)
    ]
    window = Window(5, 2.0)
    try:
        results = await asyncio.gather(
            *(stores[i % 3].reserve(window, 60, f"p{i}") for i in range(120))
        )
        grants = await stores[0].redis.zrange(stores[0].keys.budget[0], 0, -1, withscores=True)
    finally:
        for store in stores:
            await store.close()
    assert all(r.granted for r in results)
    slots_ms = [score for _, score in grants]
    assert len(slots_ms) == 120
    assert worst_window(slots_ms, 2000) <= 5
    # 24 batches of 5, 2 s apart: the last waits ~46 s from its own (slightly later) reservation.
    assert sorted(r.delay for r in results)[-1] >= (120 / 5 - 1) * 2.0 - 1.0
