"""The RFC 6749 token endpoints, driven by unmodified OAuth libraries and the guide's code."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import shutil
import ssl
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus, urlencode

import httpx
import httpx_auth
import pytest
import trustme
from authlib.deprecate import AuthlibDeprecationWarning

from app.auth.callers import hash_api_key
from tests.conftest import API_KEYS, BrokerFactory, Emulator, broker_config
from tests.contract import NEVER_IN_RESPONSES
from tests.support.tls import client_context, issue_client_cert, serve_broker, server_files

with warnings.catch_warnings():
    # authlib 1.9 warns at import that it would rather use the `httpx2` package than `httpx`;
    # it is about authlib's own transport, not about how these tests use it, and the httpx
    # integration is what callers run today. Scoped to this import, so any other authlib
    # deprecation still fails the suite.
    warnings.filterwarnings(
        "ignore", "The httpx module is deprecated", category=AuthlibDeprecationWarning
    )
    from authlib.integrations.httpx_client import AsyncOAuth2Client

CHECKOUT = "/oauth2/checkout/token"
PAYOUTS = "/oauth2/payouts/token"
PAYSERA = "/auth/realms/Paysera/protocol/openid-connect/token"
METHODS = "/checkout-project/integration/v1/methods"
ECHO = "/checkout-project/integration/v1/echo"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
UPSTREAM_FIELDS = [
    "access_token",
    "expires_in",
    "refresh_expires_in",
    "token_type",
    "not-before-policy",
    "scope",
]
CHALLENGE = 'Basic realm="token-broker"'
ORDERS_KEY = API_KEYS["orders"]
GRANT = {"grant_type": "client_credentials"}
WRONG_KEY = "tbk_wrong_key_000000000000000000000"
# A caller whose key needs RFC 6749 §2.3.1 form-urlencoding inside HTTP Basic.
ODD_KEY = "tbk odd+key:with%25/reserved&chars="  # test-only
POS = {"pos": {"api_key_sha256": hash_api_key(ODD_KEY), "clients": ["checkout"]}}
# One TLS context for every client the tests build: a default one costs ~0.1 s each.
TLS = ssl.create_default_context()


def credentials(caller: str = "orders", **extra: str) -> dict[str, str]:
    """The guide's form: grant_type, client_id and client_secret (`extra` adds or replaces)."""
    return {
        "grant_type": "client_credentials",
        "client_id": caller,
        "client_secret": API_KEYS.get(caller, "tbk_unknown_caller_key_00000000000"),
        **extra,
    }


def basic(client_id: str, secret: str, *, encode: bool = True) -> dict[str, str]:
    """An HTTP Basic header; `encode` form-urlencodes both values first (RFC 6749 §2.3.1)."""
    if encode:
        client_id, secret = quote_plus(client_id), quote_plus(secret)
    raw = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


def assert_upstream_token(response: httpx.Response) -> dict[str, Any]:
    """A 200 in the upstream's exact token shape, not to be cached; returns its body."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["pragma"] == "no-cache"
    body: dict[str, Any] = response.json()
    assert list(body) == UPSTREAM_FIELDS
    assert isinstance(body["access_token"], str) and body["access_token"]
    assert type(body["expires_in"]) is int and 3590 <= body["expires_in"] <= 3600
    assert body["refresh_expires_in"] == 0
    assert body["token_type"] == "Bearer"
    assert body["not-before-policy"] == 0
    assert body["scope"] == "profile email"
    for secret in (*NEVER_IN_RESPONSES, ODD_KEY):
        assert secret not in response.text
    return body


def assert_oauth_error(response: httpx.Response, status: int, error: str) -> dict[str, Any]:
    """An RFC 6749 §5.2 error: status, JSON body, no-store, and a Basic challenge on 401 only."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["pragma"] == "no-cache"
    assert response.headers.get("www-authenticate") == (CHALLENGE if status == 401 else None)
    body: dict[str, Any] = response.json()
    assert set(body) == {"error", "error_description"}, body
    assert body["error"] == error
    assert isinstance(body["error_description"], str) and body["error_description"]
    for secret in (*NEVER_IN_RESPONSES, ODD_KEY):
        assert secret not in response.text
    return body


