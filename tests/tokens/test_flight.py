"""FleetFlight: one upstream request per refresh, in this process and across the fleet."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from app.errors import StoreUnavailable, UpstreamCredentialsRejected, UpstreamUnavailable
from app.store.memory import MemoryStore
from app.tokens.flight import FleetFlight
from app.tokens.l1 import L1Cache
from app.tokens.model import ClientPolicy, HoldReason
from app.tokens.ports import RefreshLock, TokenStore
from app.tokens.refresher import PROBE_INTERVAL_SECONDS, UpstreamRefresher
from app.tokens.status import ClientStatus
from app.tokens.store_state import StoreState
from tests.support.clock import FakeClock
from tests.tokens.doubles import (
    CLIENT,
    BrokenStore,
    CountingFetcher,
    RecordingEvents,
    settle,
    token_of,
)

POLICY = ClientPolicy(refresh_buffer=300.0, min_forced_interval=10.0, upstream_timeout=10.0)


@dataclass
class Flight:
    """A FleetFlight over a shared and a local memory store, with what a test inspects."""

    clock: FakeClock
    shared: TokenStore
    local: MemoryStore
    fetcher: CountingFetcher
    events: RecordingEvents
    state: StoreState
    l1: L1Cache
    flight: FleetFlight


def build(clock: FakeClock, shared: TokenStore, lock: RefreshLock) -> Flight:
    """A FleetFlight of one client over `shared`/`lock`, falling back to a fresh memory store."""
    policies = {CLIENT: POLICY}
    status = {CLIENT: ClientStatus()}
    events = RecordingEvents()
    fetcher = CountingFetcher(clock)
    local = MemoryStore(clock=clock)
    state = StoreState(clock, events)
    l1 = L1Cache(shared, state, clock, events, max_age=0.5)
    refresher = UpstreamRefresher(policies, fetcher, status, clock, events, None)
    flight = FleetFlight(
        policies, (shared, lock), local, state, l1, refresher, status, clock, events
    )
    return Flight(clock, shared, local, fetcher, events, state, l1, flight)


@pytest.fixture
def clock() -> FakeClock:
    """The test's clock."""
    return FakeClock()


@pytest.fixture
def shared(clock: FakeClock) -> MemoryStore:
    """The fleet's store, reachable."""
    return MemoryStore(clock=clock)


@pytest.fixture
def fl(clock: FakeClock, shared: MemoryStore) -> Flight:
    """A FleetFlight whose shared store answers."""
    return build(clock, shared, shared)


async def test_concurrent_joins_make_one_fetch(fl: Flight) -> None:
    """Fifty concurrent callers of one client share a single upstream request and its token."""
    fl.fetcher.gate = asyncio.Event()
    callers = [asyncio.ensure_future(fl.flight.join(CLIENT)) for _ in range(50)]
    await settle()
    assert fl.fetcher.calls == 1
    fl.fetcher.gate.set()
    tokens = await asyncio.gather(*callers)
    assert {token.access_token for token in tokens} == {f"token-{CLIENT}-1"}
    assert await fl.flight.join(CLIENT) == tokens[0]  # later: from the store, not the upstream
    assert fl.fetcher.calls == 1
    assert fl.events.named("lock_wait") == []  # shared in process, not queued on the lock


async def test_a_caller_that_goes_away_does_not_cancel_the_shared_fetch(fl: Flight) -> None:
    """Cancelling one waiting caller leaves the refresh running for the others."""
    fl.fetcher.gate = asyncio.Event()
    leaver = asyncio.ensure_future(fl.flight.join(CLIENT))
    stayer = asyncio.ensure_future(fl.flight.join(CLIENT))
    await settle()
    leaver.cancel()
    await settle()
    fl.fetcher.gate.set()
    token = await stayer
    assert leaver.cancelled()
    assert token.access_token == f"token-{CLIENT}-1"
    assert fl.fetcher.calls == 1


async def test_with_the_shared_store_down_the_local_fallback_still_single_flights(
    clock: FakeClock,
) -> None:
    """While the shared store raises StoreUnavailable, concurrent callers still make one fetch,
    and the token lands in the local store."""
    broken = BrokenStore()
    fl = build(clock, broken, broken)
    fl.fetcher.gate = asyncio.Event()
    callers = [asyncio.ensure_future(fl.flight.join(CLIENT)) for _ in range(20)]
    await settle()
    fl.fetcher.gate.set()
    tokens = await asyncio.gather(*callers)
    assert fl.fetcher.calls == 1
    assert len({token.access_token for token in tokens}) == 1
    assert not fl.state.ok
    assert (await fl.local.load(CLIENT)).token == tokens[0]


async def test_the_local_fallback_starts_from_the_token_this_instance_holds(
    clock: FakeClock,
) -> None:
    """With the shared store down, a token still in L1 is served from the local store, unfetched."""
    broken = BrokenStore()
    fl = build(clock, broken, broken)
    token = token_of(clock)
    fl.l1.put(CLIENT, token, token.serve_until(POLICY.refresh_buffer))
    assert await fl.flight.join(CLIENT) == token
    assert fl.fetcher.calls == 0


async def test_a_hold_in_the_store_serves_the_unexpired_token_without_fetching(
    fl: Flight, shared: MemoryStore
) -> None:
    """During a hold, a token inside its buffer but not expired is served stale, unfetched."""
    stale = token_of(fl.clock, lifetime=1000, age=990)  # 10 s left, buffer 300 s
    await shared.save(CLIENT, stale)
    await shared.hold(CLIENT, HoldReason.UNAVAILABLE, 5.0)
    assert await fl.flight.join(CLIENT) == stale
    assert fl.fetcher.calls == 0
    assert [(client, token) for client, token, *_ in fl.events.named("served_stale")] == [
        (CLIENT, stale)
    ]


