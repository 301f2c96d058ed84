"""The sliding-window limiter: hypothesis properties and a state machine on both stores.

The same tests run on the memory store (`MemoryBudget` on a fake clock) and on a real Redis
(the `budget_*.lua` scripts), through the `store_config` fixture the store suite uses.

Time on Redis: the scripts read `redis.call('TIME')` and key expiry, which no test can move. So
the Redis case runs the drawn timeline for real, shrunk by `REDIS_SCALE` (a drawn second lasts
10 ms or 20 ms) and rounded to the whole milliseconds the scripts work in, and every check is
made on Redis' own clock: a grant's slot is its score in the window (ms of Redis time) and "now"
is `TIME`, read just before and just after each call. The memory case keeps the old, larger and
exact timelines; the Redis case draws fewer examples (each one really waits).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Coroutine
from contextlib import AsyncExitStack
from typing import Any, ClassVar, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)
from pydantic import SecretStr

from app.budget.model import Reservation, Window
from app.budget.service import cooldown_from_report
from app.config import StoreSettings
from app.store.redis import RedisStore
from tests.support.redis import RedisServer
from tests.support.stores import Backend, fresh_prefix, open_backend

T = TypeVar("T")
REDIS_SCALE = 0.01  # the properties' timeline on Redis: a drawn second lasts 10 ms
REDIS_MACHINE_SCALE = 0.02  # the state machine's: 20 ms (rules add round trips between sleeps)


def worst_window(slots: list[float], seconds: float) -> int:
    """Brute force: the most grants in any closed window [s, s + seconds]."""
    ordered = sorted(slots)
    return max((sum(1 for t in ordered if s <= t <= s + seconds) for s in ordered), default=0)


def on_redis(store_config: dict[str, Any]) -> bool:
    """Whether this parametrisation is the Redis one."""
    return "redis_url" in store_config


class Probe:
    """A budget store's decisions on its own clock: fake seconds, or whole ms of Redis time."""

    def __init__(self, backend: Backend, redis_scale: float) -> None:
        self.backend = backend
        self.redis = backend.store if isinstance(backend.store, RedisStore) else None
        self.scale = 1.0 if self.redis is None else redis_scale
        self.epsilon = 0.001 if self.redis is None else 1  # grants are 1 ms past the window
        # Redis: TIME and PTTL are read in separate whole ms; the fake clock resolves ~0.2 µs.
        self.slack = 1e-6 if self.redis is None else 2

    def seconds(self, drawn: float) -> float:
        """A drawn duration on this store's timeline (whole ms on Redis)."""
        if self.redis is None:
            return drawn
        return round(drawn * self.scale * 1000) / 1000

    def ticks(self, seconds: float) -> float:
        """Seconds in the store's unit."""
        return seconds if self.redis is None else round(seconds * 1000)

    async def now(self) -> float:
        """The store's now: the fake clock, or Redis' TIME in whole ms (as the scripts read it)."""
        if self.redis is None:
            return self.backend.clock.monotonic()
        secs, micros = await self.redis.redis.time()
        return int(secs) * 1000 + int(micros) // 1000

    async def slot(self, reservation: Reservation) -> float:
        """When a granted permit is used: now + delay, or its score in the Redis window."""
        if self.redis is None:
            return self.backend.clock.monotonic() + reservation.delay
        score = await self.redis.redis.zscore(self.redis.keys.budget[0], reservation.permit_id)
        assert score is not None, "a granted permit is in the window"
        return score

    async def elapse(self, drawn: float) -> None:
        """Let a drawn duration pass."""
        await self.backend.elapse(self.seconds(drawn))


def run_on_fresh_store(
    store_config: dict[str, Any], check: Callable[[Backend], Coroutine[Any, Any, None]]
) -> None:
    """Run `check` in its own event loop on a new store (Redis: a new key prefix)."""

    async def main() -> None:
        async with open_backend(fresh_prefix(store_config)) as backend:
            await check(backend)

    asyncio.run(main())


def arrivals(redis: bool) -> st.SearchStrategy[list[tuple[float, float]]]:
    """(gap before the arrival, how long it will wait) in drawn seconds; fewer on Redis."""
    pair = st.tuples(
        st.floats(min_value=0, max_value=3, allow_nan=False),
        st.floats(min_value=0, max_value=10, allow_nan=False),
    )
    return st.lists(pair, max_size=40 if redis else 120)


