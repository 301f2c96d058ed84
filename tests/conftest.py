"""Fixtures shared by the whole suite: real redis-server, the emulator as upstream, brokers."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import httpx
import pytest

from app.auth.callers import hash_api_key
from app.config import Settings
from app.emulator import EmulatorSettings, create_emulator_app
from app.main import create_app
from tests.support.redis import RedisServer
from tests.support.servers import serve_app

EMULATOR_ID = "checkout-id"
EMULATOR_SECRET = "checkout-secret-value-1234"  # test-only credentials of the emulator
API_KEYS = {  # test-only keys
    "orders": "tbk_test_orders_key_0000000000000000",
    "billing": "tbk_test_billing_key_000000000000000",
}


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real redis-server for the session on a free port."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of this test alone, which it may stop and start."""
    with RedisServer() as server:
        yield server


@pytest.fixture(params=["memory", "redis"])
def store_config(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The [store] table: the embedded store, or the session's Redis with a fresh key prefix."""
    if request.param == "memory":
        return {}
    server: RedisServer = request.getfixturevalue("redis_server")
    return {"redis_url": server.url, "key_prefix": f"t{uuid.uuid4().hex[:10]}"}


class Emulator:
    """A running emulator: its base URL and its control endpoints."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.token_url = f"{base_url}/auth/realms/Paysera/protocol/openid-connect/token"
        self.http = httpx.AsyncClient(base_url=base_url)

    async def stats(self) -> dict[str, int]:
        """The emulator's counters."""
        return (await self.http.get("/_emulator/stats")).raise_for_status().json()  # type: ignore[no-any-return]

    async def configure(self, **changes: Any) -> None:
        """Change lifetime, latency, failure mode, rate limit or clients at runtime."""
        (await self.http.post("/_emulator/config", json=changes)).raise_for_status()

    async def revoke(self) -> None:
        """Revoke every token issued so far."""
        (await self.http.post("/_emulator/revoke")).raise_for_status()


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    """A fresh emulator on a free loopback port, knowing EMULATOR_ID/EMULATOR_SECRET."""
    settings = EmulatorSettings(clients={EMULATOR_ID: EMULATOR_SECRET})
    async with serve_app(create_emulator_app(settings)) as base:
        emulator = Emulator(base)
        try:
            yield emulator
        finally:
            await emulator.http.aclose()


def broker_config(
    emulator: Emulator,
    store: dict[str, Any],
    clients_patch: dict[str, Any] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """A config with clients `checkout` and `payouts` on the emulator and two callers.

    `clients_patch` is merged into every client table; other keyword arguments are merged into
    (or replace) the top-level section of that name.
    """
    client = {
        "token_url": emulator.token_url,
        "api_base_url": emulator.base_url,
        "client_id": EMULATOR_ID,
        "client_secret": EMULATOR_SECRET,
        "refresh_buffer_seconds": 300,
        "min_forced_refresh_interval_seconds": 10,
        "timeout_seconds": 2,
        **(clients_patch or {}),
    }
    config: dict[str, Any] = {
        "store": store,
        "clients": {"checkout": dict(client), "payouts": dict(client)},
        "callers": {
            "orders": {"api_key_sha256": hash_api_key(API_KEYS["orders"]), "clients": ["checkout"]},
            "billing": {
                "api_key_sha256": hash_api_key(API_KEYS["billing"]),
                "clients": ["checkout", "payouts"],
            },
        },
    }
    for section, values in overrides.items():
        if isinstance(values, dict) and isinstance(config.get(section), dict):
            config[section] = {**config[section], **values}
        else:
            config[section] = values
    return config


BrokerFactory = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture
def broker(emulator: Emulator, store_config: dict[str, Any]) -> BrokerFactory:
    """`async with broker(**overrides) as http:` serves a broker app on loopback over real HTTP."""

    @asynccontextmanager
    async def start(**overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
        settings = Settings(**broker_config(emulator, store_config, **overrides))
        async with serve_app(create_app(settings)) as base:
            async with httpx.AsyncClient(base_url=base, timeout=10) as http:
                yield http

    return start
