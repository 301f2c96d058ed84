"""/metrics: Prometheus text that parses, moves as expected, stays low-cardinality and per app."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)

from app import __version__
from app.config import Settings
from app.main import create_app
from app.observability.metrics import PROXY_CALLS
from tests.conftest import EMULATOR_ID, BrokerFactory, Emulator, broker_config
from tests.contract import assert_error, assert_token, billing, orders
from tests.observability.prom import scrape
from tests.support.redis import RedisServer
from tests.support.servers import serve_app

WRONG_SECRET = "payouts-wrong-secret-value-4410"  # test-only: the upstream rejects it
ROUTES = {
    "/token",
    "/token/invalidate",
    "/budget/acquire",
    "/budget/report",
    "/health",
    "/metrics",
}


def rejected_payouts(emulator: Emulator) -> dict[str, Any]:
    """The `payouts` client with a secret the upstream rejects."""
    return {
        "payouts": {
            "token_url": emulator.token_url,
            "api_base_url": emulator.base_url,
            "client_id": EMULATOR_ID,
            "client_secret": WRONG_SECRET,
        }
    }


async def test_metrics_move_as_expected_after_a_scripted_run(
    broker: BrokerFactory, emulator: Emulator
) -> None:
    """Fetch, L1 hit, invalidate, rejected client, budget grants/denial/cooldown all show up."""
    async with broker(budget={"limit": 2}, clients=rejected_payouts(emulator)) as http:
        before = await scrape(http)
        first = assert_token(await http.get("/token", headers=orders()))["access_token"]
        assert_token(await http.get("/token", headers=orders()))
        body = {"access_token": first}
        fresh = assert_token(await http.post("/token/invalidate", json=body, headers=orders()))
        refused = await http.get("/token?client=payouts", headers=billing())
        assert_error(refused, 502, "upstream_invalid_client")
        for _ in range(2):
            assert (await http.post("/budget/acquire", headers=orders())).status_code == 200
        assert_error(await http.post("/budget/acquire", headers=orders()), 429, "budget_exhausted")
        report = {"status": 429, "headers": {"X-RateLimit-Reset": "3"}}
        assert (await http.post("/budget/report", json=report, headers=orders())).status_code == 204
        after = await scrape(http)

    assert before.total("token_broker_token_requests_total") == 0
    assert before.value("token_broker_token_valid", client="checkout") == 0
    requests = "token_broker_token_requests_total"
    assert after.value(requests, client="checkout", caller="orders", outcome="ok") == 3
    assert (
        after.value(requests, client="payouts", caller="billing", outcome="upstream_invalid_client")
        == 1
    )
    upstream = "token_broker_upstream_token_requests_total"
    assert after.value(upstream, client="checkout", outcome="ok") == 2
    assert after.value(upstream, client="payouts", outcome="rejected") == 1
    latency = "token_broker_upstream_token_request_duration_seconds"
    assert after.value(f"{latency}_count", outcome="ok") == 2
    assert after.value(f"{latency}_count", outcome="rejected") == 1
    assert after.value("token_broker_token_cache_hits_total", client="checkout", level="l1") >= 1

    expiry = after.value("token_broker_token_expiry_seconds", client="checkout")
    assert 3500 < expiry <= 3600
    # The pre-rename name stays for one release, with the same value.
    assert after.value("token_broker_token_seconds_to_expiry", client="checkout") == expiry
    assert after.value("token_broker_token_valid", client="checkout") == 1
    assert after.value("token_broker_token_valid", client="payouts") == 0
    for name in ("token_broker_token_expiry_seconds", "token_broker_token_seconds_to_expiry"):
        assert (name, frozenset({("client", "payouts")})) not in after.samples

    assert after.value("token_broker_budget_grants_total", client="checkout") == 2
    assert after.value("token_broker_budget_denials_total", client="checkout") == 1
    assert after.value("token_broker_budget_wait_seconds_count") == 2
    assert after.value("token_broker_budget_cooldowns_total") == 1
    assert (after.value("token_broker_budget_used"), after.value("token_broker_budget_limit")) == (
        2,
        2,
    )
    assert 1 <= after.value("token_broker_budget_cooldown_seconds") <= 3

    http_requests = "token_broker_http_requests_total"
    assert after.value(http_requests, route="/token", method="GET", status_class="2xx") == 2
    assert after.value(http_requests, route="/token", method="GET", status_class="5xx") == 1
    assert after.value(http_requests, route="/budget/acquire", method="POST", status_class="4xx")
    assert after.value("token_broker_build_info", version=__version__) == 1
    assert after.value("token_broker_store_up") == 1
    assert after.value("token_broker_fleet_instances") == 1
    assert after.value("token_broker_store_errors_total", component="tokens") == 0

    # Low cardinality: route templates and configured names only; never a token.
    assert after.label_values("route") <= ROUTES
    assert after.label_values("client") <= {"checkout", "payouts"}
    assert after.label_values("caller") <= {"orders", "billing"}
    assert after.families["token_broker_token_requests"] == "counter"
    assert after.families["token_broker_upstream_token_request_duration_seconds"] == "histogram"
    for token in (first, fresh["access_token"]):
        assert all(token not in value for value in after.label_values("client"))


async def test_unknown_names_never_become_labels(broker: BrokerFactory) -> None:
    """A client name nobody configured is counted as `other`, an unmatched path as `unmatched`."""
    async with broker() as http:
        await http.get("/token?client=no_such_client_xyz", headers=billing())
        await http.get("/no/such/path/secretish-token-abc")
        await http.get("/token?client=no_such_client_xyz", headers={"X-API-Key": "tbk_wrong"})
        metrics = await scrape(http)
        text = (await http.get("/metrics")).text
    assert "no_such_client_xyz" not in text and "secretish-token-abc" not in text
    requests = "token_broker_token_requests_total"
    assert metrics.value(requests, client="-", caller="billing", outcome="unknown_client") == 1
    assert metrics.value(requests, client="-", caller="-", outcome="unauthorized") == 1
    assert metrics.total("token_broker_http_requests_total", route="unmatched") == 1


async def test_each_app_has_its_own_registry(broker: BrokerFactory) -> None:
    """Two brokers in one process count only their own requests; PROXY_CALLS shows in both."""
    async with broker() as one, broker() as two:
        assert_token(await one.get("/token", headers=orders()))
        before = await scrape(two)
        PROXY_CALLS.labels("checkout", "2xx").inc()
        first, second = await scrape(one), await scrape(two)
    assert first.total("token_broker_token_requests_total") == 1
    assert second.total("token_broker_token_requests_total") == 0
    proxy = "token_broker_proxy_calls_total"
    assert "token_broker_proxy_calls" in second.families
    moved = second.value(proxy, client="checkout", status_class="2xx")
    assert moved == before.value(proxy, client="checkout", status_class="2xx") + 1
    assert first.value(proxy, client="checkout", status_class="2xx") == moved


@pytest.mark.parametrize("store_config", ["redis"], indirect=True)
async def test_refresh_lock_wait_and_l2_hit_across_two_instances(
    broker: BrokerFactory, emulator: Emulator
) -> None:
    """The instance that finds the refresh lock taken counts a wait, then an L2 hit."""
    await emulator.configure(token_latency=0.5)
    async with broker() as one, broker() as two:
        first = asyncio.create_task(one.get("/token", headers=orders()))
        await asyncio.sleep(0.2)  # `one` holds the refresh lock, waiting for the upstream
        assert_token(await two.get("/token", headers=orders()))
        assert_token(await first)
        waited, refreshed = await scrape(two), await scrape(one)
    assert waited.value("token_broker_refresh_lock_waits_total", client="checkout") >= 1
    assert waited.value("token_broker_token_cache_hits_total", client="checkout", level="l2") >= 1
    assert waited.total("token_broker_upstream_token_requests_total") == 0
    assert refreshed.total("token_broker_upstream_token_requests_total", outcome="ok") == 1
    assert refreshed.value("token_broker_fleet_instances") == 2


async def test_store_outage_is_counted_and_shown(
    emulator: Emulator, own_redis: RedisServer
) -> None:
    """With Redis gone (and the budget failing closed), store errors count up, store_up drops
    to 0 and /health says why."""
    store = {"redis_url": own_redis.url, "key_prefix": f"t{uuid.uuid4().hex[:10]}"}
    budget = {"on_store_unavailable": "fail_closed"}
    settings = Settings(**broker_config(emulator, store, budget=budget))
    async with serve_app(create_app(settings)) as base:
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            token = assert_token(await http.get("/token", headers=orders()))["access_token"]
            own_redis.stop()
            refused = await http.post("/budget/acquire", headers=orders())
            assert_error(refused, 503, "store_unavailable")
            body = {"access_token": token + "-not-current"}
            kept = await http.post("/token/invalidate", json=body, headers=orders())
            assert assert_token(kept)["access_token"] == token  # served from memory
            metrics = await scrape(http)
            health = (await http.get("/health")).json()
    assert metrics.value("token_broker_store_errors_total", component="budget") >= 1
    assert metrics.value("token_broker_store_errors_total", component="tokens") >= 1
    assert metrics.value("token_broker_store_up") == 0
    assert health["status"] == "degraded" and "store unreachable" in health["reasons"]
    assert health["fleet"] is None and health["budget"]["used"] is None
    assert {error["source"] for error in health["recent_errors"]} == {"store"}


async def test_process_and_platform_families_and_openmetrics_on_request(
    broker: BrokerFactory,
) -> None:
    """/metrics carries the standard process_* and python_* families, and answers in the
    OpenMetrics format (parsed by prometheus-client's OpenMetrics parser) when asked for it."""
    async with broker() as http:
        plain = await scrape(http)
        open_metrics = await http.get(
            "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
        )
    for family in ("process_resident_memory_bytes", "process_open_fds", "python_info"):
        assert family in plain.families, family
    assert "python_gc_collections" in plain.families
    assert open_metrics.status_code == 200
    assert open_metrics.headers["content-type"].startswith("application/openmetrics-text")
    families = {f.name for f in openmetrics_families(open_metrics.text)}
    assert {"process_resident_memory_bytes", "token_broker_build_info"} <= families
