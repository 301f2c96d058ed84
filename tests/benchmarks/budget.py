"""4. Budget limiter: the broker's fleet budget vs `limits` (moving window) and a fixed window.

The same arrival pattern for each: `callers` hungry callers that want permits back to back
for `seconds`, limit `limit` per `window` seconds, all on the same redis-server. The broker's
callers ask `POST /budget/acquire?wait=...` (it reserves a slot and answers when it is due);
the `limits` callers `hit()` and, when refused, sleep until the reset the limiter reports,
which is how that library is meant to be polled. A grant counts when the caller receives it.

Acquire latency is measured apart, with a limit that is never reached: the broker's
`POST /budget/acquire` under wrk (HTTP, authentication and one Redis script), `limits`'
`hit()` called in-process by asyncio tasks through redis-py (one Redis script).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from limits import RateLimitItemPerSecond
from limits.aio.storage import RedisStorage
from limits.aio.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter, RateLimiter

from tests.benchmarks import deployment, fairness
from tests.benchmarks.report import Section, percentile, worst_window
from tests.benchmarks.wrk import run_wrk
from tests.support import processes


@dataclass(frozen=True)
class BudgetPlan:
    """Limit, window, callers and how long they are hungry."""

    limit: int = 20
    window: float = 4.0
    safety_margin: float = 0.1
    callers: int = 40
    seconds: float = 12.0
    latency_seconds: float = 3.0
    latency_concurrency: int = 8


@dataclass
class Outcome:
    """Grant receipt times (unix seconds) and how long each permit took to come."""

    grants: list[float] = field(default_factory=list)
    waits: list[float] = field(default_factory=list)


Acquire = Callable[[float], Awaitable[bool]]
"""Try for a permit, waiting up to the given seconds; True when granted."""


async def hungry(acquire: Acquire, stop_at: float, outcome: Outcome) -> None:
    """Take permits back to back until `stop_at`, noting when each came."""
    began = time.monotonic()
    while (now := time.monotonic()) < stop_at:
        if await acquire(stop_at - now):
            if time.monotonic() <= stop_at:
                outcome.grants.append(time.time())
                outcome.waits.append(time.monotonic() - began)
            began = time.monotonic()


def broker_acquire(http: httpx.AsyncClient, url: str, max_wait: float) -> Acquire:
    """A caller of the broker's `POST /budget/acquire?wait=`."""

    async def acquire(left: float) -> bool:
        wait = max(0.0, min(max_wait, left))
        response = await http.post(
            f"{url}/budget/acquire?wait={wait:.3f}", headers=deployment.HEADERS
        )
        if response.status_code == 200:
            return True
        if response.status_code != 429:
            raise RuntimeError(f"budget answered {response.status_code}: {response.text[:200]}")
        await asyncio.sleep(min(0.2, float(response.headers["retry-after"]), left))
        return False

    return acquire


def limits_acquire(limiter: RateLimiter, item: RateLimitItemPerSecond, key: str) -> Acquire:
    """A caller of a `limits` limiter: hit, and when refused sleep until its reset."""

    async def acquire(left: float) -> bool:
        if await limiter.hit(item, key):
            return True
        stats = await limiter.get_window_stats(item, key)
        await asyncio.sleep(max(0.001, min(left, stats.reset_time - time.time())))
        return False

    return acquire


async def _run(acquire: Acquire, plan: BudgetPlan) -> Outcome:
    outcome = Outcome()
    stop_at = time.monotonic() + plan.seconds
    await asyncio.gather(*(hungry(acquire, stop_at, outcome) for _ in range(plan.callers)))
    return outcome


async def _broker_run(url: str, plan: BudgetPlan) -> Outcome:
    limits = httpx.Limits(max_connections=plan.callers + 5)
    async with httpx.AsyncClient(timeout=30, limits=limits) as http:
        return await _run(broker_acquire(http, url, plan.window + 1), plan)


async def _limits_runs(redis_url: str, plan: BudgetPlan, prefix: str) -> dict[str, Outcome]:
    storage = RedisStorage(
        redis_url.replace("redis://", "async+redis://"), implementation="redispy", key_prefix=prefix
    )
    item = RateLimitItemPerSecond(plan.limit, int(plan.window))
    outcomes = {}
    for name, limiter in (
        ("moving", MovingWindowRateLimiter(storage)),
        ("fixed", FixedWindowRateLimiter(storage)),
    ):
        outcomes[name] = await _run(limits_acquire(limiter, item, f"hungry-{name}"), plan)
    return outcomes


async def _timed_hits(
    limiter: RateLimiter,
    item: RateLimitItemPerSecond,
    key: str,
    stop_at: float,
    samples: list[float],
) -> None:
    """Call `hit()` back to back until `stop_at`, noting how long each took."""
    while time.monotonic() < stop_at:
        started = time.perf_counter()
        if not await limiter.hit(item, key):
            raise RuntimeError("limits refused a permit below its limit")
        samples.append(time.perf_counter() - started)


async def _limits_latency(redis_url: str, plan: BudgetPlan, prefix: str) -> dict[str, list[float]]:
    storage = RedisStorage(
        redis_url.replace("redis://", "async+redis://"), implementation="redispy", key_prefix=prefix
    )
    item = RateLimitItemPerSecond(10**9, 60)
    latencies: dict[str, list[float]] = {}
    for name, limiter in (
        ("moving", MovingWindowRateLimiter(storage)),
        ("fixed", FixedWindowRateLimiter(storage)),
    ):
        samples: list[float] = []
        stop_at = time.monotonic() + plan.latency_seconds
        callers = (
            _timed_hits(limiter, item, f"latency-{name}", stop_at, samples)
            for _ in range(plan.latency_concurrency)
        )
        await asyncio.gather(*callers)
        latencies[name] = samples
    return latencies


