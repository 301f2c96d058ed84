"""Clock drill: three brokers on one Redis, two with wall clocks off by two minutes.

The clocks are injected (`SystemClock(offset=...)`), so nothing but the brokers' own idea of
the time changes: Redis, the emulator and the test keep the real time.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest

from app.clock import SystemClock
from app.config import Settings
from app.main import create_app
from tests.conftest import API_KEYS, Emulator, broker_config
from tests.support.redis import RedisServer
from tests.support.servers import serve_app

SKEW = 120.0  # seconds: "a clock set off by minutes"
OFFSETS = (0.0, SKEW, -SKEW)
LIMIT = 10
HEADERS = {"X-API-Key": API_KEYS["orders"]}


@pytest.fixture
async def skewed(emulator: Emulator, redis_server: RedisServer) -> AsyncIterator[list[str]]:
    """Base URLs of three brokers sharing one key prefix, clocks at 0, +SKEW and -SKEW s."""
    store = {"redis_url": redis_server.url, "key_prefix": f"k{uuid.uuid4().hex[:8]}"}
    config = broker_config(emulator, store, budget={"limit": LIMIT, "window_seconds": 60})
    async with AsyncExitStack() as stack:
        urls = [
            await stack.enter_async_context(
                serve_app(create_app(Settings(**config), clock=SystemClock(offset=offset)))
            )
            for offset in OFFSETS
        ]
        yield urls


async def test_skewed_clocks_keep_single_flight_invalidation_and_the_budget(
    emulator: Emulator, skewed: list[str], figures: dict[str, Any]
) -> None:
    """Clocks 2 min apart: no caller error, one upstream request per refresh, the old token gone
    within 1 s of an invalidation, at most `limit` permits; and each broker's `expires_in`
    matches the upstream's real remaining lifetime."""
    async with httpx.AsyncClient(timeout=10) as http:
        issued_at = time.time()
        cold = await asyncio.gather(
            *(http.get(f"{skewed[i % 3]}/token", headers=HEADERS) for i in range(30))
        )
        views = [(await http.get(f"{url}/token", headers=HEADERS)).json() for url in skewed]
        truth = 3600 - (time.time() - issued_at)
        old = cold[0].json()["access_token"]
        reports = await asyncio.gather(
            *(
                http.post(
                    f"{skewed[i % 3]}/token/invalidate",
                    headers=HEADERS,
                    json={"client": "checkout", "access_token": old},
                )
                for i in range(15)
            )
        )
        await asyncio.sleep(1.0)
        after = [(await http.get(f"{url}/token", headers=HEADERS)).json() for url in skewed]
        permits = await asyncio.gather(
            *(http.post(f"{skewed[i % 3]}/budget/acquire", headers=HEADERS) for i in range(30))
        )
    statuses = [r.status_code for r in [*cold, *reports]]
    deviation = {
        f"{o:+.0f}s": round(v["expires_in"] - truth) for o, v in zip(OFFSETS, views, strict=True)
    }
    granted = sum(r.status_code == 200 for r in permits)
    upstream = (await emulator.stats())["token_requests"]
    figures.update(
        caller_errors=sum(s != 200 for s in statuses),
        upstream_token_requests=upstream,
        distinct_cold_tokens=len({r.json()["access_token"] for r in cold}),
        expires_in_minus_truth_by_clock=deviation,
        old_token_served_after_1s=sum(v["access_token"] == old for v in after),
        permits_granted=granted,
        permits_denied=sum(r.status_code == 429 for r in permits),
        budget_limit=LIMIT,
    )
    assert statuses == [200] * len(statuses)
    assert len({r.json()["access_token"] for r in cold}) == 1
    assert all(v["access_token"] != old for v in after)
    assert len({v["access_token"] for v in after}) == 1
    assert upstream == 2  # cold start + one forced refresh
    assert granted == LIMIT  # the budget runs on Redis time: skew cannot widen it
    # Token times travel relative to Redis' clock, so every broker's expires_in is right.
    assert all(abs(d) <= 2 for d in deviation.values()), deviation
