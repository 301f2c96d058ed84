"""After every path at debug level, no token, secret or key in logs, /health (both) or /metrics.

Also the two defences behind that: the redactor's memory of secrets, and httpx's request lines
(proxied paths and queries) kept out of logs below debug.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.auth.callers import hash_api_key
from app.observability.logs import Redactor, configure_logging
from app.tokens.model import fingerprint
from tests.conftest import API_KEYS, EMULATOR_ID, EMULATOR_SECRET, BrokerFactory, Emulator
from tests.contract import (
    FILE_SECRET,
    WRONG_SECRET,
    assert_error,
    assert_token,
    billing,
    orders,
    secret_laden_clients,
)
from tests.observability.conftest import LogCapture
from tests.observability.prom import parse

UNKNOWN_KEY = "tbk_presented_but_unknown_key_11111111111"
METHODS = "/proxy/checkout/checkout-project/integration/v1/methods"
FORCED_FLOOR = 1  # checkout's min_forced_refresh_interval_seconds: the lowest allowed


class Run:
    """Every response of a scripted run, and the tokens handed out along the way."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http
        self.responses: list[httpx.Response] = []
        self.tokens: list[str] = []

    async def call(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """Send and remember a request; note any token it returned."""
        response = await self.http.request(method, url, **kwargs)
        self.responses.append(response)
        if response.status_code == 200 and '"access_token"' in response.text:
            self.tokens.append(response.json()["access_token"])
        return response

    async def invalidate(self, headers: dict[str, str], client: str, token: str) -> httpx.Response:
        """POST /token/invalidate."""
        body = {"client": client, "access_token": token}
        return await self.call("POST", "/token/invalidate", json=body, headers=headers)


async def fetch_invalidate_proxy(run: Run, emulator: Emulator) -> None:
    """Tokens fetched and invalidated (also throttled), proxied calls, one after a revocation."""
    first = assert_token(await run.call("GET", "/token", headers=orders()))["access_token"]
    basic = assert_token(await run.call("GET", "/token?client=basic", headers=billing()))
    assert_token(await run.invalidate(orders(), "checkout", first))
    assert_token(await run.invalidate(orders(), "checkout", first))  # an old one: no fetch
    basic = assert_token(await run.invalidate(billing(), "basic", basic["access_token"]))
    throttled = await run.invalidate(billing(), "basic", basic["access_token"])
    assert_error(throttled, 429, "refresh_throttled")
    assert (await run.call("GET", METHODS, headers=orders())).status_code == 200
    await asyncio.sleep(FORCED_FLOOR + 0.1)  # checkout may be force-refreshed again
    await emulator.revoke()  # the next proxied call meets a 401, invalidates and retries
    assert (await run.call("GET", METHODS, headers=orders())).status_code == 200
    assert_token(await run.call("GET", "/token", headers=orders()))


async def budget_and_errors(run: Run, emulator: Emulator) -> None:
    """Budget grants until refused, a 429 report, rejected and unknown credentials, outages."""
    statuses = [
        (await run.call("POST", "/budget/acquire", headers=orders())).status_code for _ in range(4)
    ]
    assert 200 in statuses and statuses[-1] == 429
    report = {"status": 429, "headers": {"X-RateLimit-Reset": "2"}}
    assert (await run.call("POST", "/budget/report", json=report, headers=orders())).status_code
    refused = await run.call("GET", "/token?client=refunds", headers=billing())
    assert_error(refused, 502, "upstream_invalid_client")
    stranger = {"X-API-Key": UNKNOWN_KEY}
    assert_error(await run.call("GET", "/token", headers=stranger), 401, "unauthorized")
    current = run.tokens[-1]
    assert_error(await run.invalidate(stranger, "checkout", current), 401, "unauthorized")
    await emulator.configure(failure_mode="garbage")
    garbage = await run.call("GET", "/token?client=payouts", headers=billing())
    assert_error(garbage, 503, "upstream_unavailable")
    await emulator.configure(failure_mode="unavailable")
    await asyncio.sleep(FORCED_FLOOR + 0.1)  # past the floor: the forced refresh is attempted
    assert_error(await run.invalidate(orders(), "checkout", current), 503, "upstream_unavailable")


async def test_no_secret_in_logs_health_dashboard_or_metrics(
    logs: LogCapture, broker: BrokerFactory, emulator: Emulator, tmp_path: Path
) -> None:
    """Fetch, invalidate, proxy, budget and error paths at debug leak nothing anywhere we show."""
    logs.start("debug")
    await emulator.configure(clients={EMULATOR_ID: EMULATOR_SECRET, "basic-id": FILE_SECRET})
    callers = {
        "billing": {
            "api_key_sha256": hash_api_key(API_KEYS["billing"]),
            "clients": ["checkout", "payouts", "refunds", "basic"],
        }
    }
    async with broker(
        clients_patch={"min_forced_refresh_interval_seconds": FORCED_FLOOR},
        clients=secret_laden_clients(emulator, tmp_path),
        callers=callers,
        budget={"limit": 4},
    ) as http:
        run = Run(http)
        await fetch_invalidate_proxy(run, emulator)
        await budget_and_errors(run, emulator)
        health = await run.call("GET", "/health")
        dashboard = await run.call("GET", "/health", headers={"Accept": "text/html"})
        metrics = await run.call("GET", "/metrics")
        await run.call("GET", "/health/ready")
    logging.getLogger("tests").debug("end of run")  # the capture still takes debug lines
    captured, lines = logs.read()

    forbidden = {
        "client secret": EMULATOR_SECRET,
        "rejected client secret": WRONG_SECRET,
        "secret from file": FILE_SECRET,
        "basic auth header": base64.b64encode(f"basic-id:{FILE_SECRET}".encode()).decode(),
        "unknown api key": UNKNOWN_KEY,
        **{f"api key of {name}": key for name, key in API_KEYS.items()},
        **{f"token {i}": token for i, token in enumerate(run.tokens)},
    }
    assert len(set(run.tokens)) >= 5
    shown = {
        "logs": captured,
        "/health": health.text,
        "dashboard": dashboard.text,
        "/metrics": metrics.text,
        **{  # numbered: every response is checked, not the last of each kind
            f"#{i} {r.request.method} {r.request.url.path} {r.status_code}": r.text
            for i, r in enumerate(run.responses)
            # token answers carry their token by design; no error body may name one
            if r.status_code != 200 or '"access_token"' not in r.text
        },
    }
    for where, text in shown.items():
        for what, value in forbidden.items():
            assert value not in text, f"{what} found in {where}"
    assert "[redacted]" not in captured  # not logged at all, rather than scrubbed afterwards
    assert "Logging error" not in captured  # no record was dropped by a failing handler

    # The run did reach every path it claims to, and logged it the safe way.
    events = {line["event"] for line in lines}
    assert {"http.request", "token.issued", "upstream.credentials_rejected"} <= events
    assert {"upstream.unavailable", "upstream.token_obtained"} <= events
    paths = {line.get("path") for line in lines if line["event"] == "http.request"}
    assert {"/proxy/{client}/{path:path}", "/budget/acquire", "/budget/report"} <= paths
    assert any(line["level"] == "debug" for line in lines) and "end of run" in events
    logged_fps = {line.get("token_fp") for line in lines}
    assert {fingerprint(token) for token in run.tokens} <= logged_fps
    assert health.json()["recent_errors"] and "<table" in dashboard.text
    assert parse(metrics.text).total("token_broker_budget_denials_total") >= 1


def test_redactor_keeps_configured_secrets_however_many_tokens_follow() -> None:
    """Client secrets are scrubbed for the life of the process; tokens only while recent."""
    redactor = Redactor()
    redactor.add_secret("client-secret-value-0001")
    for n in range(1000):
        redactor.add(f"access-token-{n:06d}")
    line = redactor.scrub("a=client-secret-value-0001 b=access-token-000999 c=access-token-000000")
    assert line == "a=[redacted] b=[redacted] c=access-token-000000"


@pytest.mark.usefixtures("logs")  # puts the logging configuration back afterwards
def test_upstream_urls_from_httpx_are_logged_only_at_debug() -> None:
    """At info, httpx's per-request lines (proxied paths and queries) are not logged."""
    configure_logging("info", as_json=True)
    at_info = logging.getLogger("httpx").isEnabledFor(logging.INFO)
    configure_logging("debug", as_json=True)
    at_debug = logging.getLogger("httpx").isEnabledFor(logging.INFO)
    assert (at_info, at_debug) == (False, True)