async def cached_token(http: httpx.AsyncClient, client: str = "checkout") -> str:
    """The broker's cached token for `client`, through the contract's GET /token."""
    key = API_KEYS["billing"]
    response = await http.get("/token", params={"client": client}, headers={"X-API-Key": key})
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


def form_body(*pairs: tuple[str, str]) -> dict[str, Any]:
    """Request arguments for a raw form body (repeats kept) with the form content type."""
    return {"content": urlencode(pairs), "headers": FORM}


@pytest.fixture
def httpx_auth_cache() -> Iterator[None]:
    """httpx-auth keeps tokens in a process-wide cache: empty it around the test."""
    httpx_auth.OAuth2.token_cache.clear()
    yield
    httpx_auth.OAuth2.token_cache.clear()


# -- clients that obtain the cached token ---------------------------------------------------------

# id -> (path, request arguments): requests that must get the cached token of the path's client
ACCEPTED: dict[str, tuple[str, dict[str, Any]]] = {
    "guide form post": (CHECKOUT, {"data": credentials(), "headers": FORM}),
    "paysera path": (PAYSERA, {"data": credentials(), "headers": FORM}),
    "basic": (CHECKOUT, {"data": GRANT, "headers": {**FORM, **basic("orders", ORDERS_KEY)}}),
    "basic and the same form client_id": (
        CHECKOUT,
        {
            "data": {**GRANT, "client_id": "orders"},
            "headers": {**FORM, **basic("orders", ORDERS_KEY)},
        },
    ),
    "basic with a key that needs encoding": (
        CHECKOUT,
        {"data": GRANT, "headers": {**FORM, **basic("pos", ODD_KEY)}},
    ),
    "form with a key that needs encoding": (
        CHECKOUT,
        {"data": credentials("pos", client_secret=ODD_KEY), "headers": FORM},
    ),
    "scope and unknown parameters ignored": (
        f"{CHECKOUT}?tenant=a",
        {"data": credentials(scope="openid payments", audience="x"), "headers": FORM},
    ),
    "content type with charset": (
        CHECKOUT,
        {
            "data": credentials(),
            "headers": {"Content-Type": f"{FORM['Content-Type']}; charset=UTF-8"},
        },
    ),
    "two-client caller, first client": (
        CHECKOUT,
        {"data": credentials("billing"), "headers": FORM},
    ),
    "two-client caller, second client": (
        PAYOUTS,
        {"data": credentials("billing"), "headers": FORM},
    ),
}


async def test_accepted_requests_get_the_cached_token(
    broker: BrokerFactory, emulator: Emulator
) -> None:
    """Each request in ACCEPTED answers its client's cached token in the upstream's shape."""
    async with broker(callers=POS) as http:  # `pos` joins orders and billing
        cached = {
            "checkout": await cached_token(http),
            "payouts": await cached_token(http, "payouts"),
        }
        for case, (path, request_args) in ACCEPTED.items():
            response = await http.post(path, **request_args)
            expected = cached["payouts" if path == PAYOUTS else "checkout"]
            try:
                assert assert_upstream_token(response)["access_token"] == expected
            except AssertionError as exc:
                raise AssertionError(f"case {case!r}: {exc}") from None
    assert cached["checkout"] != cached["payouts"]
    assert (await emulator.stats())["token_requests"] == 2


async def test_authlib_fetches_the_cached_token_and_calls_upstream(
    broker: BrokerFactory, emulator: Emulator
) -> None:
    """authlib's fetch_token (Basic and form auth) gets the cached token the upstream takes."""
    async with broker() as http:
        cached = await cached_token(http)
        for method in ("client_secret_basic", "client_secret_post"):
            async with AsyncOAuth2Client(
                "orders", ORDERS_KEY, token_endpoint_auth_method=method, verify=TLS
            ) as client:
                token = await client.fetch_token(
                    f"{http.base_url}{CHECKOUT}", grant_type="client_credentials"
                )
                echoed = await client.get(f"{emulator.base_url}{ECHO}")
            assert token["access_token"] == cached, method
            assert token["token_type"] == "Bearer"
            assert abs(token["expires_at"] - (time.time() + 3600)) <= 10
            assert echoed.status_code == 200, echoed.text
            assert echoed.json()["headers"]["authorization"] == f"Bearer {cached}"
    assert (await emulator.stats())["token_requests"] == 1


