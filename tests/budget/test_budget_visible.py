"""Per caller budget figures in /health, the dashboard and /metrics, on both stores."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.conftest import BrokerFactory
from tests.contract import billing, orders
from tests.observability.prom import scrape


async def test_health_and_metrics_show_grants_and_waiters_per_caller(
    broker: BrokerFactory, store_config: dict[str, Any]
) -> None:
    """With the window full, a granted permit counts for its caller and a request waiting for
    the next one counts as waiting for its caller, in /health, the dashboard and /metrics."""
    budget = {"limit": 2, "window_seconds": 5, "safety_margin_seconds": 0}
    async with broker(budget=budget) as http:
        for _ in range(2):
            assert (await http.post("/budget/acquire", headers=orders())).status_code == 200
        waiter = asyncio.ensure_future(
            http.post("/budget/acquire?client=checkout&wait=8", headers=billing())
        )
        for _ in range(50):
            report = (await http.get("/health")).json()["budget"]
            if report["callers"]["billing"]["waiting"]:
                break
            await asyncio.sleep(0.05)
        page = (await http.get("/health", headers={"Accept": "text/html"})).text
        metrics = await scrape(http)
        assert (await waiter).status_code == 200
    assert report["mode"] == "shared" and not report["degraded"]
    assert report["callers"] == {
        "orders": {"granted": 2, "waiting": 0},
        "billing": {"granted": 0, "waiting": 1},
    }
    assert report["token_requests"] == {"granted": 0, "waiting": 0}
    assert 'id="budget-callers"' in page and 'data-caller="billing"' in page
    assert metrics.value("token_broker_budget_caller_granted", caller="orders") == 2
    assert metrics.value("token_broker_budget_caller_waiting", caller="billing") == 1
    assert metrics.value("token_broker_budget_local_share") == 0


async def test_token_requests_show_apart_from_callers(
    broker: BrokerFactory, store_config: dict[str, Any]
) -> None:
    """With count_token_requests, the broker's own token request counts under token_requests
    (and its own gauge), not under the caller that caused it."""
    async with broker(budget={"count_token_requests": True, "limit": 5}) as http:
        assert (await http.get("/token", headers=orders())).status_code == 200
        report = (await http.get("/health")).json()["budget"]
        metrics = await scrape(http)
    assert report["token_requests"]["granted"] == 1
    assert report["callers"]["orders"]["granted"] == 0
    assert metrics.value("token_broker_budget_token_requests_granted") == 1
