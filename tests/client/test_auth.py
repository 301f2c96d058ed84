"""BrokerAuth with httpx (sync and async) and requests: caching, one retry on 401, never two."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from token_broker_client import BrokerAuth

from tests.client.support import ECHO, INVALIDATE, KINDS, METHODS, TOKEN, Setup, call
from tests.conftest import API_KEYS
from tests.support.servers import serve_app


@pytest.mark.parametrize("kind", KINDS)
async def test_repeated_calls_cost_one_broker_request(
    kind: str, setup: Setup, make_auth: Callable[..., BrokerAuth]
) -> None:
    """Five upstream calls through one BrokerAuth ask the broker once and all carry its token."""
    auth = make_auth(setup.url)
    before = await setup.broker_requests()
    seen = [await call(kind, auth, setup.emulator.base_url + ECHO) for _ in range(5)]
    after = await setup.broker_requests()
    cached = (await setup.http.get("/token", headers={"X-API-Key": API_KEYS["orders"]})).json()
    assert [s.status for s in seen] == [200] * 5
    assert {s.authorization for s in seen} == {f"Bearer {cached['access_token']}"}
    assert after[TOKEN] - before[TOKEN] == 1
    assert after[INVALIDATE] == before[INVALIDATE]
    assert (await setup.emulator.stats())["token_requests"] == 1


@pytest.mark.parametrize("kind", KINDS)
async def test_revoked_token_costs_one_upstream_request_and_one_retry(
    kind: str, setup: Setup, make_auth: Callable[..., BrokerAuth]
) -> None:
    """After a revocation upstream, the next call gets 200 after one 401, one invalidation at the
    broker and exactly one more upstream token request."""
    auth = make_auth(setup.url)
    first = await call(kind, auth, setup.emulator.base_url + METHODS)
    before, stats = await setup.broker_requests(), await setup.emulator.stats()
    await setup.emulator.revoke()
    seen = await call(kind, auth, setup.emulator.base_url + METHODS)
    after, stats_after = await setup.broker_requests(), await setup.emulator.stats()
    assert first.status == 200 and first.history == []
    assert seen.status == 200, seen.body
    assert seen.history == [401]  # one retry
    assert seen.body["methods"]
    assert stats_after["token_requests"] - stats["token_requests"] == 1
    assert stats_after["api_unauthorized"] - stats["api_unauthorized"] == 1
    assert after[INVALIDATE] - before[INVALIDATE] == 1
    assert after[TOKEN] == before[TOKEN]  # the invalidation's answer is the new token


@pytest.mark.parametrize("kind", KINDS)
async def test_retry_resends_the_request_body(
    kind: str, setup: Setup, make_auth: Callable[..., BrokerAuth]
) -> None:
    """The request repeated after a 401 carries the same body and the new token."""
    auth = make_auth(setup.url)
    old = await auth.atoken()
    await setup.emulator.revoke()
    body = b'{"amount": 100, "currency": "EUR"}' * 50
    seen = await call(kind, auth, setup.emulator.base_url + ECHO, method="POST", content=body)
    assert seen.status == 200 and seen.history == [401]
    assert seen.body["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert seen.authorization not in (f"Bearer {old}", "")
    assert seen.authorization == f"Bearer {await auth.atoken()}"


class AlwaysUnauthorized:
    """A real HTTP upstream that answers every request 401 and counts them."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.app = Starlette(routes=[Route("/api", self.answer, methods=["GET"])])

    async def answer(self, request: Request) -> JSONResponse:
        """401 invalid_token, as Paysera answers a revoked token."""
        self.requests.append(request.headers.get("authorization", ""))
        return JSONResponse({"error": "invalid_token"}, 401)


@pytest.fixture
async def refusing() -> AsyncIterator[tuple[AlwaysUnauthorized, str]]:
    """An always-401 upstream on loopback and its URL."""
    upstream = AlwaysUnauthorized()
    async with serve_app(upstream.app) as base:
        yield upstream, f"{base}/api"


@pytest.mark.parametrize("kind", KINDS)
async def test_second_401_is_returned_as_is(
    kind: str,
    setup: Setup,
    make_auth: Callable[..., BrokerAuth],
    refusing: tuple[AlwaysUnauthorized, str],
) -> None:
    """An upstream that refuses the new token too gets two requests, and its 401 is the answer."""
    upstream, url = refusing
    auth = make_auth(setup.url)
    first_token = await auth.atoken()
    before = await setup.broker_requests()
    seen = await call(kind, auth, url)
    after = await setup.broker_requests()
    assert seen.status == 401 and seen.history == [401]
    assert seen.body == {"error": "invalid_token"}
    assert len(upstream.requests) == 2  # the call and one retry, never a third
    assert upstream.requests[0] == f"Bearer {first_token}"
    assert upstream.requests[1] == f"Bearer {await auth.atoken()}" != upstream.requests[0]
    assert after[INVALIDATE] - before[INVALIDATE] == 1
    assert (await setup.emulator.stats())["token_requests"] == 2
