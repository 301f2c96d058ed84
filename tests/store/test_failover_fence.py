"""The budget's failover fence: a window counted by another Redis process grants nothing."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis

from app.budget.model import Answer, Outcome, PermitRequest, Window
from app.config import StoreSettings
from app.errors import StoreUnavailable
from app.store.redis import RedisStore
from tests.support.redis import RedisServer
from tests.support.redis_topologies import FAST_SYNC, client, wait_for

WINDOW = Window(3, 1.0)


def request(permit_id: str) -> PermitRequest:
    """An API permit request of one caller."""
    return PermitRequest(permit_id, "orders", 1000)


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
        assert (await old.ask(WINDOW, request(f"p{i}"), 0)).outcome is Outcome.GRANTED
    with client(replica.port) as conn:
        wait_for(lambda: conn.zcard(f"{prefix}:v1:{{budget}}:grants") == 2, 10, "replication")
        conn.replicaof("NO", "ONE")
    new = await started(replica.url, prefix)
    stores.append(new)
    fenced = await new.ask(WINDOW, request("after"), 0)
    assert fenced.outcome is Outcome.DENIED
    assert fenced.delay >= WINDOW.seconds + new.failover_grace - 0.1
    assert (await new.usage(WINDOW)).cooldown > WINDOW.seconds


async def ask_when_back(store: RedisStore, permit_id: str) -> Answer:
    """Ask, retrying while the pool's dead connections are being replaced."""
    for _ in range(20):
        try:
            return await store.ask(WINDOW, request(permit_id), 0)
        except StoreUnavailable:
            await asyncio.sleep(0.05)
    raise AssertionError("the store did not come back")


async def test_window_lost_under_an_instance_that_saw_it_is_fenced(
    own_redis: RedisServer, prefix: str
) -> None:
    """Redis restarted empty: the instance that granted a moment ago is fenced; a new one isn't."""
    store = await started(own_redis.url, prefix)
    try:
        assert (await store.ask(WINDOW, request("before"), 0)).outcome is Outcome.GRANTED
        own_redis.stop()
        own_redis.start()
        assert (await ask_when_back(store, "after")).outcome is Outcome.DENIED
        fresh = await started(own_redis.url, f"{prefix}x")
        try:
            assert (await fresh.ask(WINDOW, request("first"), 0)).outcome is Outcome.GRANTED
        finally:
            await fresh.close()
    finally:
        await store.close()


async def test_a_waiter_the_store_lost_is_queued_again_not_granted_out_of_turn(
    redis_server: RedisServer, prefix: str, stores: list[RedisStore]
) -> None:
    """A queued request missing from the store when it asks again (written to a primary whose
    writes a failover lost) is queued again behind the requests still queued, and the window
    grants nothing beyond its limit meanwhile."""
    store = await started(redis_server.url, prefix)
    stores.append(store)
    one = Window(1, 1.0)
    assert (await store.ask(one, request("now"), 0)).outcome is Outcome.GRANTED
    lost = await store.ask(one, PermitRequest("a-lost", "billing", 1000), 5)
    kept = await store.ask(one, request("kept"), 5)
    assert lost.outcome is kept.outcome is Outcome.WAITING
    assert lost.delay < kept.delay  # equal tags, and its id sorts first
    with redis.Redis(port=redis_server.port) as conn:
        for key in ("tq", "aq", "leases"):
            conn.zrem(f"{prefix}:v1:{{budget}}:{key}", "a-lost")
        conn.hdel(f"{prefix}:v1:{{budget}}:waiters", "a-lost")
    again = await store.ask(one, PermitRequest("a-lost", "billing", 1000), 5)
    assert again.outcome is Outcome.WAITING and again.delay > kept.delay - 0.05
    assert (await store.usage(one)).used == 1
