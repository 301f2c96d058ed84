"""/budget/acquire and /budget/report over real HTTP, on both stores; the fleet over 3 processes."""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from tests.conftest import API_KEYS, BrokerFactory, Emulator, broker_config
from tests.support.processes import fleet
from tests.support.redis import RedisServer

HEADERS = {"X-API-Key": API_KEYS["orders"]}
RATE_HEADERS = ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset")


async def test_acquire_grants_with_upstream_style_headers(broker: BrokerFactory) -> None:
    """A permit comes back as 200 with granted/limit/remaining/reset and X-RateLimit-*."""
    async with broker(budget={"limit": 3, "window_seconds": 60}) as http:
        first = await http.post("/budget/acquire?client=checkout", headers=HEADERS)
        second = await http.post("/budget/acquire", headers=HEADERS)
    assert first.status_code == 200
    assert first.json() == {"granted": True, "limit": 3, "remaining": 2, "reset": 61}
    assert [first.headers[h] for h in RATE_HEADERS] == ["3", "2", "61"]
    assert second.json()["remaining"] == 1


async def test_exhausted_budget_answers_429_with_retry_after(broker: BrokerFactory) -> None:
    """With no permit inside `wait`, 429 budget_exhausted carries Retry-After and X-RateLimit-*."""
    async with broker(budget={"limit": 1, "window_seconds": 30}) as http:
        await http.post("/budget/acquire", headers=HEADERS)
        denied = await http.post("/budget/acquire?wait=1", headers=HEADERS)
    assert denied.status_code == 429
    assert denied.json()["error"] == "budget_exhausted"
    assert 29 <= int(denied.headers["retry-after"]) <= 31
    assert denied.headers["x-ratelimit-remaining"] == "0"
    assert denied.headers["x-ratelimit-limit"] == "1"


async def test_acquire_waits_for_the_next_slot(broker: BrokerFactory) -> None:
    """A caller willing to wait gets the next slot after the window, not an error."""
    async with broker(
        budget={"limit": 1, "window_seconds": 0.5, "safety_margin_seconds": 0}
    ) as http:
        await http.post("/budget/acquire", headers=HEADERS)
        started = time.monotonic()
        waited = await http.post("/budget/acquire?wait=2", headers=HEADERS)
        elapsed = time.monotonic() - started
    assert waited.status_code == 200
    assert 0.4 <= elapsed <= 1.5


def _outcomes(caplog: pytest.LogCaptureFixture) -> list[str | None]:
    return [getattr(record, "fields", {}).get("outcome") for record in caplog.records]