async def test_httpx_auth_client_credentials_authorises_upstream_calls(
    broker: BrokerFactory, emulator: Emulator, httpx_auth_cache: None
) -> None:
    """httpx-auth's OAuth2ClientCredentials, as request auth, sends the broker's cached token."""
    async with broker() as http:
        cached = await cached_token(http)
        auth = httpx_auth.OAuth2ClientCredentials(
            f"{http.base_url}{CHECKOUT}", client_id="orders", client_secret=ORDERS_KEY
        )

        def call_upstream() -> list[httpx.Response]:
            # httpx-auth fetches tokens with a blocking client: run it off the broker's loop.
            with httpx.Client(auth=auth, base_url=emulator.base_url, verify=TLS) as client:
                return [client.get(ECHO), client.get(METHODS)]

        echoed, methods = await asyncio.to_thread(call_upstream)
    assert echoed.json()["headers"]["authorization"] == f"Bearer {cached}"
    assert methods.status_code == 200, methods.text
    assert (await emulator.stats())["token_requests"] == 1


async def test_100_concurrent_authlib_clients_cause_one_upstream_request(
    broker: BrokerFactory, emulator: Emulator
) -> None:
    """100 authlib clients fetching at once from a cold broker cause a single upstream call."""
    await emulator.configure(token_latency=0.3)  # the one upstream call outlasts all arrivals
    async with broker() as http, contextlib.AsyncExitStack() as stack:
        token_url = f"{http.base_url}{CHECKOUT}"
        methods = ("client_secret_basic", "client_secret_post")
        clients = [  # built first, so that the 100 requests leave together
            await stack.enter_async_context(
                AsyncOAuth2Client(
                    "orders",
                    ORDERS_KEY,
                    token_endpoint_auth_method=methods[i % 2],
                    timeout=10,
                    verify=TLS,
                )
            )
            for i in range(100)
        ]
        tokens = await asyncio.gather(
            *(client.fetch_token(token_url, grant_type="client_credentials") for client in clients)
        )
        cached = await cached_token(http)
    assert {token["access_token"] for token in tokens} == {cached}
    assert (await emulator.stats())["token_requests"] == 1


# -- the upstream-shaped path ---------------------------------------------------------------------


async def run_guide_curl(base_url: str, client_id: str, client_secret: str) -> httpx.Response:
    """The guide's curl command with only the URL and credentials changed (plus -D - to see
    the headers); its output parsed into a response."""
    curl = shutil.which("curl")
    assert curl is not None, "curl is needed to run the upstream guide's curl example"
    process = await asyncio.create_subprocess_exec(
        *(curl, "-sS", "-D", "-", "-X", "POST"),
        f"{base_url}/auth/realms/Paysera/protocol/openid-connect/token",
        *("-H", "Content-Type: application/x-www-form-urlencoded"),
        *("-d", "grant_type=client_credentials"),
        *("-d", f"client_id={client_id}"),
        *("-d", f"client_secret={client_secret}"),
        stdout=asyncio.subprocess.PIPE,
    )
    output, _ = await process.communicate()
    assert process.returncode == 0
    head, _, body = output.decode().partition("\r\n\r\n")
    status_line, *header_lines = head.splitlines()
    headers = [tuple(line.split(": ", 1)) for line in header_lines]
    return httpx.Response(int(status_line.split()[1]), headers=headers, content=body.encode())


async def test_guide_examples_run_unchanged_against_the_paysera_path(
    broker: BrokerFactory, emulator: Emulator
) -> None:
    """The guide's curl and Python token flow work with only base URL and credentials changed."""
    async with broker() as http:
        broker_base = str(http.base_url).rstrip("/")
        cached = await cached_token(http)

        # The guide's Python example, with httpx standing in for `requests` (the same calls).
        async def get_access_token(client_id: str, client_secret: str) -> str:
            async with httpx.AsyncClient(verify=TLS) as requests:
                response = await requests.post(
                    f"{broker_base}/auth/realms/Paysera/protocol/openid-connect/token",
                    data={
                        "grant_type": "client_credentials",
                        "client_id": client_id,
                        "client_secret": client_secret,
                    },
                    headers={"Content-Type": "application/x-www-form-urlencoded"},
                )
            response.raise_for_status()
            return str(response.json()["access_token"])

        access_token = await get_access_token("orders", ORDERS_KEY)
        async with httpx.AsyncClient(verify=TLS) as requests:
            response = await requests.get(
                f"{emulator.base_url}/checkout-project/integration/v1/methods",
                headers={
                    "Authorization": f"Bearer {access_token}",
                    "Content-Type": "application/json",
                },
            )
        response.raise_for_status()
        from_curl = assert_upstream_token(await run_guide_curl(broker_base, "orders", ORDERS_KEY))
    assert access_token == cached
    assert from_curl["access_token"] == cached
    assert response.json()["methods"]


