"""The budget's failover fence: a window counted by another Redis process grants nothing."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis

from app.budget.model import Reservation, Window
from app.config import StoreSettings
from app.errors import StoreUnavailable
from app.store.redis import RedisStore
from tests.support.redis import RedisServer
from tests.support.redis_topologies import FAST_SYNC, client, wait_for

WINDOW = Window(3, 1.0)


@pytest.fixture
def servers() -> Iterator[tuple[RedisServer, RedisServer]]:
    """A primary and its replica."""
    primary = RedisServer(extra_args=FAST_SYNC).start()
    replica = RedisServer(extra_args=("--replicaof", "127.0.0.1", str(primary.port))).start()
    try:
        yield primary, replica
    finally:
        replica.cleanup()
        primary.cleanup()


@pytest.fixture
def prefix() -> str:
    """A fresh key prefix."""
    return f"fence{uuid.uuid4().hex[:8]}"


async def started(url: str, prefix: str) -> RedisStore:
    """A started store on `url`."""
    store = RedisStore(StoreSettings(redis_url=url, key_prefix=prefix))
    await store.start()
    return store


@pytest.fixture
async def stores() -> AsyncIterator[list[RedisStore]]:
    """Stores to close after the test."""
    opened: list[RedisStore] = []
    yield opened
    for store in opened:
        await store.close()


async def test_promoted_replica_grants_nothing_for_a_window_and_grace(
    servers: tuple[RedisServer, RedisServer], prefix: str, stores: list[RedisStore]
) -> None:
    """After the replica is promoted, the first reservation on it is fenced for window + grace."""
    primary, replica = servers
    old = await started(primary.url, prefix)
    stores.append(old)
    for i in range(2):
        assert (await old.reserve(WINDOW, 0, f"p{i}")).granted
    with client(replica.port) as conn:
        wait_for(lambda: conn.zcard(f"{prefix}:v1:{{budget}}:grants") == 2, 10, "replication")
        conn.replicaof("NO", "ONE")
    new = await started(replica.url, prefix)
    stores.append(new)
    fenced = await new.reserve(WINDOW, 0, "after")
    assert not fenced.granted
    assert fenced.delay >= WINDOW.seconds + new.failover_grace - 0.1
    assert (await new.usage(WINDOW)).cooldown > WINDOW.seconds


async def reserve_when_back(store: RedisStore, permit_id: str) -> Reservation:
    """Reserve, retrying while the pool's dead connections are being replaced."""
    for _ in range(20):
        try:
            return await store.reserve(WINDOW, 0, permit_id)
        except StoreUnavailable:
            await asyncio.sleep(0.05)
    raise AssertionError("the store did not come back")


async def test_window_lost_under_an_instance_that_saw_it_is_fenced(
    own_redis: RedisServer, prefix: str
) -> None:
    """Redis restarted empty: the instance that granted a moment ago is fenced; a new one isn't."""
    store = await started(own_redis.url, prefix)
    try:
        assert (await store.reserve(WINDOW, 0, "before")).granted
        own_redis.stop()
        own_redis.start()
        assert not (await reserve_when_back(store, "after")).granted
        fresh = await started(own_redis.url, f"{prefix}x")
        try:
            assert (await fresh.reserve(WINDOW, 0, "first")).granted
        finally:
            await fresh.close()
    finally:
        await store.close()


async def test_a_reservation_the_window_lost_is_withdrawn_at_confirm(
    redis_server: RedisServer, prefix: str, stores: list[RedisStore]
) -> None:
    """A reserved future slot missing from the window at confirm time is not used."""
    store = await started(redis_server.url, prefix)
    stores.append(store)
    one = Window(1, 1.0)
    assert (await store.reserve(one, 0, "now")).granted
    later = await store.reserve(one, 5, "later")
    assert later.granted and later.delay > 0
    with redis.Redis(port=redis_server.port) as conn:
        conn.zrem(f"{prefix}:v1:{{budget}}:grants", "later")
    assert await store.confirm("later") > 0
    assert await store.confirm("now") == 0
