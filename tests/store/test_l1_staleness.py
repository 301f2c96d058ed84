"""L1 staleness after a lost broadcast: a stale entry is re-checked before it is served."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.conftest import EMULATOR_ID, EMULATOR_SECRET, BrokerFactory
from tests.contract import assert_token, orders
from tests.support.redis import RedisServer
from tests.support.sealed import write_sealed_token


@pytest.mark.parametrize("store_config", ["redis"], indirect=True)
async def test_a_token_replaced_without_a_broadcast_is_not_served_after_1_second(
    broker: BrokerFactory, store_config: dict[str, Any], redis_server: RedisServer
) -> None:
    """The stored token changes and no instance is told (a lost broadcast); 1 s later the
    instance that holds the old one in L1 serves the new one, even with no traffic between."""
    async with broker() as http:
        old = assert_token(await http.get("/token", headers=orders()))["access_token"]
        async with aioredis.Redis.from_url(redis_server.url) as client:
            await write_sealed_token(  # what another instance's save writes, minus its PUBLISH
                client,
                store_config["key_prefix"],
                "checkout",
                (EMULATOR_ID, EMULATOR_SECRET),
                "replaced-without-broadcast",
            )
        await asyncio.sleep(1.0)
        served = assert_token(await http.get("/token", headers=orders()))["access_token"]
    assert old != "replaced-without-broadcast"
    assert served == "replaced-without-broadcast"
