"""`store.max_connections` on a real redis-server: commands wait at the bound, fail counted and
logged when none frees in time, and a burst of 2,000 requests never opens more connections."""

from __future__ import annotations

import asyncio
import logging
import resource
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.config import Settings, StoreSettings
from app.main import create_app
from app.services import Services
from app.store.redis import RedisStore
from tests.conftest import API_KEYS, Emulator, broker_config
from tests.observability.prom import parse
from tests.support.processes import running_broker
from tests.support.redis import RedisServer
from tests.support.servers import serve_app

HEADERS = {"X-API-Key": API_KEYS["orders"]}
BURST = 2000
BOUND = 4


def client_count(port: int) -> int:
    """`connected_clients` of the server on `port`, less the connection asking."""
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(b"INFO clients\r\n")
        data = b""
        while b"connected_clients:" not in data or not data.endswith(b"\r\n"):
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
    line = next(x for x in data.split(b"\r\n") if x.startswith(b"connected_clients:"))
    return int(line.split(b":")[1]) - 1


@asynccontextmanager
async def held_connection(store: RedisStore, seconds: float) -> AsyncIterator[asyncio.Task[Any]]:
    """One of the store's connections kept busy for `seconds` by a BLPOP on an empty list."""
    busy = asyncio.create_task(store.redis.blpop(["pool-test:never-pushed"], timeout=seconds))
    deadline = time.monotonic() + 5
    while store.gate.in_use < store.gate.limit:  # until the BLPOP holds the only slot
        assert time.monotonic() < deadline
        await asyncio.sleep(0.005)
    try:
        yield busy
    finally:
        await busy


def one_connection(redis: RedisServer, **store: Any) -> StoreSettings:
    """A store on `redis` with max_connections = 1 and a BLPOP-friendly socket timeout."""
    return StoreSettings(
        redis_url=redis.url, key_prefix="pool", max_connections=1, socket_timeout_seconds=5, **store
    )


async def test_a_command_at_the_bound_waits_for_the_busy_connection(own_redis: RedisServer) -> None:
    """With max_connections = 1 and that connection busy for 0.5 s, a load waits for it and then
    succeeds on it: nothing fails, no second connection is opened."""
    exhausted: list[int] = []
    store = RedisStore(
        one_connection(own_redis, pool_timeout_seconds=3),
        on_pool_exhausted=lambda: exhausted.append(1),
    )
    await store.start()
    try:
        async with held_connection(store, 0.5):
            started = time.monotonic()
            record = await store.load("checkout")
            waited = time.monotonic() - started
            clients = client_count(own_redis.port)
    finally:
        await store.close()
    assert record.token is None
    assert waited >= 0.3  # it waited for the BLPOP to return
    assert exhausted == []
    assert clients == 1 + 1  # the one connection for commands and the change feed's


@pytest.fixture
async def app_on_one_connection(
    emulator: Emulator, own_redis: RedisServer
) -> AsyncIterator[tuple[httpx.AsyncClient, Services]]:
    """An in-process broker over real HTTP, its store limited to one connection and 0.2 s wait;
    the budget fails closed, so a store failure reaches the caller instead of the local share."""
    store = {"redis_url": own_redis.url, "key_prefix": "pool", "max_connections": 1}
    store |= {"pool_timeout_seconds": 0.2, "socket_timeout_seconds": 5}
    budget = {"on_store_unavailable": "fail_closed"}
    app = create_app(Settings(**broker_config(emulator, store, budget=budget)))
    async with serve_app(app) as base, httpx.AsyncClient(base_url=base, timeout=10) as http:
        yield http, app.state.services


