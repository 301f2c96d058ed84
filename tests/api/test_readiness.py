"""`/health/ready` in each state of CONTRACT.md, on real `token-broker serve` processes and a real
redis-server that the tests stop and start: starting, Redis down with nothing valid, and (with
the fleet test `test_redis_outage_serves_held_tokens_and_recovers_without_restart`) Redis down
with valid tokens."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import API_KEYS, Emulator, broker_config
from tests.support.processes import ServerProcess, running_broker
from tests.support.redis import RedisServer

HEADERS = {"X-API-Key": API_KEYS["orders"]}
NOT_READY = {"status": "not_ready", "reason": "store unreachable and no valid token held"}
HELD = {"status": "ready", "reason": "store unreachable; serving held tokens"}


async def ready(http: httpx.AsyncClient, broker: ServerProcess) -> tuple[int, dict[str, Any]]:
    """GET /health/ready: status code and body."""
    response = await http.get(f"{broker.url}/health/ready")
    return response.status_code, response.json()


async def client_state(http: httpx.AsyncClient, broker: ServerProcess) -> str:
    """What the broker's /health says of its `checkout` token: valid, missing or expired."""
    report = (await http.get(f"{broker.url}/health")).json()
    return str(report["clients"]["checkout"]["token"])


async def until_ready(
    http: httpx.AsyncClient, broker: ServerProcess, timeout: float
) -> tuple[int, dict[str, Any], float]:
    """Poll /health/ready until 200 or `timeout`; the last answer and the seconds it took."""
    started = time.monotonic()
    while True:
        status, body = await ready(http, broker)
        waited = time.monotonic() - started
        if status == 200 or waited > timeout:
            return status, body, waited
        await asyncio.sleep(0.1)


async def test_starting_without_redis_is_not_ready_until_redis_answers(
    emulator: Emulator, own_redis: RedisServer, tmp_path: Path
) -> None:
    """A broker started while Redis is unreachable, having served nothing, answers 503; once
    Redis is up it answers 200 by itself, without a restart."""
    own_redis.stop()
    config = broker_config(emulator, {"redis_url": own_redis.url, "key_prefix": "starting"})
    with running_broker(config, tmp_path) as broker:
        async with httpx.AsyncClient(timeout=5) as http:
            starting = [await ready(http, broker) for _ in range(3)]
            own_redis.start()
            after = await until_ready(http, broker, timeout=10)
    assert starting == [(503, NOT_READY)] * 3
    assert after[:2] == (200, {"status": "ready"})
    assert (await emulator.stats())["token_requests"] == 0  # readiness asked the upstream nothing


async def test_redis_down_and_no_valid_token_is_not_ready(
    emulator: Emulator, own_redis: RedisServer, tmp_path: Path
) -> None:
    """A broker that served a client, with Redis down: ready while its token is valid, 503 once
    it has expired (the upstream is down too), ready again when a caller gets a new one."""
    await emulator.configure(token_lifetime=3)
    config = broker_config(emulator, {"redis_url": own_redis.url, "key_prefix": "nothing"})
    with running_broker(config, tmp_path) as broker:
        async with httpx.AsyncClient(timeout=5) as http:
            served = await http.get(f"{broker.url}/token", headers=HEADERS)
            with_redis = await ready(http, broker)
            await emulator.configure(failure_mode="unavailable")
            own_redis.stop()
            valid_without_redis = await ready(http, broker)
            # The token it holds expires: the one served, or one refreshed ahead before the
            # upstream went down (its /health says when).
            deadline = time.monotonic() + 15
            while (await client_state(http, broker)) != "expired":
                assert time.monotonic() < deadline, "the held token never expired"
                await asyncio.sleep(0.1)
            expired = await ready(http, broker)
            token_while_down = await http.get(f"{broker.url}/token", headers=HEADERS)
            await emulator.configure(failure_mode="none")
            deadline = time.monotonic() + 10
            while (await http.get(f"{broker.url}/token", headers=HEADERS)).status_code != 200:
                assert time.monotonic() < deadline, "no token after the upstream came back"
                await asyncio.sleep(0.2)
            recovered = await ready(http, broker)
    assert served.status_code == 200
    assert with_redis == (200, {"status": "ready"})
    assert valid_without_redis == (200, HELD)
    assert expired == (503, NOT_READY)
    assert token_while_down.status_code == 503  # it truly could serve nothing
    assert recovered == (200, HELD)
