"""Assertions on the contract's response shapes, shared by the HTTP tests."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import API_KEYS, EMULATOR_ID, EMULATOR_SECRET, Emulator

TOKEN_FIELDS = {"access_token", "token_type", "expires_in", "expires_at"}
NEVER_IN_RESPONSES = (EMULATOR_SECRET, *API_KEYS.values())


def orders() -> dict[str, str]:
    """Headers of the caller `orders` (allowed only `checkout`)."""
    return {"X-API-Key": API_KEYS["orders"]}


def billing() -> dict[str, str]:
    """Headers of the caller `billing` (allowed `checkout` and `payouts`)."""
    return {"X-API-Key": API_KEYS["billing"]}


def assert_token(response: httpx.Response) -> dict[str, Any]:
    """A 200 token response in the contract's shape; returns its body."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert "no-store" in response.headers["cache-control"]
    body: dict[str, Any] = response.json()
    assert set(body) == TOKEN_FIELDS
    assert isinstance(body["access_token"], str) and body["access_token"]
    assert body["token_type"] == "Bearer"
    assert type(body["expires_in"]) is int and body["expires_in"] >= 0
    assert type(body["expires_at"]) is int
    # expires_in counts down to expires_at: their difference is the moment of the answer, which
    # lies in the (recent) past; callers check tighter bounds where they know the request time.
    answered_at = body["expires_at"] - body["expires_in"]
    assert time.time() - 60 <= answered_at <= time.time() + 1
    for secret in NEVER_IN_RESPONSES:
        assert secret not in response.text
    return body


def assert_error(
    response: httpx.Response, status: int, code: str, *, hidden: tuple[str, ...] = ()
) -> dict[str, Any]:
    """A contract error: the status, JSON {error, error_description}, nothing secret inside."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    assert set(body) == {"error", "error_description"}, body
    assert body["error"] == code
    assert isinstance(body["error_description"], str) and body["error_description"]
    for secret in (*NEVER_IN_RESPONSES, *hidden):
        assert secret not in response.text
    return body


def retry_after(response: httpx.Response) -> int:
    """The Retry-After header as whole seconds (it must be present and at least 1)."""
    value = response.headers["retry-after"]
    assert value.isdigit(), value
    assert int(value) >= 1
    return int(value)


WRONG_SECRET = "refunds-wrong-secret-value-5521"  # the refunds client's (rejected) secret
FILE_SECRET = "basic-auth-secret-from-file-8830"


def secret_laden_clients(emulator: Emulator, tmp_path: Path) -> dict[str, Any]:
    """Extra clients: `refunds` with a wrong secret, `basic` with HTTP Basic and a secret file."""
    secret_file = tmp_path / "basic-secret"
    secret_file.write_text(FILE_SECRET + "\n", encoding="utf-8")
    common = {"token_url": emulator.token_url, "api_base_url": emulator.base_url}
    return {
        "refunds": {**common, "client_id": EMULATOR_ID, "client_secret": WRONG_SECRET},
        "basic": {
            **common,
            "client_id": "basic-id",
            "client_secret_file": str(secret_file),
            "client_auth": "basic",
            "min_forced_refresh_interval_seconds": 60,
        },
    }