async def test_a_command_that_gets_no_connection_in_time_fails_counted_and_logged(
    app_on_one_connection: tuple[httpx.AsyncClient, Services], caplog: pytest.LogCaptureFixture
) -> None:
    """The only connection busy for 2 s: /budget/acquire fails after pool_timeout_seconds as
    503 store_unavailable, counted in token_broker_store_pool_exhausted_total and logged as
    store.pool_exhausted; once it is free, the same request is granted."""
    http, services = app_on_one_connection
    store = services.store
    assert isinstance(store, RedisStore)
    with caplog.at_level(logging.WARNING, logger="app.store.redis_pool"):
        async with held_connection(store, 2.0):
            started = time.monotonic()
            refused = await http.post("/budget/acquire", headers=HEADERS)
            waited = time.monotonic() - started
            during = parse((await http.get("/metrics")).text)
    granted = await http.post("/budget/acquire", headers=HEADERS)
    assert refused.status_code == 503
    assert refused.json()["error"] == "store_unavailable"
    assert 0.2 <= waited < 2.0
    assert during.value("token_broker_store_pool_exhausted_total") >= 1
    assert during.value("token_broker_store_errors_total", component="budget") >= 1
    events = [r for r in caplog.records if r.getMessage() == "store.pool_exhausted"]
    assert events and events[0].fields["max_connections"] == 1  # type: ignore[attr-defined]
    assert granted.status_code == 200


ACQUIRE = (
    f"POST /budget/acquire HTTP/1.1\r\nHost: broker\r\nX-API-Key: {API_KEYS['orders']}\r\n"
    "Content-Length: 0\r\nConnection: close\r\n\r\n"
).encode()


async def acquire(port: int) -> int:
    """One POST /budget/acquire on its own connection (raw: an HTTP client library's pool is
    the bottleneck at 2,000 connections); the answer's status."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(ACQUIRE)
        answer = await reader.read()  # to EOF: the server closes after answering
    finally:
        writer.close()
        await writer.wait_closed()
    return int(answer.split(b" ", 2)[1])


class ClientSampler:
    """Samples `connected_clients` of a redis-server from a thread, every few milliseconds."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(client_count(self.port))
            self._stop.wait(0.005)

    @property
    def peak(self) -> int:
        """The most clients seen at once."""
        return max(self.samples)

    def __enter__(self) -> ClientSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@pytest.fixture
def many_files() -> Iterator[None]:
    """Room for 2,000 sockets on each side (the broker process inherits the limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 3 * BURST + 1000
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_2000_concurrent_requests_never_exceed_max_connections(
    emulator: Emulator, own_redis: RedisServer, tmp_path: Path, many_files: None
) -> None:
    """2,000 concurrent /budget/acquire (two Redis scripts each) against one broker process with
    max_connections = 4: all are granted, and the broker never holds more than 4 connections
    plus its change-feed subscription, sampled every few ms from redis-server itself."""
    store = {"redis_url": own_redis.url, "key_prefix": "burst", "max_connections": BOUND}
    # The burst queues for the 4 connections: nothing may fail for want of a slot, nor because
    # 2,000 requests on a shared 2-core machine delay the broker's own connecting and reading
    # (the timeouts count the time its event loop is busy with other requests).
    store |= {"pool_timeout_seconds": 60, "socket_timeout_seconds": 30}
    store["connect_timeout_seconds"] = 30
    config = broker_config(emulator, store, budget={"limit": 100_000})
    with running_broker(config, tmp_path) as broker:
        idle = client_count(own_redis.port)
        with ClientSampler(own_redis.port) as sampler:
            statuses = await asyncio.gather(*(acquire(broker.port) for _ in range(BURST)))
        async with httpx.AsyncClient(base_url=broker.url, timeout=10) as http:
            metrics = parse((await http.get("/metrics")).text)
    assert statuses == [200] * BURST
    assert metrics.value("token_broker_store_pool_exhausted_total") == 0
    assert len(sampler.samples) > 10  # sampled throughout the burst
    assert idle <= BOUND + 1
    assert sampler.peak <= BOUND + 1, sampler.peak
    assert sampler.peak == BOUND + 1  # the burst did use the whole bound
