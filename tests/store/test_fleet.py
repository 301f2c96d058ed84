"""Fleet guarantees with real processes: 3 `token-broker serve` processes, one redis-server."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.conftest import API_KEYS, Emulator, broker_config
from tests.support.processes import ServerProcess, fleet
from tests.support.redis import RedisServer

pytestmark = pytest.mark.fleet

HEADERS = {"X-API-Key": API_KEYS["orders"]}


@pytest.fixture
def fleet_config(emulator: Emulator, redis_server: RedisServer) -> dict[str, Any]:
    """Broker config on the session's Redis with a key prefix of its own."""
    store = {"redis_url": redis_server.url, "key_prefix": f"f{uuid.uuid4().hex[:8]}"}
    return broker_config(emulator, store)


def client() -> httpx.AsyncClient:
    """An HTTP client that can hold hundreds of concurrent requests."""
    return httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=500))


async def get_tokens(
    http: httpx.AsyncClient, brokers: list[ServerProcess], count: int
) -> list[httpx.Response]:
    """`count` concurrent GET /token spread round-robin over the brokers."""
    return await asyncio.gather(
        *(http.get(f"{brokers[i % len(brokers)].url}/token", headers=HEADERS) for i in range(count))
    )


async def test_cold_start_300_callers_on_3_instances_make_one_upstream_request(
    emulator: Emulator, fleet_config: dict[str, Any], tmp_path: Path
) -> None:
    """300 concurrent cold GET /token over 3 processes cause exactly 1 upstream token request."""
    await emulator.configure(token_latency=0.3)
    with fleet(fleet_config, tmp_path) as brokers:
        async with client() as http:
            responses = await get_tokens(http, brokers, 300)
    assert [r.status_code for r in responses] == [200] * 300
    assert len({r.json()["access_token"] for r in responses}) == 1
    assert (await emulator.stats())["token_requests"] == 1


async def test_50_invalidations_across_the_fleet_make_one_request_and_old_token_is_gone(
    emulator: Emulator, fleet_config: dict[str, Any], tmp_path: Path
) -> None:
    """50 concurrent reports of a token over 3 processes: 1 new request; 1 s later no old token."""
    await emulator.configure(token_latency=0.2)
    with fleet(fleet_config, tmp_path) as brokers:
        async with client() as http:
            warm = await get_tokens(http, brokers, 30)
            old = warm[0].json()["access_token"]
            reports = await asyncio.gather(
                *(
                    http.post(
                        f"{brokers[i % 3].url}/token/invalidate",
                        headers=HEADERS,
                        json={"client": "checkout", "access_token": old},
                    )
                    for i in range(50)
                )
            )
            await asyncio.sleep(1.0)
            after = await get_tokens(http, brokers, 30)
    assert [r.status_code for r in reports] == [200] * 50
    new_tokens = {r.json()["access_token"] for r in reports}
    assert len(new_tokens) == 1 and old not in new_tokens
    assert {r.json()["access_token"] for r in after} == new_tokens
    assert (await emulator.stats())["token_requests"] == 2


async def test_rotation_under_load_never_serves_inside_the_buffer(
    emulator: Emulator, fleet_config: dict[str, Any], tmp_path: Path
) -> None:
    """Lifetime 6 s, buffer 3 s, 30 callers for 10 s over 3 processes: no error, nothing <3 s."""
    await emulator.configure(token_lifetime=6, token_latency=0.2)
    for spec in fleet_config["clients"].values():
        spec["refresh_buffer_seconds"] = 3
    run_seconds = 10.0
    seen: list[tuple[int, int]] = []

    async def caller(http: httpx.AsyncClient, broker: ServerProcess) -> None:
        deadline = time.monotonic() + run_seconds
        while time.monotonic() < deadline:
            response = await http.get(f"{broker.url}/token", headers=HEADERS)
            seen.append((response.status_code, response.json().get("expires_in", -1)))
            await asyncio.sleep(0.05)

    with fleet(fleet_config, tmp_path) as brokers:
        first_request = time.monotonic()
        async with client() as http:
            await asyncio.gather(*(caller(http, brokers[i % 3]) for i in range(30)))
        # Counted while the fleet still runs: stopping it cancels a refresh in flight, and
        # another instance may then take the lock and start one more that nobody receives.
        requests = (await emulator.stats())["token_requests"]
        elapsed = time.monotonic() - first_request  # > run_seconds on a loaded machine
    assert {status for status, _ in seen} == {200}
    assert min(left for _, left in seen) >= 3, "a token was handed out inside the buffer"
    # The first request, one per (lifetime - buffer - refresh lead) after it (the lead is
    # 0.3-0.6 s), and one that may be in flight as the count is read.
    assert run_seconds / 3 <= requests <= elapsed / (6 - 3 - 0.6) + 2, (requests, elapsed)
    assert len(seen) > 1000  # the load was real


