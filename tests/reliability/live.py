"""A broker process and an emulator process, as deployed: `token-broker serve` / `emulator`."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from app.auth.callers import hash_api_key
from tests.conftest import API_KEYS, EMULATOR_ID, EMULATOR_SECRET
from tests.support.fleet import BrokerProcess, spawn_broker, wait_until_live
from tests.support.servers import free_port

TOKEN_PATH = "/auth/realms/Paysera/protocol/openid-connect/token"


@dataclass
class LiveBroker:
    """Where the broker and its emulated upstream listen."""

    broker: BrokerProcess
    emulator_url: str

    @property
    def url(self) -> str:
        """The broker's base URL."""
        return self.broker.url


@contextmanager
def emulator_process(
    directory: Path, rate_limit: int = 100_000, token_lifetime: float = 3600
) -> Iterator[str]:
    """`token-broker emulator` on a free port; yields its base URL."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMULATOR_")}
    env |= {
        "EMULATOR_CLIENTS": f"{EMULATOR_ID}:{EMULATOR_SECRET}",
        "EMULATOR_RATE_LIMIT": str(rate_limit),
        "EMULATOR_TOKEN_LIFETIME": str(token_lifetime),
    }
    with (directory / "emulator.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "app", "emulator", "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{url}/_emulator/stats", timeout=0.5).raise_for_status()
                break
            except httpx.HTTPError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the emulator did not start") from None
                time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def live_config(emulator_url: str, store: dict[str, Any], **sections: Any) -> dict[str, Any]:
    """Clients `checkout` and `payouts` on the emulator, callers `orders` and `billing`."""
    client = {
        "token_url": emulator_url + TOKEN_PATH,
        "api_base_url": emulator_url,
        "client_id": EMULATOR_ID,
        "client_secret": EMULATOR_SECRET,
        "timeout_seconds": 2,
    }
    return {
        "store": store,
        "clients": {"checkout": dict(client), "payouts": dict(client)},
        "callers": {
            "orders": {"api_key_sha256": hash_api_key(API_KEYS["orders"]), "clients": ["checkout"]},
            "billing": {
                "api_key_sha256": hash_api_key(API_KEYS["billing"]),
                "clients": ["checkout", "payouts"],
            },
        },
        **sections,
    }


@contextmanager
def live_broker(directory: Path, **sections: Any) -> Iterator[LiveBroker]:
    """One broker process on the embedded store in front of an emulator process."""
    with emulator_process(directory) as emulator_url:
        broker = spawn_broker(live_config(emulator_url, {}, **sections), directory, "broker")
        try:
            wait_until_live(broker)
            yield LiveBroker(broker, emulator_url)
        finally:
            broker.stop()
