"""The emulator's token endpoint over real HTTP: client authentication, grants, failure modes."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable

import httpx
import pytest

from app.emulator import EmulatorSettings
from tests.emulator.support import (
    FORM,
    METHODS_PATH,
    TOKEN_PATH,
    basic,
    bearer,
    emulator,
    get_token,
    stats,
)

# --- token endpoint ---------------------------------------------------------------------------


async def test_form_auth_returns_the_guides_token_shape() -> None:
    """Form client credentials get 200 with exactly the guide's JSON fields and no-store."""
    async with emulator() as client:
        response = await client.post(TOKEN_PATH, data=FORM)
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert set(body) == {
        "access_token",
        "expires_in",
        "refresh_expires_in",
        "token_type",
        "not-before-policy",
        "scope",
    }
    assert body["access_token"].startswith("emu_") and len(body["access_token"]) > 40
    assert body["expires_in"] == 3600
    assert body["refresh_expires_in"] == 0
    assert body["token_type"] == "Bearer"
    assert body["not-before-policy"] == 0
    assert body["scope"] == "profile email"


async def test_each_token_is_fresh() -> None:
    """Two token requests get two different opaque tokens."""
    async with emulator() as client:
        assert await get_token(client) != await get_token(client)


async def test_basic_auth_url_decodes_special_characters() -> None:
    """HTTP Basic credentials are form-urlencoded per RFC 6749 §2.3.1 and decoded before use."""
    secret = "p@ss:w/rd+ %&=é"
    settings = EmulatorSettings(clients={"shop client": secret})
    grant = {"grant_type": "client_credentials"}
    async with emulator(settings) as client:
        good = await client.post(TOKEN_PATH, data=grant, headers=basic("shop client", secret))
        raw_pair = base64.b64encode(f"shop client:{secret}".encode()).decode()
        raw = await client.post(
            TOKEN_PATH, data=grant, headers={"Authorization": f"Basic {raw_pair}"}
        )
    assert good.status_code == 200
    assert good.json()["access_token"].startswith("emu_")
    # Unencoded, "+" decodes to a space and "%&=" is not a valid escape: not the same secret.
    assert raw.status_code == 401
    assert raw.headers["www-authenticate"].startswith("Basic")


# One server for many stateless cases: each server start and stop costs ~0.2 s.
BAD_CREDENTIALS = {
    "bad-secret": ({**FORM, "client_secret": "wrong"}, {}),
    "unknown-client": ({**FORM, "client_id": "nobody"}, {}),
    "no-credentials": ({"grant_type": "client_credentials"}, {}),
    "basic-bad-secret": ({"grant_type": "client_credentials"}, basic("demo-client", "wrong")),
    "basic-garbled": ({"grant_type": "client_credentials"}, {"Authorization": "Basic !!x!!"}),
}


async def test_bad_credentials_are_invalid_client() -> None:
    """Wrong, unknown, missing or garbled client credentials get 401 invalid_client."""
    async with emulator() as client:
        for case, (form, headers) in BAD_CREDENTIALS.items():
            response = await client.post(TOKEN_PATH, data=form, headers=headers)
            assert response.status_code == 401, case
            assert response.json() == {
                "error": "invalid_client",
                "error_description": "Invalid client credentials",
            }, case
            assert "demo-secret" not in response.text, case


async def test_wrong_or_missing_grant_type_is_400() -> None:
    """A grant other than client_credentials, or none, gets 400 with the RFC 6749 error code."""
    credentials = {k: v for k, v in FORM.items() if k != "grant_type"}
    cases = [
        ({**credentials, "grant_type": "password"}, "unsupported_grant_type"),
        ({**credentials, "grant_type": ""}, "invalid_request"),
        (credentials, "invalid_request"),
    ]
    async with emulator() as client:
        for form, error in cases:
            response = await client.post(TOKEN_PATH, data=form)
            assert (response.status_code, response.json()["error"]) == (400, error), form


async def test_non_form_body_and_double_authentication_are_invalid_request() -> None:
    """A JSON body, or Basic auth plus a form secret, get 400 invalid_request."""
    async with emulator() as client:
        as_json = await client.post(TOKEN_PATH, json=FORM)
        both = await client.post(TOKEN_PATH, data=FORM, headers=basic("demo-client", "demo-secret"))
    assert (as_json.status_code, as_json.json()["error"]) == (400, "invalid_request")
    assert (both.status_code, both.json()["error"]) == (400, "invalid_request")


