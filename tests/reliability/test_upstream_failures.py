"""Upstream failure drills: a broken token endpoint while callers hold a token about to expire.

Each failure mode gets its own emulator and its own client in one broker (on Redis), so all modes
run at once. Timeline of one mode (token lifetime 3 s, refresh buffer 1.5 s):

    t0 token fetched .. t0+1.5 enters the buffer: refresh fails .. t0+3 expired .. mode "none"
       callers get the old token (stale but valid) ^      callers get 503 ^   fresh token ^
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest

from app.auth.callers import hash_api_key
from app.config import Settings
from app.emulator import EmulatorSettings, create_emulator_app
from app.main import create_app
from tests.conftest import API_KEYS, EMULATOR_ID, EMULATOR_SECRET, Emulator
from tests.support.redis import RedisServer
from tests.support.servers import serve_app

MODES = (
    "garbage",  # 200 with a non-JSON body
    "html",  # 500 with an HTML error page
    "no_token",  # 200 JSON without access_token
    "zero_expiry",  # expires_in 0
    "huge_expiry",  # expires_in 10**9
    "hang",  # never answers (the broker's timeout is 0.5 s)
    "reset",  # the connection is dropped without an answer
    "unavailable",  # 503
)
LIFETIME, BUFFER, TIMEOUT = 3.0, 1.5, 0.5
HEADERS = {"X-API-Key": API_KEYS["billing"]}
METHODS = "/checkout-project/integration/v1/methods"


@pytest.fixture
async def emulators() -> AsyncIterator[dict[str, Emulator]]:
    """One emulator per failure mode, issuing 3 s tokens."""
    settings = EmulatorSettings(clients={EMULATOR_ID: EMULATOR_SECRET}, token_lifetime=LIFETIME)
    async with AsyncExitStack() as stack:
        running: dict[str, Emulator] = {}
        for mode in MODES:
            base = await stack.enter_async_context(serve_app(create_emulator_app(settings)))
            running[mode] = Emulator(base)
            stack.push_async_callback(running[mode].http.aclose)
        yield running


def drill_settings(emulators: dict[str, Emulator], redis: RedisServer) -> Settings:
    """A broker with one client per failure mode, each on its own emulator."""
    clients = {
        mode: {
            "token_url": emulator.token_url,
            "api_base_url": emulator.base_url,
            "client_id": EMULATOR_ID,
            "client_secret": EMULATOR_SECRET,
            "refresh_buffer_seconds": BUFFER,
            "timeout_seconds": TIMEOUT,
        }
        for mode, emulator in emulators.items()
    }
    caller = {"api_key_sha256": hash_api_key(API_KEYS["billing"]), "clients": list(clients)}
    store = {"redis_url": redis.url, "key_prefix": f"u{uuid.uuid4().hex[:8]}"}
    return Settings(store=store, clients=clients, callers={"billing": caller})


async def sleep_until(moment: float) -> None:
    """Sleep until monotonic time `moment`."""
    await asyncio.sleep(max(0.0, moment - time.monotonic()))


async def drill(http: httpx.AsyncClient, mode: str, emulator: Emulator) -> dict[str, Any]:
    """Run one mode's timeline; return what the callers and the emulator saw."""
    path = f"/token?client={mode}"
    t0 = time.monotonic()
    first = await http.get(path, headers=HEADERS)
    assert first.status_code == 200, first.text
    token = first.json()["access_token"]
    await emulator.configure(failure_mode=mode)
    before = (await emulator.stats())["token_requests"]
    valid: Counter[str] = Counter()  # answers while the old token was still valid
    # A caller may wait out one hung refresh attempt (TIMEOUT) before it is answered.
    while time.monotonic() < t0 + LIFETIME - TIMEOUT - 0.3:
        response = await http.get(path, headers=HEADERS)
        same = response.status_code == 200 and response.json()["access_token"] == token
        valid["old_token" if same else f"{response.status_code}"] += 1
        await asyncio.sleep(0.05)
    await sleep_until(t0 + LIFETIME + 0.2)
    expired: Counter[str] = Counter()  # answers once it had expired
    while time.monotonic() < t0 + LIFETIME + 1.0:
        response = await http.get(path, headers=HEADERS)
        expired[f"{response.status_code} {response.json().get('error', '')}".strip()] += 1
        await asyncio.sleep(0.05)
    during = (await emulator.stats())["token_requests"] - before
    await emulator.configure(failure_mode="none")
    healed = time.monotonic()
    while True:
        response = await http.get(path, headers=HEADERS)
        if response.status_code == 200 or time.monotonic() - healed > 15:
            break
        await asyncio.sleep(0.05)
    recovery = time.monotonic() - healed
    fresh = response.json().get("access_token")
    check = await emulator.http.get(METHODS, headers={"Authorization": f"Bearer {fresh}"})
    return {
        "while_valid": dict(valid),
        "after_expiry": dict(expired),
        "upstream_requests_during_failure": during,
        "recovery_seconds": round(recovery, 2),
        "fresh_token_status": response.status_code,
        "fresh_token_new": fresh != token,
        "fresh_token_accepted_upstream": check.status_code == 200,
    }


async def test_every_upstream_failure_mode_serves_the_valid_token_then_recovers(
    emulators: dict[str, Emulator], redis_server: RedisServer, figures: dict[str, Any]
) -> None:
    """For every broken-upstream mode: the old token while valid, 503 after, a few upstream
    attempts (backoff), and a good token again once the upstream heals."""
    app = create_app(drill_settings(emulators, redis_server))
    async with serve_app(app) as base, httpx.AsyncClient(base_url=base, timeout=10) as http:
        results = await asyncio.gather(*(drill(http, m, emulators[m]) for m in MODES))
    seen = dict(zip(MODES, results, strict=True))
    figures.update(seen)
    for mode, result in seen.items():
        assert set(result["while_valid"]) == {"old_token"}, (mode, result)
        assert set(result["after_expiry"]) == {"503 upstream_unavailable"}, (mode, result)
        # Backoff: 1 s, then 1-2 s, then 2-4 s holds, so ~2.8 s of failure allows at most 3.
        assert 1 <= result["upstream_requests_during_failure"] <= 3, (mode, result)
        assert result["fresh_token_status"] == 200, (mode, result)
        assert result["fresh_token_new"] and result["fresh_token_accepted_upstream"], mode
        assert result["recovery_seconds"] < 10, (mode, result)
