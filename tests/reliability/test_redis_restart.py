"""Redis restart drill: the same redis-server stopped and started again under 3 serving brokers."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import API_KEYS, Emulator, broker_config
from tests.support.processes import ServerProcess, fleet
from tests.support.redis import RedisServer

pytestmark = pytest.mark.fleet

HEADERS = {"X-API-Key": API_KEYS["orders"]}
METHODS = "/checkout-project/integration/v1/methods"


async def all_ready(http: httpx.AsyncClient, brokers: list[ServerProcess]) -> bool:
    """Whether every broker's /health/ready answers 200."""
    codes = [(await http.get(f"{b.url}/health/ready")).status_code for b in brokers]
    return codes == [200] * len(brokers)


async def test_redis_restart_under_load_keeps_tokens_flowing_and_the_fleet_recovers(
    emulator: Emulator, own_redis: RedisServer, tmp_path: Path, figures: dict[str, Any]
) -> None:
    """12 callers on 3 brokers while Redis stops for 2 s and restarts empty: no caller error,
    every token handed out is accepted upstream, the fleet stays ready (it holds valid tokens)
    and is back on the store by itself."""
    config = broker_config(emulator, {"redis_url": own_redis.url, "key_prefix": "restart"})
    statuses: Counter[int] = Counter()
    tokens: set[str] = set()
    stop = asyncio.Event()

    async def caller(http: httpx.AsyncClient, broker: ServerProcess) -> None:
        while not stop.is_set():
            response = await http.get(f"{broker.url}/token", headers=HEADERS)
            statuses[response.status_code] += 1
            if response.status_code == 200:
                tokens.add(response.json()["access_token"])
            await asyncio.sleep(0.02)

    with fleet(config, tmp_path) as brokers:
        async with httpx.AsyncClient(timeout=10) as http:
            load = [asyncio.create_task(caller(http, brokers[i % 3])) for i in range(12)]
            await asyncio.sleep(1.0)
            served_before = sum(statuses.values())
            own_redis.stop()
            down_at = time.monotonic()
            await asyncio.sleep(2.0)
            ready_during = await all_ready(http, brokers)
            served_during = sum(statuses.values()) - served_before
            own_redis.start()  # same port, empty: the cached token and the budget are gone
            up_at = time.monotonic()
            while not await all_ready(http, brokers) and time.monotonic() - up_at < 10:
                await asyncio.sleep(0.05)
            recovered_after = time.monotonic() - up_at
            await asyncio.sleep(1.5)  # keep the load on while the fleet re-fills Redis
            stop.set()
            await asyncio.gather(*load)
            health = [(await http.get(f"{b.url}/health")).json() for b in brokers]
            accepted = {
                token: (
                    await emulator.http.get(METHODS, headers={"Authorization": f"Bearer {token}"})
                ).status_code
                for token in tokens
            }
    upstream = (await emulator.stats())["token_requests"]
    figures.update(
        requests=sum(statuses.values()),
        statuses=dict(statuses),
        caller_errors=sum(n for code, n in statuses.items() if code != 200),
        served_while_redis_down=served_during,
        redis_down_seconds=round(up_at - down_at, 2),
        ready_again_after_restart_seconds=round(recovered_after, 2),
        distinct_tokens=len(tokens),
        upstream_token_requests=upstream,
    )
    assert statuses.keys() == {200}, statuses
    assert served_during > 100  # callers were served while Redis was down
    assert ready_during  # every broker holds a valid token: it can serve without Redis
    assert recovered_after < 10
    assert all(h["store"] == {"kind": "redis", "ok": True} for h in health)
    assert set(accepted.values()) == {200}, accepted
    # The restart lost the cached token: the fleet needs exactly one more upstream request
    # (the brokers go back to the shared store as soon as it answers, not after a pause).
    assert upstream == 2, upstream
