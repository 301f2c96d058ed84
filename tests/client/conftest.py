"""Fixtures of the SDK tests: a broker app on loopback in front of the emulator."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from token_broker_client import BrokerAuth

from tests.client.support import Setup
from tests.conftest import API_KEYS, BrokerFactory, Emulator


@pytest.fixture
def store_config() -> dict[str, Any]:
    """The embedded store: what the SDK does does not depend on the broker's backend."""
    return {}


@pytest.fixture
async def setup(broker: BrokerFactory, emulator: Emulator) -> AsyncIterator[Setup]:
    """A broker with the shared test config; the emulator's rate limit is out of the way."""
    await emulator.configure(rate_limit=100_000)
    async with broker() as http:
        yield Setup(http, emulator)


@pytest.fixture
def make_auth() -> Iterator[Callable[..., BrokerAuth]]:
    """`make_auth(url, **kwargs)`: a BrokerAuth for caller `orders` (client checkout), closed
    after the test."""
    made: list[BrokerAuth] = []

    def make(url: str, **kwargs: Any) -> BrokerAuth:
        kwargs.setdefault("client", "checkout")
        kwargs.setdefault("api_key", API_KEYS["orders"])
        auth = BrokerAuth(url, **kwargs)
        made.append(auth)
        return auth

    yield make
    for auth in made:
        auth.close()
