"""What the emulator tests share: the emulator served on loopback, a client, a fake clock."""

from __future__ import annotations

import base64
import ssl
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import cache
from urllib.parse import quote_plus

import httpx

from app.emulator import EmulatorSettings, create_emulator_app
from tests.support.servers import serve_app

TOKEN_PATH = "/auth/realms/Paysera/protocol/openid-connect/token"
API = "/checkout-project/integration/v1"
METHODS_PATH = f"{API}/methods"
FORM = {
    "grant_type": "client_credentials",
    "client_id": "demo-client",
    "client_secret": "demo-secret",
}


class FakeClock:
    """A monotonic clock that only moves when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@cache
def client_tls() -> ssl.SSLContext:
    """One client TLS context for the module: building one per client costs ~50 ms."""
    return ssl.create_default_context()


@asynccontextmanager
async def emulator(
    settings: EmulatorSettings | None = None, clock: Callable[[], float] = time.monotonic
) -> AsyncIterator[httpx.AsyncClient]:
    """Serve an emulator on loopback and yield a client pointed at it."""
    app = create_emulator_app(settings, clock=clock)
    async with (
        serve_app(app) as base,
        httpx.AsyncClient(base_url=base, verify=client_tls()) as client,
    ):
        yield client


async def get_token(client: httpx.AsyncClient) -> str:
    response = await client.post(TOKEN_PATH, data=FORM)
    assert response.status_code == 200, response.text
    token = response.json()["access_token"]
    assert isinstance(token, str)
    return token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def basic(client_id: str, secret: str) -> dict[str, str]:
    pair = f"{quote_plus(client_id, safe='')}:{quote_plus(secret, safe='')}"
    return {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode()}


async def stats(client: httpx.AsyncClient) -> dict[str, int]:
    response = await client.get("/_emulator/stats")
    assert response.status_code == 200
    result: dict[str, int] = response.json()
    return result
