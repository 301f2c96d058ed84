"""With debug logging on, a run that fetches, invalidates and fails logs no secret, key or token."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterator
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

UNKNOWN_KEY = "tbk_presented_but_unknown_key_00000000000"
LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "httpx", "httpcore")


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Put the logging configuration back as it was once the test is over."""
    root = logging.getLogger()
    saved_root = (root.handlers[:], root.level)
    saved = {
        name: (logging.getLogger(name).handlers[:], logging.getLogger(name).level)
        for name in LOGGERS
    }
    saved_propagate = {name: logging.getLogger(name).propagate for name in LOGGERS}
    try:
        yield
    finally:
        root.handlers[:], level = saved_root
        root.setLevel(level)
        for name, (handlers, level) in saved.items():
            logger = logging.getLogger(name)
            logger.handlers[:] = handlers
            logger.setLevel(level)
            logger.propagate = saved_propagate[name]


async def run_everything(
    http: httpx.AsyncClient, emulator: Emulator
) -> tuple[list[str], list[httpx.Response]]:
    """Fetch, invalidate, get throttled, be refused, see the upstream fail; return tokens + all."""
    tokens: list[str] = []
    seen: list[httpx.Response] = []

    async def call(method: str, url: str, **kwargs: Any) -> httpx.Response:
        response = await http.request(method, url, **kwargs)
        seen.append(response)
        if response.status_code == 200 and "access_token" in response.text:
            tokens.append(response.json()["access_token"])
        return response

    def invalidate(headers: dict[str, str], client: str, token: str) -> Any:
        body = {"client": client, "access_token": token}
        return call("POST", "/token/invalidate", json=body, headers=headers)

    stranger = {"X-API-Key": UNKNOWN_KEY}
    first = assert_token(await call("GET", "/token", headers=orders()))["access_token"]
    basic = assert_token(await call("GET", "/token?client=basic", headers=billing()))
    current = assert_token(await invalidate(orders(), "checkout", first))["access_token"]
    assert_token(await invalidate(orders(), "checkout", first))  # an old one: nothing fetched
    basic = assert_token(await invalidate(billing(), "basic", basic["access_token"]))
    throttled = await invalidate(billing(), "basic", basic["access_token"])
    assert_error(throttled, 429, "refresh_throttled")
    refused = await call("GET", "/token?client=refunds", headers=billing())
    assert_error(refused, 502, "upstream_invalid_client")
    assert_error(await call("GET", "/token", headers=stranger), 401, "unauthorized")
    assert_error(await invalidate(stranger, "checkout", current), 401, "unauthorized")
    await emulator.configure(failure_mode="garbage")
    garbage = await call("GET", "/token?client=payouts", headers=billing())
    assert_error(garbage, 503, "upstream_unavailable")
    await emulator.configure(failure_mode="unavailable")
    unavailable = await invalidate(orders(), "checkout", current)
    assert_error(unavailable, 503, "upstream_unavailable")
    await call("GET", "/health")
    await call("GET", "/health/ready")
    return tokens, seen


async def test_debug_logs_never_contain_secrets_keys_or_tokens(
    restore_logging: None,
    capfd: pytest.CaptureFixture[str],
    broker: BrokerFactory,
    emulator: Emulator,
    tmp_path: Path,
) -> None:
    """No secret, API key or token appears in debug logs, /health or error bodies of a full run."""
    # Configured here, not in a fixture: the handler must bind to the stderr capfd captures now.
    configure_logging("debug", as_json=True)
    await emulator.configure(clients={EMULATOR_ID: EMULATOR_SECRET, "basic-id": FILE_SECRET})
    callers = {
        "billing": {
            "api_key_sha256": hash_api_key(API_KEYS["billing"]),
            "clients": ["checkout", "payouts", "refunds", "basic"],
        }
    }
    async with broker(
        clients_patch={"min_forced_refresh_interval_seconds": 0},
        clients=secret_laden_clients(emulator, tmp_path),
        callers=callers,
    ) as http:
        tokens, responses = await run_everything(http, emulator)
    logging.getLogger("tests").debug("end of run")  # proves debug lines reach the capture
    out, err = capfd.readouterr()
    captured = out + err

    basic_pair = base64.b64encode(f"basic-id:{FILE_SECRET}".encode()).decode()
    forbidden = {
        "client secret": EMULATOR_SECRET,
        "wrong client secret": WRONG_SECRET,
        "secret from file": FILE_SECRET,
        "basic auth header": basic_pair,
        "unknown api key": UNKNOWN_KEY,
        **{f"api key of {name}": key for name, key in API_KEYS.items()},
        **{f"token {i}": token for i, token in enumerate(tokens)},
    }
    assert len(set(tokens)) >= 4
    lines = [json.loads(line) for line in captured.splitlines() if line.startswith("{")]
    events = {line.get("event") for line in lines}
    assert {"token.issued", "upstream.credentials_rejected", "upstream.unavailable"} <= events
    assert "end of run" in events
    assert any(line["level"] == "debug" for line in lines)
    assert "Logging error" not in captured
    logged_fps = {line.get("token_fp") for line in lines}
    assert {fingerprint(token) for token in tokens} <= logged_fps  # logged, as fingerprints
    for what, value in forbidden.items():
        assert value not in captured, f"{what} found in the log output"
        for response in responses:
            if response.status_code != 200:
                assert value not in response.text, f"{what} in {response.request.url}"
    health = next(r for r in responses if r.request.url.path == "/health")
    for what, value in forbidden.items():
        assert value not in health.text, f"{what} in /health"
    # The first line of defence is not to log them at all, not the scrubber behind it.
    assert "[redacted]" not in captured


def test_redactor_keeps_configured_secrets_however_many_tokens_follow() -> None:
    """Client secrets are scrubbed for the life of the process; tokens only while recent."""
    redactor = Redactor()
    redactor.add_secret("client-secret-value-0001")
    for n in range(1000):
        redactor.add(f"access-token-{n:06d}")
    line = redactor.scrub("a=client-secret-value-0001 b=access-token-000999 c=access-token-000000")
    assert line == "a=[redacted] b=[redacted] c=access-token-000000"


@pytest.mark.usefixtures("restore_logging")
def test_upstream_urls_from_httpx_are_logged_only_at_debug() -> None:
    """At info, httpx's per-request lines (proxied paths and queries) are not logged."""
    configure_logging("info", as_json=True)
    at_info = logging.getLogger("httpx").isEnabledFor(logging.INFO)
    configure_logging("debug", as_json=True)
    at_debug = logging.getLogger("httpx").isEnabledFor(logging.INFO)
    assert (at_info, at_debug) == (False, True)
