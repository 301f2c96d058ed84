"""The fleet view: instances heartbeat into the store (memory and Redis) and /health lists them."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from app.config import StoreSettings
from app.store.memory import MemoryStore
from app.store.ports import Store
from app.store.redis import RedisStore
from tests.conftest import BrokerFactory
from tests.support.clock import FakeClock
from tests.support.redis import RedisServer

TTL = 0.3  # seconds; Redis measures it on its own clock, so the Redis case really waits


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Store, FakeClock | None]]:
    """A started store of each kind; the memory one runs on a fake clock."""
    if request.param == "memory":
        clock = FakeClock()
        yield MemoryStore(clock=clock), clock
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    settings = StoreSettings(redis_url=server.url, key_prefix=f"t{uuid.uuid4().hex[:10]}")
    redis_store = RedisStore(settings)
    await redis_store.start()
    try:
        yield redis_store, None
    finally:
        await redis_store.close()


async def elapse(clock: FakeClock | None, seconds: float) -> None:
    """Let `seconds` pass: move the fake clock, or really wait for Redis's clock."""
    if clock is None:
        await asyncio.sleep(seconds)
    else:
        clock.advance(seconds)


async def test_instances_alive_until_their_heartbeat_lapses(
    store: tuple[Store, FakeClock | None],
) -> None:
    """Each heartbeat keeps an instance listed with its version for `ttl`; then it drops out."""
    backend, clock = store
    assert await backend.instances() == []
    await backend.heartbeat("b-host-2", "1.2.0", TTL)
    await backend.heartbeat("a-host-1", "1.3.0rc1", 30)
    alive = await backend.instances()
    assert [(i.instance, i.version) for i in alive] == [
        ("a-host-1", "1.3.0rc1"),
        ("b-host-2", "1.2.0"),
    ]
    assert 0 < alive[1].expires_in <= TTL
    await elapse(clock, TTL + 0.1)
    assert [i.instance for i in await backend.instances()] == ["a-host-1"]
    await backend.heartbeat("b-host-2", "1.2.0", TTL)  # it came back
    assert [i.instance for i in await backend.instances()] == ["a-host-1", "b-host-2"]


async def test_redis_key_expires_with_its_last_instance(redis_server: RedisServer) -> None:
    """The instances key carries a TTL, so a fleet that stopped leaves nothing behind in Redis."""
    prefix = f"t{uuid.uuid4().hex[:10]}"
    backend = RedisStore(StoreSettings(redis_url=redis_server.url, key_prefix=prefix))
    try:
        await backend.heartbeat("only", "1.0", TTL)
        key = f"{prefix}:v1:instances"
        assert 0 < await backend.redis.pttl(key) <= TTL * 1000
        await asyncio.sleep(TTL + 0.1)
        assert await backend.redis.exists(key) == 0
    finally:
        await backend.redis.aclose()


@pytest.mark.parametrize("store_config", ["redis"], indirect=True)
async def test_health_lists_every_instance_on_the_same_redis(
    broker: BrokerFactory, store_config: dict[str, Any]
) -> None:
    """Two brokers on one Redis both list both instances, each marking itself."""
    async with broker() as one, broker() as two:
        reports = [(await http.get("/health")).json() for http in (one, two)]
    names = {report["instance"] for report in reports}
    assert len(names) == 2
    for report in reports:
        fleet = report["fleet"]
        assert fleet["count"] == 2
        assert {i["instance"] for i in fleet["instances"]} == names
        assert {i["version"] for i in fleet["instances"]} == {report["version"]}
        (me,) = [i for i in fleet["instances"] if i["self"]]
        assert me["instance"] == report["instance"]