# -- errors ---------------------------------------------------------------------------------------

# id -> (path, request arguments, status, error)
ERRORS: dict[str, tuple[str, dict[str, Any], int, str]] = {
    "json body": (
        CHECKOUT,
        {"json": credentials()},
        400,
        "invalid_request",
    ),
    "no content type": (CHECKOUT, {"content": urlencode(credentials())}, 400, "invalid_request"),
    "multipart body": (
        CHECKOUT,
        {"data": credentials(), "files": {"f": b"x"}},
        400,
        "invalid_request",
    ),
    "missing grant_type": (
        CHECKOUT,
        {"data": {"client_id": "orders", "client_secret": ORDERS_KEY}, "headers": FORM},
        400,
        "invalid_request",
    ),
    "empty grant_type": (
        CHECKOUT,
        {"data": credentials(grant_type=""), "headers": FORM},
        400,
        "invalid_request",
    ),
    "repeated grant_type": (
        CHECKOUT,
        form_body(*credentials().items(), ("grant_type", "client_credentials")),
        400,
        "invalid_request",
    ),
    "repeated client_secret": (
        CHECKOUT,
        form_body(*credentials().items(), ("client_secret", ORDERS_KEY)),
        400,
        "invalid_request",
    ),
    "repeated unknown parameter": (
        CHECKOUT,
        form_body(*credentials().items(), ("x", "1"), ("x", "2")),
        400,
        "invalid_request",
    ),
    "malformed body": (
        CHECKOUT,
        {"content": f"{urlencode(credentials())}&&", "headers": FORM},
        400,
        "invalid_request",
    ),
    "undecodable body": (
        CHECKOUT,
        {"content": f"{urlencode(credentials())}&scope=%ff", "headers": FORM},
        400,
        "invalid_request",
    ),
    "body over 64 KiB": (
        CHECKOUT,
        {"data": credentials(padding="x" * 65536), "headers": FORM},
        400,
        "invalid_request",
    ),
    "secret in the URL": (
        f"{CHECKOUT}?client_secret={ORDERS_KEY}",
        {"data": credentials(), "headers": FORM},
        400,
        "invalid_request",
    ),
    "basic and form secret": (
        CHECKOUT,
        {"data": credentials(), "headers": {**FORM, **basic("orders", ORDERS_KEY)}},
        400,
        "invalid_request",
    ),
    "basic and another form client_id": (
        CHECKOUT,
        {
            "data": {**GRANT, "client_id": "billing"},
            "headers": {**FORM, **basic("orders", ORDERS_KEY)},
        },
        400,
        "invalid_request",
    ),
    "secret without client_id": (
        CHECKOUT,
        {"data": {**GRANT, "client_secret": ORDERS_KEY}, "headers": FORM},
        400,
        "invalid_request",
    ),
    "unknown client": (
        "/oauth2/nonesuch/token",
        {"data": credentials(), "headers": FORM},
        400,
        "invalid_request",
    ),
    "several clients on the paysera path": (
        PAYSERA,
        {"data": credentials("billing"), "headers": FORM},
        400,
        "invalid_request",
    ),
    "no credentials": (CHECKOUT, {"data": GRANT, "headers": FORM}, 401, "invalid_client"),
    "client_id alone": (
        CHECKOUT,
        {"data": {**GRANT, "client_id": "orders"}, "headers": FORM},
        401,
        "invalid_client",
    ),
    "wrong secret": (
        CHECKOUT,
        {"data": credentials(client_secret=WRONG_KEY), "headers": FORM},
        401,
        "invalid_client",
    ),
    "empty secret": (
        CHECKOUT,
        {"data": credentials(client_secret=""), "headers": FORM},
        401,
        "invalid_client",
    ),
    "unknown caller": (
        CHECKOUT,
        {"data": credentials("nobody"), "headers": FORM},
        401,
        "invalid_client",
    ),
    "another caller's key": (
        CHECKOUT,
        {"data": credentials("billing", client_secret=ORDERS_KEY), "headers": FORM},
        401,
        "invalid_client",
    ),
    "wrong secret in basic": (
        CHECKOUT,
        {"data": GRANT, "headers": {**FORM, **basic("orders", WRONG_KEY)}},
        401,
        "invalid_client",
    ),
    "another caller's key in basic": (
        CHECKOUT,
        {"data": GRANT, "headers": {**FORM, **basic("billing", ORDERS_KEY)}},
        401,
        "invalid_client",
    ),
    "key that needs encoding, not encoded in basic": (
        CHECKOUT,
        {"data": GRANT, "headers": {**FORM, **basic("pos", ODD_KEY, encode=False)}},
        401,
        "invalid_client",
    ),
    "malformed basic": (
        CHECKOUT,
        {"data": GRANT, "headers": {**FORM, "Authorization": "Basic not*base64"}},
        401,
        "invalid_client",
    ),
    "basic without colon": (
        CHECKOUT,
        {"data": GRANT, "headers": {**FORM, "Authorization": "Basic b3JkZXJz"}},
        401,
        "invalid_client",
    ),
    "bearer instead of basic": (
        CHECKOUT,
        {"data": credentials(), "headers": {**FORM, "Authorization": "Bearer abc"}},
        401,
        "invalid_client",
    ),
    "other grant with bad credentials": (
        CHECKOUT,
        {"data": credentials(grant_type="password", client_secret=WRONG_KEY), "headers": FORM},
        401,
        "invalid_client",
    ),
    "password grant": (
        CHECKOUT,
        {"data": credentials(grant_type="password"), "headers": FORM},
        400,
        "unsupported_grant_type",
    ),
    "authorization_code grant via basic": (
        PAYSERA,
        {
            "data": {"grant_type": "authorization_code", "code": "c"},
            "headers": {**FORM, **basic("orders", ORDERS_KEY)},
        },
        400,
        "unsupported_grant_type",
    ),
    "client not allowed": (
        PAYOUTS,
        {"data": credentials(), "headers": FORM},
        400,
        "unauthorized_client",
    ),
}


