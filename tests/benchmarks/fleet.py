"""2. Fleet efficiency: upstream token requests of a broker fleet vs naive per-process caches.

Time is compressed: tokens live `lifetime` seconds instead of 3600 and the refresh buffer
keeps the guide's proportion (300 s of 3600 s). K brokers share one Redis and serve C callers
each; the baseline is the caching the upstream's guide shows (`TokenManager`: cache the token,
fetch a new one once `expires_at - 300 s` has passed), one cache per caller process, K x C of
them, against a second emulator. Both run at the same time for the same span, after a warm-up
in which everyone got a first token, so the counts are steady-state refreshes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import httpx

from tests.benchmarks import deployment
from tests.benchmarks.report import Section
from tests.support import processes
from tests.support.processes import ServerProcess

TOKEN_PATH = "/auth/realms/Paysera/protocol/openid-connect/token"


@dataclass(frozen=True)
class FleetPlan:
    """Fleet size, callers, compressed token lifetime and run length."""

    instances: int = 3
    callers: int = 20  # per instance
    lifetime: float = 6.0  # seconds; stands for 3600
    seconds: float = 30.0
    interval: float = 0.2  # each caller wants a token this often

    @property
    def buffer(self) -> float:
        """The guide's 300 s buffer, scaled to the compressed lifetime."""
        return self.lifetime * 300 / 3600


@dataclass
class NaiveCache:
    """The upstream guide's `TokenManager`: one process's own cache of one client's token."""

    http: httpx.AsyncClient
    token_url: str
    buffer: float
    token: str | None = None
    expires_at: float = 0.0

    async def get(self) -> str:
        """The cached token, or a new one once it is within the buffer of expiry."""
        if self.token is not None and self.expires_at > time.time():
            return self.token
        form = {
            "grant_type": "client_credentials",
            "client_id": deployment.EMULATOR_ID,
            "client_secret": deployment.EMULATOR_SECRET,
        }
        data = (await self.http.post(self.token_url, data=form)).raise_for_status().json()
        self.token = str(data["access_token"])
        self.expires_at = time.time() + float(data["expires_in"]) - self.buffer
        return self.token


@dataclass
class BrokerCallers:
    """Callers of the broker fleet, and what they saw."""

    http: httpx.AsyncClient
    urls: list[str]
    min_left: float  # a token with less than this left counts as a violation
    served: int = 0
    violations: int = 0
    errors: list[str] = field(default_factory=list)

    async def get(self, index: int) -> None:
        """One `GET /token` through instance `index % K`."""
        url = f"{self.urls[index % len(self.urls)]}/token?client=checkout"
        response = await self.http.get(url, headers=deployment.HEADERS)
        if response.status_code != 200:
            self.errors.append(f"{response.status_code} {response.text[:100]}")
            return
        self.served += 1
        if response.json()["expires_at"] - time.time() < self.min_left - 1:
            self.violations += 1  # -1: expires_at is whole seconds


async def _caller(get: Callable[[], Awaitable[object]], interval: float, stop_at: float) -> None:
    """Ask for a token every `interval` seconds until `stop_at`."""
    while time.monotonic() < stop_at:
        await get()
        await asyncio.sleep(interval)


async def _run(
    plan: FleetPlan, broker_urls: list[str], naive_upstream: ServerProcess
) -> tuple[BrokerCallers, list[NaiveCache]]:
    limits = httpx.Limits(max_connections=plan.instances * plan.callers + 10)
    async with httpx.AsyncClient(timeout=10, limits=limits) as http:
        brokers = BrokerCallers(http, broker_urls, min_left=plan.buffer)
        caches = [
            NaiveCache(http, f"{naive_upstream.url}{TOKEN_PATH}", plan.buffer)
            for _ in range(plan.instances * plan.callers)
        ]
        stop_at = time.monotonic() + plan.seconds
        tasks = [
            _caller(partial(brokers.get, i), plan.interval, stop_at)
            for i in range(plan.instances * plan.callers)
        ]
        tasks += [_caller(cache.get, plan.interval, stop_at) for cache in caches]
        await asyncio.gather(*tasks)
    return brokers, caches


def measure(plan: FleetPlan, redis_url: str, directory: Path, prefix: str) -> Section:
    """Run the fleet and the naive caches side by side; count upstream token requests."""
    with (
        processes.emulator(
            directory, deployment.CLIENTS, "emulator-fleet", lifetime=plan.lifetime
        ) as fleet_upstream,
        processes.emulator(
            directory, deployment.CLIENTS, "emulator-naive", lifetime=plan.lifetime
        ) as naive_upstream,
    ):
        config = deployment.broker_config(
            fleet_upstream, redis_url, prefix, refresh_buffer=plan.buffer
        )
        with deployment.brokers(config, directory, plan.instances) as fleet:
            urls = [broker.url for broker in fleet]
            for url in urls:  # warm-up: the fleet's first token is not counted
                httpx.get(f"{url}/token?client=checkout", headers=deployment.HEADERS, timeout=10)
            fleet_before = deployment.token_requests(fleet_upstream)
            brokers, caches = asyncio.run(_run(plan, urls, naive_upstream))
            fleet_count = deployment.token_requests(fleet_upstream) - fleet_before
        # Every naive cache fetched once at its first call: the warm-up, not counted.
        naive_count = deployment.token_requests(naive_upstream) - len(caches)
    if brokers.errors:
        raise RuntimeError(f"broker callers got errors: {brokers.errors[:5]}")
    lifetimes = plan.seconds / plan.lifetime
    per_hour = {"fleet": fleet_count / lifetimes, "naive": naive_count / lifetimes}
    # With real tokens (3600 s, buffer 300 s): the fleet refreshes once per lifetime minus
    # buffer and lead; each naive cache once per 3300 s (plus its callers' polling gap).
    k, c = plan.instances, plan.callers
    section = Section(
        f"2. Fleet efficiency: {k} broker instances x {c} callers each vs {k * c} naive caches",
        ["", "upstream token requests in run", "per token lifetime = per hour at 1 h tokens"],
    )
    section.rows.append(
        [f"broker fleet ({k} instances, Redis)", str(fleet_count), f"{per_hour['fleet']:.2f}"]
    )
    section.rows.append(
        [
            f"naive per-process caches ({k} x {c}, the guide's `TokenManager`)",
            str(naive_count),
            f"{per_hour['naive']:.2f}",
        ]
    )
    ratio = per_hour["naive"] / per_hour["fleet"] if per_hour["fleet"] else float("inf")
    section.rows.append(["naive / broker", "", f"**{ratio:.0f}x**"])
    section.notes.append(
        f"Time compressed {3600 / plan.lifetime:.0f}x: tokens live {plan.lifetime:g} s "
        f"(for 3600 s), refresh buffer {plan.buffer:.2g} s (for 300 s); {plan.seconds:g} s run "
        f"= {lifetimes:g} lifetimes, after a warm-up whose first fetches are not counted. "
        f"Every caller asks every {plan.interval:g} s. The fleet's callers got "
        f"{brokers.served} tokens, {brokers.violations} with less than the buffer left. "
        f"Expected: the fleet about 1 per lifetime (3600 / (3600 - 300 - lead)); the naive "
        f"caches {k * c} x 3600 / 3300 = {k * c * 3600 / 3300:.0f} per hour."
    )
    return section
