"""TokenService: the facade the API calls (get, peek, invalidate, discard, on_change, report)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from app.errors import RefreshThrottled, UnknownClient, UpstreamUnavailable
from app.store.memory import MemoryStore
from app.tokens.l1 import L1_HARD_AGE_SECONDS
from app.tokens.model import ChangeKind, ClientPolicy, TokenChange
from app.tokens.refresher import lead_time
from app.tokens.service import TokenService
from tests.support.clock import SteppedClock
from tests.tokens.doubles import (
    CLIENT,
    CountingFetcher,
    GatedStore,
    RecordingEvents,
    settle,
    token_of,
)

POLICY = ClientPolicy(refresh_buffer=300.0, min_forced_interval=10.0)


@dataclass
class Svc:
    """A TokenService over memory stores, with what a test inspects."""

    clock: SteppedClock
    shared: GatedStore
    fetcher: CountingFetcher
    service: TokenService


async def open_service(*, subscribed: bool) -> Svc:
    """A service of `checkout` and `billing`; `subscribed`: it hears the store's broadcasts."""
    clock = SteppedClock()
    shared = GatedStore(clock=clock)
    fetcher = CountingFetcher(clock)
    service = TokenService(
        {CLIENT: POLICY, "billing": POLICY},
        (shared, shared),
        MemoryStore(clock=clock),
        fetcher,
        clock=clock,
        events=RecordingEvents(),
    )
    if subscribed:
        shared.subscribe(service.on_change)
    return Svc(clock, shared, fetcher, service)


@pytest.fixture
async def svc() -> AsyncIterator[Svc]:
    """A service that hears every change broadcast, as in production."""
    opened = await open_service(subscribed=True)
    yield opened
    await opened.service.close()


@pytest.fixture
async def deaf() -> AsyncIterator[Svc]:
    """A service whose change broadcasts are all lost."""
    opened = await open_service(subscribed=False)
    yield opened
    await opened.service.close()


async def test_get_fetches_once_and_then_serves_from_l1(svc: Svc) -> None:
    """The first get fetches; later gets and peeks serve the same token without fetching."""
    assert svc.service.peek(CLIENT) is None
    first = await svc.service.get(CLIENT)
    loads = svc.shared.loads
    assert await svc.service.get(CLIENT) is first
    assert svc.service.peek(CLIENT) is first
    assert svc.fetcher.calls == 1
    assert svc.shared.loads == loads  # the second get did not touch the store


async def test_concurrent_gets_at_cold_start_make_one_fetch(svc: Svc) -> None:
    """A hundred concurrent gets of a client nobody has fetched share one upstream request."""
    svc.fetcher.gate = asyncio.Event()
    callers = [asyncio.ensure_future(svc.service.get(CLIENT)) for _ in range(100)]
    await settle()
    svc.fetcher.gate.set()
    tokens = await asyncio.gather(*callers)
    assert len({token.access_token for token in tokens}) == 1
    assert svc.fetcher.calls == 1


async def test_an_unknown_client_raises_unknown_client_before_any_work(svc: Svc) -> None:
    """get and invalidate of a client that is not configured raise UnknownClient and touch
    neither the upstream nor the store's token."""
    with pytest.raises(UnknownClient) as raised:
        await svc.service.get("nope")
    assert raised.value.client == "nope"
    with pytest.raises(UnknownClient):
        await svc.service.invalidate("nope", "token-x")
    svc.service.on_change(TokenChange("nope", ChangeKind.DISCARDED, "-"))  # ignored
    assert svc.service.hold_remaining("nope") == 0.0
    assert svc.fetcher.calls == 0


async def test_invalidating_the_current_token_fetches_a_new_one(svc: Svc) -> None:
    """Invalidating the cached token discards it and returns a newly fetched one."""
    old = await svc.service.get(CLIENT)
    new = await svc.service.invalidate(CLIENT, old.access_token)
    assert new != old
    assert svc.service.peek(CLIENT) == new
    assert await svc.service.get(CLIENT) == new
    assert svc.fetcher.calls == 2