async def test_token_latency_delays_the_answer() -> None:
    """With token_latency set, the token endpoint answers no sooner than that."""
    async with emulator(EmulatorSettings(token_latency=0.2)) as client:
        started = time.monotonic()
        await get_token(client)
    assert time.monotonic() - started >= 0.2


async def test_concurrent_token_requests_are_counted_on_arrival() -> None:
    """Slow concurrent token requests all show in token_requests before any is answered."""
    async with emulator(EmulatorSettings(token_latency=0.4)) as client:
        pending = [asyncio.create_task(client.post(TOKEN_PATH, data=FORM)) for _ in range(8)]
        await asyncio.sleep(0.2)
        during = await stats(client)
        responses = await asyncio.gather(*pending)
        after = await stats(client)
    assert (during["token_requests"], during["tokens_issued"]) == (8, 0)
    assert [r.status_code for r in responses] == [200] * 8
    assert (after["token_requests"], after["tokens_issued"]) == (8, 8)


# --- failure modes ----------------------------------------------------------------------------


def _is_not_json(response: httpx.Response) -> bool:
    try:
        response.json()
    except ValueError:
        return True
    return False


@pytest.mark.parametrize(
    ("mode", "status", "check"),
    [
        ("unavailable", 503, lambda r: r.json()["error"] == "temporarily_unavailable"),
        ("garbage", 200, _is_not_json),
        ("html", 500, lambda r: r.headers["content-type"].startswith("text/html")),
        ("no_token", 200, lambda r: "access_token" not in r.json() and "expires_in" in r.json()),
        ("zero_expiry", 200, lambda r: r.json()["expires_in"] == 0),
        ("huge_expiry", 200, lambda r: r.json()["expires_in"] == 10**9),
    ],
)
async def test_failure_mode_answers_like_a_broken_upstream(
    mode: str, status: int, check: Callable[[httpx.Response], bool]
) -> None:
    """Each answering failure mode gives the token endpoint's client the broken answer it names."""
    async with emulator(EmulatorSettings(failure_mode=mode)) as client:
        response = await client.post(TOKEN_PATH, data=FORM)
    assert response.status_code == status
    assert check(response)


async def test_zero_expiry_token_is_already_expired() -> None:
    """A token issued with expires_in 0 is refused by the integration API as expired."""
    async with emulator(EmulatorSettings(failure_mode="zero_expiry")) as client:
        response = await client.get(METHODS_PATH, headers=bearer(await get_token(client)))
    assert response.status_code == 401
    assert response.json()["error_description"] == "Token is expired"


async def test_reset_mode_drops_the_connection_without_a_response() -> None:
    """In reset mode the client gets a transport error, and the server keeps serving after."""
    async with emulator(EmulatorSettings(failure_mode="reset")) as client:
        with pytest.raises(httpx.TransportError) as caught:
            await client.post(TOKEN_PATH, data=FORM)
        await client.post("/_emulator/config", json={"failure_mode": "none"})
        recovered = await client.post(TOKEN_PATH, data=FORM)
        counted = await stats(client)
    assert not isinstance(caught.value, httpx.TimeoutException)
    assert recovered.status_code == 200
    assert counted["token_requests"] == 2


async def test_hang_mode_never_answers_and_lets_go_when_the_client_does() -> None:
    """In hang mode a 0.3 s client timeout fires, and the abandoned request ends with the client."""
    started = time.monotonic()
    async with emulator(EmulatorSettings(failure_mode="hang")) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.post(TOKEN_PATH, data=FORM, timeout=0.3)
        counted = await stats(client)
    # serve_app waits for in-flight requests: an hour, had the handler missed the disconnect.
    assert time.monotonic() - started < 3
    assert (counted["token_requests"], counted["tokens_issued"]) == (1, 0)


async def test_failure_modes_leave_the_integration_api_alone() -> None:
    """A token endpoint failure mode does not affect the integration API."""
    async with emulator() as client:
        token = await get_token(client)
        await client.post("/_emulator/config", json={"failure_mode": "unavailable"})
        response = await client.get(METHODS_PATH, headers=bearer(token))
    assert response.status_code == 200