async def test_rfc6749_errors(broker: BrokerFactory, emulator: Emulator) -> None:
    """Each bad token request in ERRORS gets its RFC 6749 §5.2 status, JSON and headers."""
    # One broker for the whole table: starting one per case would cost seconds, and no case
    # changes the broker's state (none of them reaches the upstream, as the last line checks).
    async with broker(callers=POS) as http:
        for case, (path, request_args, status, error) in ERRORS.items():
            response = await http.post(path, **request_args)
            try:
                assert_oauth_error(response, status, error)
            except AssertionError as exc:
                raise AssertionError(f"case {case!r}: {exc}") from None
    assert (await emulator.stats())["token_requests"] == 0


async def test_upstream_failures_are_temporarily_unavailable(
    broker: BrokerFactory, emulator: Emulator
) -> None:
    """Upstream down, or refusing the broker's own credentials: 503 with Retry-After, no loop."""
    async with broker() as http:
        await emulator.configure(failure_mode="unavailable")
        down = await http.post(PAYOUTS, data=credentials("billing"), headers=FORM)
        await emulator.configure(failure_mode="none", clients={"checkout-id": "rotated-secret"})
        rejected = [await http.post(CHECKOUT, data=credentials(), headers=FORM) for _ in range(2)]
    assert_oauth_error(down, 503, "temporarily_unavailable")
    assert int(down.headers["retry-after"]) >= 1
    for response in rejected:
        # Not invalid_client: that would send the caller to check its own credentials.
        body = assert_oauth_error(response, 503, "temporarily_unavailable")
        assert "upstream rejected" in body["error_description"]
        # the broker asks the upstream again after min_forced_refresh_interval_seconds (10)
        assert 1 <= int(response.headers["retry-after"]) <= 10
    assert (await emulator.stats())["token_requests"] == 2  # one each: no retry loop


