"""4b. Budget fairness, the outage share, and acquire throughput against a baseline version.

Fairness: two brokers, limit 10 per 5 s; a light caller asks one permit at a time on one broker
while a heavy caller keeps 16 requests waiting across both; the shares after the first window,
for weights 1:1 and 1:3. Outage: three brokers under load, limit 12 per 3 s; Redis is killed
for 8 s and comes back empty; grants per broker during the outage and the fleet's worst window
(receipt times). Throughput: `POST /budget/acquire` with budget to spare under wrk, this version
and the baseline (`BENCH_BASELINE_REF`, default `main`, exported with `git archive`) alternated
in the same run, as a ratio.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from app.auth.callers import hash_api_key
from tests.benchmarks import deployment
from tests.benchmarks.report import worst_window
from tests.benchmarks.wrk import run_wrk
from tests.support import processes
from tests.support.redis import RedisServer

HEAVY_KEY = "tbk_bench_bulk_key_0000000000000000000000"  # benchmark-only caller key
HEAVY = {"X-API-Key": HEAVY_KEY}


@dataclass(frozen=True)
class FairnessPlan:
    """How long each run lasts."""

    fairness_seconds: float = 25.0
    outage_load_seconds: float = 5.0
    outage_seconds: float = 8.0
    after_seconds: float = 8.0
    throughput_seconds: float = 3.0
    throughput_rounds: int = 3


async def _ask(http: httpx.AsyncClient, url: str, headers: dict[str, str], stop_at: float,
               granted: list[float], wait: float) -> None:  # fmt: skip
    while (now := time.monotonic()) < stop_at:
        left = min(wait, stop_at - now)
        try:
            response = await http.post(
                f"{url}/budget/acquire?client=checkout&wait={left:.3f}", headers=headers
            )
        except httpx.HTTPError:
            await asyncio.sleep(0.1)
            continue
        if response.status_code == 200 and time.monotonic() <= stop_at:
            granted.append(time.monotonic())
        elif response.status_code != 200:
            await asyncio.sleep(min(0.2, max(0.0, stop_at - time.monotonic())))


async def _contend(
    urls: list[str], seconds: float, light: list[float], heavy: list[float]
) -> float:
    """The light caller on the first broker, 16 heavy requests over all; returns the start."""
    async with httpx.AsyncClient(timeout=60) as http:
        started = time.monotonic()
        stop_at = started + seconds
        await asyncio.gather(
            _ask(http, urls[0], deployment.HEADERS, stop_at, light, 30),
            *(_ask(http, urls[i % len(urls)], HEAVY, stop_at, heavy, 30) for i in range(16)),
        )
        return started


def _two_callers(config: dict[str, Any], heavy_weight: float) -> dict[str, Any]:
    config["callers"]["orders"]["budget_weight"] = 1.0
    config["callers"]["bulk"] = {
        "api_key_sha256": hash_api_key(HEAVY_KEY),
        "clients": ["checkout"],
        "budget_weight": heavy_weight,
    }
    return config


def fairness(plan: FairnessPlan, redis_url: str, directory: Path, prefix: str) -> list[str]:
    """One row per weight ratio: light and heavy grants after the first window, light share."""
    budget = {
        "limit": 10,
        "window_seconds": 5,
        "safety_margin_seconds": 0.1,
        "max_wait_seconds": 30,
    }
    rows = []
    with processes.emulator(directory, deployment.CLIENTS, "emulator-fair") as upstream:
        for heavy_weight in (1.0, 3.0):
            config = deployment.broker_config(
                upstream, redis_url, f"{prefix}{heavy_weight:g}", budget=budget
            )
            with deployment.brokers(_two_callers(config, heavy_weight), directory, 2) as brokers:
                light: list[float] = []
                heavy: list[float] = []
                urls = [broker.url for broker in brokers]
                since = asyncio.run(_contend(urls, plan.fairness_seconds, light, heavy)) + 5.1
                n_light = sum(1 for t in light if t >= since)
                n_heavy = sum(1 for t in heavy if t >= since)
                share = n_light / max(1, n_light + n_heavy)
                rows.append(
                    f"weights 1:{heavy_weight:g}: light {n_light}, heavy {n_heavy}; light share "
                    f"{share:.0%} (weighted share {1 / (1 + heavy_weight):.0%})"
                )
    return rows


def outage(plan: FairnessPlan, directory: Path, prefix: str) -> str:
    """Grants per broker without Redis, after its return, and the worst window."""
    budget = {"limit": 12, "window_seconds": 3, "safety_margin_seconds": 0.5, "max_wait_seconds": 2}
    with (
        RedisServer() as redis,
        processes.emulator(directory, deployment.CLIENTS, "emulator-outage") as upstream,
    ):
        config = deployment.broker_config(upstream, redis.url, prefix, budget=budget)
        with deployment.brokers(config, directory, 3) as brokers:
            granted: dict[int, list[float]] = {0: [], 1: [], 2: []}

            async def run() -> tuple[float, float]:
                async with httpx.AsyncClient(timeout=30) as http:
                    total = plan.outage_load_seconds + plan.outage_seconds + plan.after_seconds
                    stop_at = time.monotonic() + total
                    load = asyncio.gather(
                        *(
                            _ask(
                                http,
                                brokers[i % 3].url,
                                deployment.HEADERS,
                                stop_at,
                                granted[i % 3],
                                1,
                            )
                            for i in range(12)
                        )
                    )
                    await asyncio.sleep(plan.outage_load_seconds)
                    redis.kill()
                    killed = time.monotonic()
                    await asyncio.sleep(plan.outage_seconds)
                    redis.start()
                    back = time.monotonic()
                    await load
                    return killed, back

            killed, back = asyncio.run(run())
    during = [sum(1 for t in times if killed <= t < back) for times in granted.values()]
    after = sum(1 for times in granted.values() for t in times if t >= back)
    every = [t for times in granted.values() for t in times]
    return (
        f"{back - killed:.0f} s without Redis: grants per broker {during} "
        f"(share 4 per window each), {after} after its return; worst 3 s window "
        f"{worst_window(every, 3.0)} (limit 12)"
    )


def baseline_tree(directory: Path) -> Path | None:
    """The baseline version's `app/` exported into `directory`, or None without git."""
    ref = os.environ.get("BENCH_BASELINE_REF", "main")
    target = directory / "baseline"
    target.mkdir(exist_ok=True)
    try:
        archive = subprocess.run(
            ["git", "archive", ref, "app"], capture_output=True, check=True, timeout=60
        )
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return target


