"""A refresh that outlives its lease: counted in /metrics, and another owner's lock is kept.

A slow upstream alone cannot make a lease lapse: the lock's TTL is `timeout_seconds * 1.5 + 2`
(plus any permit wait) and the upstream client gives up after `timeout_seconds`. What lapses a
lease in production is everything else (a stalled process, a paused VM, a slow store), so the
test makes the lease lapse under a refresh the emulator keeps open: it expires the lock key in
Redis, as Redis itself would, and another owner takes the lock, as another instance would.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.conftest import BrokerFactory, Emulator
from tests.contract import assert_token, orders
from tests.observability.prom import scrape
from tests.support.redis import RedisServer

LAPSED = "token_broker_refresh_lock_lapsed_total"


async def wait_for_key(client: aioredis.Redis, pattern: str, timeout: float = 5.0) -> str:
    """The first key matching `pattern` once one exists in Redis."""
    async with asyncio.timeout(timeout):
        while True:
            async for key in client.scan_iter(match=pattern):
                return str(key)
            await asyncio.sleep(0.01)


@pytest.mark.parametrize("store_config", ["redis"], indirect=True)
async def test_a_refresh_that_outlives_its_lease_is_counted_and_spares_the_new_owner(
    broker: BrokerFactory,
    emulator: Emulator,
    store_config: dict[str, Any],
    redis_server: RedisServer,
) -> None:
    """The lease lapses and another owner takes the lock while the upstream answers slowly: the
    caller still gets the token, refresh_lock_lapsed{client} counts 1, and the release leaves
    the new owner's lock in place."""
    await emulator.configure(token_latency=0.8)
    # Schema v2: the hash tag carries the credentials' fingerprint, {checkout.FP}.
    pattern = f"{store_config['key_prefix']}:v2:{{checkout.*}}:lock"
    async with (
        broker() as http,
        aioredis.Redis.from_url(redis_server.url, decode_responses=True) as client,
    ):
        assert (await scrape(http)).value(LAPSED, client="checkout") == 0
        request = asyncio.ensure_future(http.get("/token", headers=orders()))
        lock = await wait_for_key(client, pattern)  # the broker holds it, the upstream is slow
        await client.pexpire(lock, 1)  # its lease lapses...
        await asyncio.sleep(0.01)
        assert await client.set(lock, "another-instance", nx=True, px=30_000)  # ...and is taken
        assert_token(await request)
        metrics = await scrape(http)
        assert await client.get(lock) == "another-instance"
    assert metrics.value(LAPSED, client="checkout") == 1
    assert metrics.value(LAPSED, client="payouts") == 0
    assert (await emulator.stats())["token_requests"] == 1