async def test_budget_exhausted_is_temporarily_unavailable(
    broker: BrokerFactory, emulator: Emulator
) -> None:
    """A token fetch that finds no budget permit is 503 temporarily_unavailable with Retry-After."""
    budget = {"limit": 1, "count_token_requests": True, "max_wait_seconds": 0}
    async with broker(budget=budget) as http:
        assert_upstream_token(await http.post(CHECKOUT, data=credentials("billing"), headers=FORM))
        response = await http.post(PAYOUTS, data=credentials("billing"), headers=FORM)
    assert_oauth_error(response, 503, "temporarily_unavailable")
    assert int(response.headers["retry-after"]) >= 1
    assert (await emulator.stats())["token_requests"] == 1


# -- client certificates (RFC 8705 style) ---------------------------------------------------------

ORDERS_SPIFFE = "spiffe://corp/ns/shop/sa/orders"


@pytest.mark.parametrize("store_config", [{}], ids=["memory"])  # no store in authentication
async def test_certificate_authenticates_with_client_id_alone(
    emulator: Emulator, store_config: dict[str, Any], tmp_path: Path
) -> None:
    """A caller's client certificate plus client_id alone gets the token; mismatches are 401."""
    server_ca, client_ca = trustme.CA(), trustme.CA()
    files = server_files(tmp_path, server_ca, client_ca)
    orders_cert = issue_client_cert(client_ca, tmp_path / "orders.pem", uris=(ORDERS_SPIFFE,))
    stranger_cert = issue_client_cert(client_ca, tmp_path / "x.pem", common_name="stranger")
    server = {
        "tls_cert_file": str(files.cert),
        "tls_key_file": str(files.key),
        "tls_client_ca_file": str(files.client_ca),
        "tls_client_cert_required": False,  # so that requests without a certificate get in
    }
    orders_caller = {
        "api_key_sha256": hash_api_key(ORDERS_KEY),
        "mtls_identities": [f"URI:{ORDERS_SPIFFE}"],
        "clients": ["checkout"],
    }
    config = broker_config(emulator, store_config, server=server, callers={"orders": orders_caller})
    billing_key = API_KEYS["billing"]
    # id -> (certificate, form, extra headers, expected status)
    cases: dict[str, tuple[Path | None, dict[str, str], dict[str, str], int]] = {
        "certificate and client_id": (orders_cert, {**GRANT, "client_id": "orders"}, {}, 200),
        "certificate and its caller's key": (orders_cert, credentials(), {}, 200),
        "certificate and its caller's basic": (
            orders_cert,
            GRANT,
            basic("orders", ORDERS_KEY),
            200,
        ),
        "certificate and another client_id": (
            orders_cert,
            {**GRANT, "client_id": "billing"},
            {},
            401,
        ),
        "certificate and another caller's credentials": (
            orders_cert,
            credentials("billing", client_secret=billing_key),
            {},
            401,
        ),
        "certificate and a wrong key": (
            orders_cert,
            credentials(client_secret=WRONG_KEY),
            {},
            401,
        ),
        "certificate of no caller": (stranger_cert, {**GRANT, "client_id": "orders"}, {}, 401),
        "no certificate, client_id alone": (None, {**GRANT, "client_id": "orders"}, {}, 401),
        "certificate without client_id": (orders_cert, GRANT, {}, 400),
    }
    async with serve_broker(config, with_ops=False) as running:
        async with httpx.AsyncClient(verify=client_context(server_ca)) as http:
            response = await http.get(f"{running.url}/token", headers={"X-API-Key": ORDERS_KEY})
            cached = response.raise_for_status().json()["access_token"]
        for case, (cert, form, headers, status) in cases.items():
            context = client_context(server_ca, cert)
            async with httpx.AsyncClient(base_url=running.url, verify=context) as http:
                response = await http.post(CHECKOUT, data=form, headers={**FORM, **headers})
            try:
                if status == 200:
                    assert assert_upstream_token(response)["access_token"] == cached
                else:
                    error = {400: "invalid_request", 401: "invalid_client"}[status]
                    assert_oauth_error(response, status, error)
            except AssertionError as exc:
                raise AssertionError(f"case {case!r}: {exc}") from None
        # authlib as an RFC 8705 client: no secret, so it sends client_id alone.
        context = client_context(server_ca, orders_cert)
        async with AsyncOAuth2Client("orders", verify=context) as client:
            token = await client.fetch_token(
                f"{running.url}{PAYSERA}", grant_type="client_credentials"
            )
    assert token["access_token"] == cached
    assert (await emulator.stats())["token_requests"] == 1