def test_no_window_ever_holds_more_than_limit_grants(store_config: dict[str, Any]) -> None:
    """For random arrivals and waits, every window holds at most `limit` grants, and no grant
    is later than its caller agreed to wait."""
    redis = on_redis(store_config)

    @settings(max_examples=20 if redis else 300, deadline=None)
    @given(limit=st.integers(1, 8), window=st.floats(0.5, 5), pattern=arrivals(redis))
    def check(limit: int, window: float, pattern: list[tuple[float, float]]) -> None:
        async def on(backend: Backend) -> None:
            probe = Probe(backend, REDIS_SCALE)
            spec = Window(limit, probe.seconds(window))
            slots = []
            for gap, drawn_wait in pattern:
                await probe.elapse(gap)
                wait = probe.seconds(drawn_wait)
                reservation = await backend.store.reserve(spec, wait, uuid.uuid4().hex)
                assert reservation.delay >= 0
                if reservation.granted:
                    assert reservation.delay <= wait
                    slots.append(await probe.slot(reservation))
                else:
                    assert reservation.delay > wait
            assert worst_window(slots, probe.ticks(spec.seconds)) <= limit

        run_on_fresh_store(store_config, on)

    check()


def test_withdrawn_reservations_never_break_the_invariant(store_config: dict[str, Any]) -> None:
    """Giving back every other future slot (a waiter that went away) keeps every window legal."""
    redis = on_redis(store_config)

    @settings(max_examples=15 if redis else 100, deadline=None)
    @given(limit=st.integers(1, 5), pattern=arrivals(redis))
    def check(limit: int, pattern: list[tuple[float, float]]) -> None:
        async def on(backend: Backend) -> None:
            probe = Probe(backend, REDIS_SCALE)
            spec = Window(limit, probe.seconds(2.0))
            kept = []
            for i, (gap, drawn_wait) in enumerate(pattern):
                await probe.elapse(gap)
                permit = uuid.uuid4().hex
                reservation = await backend.store.reserve(spec, probe.seconds(drawn_wait), permit)
                if reservation.granted and reservation.delay > 0 and i % 2:
                    await backend.store.withdraw(permit)
                elif reservation.granted:
                    kept.append(await probe.slot(reservation))
            assert worst_window(kept, probe.ticks(spec.seconds)) <= limit

        run_on_fresh_store(store_config, on)

    check()