def throughput(plan: FairnessPlan, redis_url: str, directory: Path, prefix: str) -> str:
    """Acquire requests per second, this version vs the baseline, alternated in one run."""
    baseline = baseline_tree(directory)
    if baseline is None:
        return "no baseline (git archive failed)"
    roomy = {"limit": 10**6, "window_seconds": 60, "max_wait_seconds": 0}
    rates: dict[str, list[float]] = {"this": [], "baseline": []}
    with processes.emulator(directory, deployment.CLIENTS, "emulator-ratio") as upstream:
        for round_ in range(plan.throughput_rounds):
            for name, cwd in (("this", None), ("baseline", baseline)):
                config = deployment.broker_config(
                    upstream, redis_url, f"{prefix}{name}{round_}", budget=roomy
                )
                with deployment.brokers(config, directory, 1, cwd=cwd) as (broker,):
                    result = run_wrk(
                        f"{broker.url}/budget/acquire?client=checkout",
                        connections=8,
                        seconds=plan.throughput_seconds,
                        headers=deployment.HEADERS,
                        method="POST",
                    )
                    if not result.clean:
                        raise RuntimeError(f"acquire throughput run had errors: {result}")
                    rates[name].append(result.rps)
    this, base = statistics.median(rates["this"]), statistics.median(rates["baseline"])
    ref = os.environ.get("BENCH_BASELINE_REF", "main")
    rounds = ", ".join(
        f"{a:.0f}/{b:.0f}" for a, b in zip(rates["this"], rates["baseline"], strict=True)
    )
    return (
        f"median {this:.0f} req/s vs {base:.0f} req/s ({ref}): ratio {this / base:.2f} "
        f"(rounds, this/{ref}: {rounds})"
    )
