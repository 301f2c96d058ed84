"""RFC 7009 revocation beside the drop-in token endpoints, driven by authlib and raw requests."""

from __future__ import annotations

import asyncio
import ssl
import warnings
from typing import Any

import pytest
from authlib.deprecate import AuthlibDeprecationWarning

from tests.api.test_oauth import (
    FORM,
    METHODS,
    ORDERS_KEY,
    WRONG_KEY,
    assert_oauth_error,
    basic,
    cached_token,
    credentials,
)
from tests.conftest import BrokerFactory, Emulator

with warnings.catch_warnings():
    # As in test_oauth.py: authlib 1.9 warns at import that it prefers `httpx2`; scoped here.
    warnings.filterwarnings(
        "ignore", "The httpx module is deprecated", category=AuthlibDeprecationWarning
    )
    from authlib.integrations.httpx_client import AsyncOAuth2Client

TLS = ssl.create_default_context()
PATHS = {  # token endpoint -> its revocation endpoint
    "/oauth2/checkout/token": "/oauth2/checkout/revoke",
    "/auth/realms/Paysera/protocol/openid-connect/token": (
        "/auth/realms/Paysera/protocol/openid-connect/revoke"
    ),
}
CHECKOUT_REVOKE = "/oauth2/checkout/revoke"
PAYSERA_REVOKE = "/auth/realms/Paysera/protocol/openid-connect/revoke"


def revocation(token: str, caller: str = "orders", **extra: str) -> dict[str, str]:
    """A revocation form with client_secret_post credentials."""
    form = credentials(caller, **extra)
    del form["grant_type"]
    return {**form, "token": token}


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
@pytest.mark.parametrize("token_path", list(PATHS))
async def test_authlib_client_recovers_from_a_revoked_token(
    broker: BrokerFactory, emulator: Emulator, token_path: str, method: str
) -> None:
    """authlib: token from the drop-in endpoint, the upstream revokes it (401), revoke_token at
    the broker, fetch_token again: a new token the upstream accepts, one more upstream request."""
    async with (
        broker() as http,
        AsyncOAuth2Client(
            "orders", ORDERS_KEY, token_endpoint_auth_method=method, verify=TLS
        ) as oauth,
    ):
        token_url = f"{http.base_url}{token_path}"
        first = await oauth.fetch_token(token_url, grant_type="client_credentials")
        await emulator.revoke()
        refused = await oauth.get(f"{emulator.base_url}{METHODS}")
        again = await oauth.fetch_token(token_url, grant_type="client_credentials")
        assert again["access_token"] == first["access_token"]  # the problem RFC 7009 solves
        revoked = await oauth.revoke_token(f"{http.base_url}{PATHS[token_path]}")
        fresh = await oauth.fetch_token(token_url, grant_type="client_credentials")
        accepted = await oauth.get(f"{emulator.base_url}{METHODS}")
        assert await cached_token(http) == fresh["access_token"]
    assert refused.status_code == 401
    assert revoked.status_code == 200
    assert revoked.headers["cache-control"] == "no-store"
    assert revoked.json() == {}
    assert fresh["access_token"] != first["access_token"]
    assert accepted.status_code == 200, accepted.text
    assert (await emulator.stats())["token_requests"] == 2


async def test_any_other_token_is_200_and_nothing_happens(
    broker: BrokerFactory, emulator: Emulator
) -> None:
    """An unknown, old or oversized token (with any hint) is 200; the cached token stays."""
    async with broker() as http:
        cached = await cached_token(http)
        others = ["not-a-token", cached + "x", "y" * 9000, cached[:-1]]
        answers = [
            await http.post(CHECKOUT_REVOKE, data=revocation(other), headers=FORM)
            for other in others
        ]
        hinted = await http.post(
            CHECKOUT_REVOKE,
            data=revocation("nope", token_type_hint="refresh_token"),
            headers=FORM,
        )
        assert await cached_token(http) == cached
    assert [a.status_code for a in [*answers, hinted]] == [200] * 5
    assert (await emulator.stats())["token_requests"] == 1


async def test_revoking_the_fresh_token_again_is_throttled(
    broker: BrokerFactory, emulator: Emulator
) -> None:
    """Revoking the token a forced refresh just fetched is 429 with Retry-After, and it stays."""
    async with broker() as http:
        first = await cached_token(http)
        revoked = await http.post(CHECKOUT_REVOKE, data=revocation(first), headers=FORM)
        second = await cached_token(http)
        throttled = await http.post(CHECKOUT_REVOKE, data=revocation(second), headers=FORM)
        still = await cached_token(http)
    assert revoked.status_code == 200 and second != first
    body = assert_oauth_error(throttled, 429, "temporarily_unavailable")
    assert "force-refreshed" in body["error_description"]
    assert 1 <= int(throttled.headers["retry-after"]) <= 10
    assert still == second
    assert (await emulator.stats())["token_requests"] == 2