async def test_invalidating_a_token_that_is_not_current_fetches_nothing(svc: Svc) -> None:
    """Reporting a token that is not the cached one returns the current token, unfetched."""
    current = await svc.service.get(CLIENT)
    assert await svc.service.invalidate(CLIENT, "token-from-long-ago") == current
    assert svc.fetcher.calls == 1


async def test_discard_drops_the_current_token_and_leaves_the_fetch_to_the_next_get(
    svc: Svc,
) -> None:
    """discard (revocation) says whether the token was current, fetches nothing itself, and the
    next get fetches a new token; a token that is not current changes nothing."""
    old = await svc.service.get(CLIENT)
    assert await svc.service.discard(CLIENT, "token-from-long-ago") is False
    assert svc.service.peek(CLIENT) == old
    assert await svc.service.discard(CLIENT, old.access_token) is True
    assert svc.service.peek(CLIENT) is None
    assert svc.fetcher.calls == 1
    assert await svc.service.get(CLIENT) != old
    assert svc.fetcher.calls == 2


async def test_a_second_forced_refresh_within_the_floor_is_throttled(svc: Svc) -> None:
    """A forced refresh less than min_forced_interval after the last raises RefreshThrottled
    with the rest of the interval as retry_after, and the current token stays served."""
    first = await svc.service.get(CLIENT)
    second = await svc.service.invalidate(CLIENT, first.access_token)
    svc.clock.advance(4.0)
    with pytest.raises(RefreshThrottled) as raised:
        await svc.service.invalidate(CLIENT, second.access_token)
    assert raised.value.retry_after == pytest.approx(6.0)
    assert raised.value.client == CLIENT
    assert (await svc.shared.load(CLIENT)).token == second
    assert svc.fetcher.calls == 2


async def test_a_discard_broadcast_drops_the_token_and_a_racing_read_cannot_bring_it_back(
    svc: Svc,
) -> None:
    """After a DISCARDED change, the token is neither peeked nor taken back from the store."""
    old = await svc.service.get(CLIENT)
    # The broadcast arrives before this instance's read sees the store without the token.
    svc.service.on_change(TokenChange(CLIENT, ChangeKind.DISCARDED, old.digest))
    assert svc.service.peek(CLIENT) is None
    assert (await svc.shared.load(CLIENT)).token == old
    svc.clock.advance(0.1)  # so the new token expires later and wins the store's compare
    assert await svc.service.get(CLIENT) != old
    assert svc.fetcher.calls == 2


async def test_a_saved_broadcast_of_another_token_makes_the_next_get_read_the_store(
    svc: Svc,
) -> None:
    """When another instance saves a newer token, this one drops its own and serves that one."""
    ours = await svc.service.get(CLIENT)
    theirs = token_of(svc.clock, lifetime=7200, name="theirs")
    await svc.shared.save(CLIENT, theirs)  # broadcasts SAVED
    assert svc.service.peek(CLIENT) is None
    assert await svc.service.get(CLIENT) == theirs != ours
    assert svc.fetcher.calls == 1


async def test_a_saved_broadcast_wakes_a_get_waiting_for_another_instances_refresh(
    svc: Svc,
) -> None:
    """A get queued behind another instance's refresh lock returns as soon as that instance's
    token is broadcast, without fetching."""
    other = await svc.shared.acquire(CLIENT, POLICY.lock_ttl)
    waiting = asyncio.ensure_future(svc.service.get(CLIENT))
    await settle()
    theirs = token_of(svc.clock, name="theirs")
    await svc.shared.save(CLIENT, theirs)
    assert await asyncio.wait_for(waiting, 0.5) == theirs  # the re-read cap alone is 2 s
    assert await svc.shared.release(other)
    assert svc.fetcher.calls == 0


