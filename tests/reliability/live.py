"""A broker process and an emulator process, as deployed: `token-broker serve` / `emulator`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.auth.callers import hash_api_key
from tests.conftest import API_KEYS, EMULATOR_ID, EMULATOR_SECRET
from tests.support.processes import ServerProcess, emulator, running_broker

TOKEN_PATH = "/auth/realms/Paysera/protocol/openid-connect/token"


@dataclass
class LiveBroker:
    """Where the broker and its emulated upstream listen."""

    broker: ServerProcess
    emulator_url: str

    @property
    def url(self) -> str:
        """The broker's base URL."""
        return self.broker.url


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
    clients = {EMULATOR_ID: EMULATOR_SECRET}
    with emulator(directory, clients, rate_limit=100_000) as upstream:
        config = live_config(upstream.url, {}, **sections)
        with running_broker(config, directory) as broker:
            yield LiveBroker(broker, upstream.url)