async def test_killing_the_lock_holder_mid_refresh_lets_another_instance_finish(
    emulator: Emulator, fleet_config: dict[str, Any], tmp_path: Path
) -> None:
    """kill -9 of the instance refreshing: another completes within the lock TTL, no errors."""
    await emulator.configure(token_latency=2.0)
    for spec in fleet_config["clients"].values():
        spec["timeout_seconds"] = 3  # lock TTL = 3 * 1.5 + 2 = 6.5 s
    with fleet(fleet_config, tmp_path) as brokers:
        async with client() as http:
            holder = asyncio.ensure_future(http.get(f"{brokers[0].url}/token", headers=HEADERS))
            await asyncio.sleep(0.5)  # broker0 holds the lock and waits on the slow upstream
            waiting = asyncio.ensure_future(get_tokens(http, brokers[1:], 40))
            await asyncio.sleep(0.3)
            started = time.monotonic()
            brokers[0].kill()
            responses = await waiting
            elapsed = time.monotonic() - started
            with pytest.raises(httpx.HTTPError):
                await holder  # its connection died with it
    assert [r.status_code for r in responses] == [200] * 40
    assert len({r.json()["access_token"] for r in responses}) == 1
    assert elapsed < 6.5 + 2.0 + 1.0  # lease lapse + one slow upstream call + slack
    assert (await emulator.stats())["token_requests"] <= 2


async def test_redis_outage_serves_held_tokens_and_recovers_without_restart(
    emulator: Emulator, own_redis: RedisServer, tmp_path: Path
) -> None:
    """Redis down: held tokens still served and ready stays 200 (the instances can serve);
    Redis back: the store is used again by itself, one upstream request in all."""
    config = broker_config(emulator, {"redis_url": own_redis.url, "key_prefix": "outage"})
    with fleet(config, tmp_path) as brokers:
        async with client() as http:
            before = await get_tokens(http, brokers, 9)
            # Redis comes back with its data (an outage, not a wipe: the empty restart is
            # tests/reliability/test_redis_restart.py), so the token needs no new request.
            with redis.Redis.from_url(own_redis.url) as admin:
                admin.save()
            own_redis.stop()
            during = await get_tokens(http, brokers, 30)
            ready_during = [(await http.get(f"{b.url}/health/ready")).status_code for b in brokers]
            health = (await http.get(f"{brokers[0].url}/health")).json()
            own_redis.start()
            deadline = time.monotonic() + 10
            ready_after: list[int] = []
            while time.monotonic() < deadline:
                ready_after = [
                    (await http.get(f"{b.url}/health/ready")).status_code for b in brokers
                ]
                if ready_after == [200, 200, 200]:
                    break
                await asyncio.sleep(0.1)
            after = await get_tokens(http, brokers, 9)
    token = before[0].json()["access_token"]
    assert {r.json()["access_token"] for r in during} == {token}
    assert ready_during == [200, 200, 200]
    assert health["status"] == "degraded" and health["store"] == {"kind": "redis", "ok": False}
    assert ready_after == [200, 200, 200]
    assert [r.status_code for r in after] == [200] * 9
    assert (await emulator.stats())["token_requests"] == 1