@pytest.mark.parametrize(
    ("reason", "error"),
    [
        (HoldReason.UNAVAILABLE, UpstreamUnavailable),
        (HoldReason.REJECTED, UpstreamCredentialsRejected),
    ],
)
async def test_a_hold_without_a_valid_token_raises_without_fetching(
    fl: Flight, shared: MemoryStore, reason: HoldReason, error: type[Exception]
) -> None:
    """During a hold with no unexpired token, the hold's error is raised and nothing fetched."""
    await shared.save(CLIENT, token_of(fl.clock, lifetime=100, age=100))  # just expired
    await shared.hold(CLIENT, reason, 5.0)
    with pytest.raises(error) as raised:
        await fl.flight.join(CLIENT)
    if isinstance(raised.value, UpstreamUnavailable):
        assert raised.value.retry_after == pytest.approx(5.0)
    assert fl.fetcher.calls == 0


async def test_an_upstream_failure_holds_the_fleet_off_the_upstream(
    fl: Flight, shared: MemoryStore
) -> None:
    """A failed fetch writes a hold into the shared store, so the next caller gets the error
    (with the upstream's retry_after) without another request."""
    fl.fetcher.error = UpstreamUnavailable("down (test)", client=CLIENT, retry_after=7.0)
    with pytest.raises(UpstreamUnavailable) as first:
        await fl.flight.join(CLIENT)
    hold = (await shared.load(CLIENT)).hold
    assert hold is not None
    assert hold.reason is HoldReason.UNAVAILABLE
    assert hold.remaining == pytest.approx(7.0)
    assert first.value.retry_after == pytest.approx(7.0)
    with pytest.raises(UpstreamUnavailable):
        await fl.flight.join(CLIENT)
    assert fl.fetcher.calls == 1


async def test_with_no_valid_token_the_upstream_is_asked_again_after_the_probe_interval(
    fl: Flight,
) -> None:
    """After a failure with nothing valid to serve, callers are refused for the 1 s probe
    interval only, then the next one fetches (the upstream is back)."""
    fl.fetcher.error = UpstreamUnavailable("down (test)", client=CLIENT, retry_after=0.0)
    with pytest.raises(UpstreamUnavailable):
        await fl.flight.join(CLIENT)
    fl.clock.advance(PROBE_INTERVAL_SECONDS - 0.01)
    with pytest.raises(UpstreamUnavailable):
        await fl.flight.join(CLIENT)
    assert fl.fetcher.calls == 1
    fl.fetcher.error = None
    fl.clock.advance(0.01)
    assert (await fl.flight.join(CLIENT)).access_token == f"token-{CLIENT}-2"


async def test_a_hold_the_shared_store_cannot_take_is_kept_locally(clock: FakeClock) -> None:
    """When the shared store fails to record a hold, the local store holds instead, so the
    fallback does not ask the upstream again at once."""

    class NoHolds(MemoryStore):
        async def hold(self, client: str, reason: HoldReason, seconds: float) -> None:
            raise StoreUnavailable("the store is down (test)")

    shared = NoHolds(clock=clock)
    fl = build(clock, shared, shared)
    fl.fetcher.error = UpstreamUnavailable("down (test)", client=CLIENT, retry_after=7.0)
    with pytest.raises(UpstreamUnavailable):
        await fl.flight.join(CLIENT)
    assert (await fl.local.load(CLIENT)).hold is not None
    with pytest.raises(UpstreamUnavailable):
        await fl.flight.join(CLIENT)
    assert fl.fetcher.calls == 1


async def test_a_waiter_takes_the_token_another_instance_saved_without_fetching(
    fl: Flight, shared: MemoryStore
) -> None:
    """While another instance holds the refresh lock, a caller waits for its broadcast and
    serves the token it saved."""
    shared.subscribe(lambda change: fl.flight.wake(change.client))
    other = await shared.acquire(CLIENT, POLICY.lock_ttl)
    waiter = asyncio.ensure_future(fl.flight.join(CLIENT))
    await settle()
    assert not waiter.done()
    theirs = token_of(fl.clock, name="theirs")
    await shared.save(CLIENT, theirs)
    assert await asyncio.wait_for(waiter, 1.0) == theirs
    assert await shared.release(other)
    assert fl.fetcher.calls == 0
    assert fl.events.named("lock_wait") == [(CLIENT,)]


async def test_a_waiter_fetches_itself_when_the_other_holders_lease_lapses(
    fl: Flight, shared: MemoryStore
) -> None:
    """If the instance holding the refresh lock dies, a waiter takes the lock once the lease
    lapses and fetches."""
    await shared.acquire(CLIENT, 0.02)  # a holder that will never save nor release
    waiter = asyncio.ensure_future(fl.flight.join(CLIENT))
    await settle()
    assert fl.fetcher.calls == 0
    fl.clock.advance(0.02)
    token = await asyncio.wait_for(waiter, 1.0)  # re-reads after lease.wait + 50 ms
    assert token.access_token == f"token-{CLIENT}-1"
    assert fl.fetcher.calls == 1


@pytest.mark.parametrize(("fetch_seconds", "lapsed"), [(1.0, False), (30.0, True)])
async def test_a_lapsed_lease_emits_lease_lapsed(
    fl: Flight, fetch_seconds: float, lapsed: bool
) -> None:
    """A refresh that outlives its lock's ttl reports `lease_lapsed`; one within it does not."""
    assert (fetch_seconds > POLICY.lock_ttl) == lapsed
    fl.fetcher.during = lambda: fl.clock.advance(fetch_seconds)
    await fl.flight.join(CLIENT)
    assert fl.events.named("lease_lapsed") == ([(CLIENT,)] if lapsed else [])