async def test_paysera_path_revokes_whichever_client_holds_the_token(
    broker: BrokerFactory, emulator: Emulator
) -> None:
    """On the Paysera path a caller with two clients revokes payouts' token; checkout's stays."""
    async with broker() as http:
        checkout, payouts = await cached_token(http), await cached_token(http, "payouts")
        answer = await http.post(PAYSERA_REVOKE, data=revocation(payouts, "billing"), headers=FORM)
        assert await cached_token(http) == checkout
        assert await cached_token(http, "payouts") != payouts
    assert answer.status_code == 200
    assert (await emulator.stats())["token_requests"] == 3


# id -> (path, request arguments, status, error)
ERRORS: dict[str, tuple[str, dict[str, Any], int, str]] = {
    "no credentials": (
        CHECKOUT_REVOKE,
        {"data": {"token": "t"}, "headers": FORM},
        401,
        "invalid_client",
    ),
    "wrong secret": (
        CHECKOUT_REVOKE,
        {"data": revocation("t", client_secret=WRONG_KEY), "headers": FORM},
        401,
        "invalid_client",
    ),
    "wrong secret in basic": (
        PAYSERA_REVOKE,
        {"data": {"token": "t"}, "headers": {**FORM, **basic("orders", WRONG_KEY)}},
        401,
        "invalid_client",
    ),
    "another caller's key": (
        CHECKOUT_REVOKE,
        {"data": revocation("t", "billing", client_secret=ORDERS_KEY), "headers": FORM},
        401,
        "invalid_client",
    ),
    "missing token": (
        CHECKOUT_REVOKE,
        {"data": {"client_id": "orders", "client_secret": ORDERS_KEY}, "headers": FORM},
        400,
        "invalid_request",
    ),
    "empty token": (
        CHECKOUT_REVOKE,
        {"data": revocation(""), "headers": FORM},
        400,
        "invalid_request",
    ),
    "json body": (CHECKOUT_REVOKE, {"json": revocation("t")}, 400, "invalid_request"),
    "unknown client": (
        "/oauth2/nonesuch/revoke",
        {"data": revocation("t"), "headers": FORM},
        400,
        "invalid_request",
    ),
    "client not allowed": (
        "/oauth2/payouts/revoke",
        {"data": revocation("t"), "headers": FORM},
        400,
        "unauthorized_client",
    ),
}


async def test_revocation_errors(broker: BrokerFactory, emulator: Emulator) -> None:
    """Each bad revocation in ERRORS gets its RFC 6749 status and error; nothing is discarded."""
    async with broker() as http:
        cached = await cached_token(http)
        for case, (path, request_args, status, error) in ERRORS.items():
            if "data" in request_args and request_args["data"].get("token") == "t":
                request_args = {**request_args, "data": {**request_args["data"], "token": cached}}
            response = await http.post(path, **request_args)
            try:
                assert_oauth_error(response, status, error)
            except AssertionError as exc:
                raise AssertionError(f"case {case!r}: {exc}") from None
        assert await cached_token(http) == cached
    assert (await emulator.stats())["token_requests"] == 1


@pytest.mark.parametrize("store_config", ["redis"], indirect=True)
async def test_a_revocation_is_one_upstream_request_for_the_fleet(
    broker: BrokerFactory, emulator: Emulator
) -> None:
    """After a revocation at one of two brokers on one Redis, 20 token requests spread over both
    get one new token, fetched once."""
    async with broker() as first, broker() as second:
        old = await cached_token(first)
        assert await cached_token(second) == old
        await emulator.configure(token_latency=0.3)
        revoked = await first.post(CHECKOUT_REVOKE, data=revocation(old), headers=FORM)
        answers = await asyncio.gather(
            *(
                (first, second)[i % 2].post(
                    "/oauth2/checkout/token", data=credentials(), headers=FORM
                )
                for i in range(20)
            )
        )
    assert revoked.status_code == 200
    tokens = {a.json()["access_token"] for a in answers}
    assert len(tokens) == 1 and old not in tokens
    assert (await emulator.stats())["token_requests"] == 2
