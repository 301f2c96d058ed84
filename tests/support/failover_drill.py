"""A failover drill: broker processes under token and budget load while Redis fails over.

The drill reports what callers saw (errors, statuses), what the upstream saw (token requests)
and what Redis recorded (every permit's slot, read from every data node, so grants that a
failover lost are counted too).
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from tests.conftest import API_KEYS, Emulator
from tests.support.processes import ServerProcess

HEADERS = {"X-API-Key": API_KEYS["orders"]}


@dataclass
class DrillFigures:
    """What one drill saw."""

    token_calls: int = 0
    token_errors: Counter[str] = field(default_factory=Counter)
    budget_statuses: Counter[int] = field(default_factory=Counter)
    upstream_token_requests: int = 0
    permits_seen: int = 0
    worst_window_redis_time: int = 0
    worst_window_as_received: int = 0
    failover_seconds: float = 0.0  # trigger -> the topology names the new primary
    recovery_seconds: float = 0.0  # trigger -> every broker ready again
    first_grant_after_seconds: float | None = None  # trigger -> first permit asked after it
    fenced: bool = False
    invalidation_reached_all: bool = False  # after recovery: the change feed works again

    def line(self, name: str) -> str:
        """One line for the test log (and the issue note)."""
        first = self.first_grant_after_seconds
        errors = sum(self.token_errors.values())
        return (
            f"{name}: token_calls={self.token_calls} caller_errors={errors}"
            f" {dict(self.token_errors)} upstream_token_requests={self.upstream_token_requests}"
            f" budget_statuses={dict(self.budget_statuses)} permits={self.permits_seen}"
            f" worst_window redis_time={self.worst_window_redis_time}"
            f" as_received={self.worst_window_as_received}"
            f" failover={self.failover_seconds:.2f}s recovery={self.recovery_seconds:.2f}s"
            f" first_grant_after={'none' if first is None else f'{first:.2f}s'}"
            f" fence_logged={self.fenced}"
            f" invalidation_reached_all={self.invalidation_reached_all}"
        )


def worst_window(times: list[float], width: float) -> int:
    """The most `times` inside any closed interval of length `width`."""
    ordered = sorted(times)
    return max(
        (bisect.bisect_right(ordered, t + width) - i for i, t in enumerate(ordered)), default=0
    )


@dataclass
class DataNode:
    """A Redis process whose copy of the grants zset the watcher reads."""

    port: int
    password: str | None = None
    cluster_replica_reads: bool = False


async def _watch(node: DataNode, key: str, slots: dict[str, float], stop: asyncio.Event) -> None:
    """Copy the permits' slots (ms of Redis time) from one node every 50 ms until `stop`.

    Callers ask with wait=0, so every permit is used the moment it is reserved: no reservation
    is ever withdrawn, and every slot seen on any node is a permit some caller used.
    """
    conn = aioredis.Redis(
        host="127.0.0.1",
        port=node.port,
        password=node.password,
        socket_timeout=0.5,
        single_connection_client=True,
    )
    try:
        while not stop.is_set():
            try:
                if node.cluster_replica_reads:
                    await conn.execute_command("READONLY")
                for member, score in await conn.zrange(key, 0, -1, withscores=True):
                    slots[member.decode()] = score / 1000.0
            except (RedisError, OSError):
                pass  # a dead node, or a cluster node that does not serve the key
            await asyncio.sleep(0.05)
    finally:
        await conn.aclose()


@dataclass
class Drill:
    """The load, the failover and the figures."""

    brokers: list[ServerProcess]
    emulator: Emulator
    nodes: list[DataNode]
    grants_key: str
    window_seconds: float
    before_seconds: float = 3.0
    after_seconds: float = 6.0  # of load after every broker is ready again
    figures: DrillFigures = field(default_factory=DrillFigures)
    _received: list[float] = field(default_factory=list)
    _slots: dict[str, float] = field(default_factory=dict)
    _trigger_at: float = 0.0

    async def run(self, failover: Callable[[], float]) -> DrillFigures:
        """Warm up, load, call `failover` (blocking; returns seconds to promotion), recover."""
        # Idle connections are dropped well before uvicorn's 5 s keep-alive timeout, so a request
        # never races the server closing the connection it was sent on.
        limits = httpx.Limits(max_connections=200, keepalive_expiry=1.0)
        async with httpx.AsyncClient(timeout=30, limits=limits) as http:
            for broker in self.brokers:  # cold start: one upstream token request for all
                (await http.get(f"{broker.url}/token", headers=HEADERS)).raise_for_status()
            stop = asyncio.Event()
            tasks = [
                *(asyncio.create_task(self._tokens(http, i, stop)) for i in range(8)),
                *(asyncio.create_task(self._permits(http, i, stop)) for i in range(8)),
                *(
                    asyncio.create_task(_watch(n, self.grants_key, self._slots, stop))
                    for n in self.nodes
                ),
            ]
            await asyncio.sleep(self.before_seconds)
            self._trigger_at = time.monotonic()
            self.figures.failover_seconds = await asyncio.to_thread(failover)
            await self._wait_until_ready(http)
            self.figures.recovery_seconds = time.monotonic() - self._trigger_at
            await asyncio.sleep(self.after_seconds)
            stop.set()
            await asyncio.gather(*tasks)
            await self._collect()
            await self._invalidate(http)
        return self.figures

    async def _invalidate(self, http: httpx.AsyncClient) -> None:
        """One invalidation on the first broker; 1 s later every broker hands out the new token."""
        first = self.brokers[0].url
        old = (await http.get(f"{first}/token", headers=HEADERS)).json()["access_token"]
        response = await http.post(
            f"{first}/token/invalidate",
            headers=HEADERS,
            json={"client": "checkout", "access_token": old},
        )
        new = response.json()["access_token"]
        await asyncio.sleep(1.0)
        seen = {
            (await http.get(f"{b.url}/token", headers=HEADERS)).json()["access_token"]
            for b in self.brokers
        }
        self.figures.invalidation_reached_all = new != old and seen == {new}

    async def _tokens(self, http: httpx.AsyncClient, i: int, stop: asyncio.Event) -> None:
        broker = self.brokers[i % len(self.brokers)]
        while not stop.is_set():
            self.figures.token_calls += 1
            try:
                response = await http.get(f"{broker.url}/token", headers=HEADERS)
                if response.status_code != 200:
                    self.figures.token_errors[str(response.status_code)] += 1
            except httpx.HTTPError as exc:
                self.figures.token_errors[type(exc).__name__] += 1
            await asyncio.sleep(0.02)

    async def _permits(self, http: httpx.AsyncClient, i: int, stop: asyncio.Event) -> None:
        broker = self.brokers[i % len(self.brokers)]
        while not stop.is_set():
            asked_at = time.monotonic()
            response = await http.post(
                f"{broker.url}/budget/acquire?client=checkout&wait=0", headers=HEADERS
            )
            self.figures.budget_statuses[response.status_code] += 1
            if response.status_code == 200:
                now = time.monotonic()
                self._received.append(now)
                asked_after_trigger = self._trigger_at and asked_at > self._trigger_at
                if asked_after_trigger and self.figures.first_grant_after_seconds is None:
                    self.figures.first_grant_after_seconds = now - self._trigger_at
            else:
                await asyncio.sleep(0.1)

    async def _wait_until_ready(self, http: httpx.AsyncClient) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            statuses = [(await http.get(f"{b.url}/health/ready")).status_code for b in self.brokers]
            if statuses == [200] * len(self.brokers):
                return
            await asyncio.sleep(0.05)
        raise AssertionError("the brokers did not become ready after the failover")

    async def _collect(self) -> None:
        figures = self.figures
        figures.upstream_token_requests = (await self.emulator.stats())["token_requests"]
        figures.permits_seen = len(self._slots)
        figures.worst_window_redis_time = worst_window(
            list(self._slots.values()), self.window_seconds
        )
        figures.worst_window_as_received = worst_window(self._received, self.window_seconds)
        figures.fenced = any("budget.failover_fence" in broker.log() for broker in self.brokers)
