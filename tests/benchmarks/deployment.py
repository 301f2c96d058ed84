"""What the benchmarks deploy: the emulator's credentials, the caller's key, the broker config.

The processes themselves (brokers, emulators, the bare endpoint) come from
`tests.support.processes`, as in the tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from app.auth.callers import hash_api_key
from tests.support.processes import ServerProcess, fleet

EMULATOR_ID = "bench-client"
EMULATOR_SECRET = "bench-secret-value-0123456789"  # benchmark-only credentials of the emulator
CLIENTS = {EMULATOR_ID: EMULATOR_SECRET}  # what the benchmark's emulators accept
API_KEY = "tbk_bench_orders_key_00000000000000000000"  # benchmark-only caller key
HEADERS = {"X-API-Key": API_KEY}


def token_requests(upstream: ServerProcess) -> int:
    """How many token requests the emulator has received."""
    stats = httpx.get(f"{upstream.url}/_emulator/stats", timeout=5).raise_for_status().json()
    return int(stats["token_requests"])


def broker_config(
    upstream: ServerProcess,
    redis_url: str,
    prefix: str,
    *,
    refresh_buffer: float = 300.0,
    budget: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One client (`checkout`) on the emulator, one caller (`orders`), the shared Redis."""
    config: dict[str, Any] = {
        "server": {"log_level": "info"},
        "store": {"redis_url": redis_url, "key_prefix": prefix},
        "clients": {
            "checkout": {
                "token_url": f"{upstream.url}/auth/realms/Paysera/protocol/openid-connect/token",
                "api_base_url": upstream.url,
                "client_id": EMULATOR_ID,
                "client_secret": EMULATOR_SECRET,
                "refresh_buffer_seconds": refresh_buffer,
                "min_forced_refresh_interval_seconds": 1,
                "timeout_seconds": 2,
            }
        },
        "callers": {"orders": {"api_key_sha256": hash_api_key(API_KEY), "clients": ["checkout"]}},
    }
    if budget is not None:
        config["budget"] = budget
    return config


@contextmanager
def brokers(
    config: dict[str, Any], directory: Path, count: int = 1, cwd: Path | None = None
) -> Iterator[list[ServerProcess]]:
    """`count` broker processes with `config`, stopped afterwards; `cwd` runs another version's
    `app/` (see `spawn_broker`). Named after the key prefix: every section and round keeps its
    own logs in the one work directory."""
    name = f"broker-{config['store']['key_prefix']}-"
    with fleet(config, directory, count, name=name, cwd=cwd) as started:
        yield started
