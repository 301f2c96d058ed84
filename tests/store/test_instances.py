"""The fleet view on Redis: the instances key expires, and /health lists every instance.

How heartbeats keep an instance listed, on both stores, is in test_store_behaviour.py.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from app.config import StoreSettings
from app.store.redis import RedisStore
from tests.conftest import BrokerFactory
from tests.support.redis import RedisServer

TTL = 0.3  # seconds; Redis measures it on its own clock, so the Redis case really waits


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