def measure(
    plan: BudgetPlan,
    redis_url: str,
    directory: Path,
    prefix: str,
    fairness_plan: fairness.FairnessPlan | None = None,
) -> Section:
    """Run the three limiters on the same pattern, then their acquire latency; with a
    `fairness_plan`, the fairness, outage and throughput-ratio rows (`fairness.py`)."""
    budget = {
        "limit": plan.limit,
        "window_seconds": plan.window,
        "safety_margin_seconds": plan.safety_margin,
        "max_wait_seconds": plan.window + 1,
    }
    roomy = {"limit": 10**6, "window_seconds": 60, "max_wait_seconds": 0}
    with processes.emulator(directory, deployment.CLIENTS, "emulator-budget") as upstream:
        config = deployment.broker_config(upstream, redis_url, f"{prefix}b", budget=budget)
        with deployment.brokers(config, directory) as (broker,):
            outcomes = {"broker": asyncio.run(_broker_run(broker.url, plan))}
        roomy_config = deployment.broker_config(upstream, redis_url, f"{prefix}r", budget=roomy)
        with deployment.brokers(roomy_config, directory) as (roomy_broker,):
            wrk = run_wrk(
                f"{roomy_broker.url}/budget/acquire?client=checkout",
                connections=plan.latency_concurrency,
                seconds=plan.latency_seconds,
                headers=deployment.HEADERS,
                method="POST",
            )
            if not wrk.clean:
                raise RuntimeError(f"budget latency run had errors: {wrk}")
    outcomes |= asyncio.run(_limits_runs(redis_url, plan, f"{prefix}l"))
    latencies = asyncio.run(_limits_latency(redis_url, plan, f"{prefix}t"))
    call_latency = {
        "broker": (wrk.p50_ms, wrk.p99_ms),
        **{
            name: (percentile(s, 50) * 1000, percentile(s, 99) * 1000)
            for name, s in latencies.items()
        },
    }
    names = {
        "broker": "broker `POST /budget/acquire?wait=` (sliding log, fair queue)",
        "moving": "`limits` moving window, polled",
        "fixed": "fixed-window counter (`limits`), polled",
    }
    section = Section(
        f"4. Budget limiter: {plan.callers} hungry callers, limit {plan.limit} per "
        f"{plan.window:g} s, {plan.seconds:g} s",
        [
            "limiter",
            f"worst {plan.window:g} s window",
            "utilisation",
            "time to permit p50 / p99 ms",
            "acquire call p50 / p99 ms",
        ],
    )
    capacity = plan.limit * plan.seconds / plan.window
    for name, outcome in outcomes.items():
        p50, p99 = call_latency[name]
        section.rows.append(
            [
                names[name],
                f"{worst_window(outcome.grants, plan.window)} (limit {plan.limit})",
                f"{len(outcome.grants) / capacity:.0%}",
                f"{percentile(outcome.waits, 50) * 1000:.0f} / "
                f"{percentile(outcome.waits, 99) * 1000:.0f}",
                f"{p50:.2f} / {p99:.2f}",
            ]
        )
    if fairness_plan is not None:
        blank = ["", "", ""]
        for row in fairness.fairness(fairness_plan, redis_url, directory, f"{prefix}f"):
            section.rows.append(
                ["fairness: light (1 at a time) vs heavy (16 waiting)", row, *blank]
            )
        section.rows.append(
            [
                "outage: 3 brokers, Redis killed",
                fairness.outage(fairness_plan, directory, f"{prefix}o"),
                *blank,
            ]
        )
        ratio = fairness.throughput(fairness_plan, redis_url, directory, f"{prefix}t")
        section.rows.append(["acquire throughput vs baseline", ratio, *blank])
    section.notes.append(
        f"Worst window: most grants received in any closed {plan.window:g}-second interval "
        "(receipt times at the callers, which is what an upstream counting arrivals sees). "
        "`limits`' moving window grants a whole burst the moment the oldest grant leaves "
        "the window and the fixed window one at each window start, with no margin, so two "
        "bursts one window apart can land in one window of arrivals; the broker spaces "
        f"grants by window + `safety_margin_seconds` ({plan.safety_margin:g} s). "
        f"Utilisation: grants / ({plan.limit} x {plan.seconds:g} / {plan.window:g}). "
        "Time to permit: from a caller wanting a permit to receiving it. Acquire call: one "
        f"call with budget to spare, {plan.latency_concurrency} concurrent callers for "
        f"{plan.latency_seconds:g} s; the broker's is an HTTP request (authentication "
        "included) measured by wrk, `limits`' an in-process call through redis-py."
    )
    if fairness_plan is not None:
        section.notes.append(
            "Fairness: 2 brokers, limit 10 per 5 s; the light caller asks one permit at a time "
            "on one broker, the heavy one keeps 16 requests waiting over both; grants counted "
            "after the first window. Outage: 3 brokers, limit 12 per 3 s (+0.5 s margin), 12 "
            "callers; Redis killed, then restarted empty; worst window of receipt times. "
            "Throughput: `POST /budget/acquire` with budget to spare, 8 wrk connections, this "
            "version and the baseline alternated, median requests per second."
        )
    return section
