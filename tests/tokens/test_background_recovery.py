"""A client whose refresh failed recovers in the background, without a caller asking again."""

from __future__ import annotations

import asyncio
import time

from tests.conftest import API_KEYS, BrokerFactory, Emulator

HEADERS = {"X-API-Key": API_KEYS["orders"]}


async def test_a_failed_first_fetch_is_retried_without_callers_until_health_is_ok(
    broker: BrokerFactory, emulator: Emulator
) -> None:
    """The first fetch fails (503 to the caller); once the upstream is back, /health turns `ok`
    with a valid token by itself, and the next caller gets that token without a new request."""
    await emulator.configure(failure_mode="unavailable")
    async with broker() as http:
        failed = await http.get("/token", headers=HEADERS)
        assert failed.status_code == 503, failed.text
        degraded = (await http.get("/health")).json()
        assert degraded["status"] != "ok"
        assert degraded["clients"]["checkout"]["token"] == "missing"
        await emulator.configure(failure_mode="none")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            health = (await http.get("/health")).json()
            if health["clients"]["checkout"]["token"] == "valid":
                break
            await asyncio.sleep(0.1)
        requests = (await emulator.stats())["token_requests"]
        served = await http.get("/token", headers=HEADERS)
    assert health["status"] == "ok", health
    assert health["clients"]["checkout"]["token"] == "valid"
    assert health["clients"]["checkout"]["last_error"] is None
    assert served.status_code == 200
    assert (await emulator.stats())["token_requests"] == requests  # served from what it fetched
