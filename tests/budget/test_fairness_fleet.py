"""Budget fairness, token requests first and the outage share, over real broker processes."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.auth.callers import hash_api_key
from tests.budget.test_budget_api import watch_slots, worst_window
from tests.conftest import API_KEYS, Emulator, broker_config
from tests.support.processes import fleet
from tests.support.redis import RedisServer

pytestmark = pytest.mark.fleet

LIGHT = {"X-API-Key": API_KEYS["orders"]}
HEAVY = {"X-API-Key": API_KEYS["billing"]}


def callers(light_weight: float = 1.0, heavy_weight: float = 1.0) -> dict[str, Any]:
    """`orders` (the light caller) and `billing` (the heavy one), with their weights."""
    return {
        "orders": {
            "api_key_sha256": hash_api_key(API_KEYS["orders"]),
            "clients": ["checkout"],
            "budget_weight": light_weight,
        },
        "billing": {
            "api_key_sha256": hash_api_key(API_KEYS["billing"]),
            "clients": ["checkout", "payouts"],
            "budget_weight": heavy_weight,
        },
    }


async def keep_asking(
    http: httpx.AsyncClient,
    url: str,
    headers: dict[str, str],
    stop_at: float,
    granted: list[float],
    wait: float = 30.0,
) -> None:
    """Ask for permits one after the other until `stop_at`, noting when each came."""
    while (now := time.monotonic()) < stop_at:
        left = min(wait, stop_at - now)
        try:
            response = await http.post(
                f"{url}/budget/acquire?client=checkout&wait={left:.3f}", headers=headers
            )
        except httpx.HTTPError:
            await asyncio.sleep(0.1)
            continue
        if response.status_code == 200 and time.monotonic() <= stop_at:
            granted.append(time.monotonic())
        elif response.status_code != 200:
            await asyncio.sleep(min(0.2, max(0.0, stop_at - time.monotonic())))


@pytest.mark.parametrize(("heavy_weight", "light_share"), [(1.0, 0.5), (3.0, 0.25)])
async def test_a_light_caller_gets_its_weighted_share_across_two_brokers(
    heavy_weight: float,
    light_share: float,
    emulator: Emulator,
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    """Limit 10 per 5 s, two brokers: `billing` keeps 16 requests waiting (8 on each broker),
    `orders` asks one at a time on one broker; after the first window `orders` gets close to
    its weighted share (1:1 half, 1:3 a quarter) instead of what is left after the queue."""
    budget = {
        "limit": 10,
        "window_seconds": 5,
        "safety_margin_seconds": 0.1,
        "max_wait_seconds": 30,
    }
    store = {"redis_url": redis_server.url, "key_prefix": f"f{uuid.uuid4().hex[:8]}"}
    config = broker_config(
        emulator, store, budget=budget, callers=callers(heavy_weight=heavy_weight)
    )
    light: list[float] = []
    heavy: list[float] = []
    with fleet(config, tmp_path, size=2) as brokers:
        limits = httpx.Limits(max_connections=50)
        async with httpx.AsyncClient(timeout=60, limits=limits) as http:
            started = time.monotonic()
            stop_at = started + 26.0
            await asyncio.gather(
                keep_asking(http, brokers[0].url, LIGHT, stop_at, light),
                *(keep_asking(http, brokers[i % 2].url, HEAVY, stop_at, heavy) for i in range(16)),
            )
    measured_from = started + 5.1  # after the first window (a burst before any queue formed)
    light_n = sum(1 for t in light if t >= measured_from)
    heavy_n = sum(1 for t in heavy if t >= measured_from)
    share = light_n / (light_n + heavy_n)
    print(  # noqa: T201 - the figures quoted in the issue note
        f"fairness weights 1:{heavy_weight:g}: light={light_n} heavy={heavy_n} "
        f"light_share={share:.2f} (weighted share {light_share:.2f})"
    )
    assert light_n + heavy_n >= 0.9 * (26.0 - 5.1) * 10 / 5.1  # the budget stays used
    assert share == pytest.approx(light_share, abs=0.08)


async def test_a_forced_refresh_under_saturation_is_answered_in_about_a_second(
    emulator: Emulator, redis_server: RedisServer, tmp_path: Path
) -> None:
    """With count_token_requests and 16 API requests waiting on two brokers, /token/invalidate
    of the current token gets a new one within about a second (token requests come first and
    2 permits per window are kept for them), and API grants never take the reserve."""
    budget = {
        "limit": 10,
        "window_seconds": 5,
        "safety_margin_seconds": 0.1,
        "max_wait_seconds": 30,
        "count_token_requests": True,
    }
    prefix = f"r{uuid.uuid4().hex[:8]}"
    config = broker_config(
        emulator, {"redis_url": redis_server.url, "key_prefix": prefix}, budget=budget
    )
    slots: dict[str, float] = {}
    with fleet(config, tmp_path, size=2) as brokers:
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=50)) as http:
            old = (await http.get(f"{brokers[0].url}/token", headers=LIGHT)).json()["access_token"]
            stop = asyncio.Event()
            watcher = asyncio.create_task(
                watch_slots(redis_server.url, f"{prefix}:v1:{{budget}}:grants", slots, stop)
            )
            stop_at = time.monotonic() + 22.0  # their waits still reach past the refresh
            heavy: list[float] = []
            load = asyncio.gather(
                *(keep_asking(http, brokers[i % 2].url, HEAVY, stop_at, heavy) for i in range(16))
            )
            await asyncio.sleep(8.0)  # a full window of saturation first
            health = (await http.get(f"{brokers[1].url}/health")).json()
            asked = time.monotonic()
            response = await http.post(
                f"{brokers[1].url}/token/invalidate",
                headers=LIGHT,
                json={"client": "checkout", "access_token": old},
            )
            latency = time.monotonic() - asked
            await load
            stop.set()
            await watcher
    waiting = health["budget"]["callers"]["billing"]["waiting"]
    api = [at for member, at in slots.items() if not member.startswith("- ")]
    tokens = [at for member, at in slots.items() if member.startswith("- ")]
    print(  # noqa: T201 - the figures quoted in the issue note
        f"forced refresh under saturation: {latency:.3f} s; billing waiting={waiting}; "
        f"worst 5.1 s window: api={worst_window(api, 5.1)} all={worst_window(api + tokens, 5.1)}"
    )
    assert response.status_code == 200 and response.json()["access_token"] != old
    assert latency < 1.5
    assert waiting >= 12  # the forced refresh really was behind a queue of API requests
    assert len(tokens) == 2  # the cold start and the forced refresh
    assert worst_window(api, 5.1) <= 8  # limit - token_reserve
    assert worst_window(api + tokens, 5.1) <= 10


async def test_redis_outage_grants_from_shares_within_the_fleet_limit(
    emulator: Emulator, own_redis: RedisServer, tmp_path: Path
) -> None:
    """3 brokers under load, limit 12 per 3 s: Redis is killed for 9 s, then comes back empty.
    Every broker keeps granting from its share (12 // 3 per window) once the grants it last saw
    have left the window, /health shows the budget degraded, the fleet's worst window (as
    received) stays within the limit throughout, and the shared window takes over after the
    fence."""
    budget = {"limit": 12, "window_seconds": 3, "safety_margin_seconds": 0.5, "max_wait_seconds": 2}
    store = {"redis_url": own_redis.url, "key_prefix": f"o{uuid.uuid4().hex[:8]}"}
    config = broker_config(emulator, store, budget=budget)
    granted: dict[int, list[float]] = {0: [], 1: [], 2: []}
    with fleet(config, tmp_path, size=3) as brokers:
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=50)) as http:
            started = time.monotonic()
            stop_at = started + 24.0
            load = asyncio.gather(
                *(
                    keep_asking(http, brokers[i % 3].url, LIGHT, stop_at, granted[i % 3], wait=1)
                    for i in range(12)
                )
            )
            await asyncio.sleep(5.0)
            own_redis.kill()
            killed = time.monotonic()
            await asyncio.sleep(5.0)
            during = (await http.get(f"{brokers[0].url}/health")).json()
            await asyncio.sleep(4.0)
            own_redis.start()  # same port, empty
            back = time.monotonic()
            await load
    every = sorted(t for times in granted.values() for t in times)
    outage = {i: sum(1 for t in times if killed <= t < back) for i, times in granted.items()}
    after = sum(1 for t in every if t >= back)
    worst = worst_window(every, 3.0)
    print(  # noqa: T201 - the figures quoted in the issue note
        f"outage: grants per broker during {back - killed:.1f} s without Redis {outage}, "
        f"after the return {after}, worst 3 s window (as received) {worst} (limit 12)"
    )
    assert during["budget"]["mode"] == "local_share" and during["budget"]["degraded"]
    assert during["budget"]["local_share"]["per_window"] == 4
    assert during["status"] == "degraded"
    assert all(count >= 4 for count in outage.values())
    assert after > 0
    assert worst <= 12
    assert Counter(len(times) > 0 for times in granted.values())[True] == 3
