"""A client's credentials change: the core never serves a token obtained with the old ones."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

import pytest

from app.store.memory import MemoryStore
from app.tokens.model import ClientPolicy, Token
from app.tokens.service import TokenService
from tests.support.clock import SteppedClock
from tests.tokens.doubles import CLIENT, CountingFetcher, RecordingEvents, settle

POLICY = ClientPolicy(refresh_buffer=300.0, min_forced_interval=10.0)


class TaggingFetcher(CountingFetcher):
    """Tags each token with the credentials in use when its request was sent."""

    def __init__(self, clock: SteppedClock, credentials: dict[str, str]) -> None:
        super().__init__(clock)
        self.credentials = credentials

    async def fetch(self, client: str) -> Token:
        """A counted token, tagged with the generation current at the start of the request."""
        generation = self.credentials[client]
        token = await super().fetch(client)
        return replace(token, minted_by=generation)


@dataclass
class Svc:
    """A token service whose stores and fetcher follow one credentials table."""

    credentials: dict[str, str]
    shared: MemoryStore
    fetcher: TaggingFetcher
    service: TokenService

    def rotate(self, generation: str) -> None:
        """What `app.main` wires: the stores follow at once, then the service is told."""
        self.credentials[CLIENT] = generation
        self.service.credentials_changed(CLIENT, generation)


@pytest.fixture
async def svc() -> AsyncIterator[Svc]:
    """A service of one client whose credentials are generation `g1`."""
    clock = SteppedClock()
    credentials = {CLIENT: "g1"}
    shared = MemoryStore(clock=clock, generation=credentials.__getitem__)
    fetcher = TaggingFetcher(clock, credentials)
    service = TokenService(
        {CLIENT: POLICY},
        (shared, shared),
        MemoryStore(clock=clock, generation=credentials.__getitem__),
        fetcher,
        clock=clock,
        events=RecordingEvents(),
    )
    shared.subscribe(service.on_change)
    yield Svc(credentials, shared, fetcher, service)
    await service.close()


async def test_after_a_change_the_old_token_is_neither_peeked_nor_served(svc: Svc) -> None:
    """The L1 token of the old credentials is forgotten at once; the next get fetches with the
    new ones."""
    old = await svc.service.get(CLIENT)
    svc.rotate("g2")
    assert svc.service.peek(CLIENT) is None
    assert svc.service.report(CLIENT).token == "missing"
    new = await svc.service.get(CLIENT)
    assert new.access_token != old.access_token and new.minted_by == "g2"
    assert svc.fetcher.calls == 2


async def test_a_fetch_that_ends_after_the_change_is_not_served(svc: Svc) -> None:
    """A request sent with the old credentials that answers after they changed gives a token
    nobody gets: the flight starts over and fetches with the new ones."""
    gate = svc.fetcher.gate = asyncio.Event()
    waiting = asyncio.ensure_future(svc.service.get(CLIENT))
    await settle()
    assert svc.fetcher.calls == 1
    svc.rotate("g2")
    gate.set()
    served = await waiting
    assert served.minted_by == "g2" and svc.fetcher.calls == 2
    assert svc.service.peek(CLIENT) is served
    assert (await svc.shared.load(CLIENT)).token == served


async def test_until_credentials_first_change_an_untagged_token_is_served(svc: Svc) -> None:
    """Before any change the core knows no tag, so a stored token without one is served; after
    a change it is not."""
    untagged = Token("untagged", 1_800_003_600.0, 1_800_000_000.0)
    await svc.shared.save(CLIENT, untagged)
    assert await svc.service.get(CLIENT) == untagged
    assert svc.fetcher.calls == 0
    svc.rotate("g2")
    assert svc.service.peek(CLIENT) is None
    assert (await svc.service.get(CLIENT)).minted_by == "g2"