async def test_a_waiting_caller_that_disconnects_gives_its_slot_back(
    broker: BrokerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A waiting acquire whose client goes away leaves the queue: the next caller gets the slot
    it held, and the request is logged as client_closed_request (499)."""
    caplog.set_level(logging.INFO, logger="app.http")
    budget = {"limit": 1, "window_seconds": 2, "safety_margin_seconds": 0.1}
    async with broker(budget=budget) as http:
        assert (await http.post("/budget/acquire", headers=HEADERS)).status_code == 200
        first_granted = time.monotonic()
        async with httpx.AsyncClient(base_url=http.base_url, timeout=30) as leaving:
            abandoned = asyncio.create_task(
                leaving.post("/budget/acquire?wait=10", headers=HEADERS)
            )
            await asyncio.sleep(0.3)  # it holds the reservation of the next slot now
            abandoned.cancel()  # httpx closes the connection of a cancelled request
            with pytest.raises(asyncio.CancelledError):
                await abandoned
        # A waiter sleeps until the slot predicted for it, so the next caller must ask after
        # the broker has seen the disconnect (its log line), not just after the close.
        for _ in range(200):
            if "client_closed_request" in _outcomes(caplog):
                break
            await asyncio.sleep(0.01)
        waited = await http.post("/budget/acquire?wait=10", headers=HEADERS)
        elapsed = time.monotonic() - first_granted
    assert "client_closed_request" in _outcomes(caplog)
    assert waited.status_code == 200
    assert elapsed <= 2.1 + 0.8  # had the slot been kept, a whole window more


async def test_a_waited_permit_reports_the_reset_as_of_its_use(broker: BrokerFactory) -> None:
    """After waiting for its slot, a permit's reset counts from then: the grant that made it
    wait has left the window, so the next one to leave is the second (0.5 s in)."""
    budget = {"limit": 2, "window_seconds": 3, "safety_margin_seconds": 0}
    async with broker(budget=budget) as http:
        await http.post("/budget/acquire", headers=HEADERS)
        await asyncio.sleep(0.5)
        await http.post("/budget/acquire", headers=HEADERS)
        waited = await http.post("/budget/acquire?wait=4", headers=HEADERS)
    assert waited.status_code == 200
    assert waited.json()["reset"] == 1  # 0.5 s + 3 s - 3 s, rounded up; was 3 (as of the ask)
    assert waited.headers["x-ratelimit-reset"] == "1"


async def test_a_permit_after_a_cooldown_counts_only_the_grants_still_in_its_window(
    broker: BrokerFactory,
) -> None:
    """Two grants, then a 2 s cooldown: the permit that waited it out sees a window holding only
    itself (remaining 1 of 2), not the grants that left meanwhile."""
    budget = {"limit": 2, "window_seconds": 1, "safety_margin_seconds": 0, "max_wait_seconds": 5}
    report = {"status": 429, "headers": {"X-RateLimit-Reset": "2"}}
    async with broker(budget=budget) as http:
        for _ in range(2):
            await http.post("/budget/acquire", headers=HEADERS)
        await http.post("/budget/report", headers=HEADERS, json=report)
        waited = await http.post("/budget/acquire?wait=4", headers=HEADERS)
    assert waited.status_code == 200
    assert waited.json()["remaining"] == 1
    assert waited.headers["x-ratelimit-remaining"] == "1"


async def test_wait_is_capped_by_max_wait_seconds(broker: BrokerFactory) -> None:
    """A wait longer than max_wait_seconds is cut to it: the caller gets 429, not a long hang."""
    budget = {"limit": 1, "window_seconds": 30, "max_wait_seconds": 0.2}
    async with broker(budget=budget) as http:
        await http.post("/budget/acquire", headers=HEADERS)
        started = time.monotonic()
        denied = await http.post("/budget/acquire?wait=25", headers=HEADERS)
    assert denied.status_code == 429
    assert time.monotonic() - started < 2


@pytest.mark.parametrize("wait", ["-1", "nan", "inf", "soon"])
async def test_bad_wait_is_invalid_request(broker: BrokerFactory, wait: str) -> None:
    """A negative, infinite or non-numeric wait is 400 invalid_request."""
    async with broker() as http:
        response = await http.post(f"/budget/acquire?wait={wait}", headers=HEADERS)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


async def test_budget_needs_credentials_and_authorisation(broker: BrokerFactory) -> None:
    """No key is 401; a client the caller may not use is 403."""
    async with broker() as http:
        anonymous = await http.post("/budget/acquire")
        forbidden = await http.post("/budget/acquire?client=payouts", headers=HEADERS)
    assert anonymous.status_code == 401
    assert forbidden.status_code == 403


async def test_report_of_429_pauses_grants_until_reset(broker: BrokerFactory) -> None:
    """After a reported upstream 429 with reset 2 s, no permit is granted until it passed."""
    async with broker() as http:
        report = await http.post(
            "/budget/report",
            headers=HEADERS,
            json={"client": "checkout", "status": 429, "headers": {"X-RateLimit-Reset": "2"}},
        )
        denied = await http.post("/budget/acquire", headers=HEADERS)
        started = time.monotonic()
        granted = await http.post("/budget/acquire?wait=5", headers=HEADERS)
        waited = time.monotonic() - started
        health = (await http.get("/health")).json()
    assert report.status_code == 204
    assert denied.status_code == 429 and int(denied.headers["retry-after"]) == 2
    assert granted.status_code == 200
    assert 1.0 <= waited <= 3.0
    assert health["budget"]["limit"] == 50 and health["budget"]["used"] >= 1


async def test_report_body_is_validated(broker: BrokerFactory) -> None:
    """A report without a status or with unknown fields is 400 invalid_request."""
    async with broker() as http:
        missing = await http.post("/budget/report", headers=HEADERS, json={"client": "checkout"})
        extra = await http.post(
            "/budget/report", headers=HEADERS, json={"status": 429, "surprise": True}
        )
    assert missing.status_code == extra.status_code == 400


async def test_token_requests_take_permits_when_counted(
    broker: BrokerFactory, emulator: Emulator
) -> None:
    """With count_token_requests, the broker's own token request uses a permit."""
    async with broker(budget={"count_token_requests": True, "limit": 5}) as http:
        await http.get("/token", headers=HEADERS)
        health = (await http.get("/health")).json()
    assert health["budget"]["used"] == 1


async def test_redis_down_fails_closed_when_configured(
    emulator: Emulator, own_redis: RedisServer, tmp_path: Path
) -> None:
    """With `on_store_unavailable = "fail_closed"` and Redis unreachable the budget answers 503
    store_unavailable, never a blind grant (the default grants from the local share)."""
    config = broker_config(
        emulator,
        {"redis_url": own_redis.url, "key_prefix": "closed"},
        budget={"on_store_unavailable": "fail_closed"},
    )
    with fleet(config, tmp_path, size=1) as (broker,):
        own_redis.stop()
        async with httpx.AsyncClient(base_url=broker.url, timeout=10) as http:
            response = await http.post("/budget/acquire", headers=HEADERS)
    assert response.status_code == 503
    assert response.json()["error"] == "store_unavailable"
    assert "retry-after" in response.headers


async def watch_slots(
    redis_url: str, key: str, slots: dict[str, float], stop: asyncio.Event
) -> None:
    """Copy every permit's slot (ms of Redis time) from the grants zset until `stop`.

    A permit stays in the zset for at least a window, so polling 4 times per window sees all.
    """
    async with aioredis.Redis.from_url(redis_url) as client:
        while not stop.is_set():
            for member, score in await client.zrange(key, 0, -1, withscores=True):
                slots[member.decode()] = score / 1000.0
            await asyncio.sleep(0.25)


def worst_window(times: list[float], width: float) -> int:
    """The most `times` inside any closed interval of length `width`."""
    ordered = sorted(times)
    return max(
        (bisect.bisect_right(ordered, t + width) - i for i, t in enumerate(ordered)), default=0
    )


@pytest.mark.fleet
async def test_fleet_never_exceeds_the_limit_in_any_window(
    emulator: Emulator, redis_server: RedisServer, tmp_path: Path
) -> None:
    """3 processes, limit 20 per 4 s, 60 hungry callers for 12 s: no 4-second window of Redis
    time holds more than 20 permits, utilisation >= 95 %, every 429 has Retry-After.

    The guarantee is on Redis time (the permits' slots, read from Redis as they are granted);
    how late a caller then acts on its permit is what `safety_margin_seconds` absorbs, so the
    callers' receipt times are reported, not asserted: on this shared 2-core machine the test's
    own event loop can lag by more than the margin.
    """
    budget = {"limit": 20, "window_seconds": 4, "safety_margin_seconds": 0.1, "max_wait_seconds": 5}
    prefix = f"w{uuid.uuid4().hex[:8]}"
    store = {"redis_url": redis_server.url, "key_prefix": prefix}
    config = broker_config(emulator, store, budget=budget)
    received: list[float] = []
    denials: list[httpx.Response] = []
    slots: dict[str, float] = {}
    run_seconds = 12.0

    async def hungry(http: httpx.AsyncClient, url: str, stop_at: float) -> None:
        while time.monotonic() < stop_at:
            wait = min(5.0, stop_at - time.monotonic())
            response = await http.post(f"{url}/budget/acquire?wait={wait:.3f}", headers=HEADERS)
            if response.status_code == 200:
                if time.monotonic() <= stop_at:
                    received.append(time.monotonic())
            else:
                denials.append(response)
                await asyncio.sleep(min(0.2, max(0.0, stop_at - time.monotonic())))

    with fleet(config, tmp_path) as brokers:
        stop = asyncio.Event()
        watcher = asyncio.create_task(
            watch_slots(redis_server.url, f"{prefix}:v1:{{budget}}:grants", slots, stop)
        )
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(timeout=30, limits=limits) as http:
            stop_at = time.monotonic() + run_seconds
            await asyncio.gather(*(hungry(http, brokers[i % 3].url, stop_at) for i in range(60)))
        stop.set()
        await watcher

    print(  # noqa: T201 - the figures quoted in the issue note
        f"permits={len(slots)} received_in_run={len(received)} "
        f"worst_4s_window: redis_time={worst_window(list(slots.values()), 4.0)} "
        f"as_received={worst_window(received, 4.0)}"
    )
    assert len(slots) >= len(received)  # the watcher saw every permit
    assert worst_window(list(slots.values()), 4.0) <= 20
    assert len(received) >= 0.95 * run_seconds * 20 / 4
    assert all("retry-after" in r.headers and r.status_code == 429 for r in denials)


@pytest.mark.fleet
async def test_a_429_reported_to_one_instance_stops_all(
    emulator: Emulator, redis_server: RedisServer, tmp_path: Path
) -> None:
    """A 429 reported on one instance makes the other instances refuse permits until reset."""
    store: dict[str, Any] = {
        "redis_url": redis_server.url,
        "key_prefix": f"c{uuid.uuid4().hex[:8]}",
    }
    with fleet(broker_config(emulator, store), tmp_path) as brokers:
        async with httpx.AsyncClient(timeout=10) as http:
            await http.post(
                f"{brokers[0].url}/budget/report",
                headers=HEADERS,
                json={"status": 429, "headers": {"X-RateLimit-Reset": "2"}},
            )
            during = [
                (await http.post(f"{b.url}/budget/acquire", headers=HEADERS)).status_code
                for b in brokers
            ]
            await asyncio.sleep(2.2)
            after = [
                (await http.post(f"{b.url}/budget/acquire", headers=HEADERS)).status_code
                for b in brokers
            ]
    assert during == [429, 429, 429]
    assert after == [200, 200, 200]
