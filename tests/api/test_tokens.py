"""Every contract status and error code of GET /token and POST /token/invalidate, over real HTTP."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from app.auth.callers import hash_api_key
from app.emulator import FAILURE_MODES
from tests.conftest import API_KEYS, EMULATOR_SECRET, BrokerFactory, Emulator, broker_config
from tests.contract import assert_error, assert_token, billing, orders, retry_after

METHODS = "/checkout-project/integration/v1/methods"


def checkout_with(emulator: Emulator, **changes: Any) -> dict[str, Any]:
    """A `clients` override replacing `checkout` by the default client with `changes`."""
    client = broker_config(emulator, {})["clients"]["checkout"]
    return {"checkout": {**client, **changes}}


# -- 200 -----------------------------------------------------------------------------------------


async def test_token_has_contract_shape_and_works_upstream(
    broker: BrokerFactory, emulator: Emulator
) -> None:
    """GET /token answers 200 with the token JSON, no-store, and the token works upstream."""
    async with broker() as http:
        before = time.time()
        body = assert_token(
            await http.get("/token", params={"client": "checkout"}, headers=orders())
        )
    assert 3590 <= body["expires_in"] <= 3600  # the emulator issues 3600 s tokens
    assert before + 3590 <= body["expires_at"] <= time.time() + 3600
    api = await emulator.http.get(
        METHODS, headers={"Authorization": f"Bearer {body['access_token']}"}
    )
    assert api.status_code == 200


async def test_client_parameter_selects_the_token(broker: BrokerFactory) -> None:
    """?client= is optional for a one-client caller; each named client has its own token."""
    async with broker() as http:
        implicit = assert_token(await http.get("/token", headers=orders()))
        explicit = assert_token(await http.get("/token?client=checkout", headers=orders()))
        shared = assert_token(await http.get("/token?client=checkout", headers=billing()))
        payouts = assert_token(await http.get("/token?client=payouts", headers=billing()))
    assert implicit["access_token"] == explicit["access_token"] == shared["access_token"]
    assert payouts["access_token"] != shared["access_token"]


async def test_invalidate_returns_a_fresh_token(broker: BrokerFactory) -> None:
    """POST /token/invalidate of the cached token answers 200 with a new one (client optional)."""
    async with broker(clients_patch={"min_forced_refresh_interval_seconds": 1}) as http:
        first = assert_token(await http.get("/token", headers=orders()))["access_token"]
        body = {"client": "checkout", "access_token": first}
        second = assert_token(await http.post("/token/invalidate", json=body, headers=orders()))
        await asyncio.sleep(1.1)  # past the forced-refresh floor (1 s, the lowest allowed)
        # A single-client caller may leave `client` out of the body.
        body = {"access_token": second["access_token"]}
        third = assert_token(await http.post("/token/invalidate", json=body, headers=orders()))
        current = assert_token(await http.get("/token", headers=orders()))
    assert len({first, second["access_token"], third["access_token"]}) == 3
    assert current["access_token"] == third["access_token"]


async def test_invalidating_a_token_that_is_not_current_returns_the_current_one(
    broker: BrokerFactory, emulator: Emulator
) -> None:
    """An unknown token (non-ASCII too) discards nothing and fetches nothing: 200, same token."""
    async with broker() as http:
        current = assert_token(await http.get("/token", headers=orders()))["access_token"]
        answers = [
            await http.post("/token/invalidate", json={"access_token": t}, headers=orders())
            for t in ("not-the-current-token", "jeton-périmé-☃")
        ]
    assert [assert_token(a)["access_token"] for a in answers] == [current, current]
    assert (await emulator.stats())["token_requests"] == 1


# -- 401 -----------------------------------------------------------------------------------------


async def test_repeated_api_key_headers_are_401_whatever_their_order(
    broker: BrokerFactory, emulator: Emulator
) -> None:
    """Every credential presented must be valid: a good and a wrong X-API-Key together are 401,
    in either order (the route does not pick the first one)."""
    good, wrong = API_KEYS["orders"], "tbk_not_a_configured_key_0000000000"
    async with broker() as http:
        answers = [
            await http.get("/token", headers=[("X-API-Key", first), ("X-API-Key", second)])
            for first, second in ((good, wrong), (wrong, good), (good, good))
        ]
    for answer in answers:
        assert_error(answer, 401, "unauthorized")
    assert (await emulator.stats())["token_requests"] == 0


BAD_CREDENTIALS = {
    "no key": {},
    "unknown key": {"X-API-Key": "tbk_not_a_configured_key_0000000000"},
    "empty key": {"X-API-Key": ""},
    "key hash instead of key": {"X-API-Key": API_KEYS["orders"][:-1] + "1"},
}


async def test_bad_credentials_are_401_with_www_authenticate(
    broker: BrokerFactory, emulator: Emulator
) -> None:
    """No or unknown API key: 401 unauthorized with WWW-Authenticate on both endpoints."""
    async with broker() as http:
        for name, headers in BAD_CREDENTIALS.items():
            presented = tuple(v for v in headers.values() if v)
            for response in (
                await http.get("/token?client=checkout", headers=headers),
                await http.post(
                    "/token/invalidate",
                    json={"client": "checkout", "access_token": "whatever"},
                    headers=headers,
                ),
            ):
                assert_error(response, 401, "unauthorized", hidden=presented)
                assert "X-API-Key" in response.headers["www-authenticate"], name
    assert (await emulator.stats())["token_requests"] == 0


# -- 403 / 404 / 400 client_required -------------------------------------------------------------


async def test_authorization_errors_have_contract_codes(
    broker: BrokerFactory, emulator: Emulator
) -> None:
    """403 forbidden, 404 unknown_client and 400 client_required, on both endpoints, no fetch."""
    cases = [
        (orders(), "payouts", 403, "forbidden"),
        (billing(), "nope", 404, "unknown_client"),
        (orders(), "nope", 404, "unknown_client"),
        (billing(), None, 400, "client_required"),
    ]
    async with broker() as http:
        for headers, client, status, code in cases:
            params = {"client": client} if client else {}
            body = {"access_token": "x", **({"client": client} if client else {})}
            get = await http.get("/token", params=params, headers=headers)
            post = await http.post("/token/invalidate", json=body, headers=headers)
            for response in (get, post):
                assert response.status_code == status, (client, response.text)
                assert_error(response, status, code)
    assert (await emulator.stats())["token_requests"] == 0


# -- 400 invalid_request -------------------------------------------------------------------------

ECHO_ME = "tok_must_not_be_echoed_5561"
JSON = {"Content-Type": "application/json"}
BAD_BODIES: dict[str, tuple[bytes, dict[str, str]]] = {
    "not json": (b"{not json", JSON),
    "empty body": (b"", JSON),
    "array": (b"[]", JSON),
    "string": (b'"checkout"', JSON),
    "no access_token": (b'{"client": "checkout"}', JSON),
    "empty access_token": (b'{"client": "checkout", "access_token": ""}', JSON),
    "numeric access_token": (b'{"client": "checkout", "access_token": 12345}', JSON),
    "numeric client": (b'{"client": 5, "access_token": "' + ECHO_ME.encode() + b'"}', JSON),
    "unknown field": (
        b'{"client": "checkout", "access_token": "x", "token": "' + ECHO_ME.encode() + b'"}',
        JSON,
    ),
    "access_token too long": (
        b'{"client": "checkout", "access_token": "' + b"a" * 8193 + b'"}',
        JSON,
    ),
    "form body": (
        b"client=checkout&access_token=" + ECHO_ME.encode(),
        {"Content-Type": "application/x-www-form-urlencoded"},
    ),
}


async def test_bad_invalidate_body_is_400_invalid_request(
    broker: BrokerFactory, emulator: Emulator
) -> None:
    """Every malformed invalidate body is 400 invalid_request, without echoing its values."""
    async with broker() as http:
        for name, (content, headers) in BAD_BODIES.items():
            response = await http.post(
                "/token/invalidate", content=content, headers={**orders(), **headers}
            )
            assert response.status_code == 400, name
            assert_error(response, 400, "invalid_request", hidden=(ECHO_ME, "a" * 100))
    assert (await emulator.stats())["token_requests"] == 0


# -- 502 / 503 -----------------------------------------------------------------------------------


async def test_rejected_credentials_are_502(broker: BrokerFactory, emulator: Emulator) -> None:
    """Upstream invalid_client is 502 upstream_invalid_client on both endpoints."""
    await emulator.configure(clients={"someone-else": "other-secret"})
    async with broker() as http:
        get = await http.get("/token", headers=orders())
        post = await http.post(
            "/token/invalidate", json={"access_token": "stale-token-value"}, headers=orders()
        )
    assert_error(get, 502, "upstream_invalid_client")
    assert_error(post, 502, "upstream_invalid_client", hidden=("stale-token-value",))


async def test_wrong_configured_secret_is_502(broker: BrokerFactory, emulator: Emulator) -> None:
    """A wrong client_secret in the config is 502 and the secret is not in the answer."""
    wrong = "wrong-secret-value-77126"
    async with broker(clients=checkout_with(emulator, client_secret=wrong)) as http:
        response = await http.get("/token", headers=orders())
    assert_error(response, 502, "upstream_invalid_client", hidden=(wrong,))
    assert (await emulator.stats())["token_rejected"] == 1


FAILURES = tuple(mode for mode in FAILURE_MODES if mode != "none")


async def test_upstream_failure_without_cached_token_is_503(
    broker: BrokerFactory, emulator: Emulator
) -> None:
    """With nothing cached, each upstream failure mode is 503 upstream_unavailable + Retry-After."""
    # One client per failure mode, so each mode meets a client with no hold from the previous one.
    client = {**checkout_with(emulator)["checkout"], "timeout_seconds": 0.3}
    clients = {mode: dict(client) for mode in FAILURES}
    caller = {"api_key_sha256": hash_api_key(API_KEYS["billing"]), "clients": list(clients)}
    async with broker(clients=clients, callers={"billing": caller}) as http:
        for mode in FAILURES:
            await emulator.configure(failure_mode=mode)
            before = await emulator.stats()
            response = await http.get(f"/token?client={mode}", headers=billing())
            assert response.status_code == 503, (mode, response.text)
            assert_error(response, 503, "upstream_unavailable")
            retry_after(response)
            assert (await emulator.stats())["token_requests"] == before["token_requests"] + 1, mode


async def test_invalidate_while_upstream_down_is_503(
    broker: BrokerFactory, emulator: Emulator
) -> None:
    """Invalidating the only token while the upstream is down is 503 + Retry-After."""
    async with broker() as http:
        old = assert_token(await http.get("/token", headers=orders()))
        await emulator.configure(failure_mode="unavailable")
        response = await http.post(
            "/token/invalidate", json={"access_token": old["access_token"]}, headers=orders()
        )
    assert_error(response, 503, "upstream_unavailable", hidden=(old["access_token"],))
    retry_after(response)


# -- 429 refresh_throttled -----------------------------------------------------------------------


async def test_second_forced_refresh_within_interval_is_429(
    broker: BrokerFactory, emulator: Emulator
) -> None:
    """Invalidating the current token twice within the floor is 429 + Retry-After."""
    overrides = checkout_with(emulator, min_forced_refresh_interval_seconds=60)
    async with broker(clients=overrides) as http:
        first = assert_token(await http.get("/token", headers=orders()))
        second = assert_token(
            await http.post(
                "/token/invalidate",
                json={"access_token": first["access_token"]},
                headers=orders(),
            )
        )
        throttled = await http.post(
            "/token/invalidate", json={"access_token": second["access_token"]}, headers=orders()
        )
        still = assert_token(await http.get("/token", headers=orders()))
    assert_error(throttled, 429, "refresh_throttled", hidden=(second["access_token"],))
    assert 50 <= retry_after(throttled) <= 60
    assert still["access_token"] == second["access_token"]  # the throttled token stays
    assert (await emulator.stats())["token_requests"] == 2


async def test_reporting_an_old_token_is_not_throttled(
    broker: BrokerFactory, emulator: Emulator
) -> None:
    """Reporting a token that is no longer current answers 200 even within the floor."""
    overrides = checkout_with(emulator, min_forced_refresh_interval_seconds=60)
    async with broker(clients=overrides) as http:
        first = assert_token(await http.get("/token", headers=orders()))
        body = {"access_token": first["access_token"]}
        second = assert_token(await http.post("/token/invalidate", json=body, headers=orders()))
        again = assert_token(await http.post("/token/invalidate", json=body, headers=orders()))
    assert again["access_token"] == second["access_token"]


# -- all together --------------------------------------------------------------------------------


async def test_error_bodies_never_carry_tokens(broker: BrokerFactory, emulator: Emulator) -> None:
    """No error answer of either endpoint contains the token the broker holds."""
    async with broker() as http:
        token = assert_token(await http.get("/token", headers=orders()))["access_token"]
        await emulator.configure(failure_mode="unavailable")
        errors: list[httpx.Response] = [
            await http.get("/token?client=payouts", headers=orders()),
            await http.get("/token?client=nope", headers=orders()),
            await http.get("/token", headers={"X-API-Key": token}),
            await http.post("/token/invalidate", json={"access_token": token}, headers=orders()),
            await http.post("/token/invalidate", json={"access_token": token}, headers=billing()),
        ]
    assert [r.status_code for r in errors] == [403, 404, 401, 503, 400]
    for response in errors:
        assert token not in response.text
        assert EMULATOR_SECRET not in response.text