async def test_a_lost_invalidation_broadcast_is_honoured_past_the_hard_age(deaf: Svc) -> None:
    """With the broadcast lost, an entry older than the hard age is re-checked against the
    store before it is served, so the discarded token is not handed out."""
    old = await deaf.service.get(CLIENT)
    await deaf.shared.discard(CLIENT, old.access_token, POLICY.min_forced_interval)
    deaf.clock.advance(L1_HARD_AGE_SECONDS + 0.01)
    assert await deaf.service.get(CLIENT) != old
    assert deaf.fetcher.calls == 2


async def test_held_tokens_are_served_past_the_hard_age_while_the_store_is_down(
    svc: Svc,
) -> None:
    """With the shared store unreachable, a token this instance holds is still served."""
    held = await svc.service.get(CLIENT)
    svc.shared.failing = True
    svc.clock.advance(L1_HARD_AGE_SECONDS + 0.01)
    assert await svc.service.get(CLIENT) == held
    assert not svc.service.store_ok
    assert svc.fetcher.calls == 1


async def test_hold_remaining_counts_down_the_hold_after_an_upstream_failure(svc: Svc) -> None:
    """After a failed fetch the client is held for the upstream's retry_after, counted down by
    hold_remaining, while gets fail fast without a new request."""
    assert svc.service.hold_remaining(CLIENT) == 0.0
    svc.fetcher.error = UpstreamUnavailable("down (test)", client=CLIENT, retry_after=5.0)
    with pytest.raises(UpstreamUnavailable):
        await svc.service.get(CLIENT)
    assert svc.service.hold_remaining(CLIENT) == pytest.approx(5.0)
    svc.clock.advance(2.0)
    assert svc.service.hold_remaining(CLIENT) == pytest.approx(3.0)
    with pytest.raises(UpstreamUnavailable) as raised:
        await svc.service.get(CLIENT)
    assert raised.value.retry_after == pytest.approx(3.0)
    assert svc.fetcher.calls == 1


async def test_report_treats_a_discarded_token_as_missing(svc: Svc) -> None:
    """A token invalidated on this instance is reported missing even when no new one came."""
    old = await svc.service.get(CLIENT)
    assert svc.service.report(CLIENT).token == "valid"
    svc.fetcher.error = UpstreamUnavailable("down (test)", client=CLIENT, retry_after=5.0)
    with pytest.raises(UpstreamUnavailable):
        await svc.service.invalidate(CLIENT, old.access_token)
    assert svc.service.status(CLIENT).token == old
    client = svc.service.report(CLIENT)
    assert (client.token, client.degraded, client.servable) == ("missing", True, False)


async def test_the_token_is_replaced_in_the_background_before_its_serve_until(svc: Svc) -> None:
    """Once a client has been asked for, a new token is fetched ahead of the old one's
    serve_until, so a get at that moment needs no upstream request."""
    old = await svc.service.get(CLIENT)
    serve_until = old.serve_until(POLICY.refresh_buffer)
    await settle()
    svc.clock.advance(serve_until - lead_time(old.lifetime) / 2 - svc.clock.time())
    await settle()
    assert svc.fetcher.calls == 2
    svc.clock.advance(serve_until - svc.clock.time())
    assert await svc.service.get(CLIENT) != old
    assert svc.fetcher.calls == 2


async def test_it_serves_without_the_store_only_with_a_valid_token_for_every_served_client(
    svc: Svc,
) -> None:
    """serves_without_store is true once every client asked for has a valid token here, and
    false before anything was served or while one asked-for client has none."""
    assert not svc.service.serves_without_store()
    await svc.service.get(CLIENT)
    assert svc.service.serves_without_store()  # billing was never asked for: it does not count
    svc.fetcher.error = UpstreamUnavailable("down (test)", client="billing", retry_after=5.0)
    with pytest.raises(UpstreamUnavailable):
        await svc.service.get("billing")
    assert not svc.service.serves_without_store()
