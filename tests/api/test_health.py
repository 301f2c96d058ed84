"""`/health`, `/health/live` and `/health/ready`: contract fields and honest status."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from app import __version__
from tests.conftest import BrokerFactory, Emulator
from tests.contract import NEVER_IN_RESPONSES, assert_error, assert_token, billing, orders

CLIENT_FIELDS = {"token", "expires_in", "last_refresh_at", "last_error"}


async def health(http: httpx.AsyncClient) -> dict[str, Any]:
    """GET /health without credentials; returns the JSON document."""
    response = await http.get("/health")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    for secret in NEVER_IN_RESPONSES:
        assert secret not in response.text
    return response.json()  # type: ignore[no-any-return]


async def test_health_has_contract_fields_before_any_request(
    broker: BrokerFactory, store_config: dict[str, Any]
) -> None:
    """A fresh broker reports ok, version, instance, store, budget and every client missing."""
    async with broker() as http:
        report = await health(http)
    assert report["status"] == "ok"
    assert report["version"] == __version__
    assert isinstance(report["instance"], str) and report["instance"]
    assert report["store"] == {"kind": "redis" if store_config else "memory", "ok": True}
    assert set(report["clients"]) == {"checkout", "payouts"}
    for client in report["clients"].values():
        assert CLIENT_FIELDS <= set(client)
        assert client["token"] == "missing"
        assert client["expires_in"] is None
        assert client["last_refresh_at"] is None
        assert client["last_error"] is None
    budget = report["budget"]
    assert isinstance(budget, dict), budget
    assert {"limit", "window_seconds", "used", "remaining"} <= set(budget)
    assert (budget["limit"], budget["window_seconds"]) == (50, 60)


async def test_health_shows_a_fetched_token_without_revealing_it(broker: BrokerFactory) -> None:
    """After a fetch the client is valid, unasked clients stay missing, status stays ok."""
    async with broker() as http:
        before = time.time()
        token = assert_token(await http.get("/token", headers=orders()))["access_token"]
        response = await http.get("/health")
    assert token not in response.text
    report = response.json()
    checkout = report["clients"]["checkout"]
    assert checkout["token"] == "valid"
    assert 3590 <= checkout["expires_in"] <= 3600
    assert before - 1 <= checkout["last_refresh_at"] <= time.time()
    assert checkout["last_error"] is None
    # A client nobody has asked for yet does not degrade the status.
    assert report["clients"]["payouts"]["token"] == "missing"
    assert report["status"] == "ok"


async def test_failed_refresh_degrades(broker: BrokerFactory, emulator: Emulator) -> None:
    """A client whose refresh failed makes /health degraded while another still serves."""
    async with broker() as http:
        assert_token(await http.get("/token?client=checkout", headers=billing()))
        await emulator.configure(failure_mode="unavailable")
        assert_error(
            await http.get("/token?client=payouts", headers=billing()), 503, "upstream_unavailable"
        )
        report = await health(http)
    assert report["status"] == "degraded"
    payouts = report["clients"]["payouts"]
    assert payouts["token"] == "missing"
    assert payouts["last_error"]
    assert report["clients"]["checkout"]["last_error"] is None


@pytest.mark.parametrize("store_config", ["redis"], indirect=True)
async def test_a_refresh_by_another_instance_clears_the_failure(
    broker: BrokerFactory, emulator: Emulator
) -> None:
    """An instance whose refresh failed is ok again once it serves a newer token that another
    instance fetched (it need not refresh successfully itself)."""
    async with broker() as one, broker() as two:
        await emulator.configure(failure_mode="unavailable")
        assert_error(await one.get("/token", headers=orders()), 503, "upstream_unavailable")
        assert (await health(one))["status"] == "down"
        await emulator.configure(failure_mode="none")
        await asyncio.sleep(1.1)  # the fleet's hold after the failure (at most 1 s) lapses
        fetched = assert_token(await two.get("/token", headers=orders()))
        served = assert_token(await one.get("/token", headers=orders()))
        report = await health(one)
    assert served["access_token"] == fetched["access_token"]
    assert (await emulator.stats())["tokens_issued"] == 1
    assert report["status"] == "ok", report["reasons"]
    assert report["clients"]["checkout"]["last_error"] is None


async def test_nothing_servable_is_down(broker: BrokerFactory, emulator: Emulator) -> None:
    """When no requested client can be served, /health says down."""
    await emulator.configure(failure_mode="unavailable")
    async with broker() as http:
        assert_error(await http.get("/token", headers=orders()), 503, "upstream_unavailable")
        report = await health(http)
    assert report["status"] == "down"
    assert report["clients"]["checkout"]["last_error"]


async def test_rejected_credentials_degrade_without_leaking(
    broker: BrokerFactory, emulator: Emulator
) -> None:
    """Rejected credentials show up as the client's last_error, with no secret in it."""
    await emulator.configure(clients={"someone-else": "other-secret"})
    async with broker() as http:
        assert_error(await http.get("/token", headers=orders()), 502, "upstream_invalid_client")
        report = await health(http)
    assert report["status"] in ("degraded", "down")
    assert "invalid_client" in report["clients"]["checkout"]["last_error"]


async def test_health_endpoints_need_no_credentials(broker: BrokerFactory) -> None:
    """/health/live, /health/ready and /health answer 200 without (or with a bad) API key."""
    async with broker() as http:
        live = await http.get("/health/live")
        ready = await http.get("/health/ready")
        with_bad_key = await http.get("/health", headers={"X-API-Key": "tbk_unknown"})
    assert (live.status_code, ready.status_code, with_bad_key.status_code) == (200, 200, 200)


async def test_invalidated_token_is_not_reported_valid(
    broker: BrokerFactory, emulator: Emulator
) -> None:
    """With the only token invalidated and the upstream down, /health says down, not valid."""
    async with broker() as http:
        token = assert_token(await http.get("/token", headers=orders()))["access_token"]
        await emulator.configure(failure_mode="unavailable")
        body = {"access_token": token}
        invalidated = await http.post("/token/invalidate", json=body, headers=orders())
        assert_error(invalidated, 503, "upstream_unavailable")
        assert_error(await http.get("/token", headers=orders()), 503, "upstream_unavailable")
        report = await health(http)
    assert report["clients"]["checkout"]["token"] != "valid"
    assert report["status"] == "down"