class LimiterMachine(RuleBasedStateMachine):
    """Random interleavings of reserve, withdraw, confirm, cool_down and time passing, checked
    against a model of the window: every slot exactly where the rules put it, within the time
    the calls took on the store's clock (no uncertainty on the fake clock)."""

    base_config: ClassVar[dict[str, Any]]  # the [store] table; each run gets a fresh prefix

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.stack = AsyncExitStack()
        opening = open_backend(fresh_prefix(self.base_config))  # a new window for every run
        backend = self.run(self.stack.enter_async_context(opening))
        self.backend = backend
        self.store = backend.store
        self.probe = Probe(backend, REDIS_MACHINE_SCALE)
        self.spec = Window(1, 1.0)
        self.window = 0.0  # ticks
        self.kept: dict[str, float] = {}  # permit -> slot (ticks) of every grant still standing
        self.cooldown_end = (float("-inf"), float("-inf"))  # it ends between these (ticks)
        self.trimmed_before = float("-inf")  # grants before this may have left the store
        self.reservations = 0

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Await `coroutine` on this machine's event loop."""
        return self.loop.run_until_complete(coroutine)

    def teardown(self) -> None:
        """Close the store and the loop."""
        try:
            self.run(self.stack.aclose())
        finally:
            self.loop.close()

    async def timed(self, call: Coroutine[Any, Any, T]) -> tuple[float, T, float]:
        """(store time before, the call's result, store time after)."""
        before = await self.probe.now()
        result = await call
        return before, result, await self.probe.now()

    def earliest_slot(self, now: float, trimmed_at: float) -> float:
        """Where the next slot must go if the store's now is `now` and it trimmed the grants
        older than `trimmed_at` - window (closed windows: +epsilon past the limit-th latest)."""
        live = sorted(s for s in self.kept.values() if s >= trimmed_at - self.window)
        slot = now
        if live:
            slot = max(slot, live[-1])
        if len(live) >= self.spec.limit:
            slot = max(slot, live[-self.spec.limit] + self.window + self.probe.epsilon)
        return slot

    @initialize(limit=st.integers(1, 4), window=st.floats(0.5, 5))
    def configure(self, limit: int, window: float) -> None:
        """The window every reservation of this run uses."""
        self.spec = Window(limit, self.probe.seconds(window))
        self.window = self.probe.ticks(self.spec.seconds)

    @rule(gap=st.floats(0, 3))
    def time_passes(self, gap: float) -> None:
        """Time passes with no call."""
        self.run(self.probe.elapse(gap))

    @rule(drawn_wait=st.floats(0, 10))
    def reserve(self, drawn_wait: float) -> None:
        """A slot no earlier than the window, the order of arrival and the cooldown allow, and
        no later either; granted within the wait, with the upstream-style remaining/reset."""
        wait = self.probe.seconds(drawn_wait)
        self.reservations += 1
        permit = f"p{self.reservations:03d}"  # sorted in the order of arrival
        before, got, after = self.run(self.timed(self.store.reserve(self.spec, wait, permit)))
        slack = self.probe.slack
        low = max(self.earliest_slot(before, after), self.cooldown_end[0] - slack)
        high = max(self.earliest_slot(after, before), self.cooldown_end[1] + slack)
        self.trimmed_before = max(self.trimmed_before, after - self.window)
        assert got.delay >= 0
        if not got.granted:
            assert got.delay > wait
            would_be = self.probe.ticks(got.delay)
            assert low - slack <= after + would_be and before + would_be <= high + slack
            return
        assert got.delay <= wait and got.permit_id == permit
        slot = self.run(self.probe.slot(got))
        assert low - slack <= slot <= high + slack, (low, slot, high)
        self.kept[permit] = slot
        in_window = sorted(s for s in self.kept.values() if s >= slot - self.window)
        assert got.remaining == max(0, self.spec.limit - len(in_window))
        reset = in_window[0] + self.window - slot
        assert abs(self.probe.ticks(got.reset) - reset) <= slack

    def pick(self, index: int) -> str | None:
        """A standing grant, chosen by a drawn index.

        Which grants stand depends on Redis' real timing, so the draw must not (a strategy
        over the grants themselves would draw differently when hypothesis replays a case).
        """
        permits = sorted(self.kept)
        return permits[index % len(permits)] if permits else None

    @rule(index=st.integers(0, 63))
    def withdraw(self, index: int) -> None:
        """A waiter goes away: its grant no longer counts."""
        permit = self.pick(index)
        if permit is None:
            return
        self.run(self.store.withdraw(permit))
        del self.kept[permit]

    @rule(index=st.integers(0, 63))
    def confirm(self, index: int) -> None:
        """A permit stands (0) unless a cooldown runs; then it is withdrawn and the cooldown
        left is returned."""
        permit = self.pick(index)
        if permit is None:
            return
        before, left, after = self.run(self.timed(self.store.confirm(permit)))
        slack = self.probe.slack
        if after < self.cooldown_end[0] - slack:  # certainly cooling down
            assert left > 0
            assert self.cooldown_end[0] - after - slack <= self.probe.ticks(left)
            assert self.probe.ticks(left) <= self.cooldown_end[1] - before + slack
        elif before > self.cooldown_end[1] + slack and self.kept[permit] >= self.trimmed_before:
            assert left == 0  # certainly no cooldown, and the grant is certainly still stored
        if left > 0:
            del self.kept[permit]

    @rule(drawn=st.floats(0.05, 5))
    def cool_down(self, drawn: float) -> None:
        """The fleet pauses: extended to at least `seconds`, never shortened."""
        seconds = self.probe.seconds(drawn)
        before, left, after = self.run(self.timed(self.store.cool_down(seconds)))
        ticks, slack = self.probe.ticks(seconds), self.probe.slack
        assert ticks - slack <= self.probe.ticks(left)
        assert self.probe.ticks(left) <= max(ticks, self.cooldown_end[1] - before) + slack
        low, high = self.cooldown_end
        self.cooldown_end = (max(low, before + ticks), max(high, after + ticks))

    @invariant()
    def no_window_holds_more_than_limit(self) -> None:
        """The grants that stand never put more than `limit` in one closed window."""
        assert worst_window(list(self.kept.values()), self.window) <= self.spec.limit


@pytest.mark.timeout(300)
def test_limiter_state_machine(store_config: dict[str, Any]) -> None:
    """Random interleavings of reserve, withdraw, confirm, cool_down and waiting keep every
    slot where the model puts it and every window within the limit."""
    redis = on_redis(store_config)

    class Machine(LimiterMachine):
        base_config = store_config

    run_state_machine_as_test(
        Machine,
        settings=settings(
            max_examples=25 if redis else 200,
            stateful_step_count=30,
            deadline=None,
        ),
    )


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
    # 120 connections open at once: on a loaded CI machine that can take longer than the 1 s
    # default socket timeout, which is no part of what this test checks.
    config = StoreSettings(
        redis_url=SecretStr(redis_server.url),
        key_prefix=f"b{uuid.uuid4().hex[:8]}",
        socket_timeout_seconds=10,
    )
    stores = [RedisStore(config) for _ in range(3)]
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
