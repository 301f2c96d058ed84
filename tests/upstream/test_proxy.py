"""`/proxy/{client}/{path}` against the emulator, on both stores."""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.errors import InvalidRequest
from app.upstream.proxy import checked_path, forwarded_request_headers
from tests.conftest import API_KEYS, BrokerFactory, Emulator, broker_config
from tests.contract import assert_error, assert_token
from tests.support.processes import fleet
from tests.support.servers import bound_socket, free_port, serve_app

HEADERS = {"X-API-Key": API_KEYS["orders"]}
METHODS = "/proxy/checkout/checkout-project/integration/v1/methods"
ECHO = "/proxy/checkout/checkout-project/integration/v1/echo"


async def test_proxied_call_returns_the_upstream_answer(
    broker: BrokerFactory, emulator: Emulator
) -> None:
    """A proxied GET of the methods endpoint returns the emulator's status, body and headers."""
    async with broker() as http:
        response = await http.get(METHODS, headers=HEADERS)
    direct = await emulator.http.get(
        "/checkout-project/integration/v1/methods",
        headers={"Authorization": "Bearer nope"},
    )
    assert response.status_code == 200
    assert "methods" in response.json()
    assert response.headers["x-ratelimit-limit"] == "50"
    assert len(response.headers.get_list("date")) == 1  # uvicorn's, not doubled by the upstream's
    assert direct.status_code == 401  # the emulator really checks the bearer
    assert (await emulator.stats())["api_requests"] == 2


async def test_forwarding_strips_credentials_and_internal_headers(broker: BrokerFactory) -> None:
    """Method, query, body and end-to-end headers arrive; keys, cookies, hop-by-hop and
    X-Forwarded-* headers do not; Authorization is the broker's bearer token."""
    async with broker() as http:
        token = (await http.get("/token", headers=HEADERS)).json()["access_token"]
        response = await http.post(
            f"{ECHO}?a=1&b=%2F",
            headers={
                **HEADERS,
                "Authorization": "Basic c2VjcmV0",
                "Cookie": "session=1",
                "X-Forwarded-For": "10.0.0.1",
                "X-Forwarded-Client-Cert": "By=x",
                "Connection": "keep-alive, X-Hop",
                "X-Hop": "1",
                "X-Custom": "kept",
                "Content-Type": "application/json",
            },
            content=b'{"amount": 100}',
        )
    echo = response.json()
    assert response.status_code == 200
    assert echo["method"] == "POST"
    assert echo["query"] == "a=1&b=%2F"
    assert echo["body_sha256"] == hashlib.sha256(b'{"amount": 100}').hexdigest()
    headers = echo["headers"]
    assert headers["authorization"] == f"Bearer {token}"
    assert headers["x-custom"] == "kept"
    for dropped in ("x-api-key", "cookie", "x-forwarded-for", "x-forwarded-client-cert", "x-hop"):
        assert dropped not in headers, dropped


@pytest.mark.parametrize(
    "path",
    [
        "/proxy/checkout/../token",
        "/proxy/checkout/%2e%2e/token",
        "/proxy/checkout/a/%2E%2E/b",
        "/proxy/checkout/a%2Fb",
        "/proxy/checkout/a%5cb",
        "/proxy/checkout/a\\b",
        "/proxy/checkout/user@evil.example/x",
        "/proxy/checkout/https:%2F%2Fevil.example/",
        "/proxy/checkout/http:/evil.example",
        "/proxy/checkout//evil.example/x",
        "/proxy/checkout/a//b",
        "/proxy/checkout/./a",
        "/proxy/checkout/a/%00b",
    ],
)
async def test_path_escapes_are_refused_before_anything_is_sent(
    broker: BrokerFactory, emulator: Emulator, path: str
) -> None:
    """Dot segments, encoded slashes, backslashes, '@' and absolute URLs are 400, nothing sent."""
    async with broker() as http:
        status, body = await raw_get(str(http.base_url), path, HEADERS)
    assert status == 400, body
    assert json.loads(body)["error"] == "invalid_request"
    assert (await emulator.stats())["api_requests"] == 0
    assert (await emulator.stats())["token_requests"] == 0


def _raw_get(host: str, port: int, request: bytes) -> bytes:
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


async def raw_get(base_url: str, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
    """GET `path` byte for byte (no client-side normalisation of dot segments)."""
    url = httpx.URL(base_url)
    assert url.host and url.port
    lines = [f"GET {path} HTTP/1.1", f"Host: {url.host}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    raw = await asyncio.to_thread(_raw_get, url.host, url.port, request)
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


@pytest.mark.parametrize(
    "raw", ["../x", "a/%2e%2E/b", "a%2fb", "a%5Cb", "a\\b", "x@y", "https:x", "a//b", "/abs", ""]
)
def test_checked_path_refuses(raw: str) -> None:
    """The pure path check refuses each escape form."""
    with pytest.raises(InvalidRequest):
        checked_path(raw)


@pytest.mark.parametrize("raw", ["a", "a/b/", "checkout-project/v1/methods", "a%20b/c.json"])
def test_checked_path_accepts(raw: str) -> None:
    """Ordinary relative paths pass unchanged."""
    assert checked_path(raw) == raw


def test_connection_named_headers_are_dropped() -> None:
    """Headers named in Connection are hop-by-hop and not forwarded."""
    kept = forwarded_request_headers([("Connection", "X-A"), ("X-A", "1"), ("X-B", "2")])
    assert kept == [("X-B", "2")]


async def test_revoked_token_is_refreshed_once_and_the_call_retried(
    broker: BrokerFactory, emulator: Emulator
) -> None:
    """After the upstream revokes tokens the next call succeeds: one 401 upstream, one new token."""
    async with broker() as http:
        await http.get(METHODS, headers=HEADERS)
        await emulator.revoke()
        response = await http.get(METHODS, headers=HEADERS)
    stats = await emulator.stats()
    assert response.status_code == 200
    assert stats["api_unauthorized"] == 1
    assert stats["token_requests"] == 2


async def test_20_concurrent_callers_after_revocation_cause_one_token_request(
    broker: BrokerFactory, emulator: Emulator
) -> None:
    """20 concurrent proxied calls with a revoked token all succeed with one new token request."""
    async with broker() as http:
        await http.get(METHODS, headers=HEADERS)
        await emulator.revoke()
        responses = await asyncio.gather(*(http.get(METHODS, headers=HEADERS) for _ in range(20)))
    stats = await emulator.stats()
    assert [r.status_code for r in responses] == [200] * 20
    assert stats["token_requests"] == 2
    # Each call sent with the revoked token meets one 401; none is retried twice.
    assert 1 <= stats["api_unauthorized"] <= 20
    assert stats["api_requests"] == 1 + stats["api_unauthorized"] + 20


@pytest.fixture
async def rejecting_api() -> AsyncIterator[tuple[str, list[str]]]:
    """An upstream API on loopback that answers every call 401 invalid_token; records bearers."""
    seen: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        seen.append(dict(scope["headers"]).get(b"authorization", b"").decode())
        await send({"type": "http.response.start", "status": 401, "headers": [
            (b"content-type", b"application/json"),
            (b"www-authenticate", b'Bearer error="invalid_token"'),
        ]})  # fmt: skip
        await send({"type": "http.response.body", "body": b'{"error": "invalid_token"}'})

    async with serve_app(app, lifespan="off") as base:
        yield base, seen


async def test_second_401_is_returned_as_is(
    broker: BrokerFactory, emulator: Emulator, rejecting_api: tuple[str, list[str]]
) -> None:
    """If the retry is rejected too, the caller gets the upstream's 401: two calls, no loop."""
    base, seen = rejecting_api
    async with broker(clients_patch={"api_base_url": base}) as http:
        response = await http.get(METHODS, headers=HEADERS)
    assert response.status_code == 401
    assert response.json() == {"error": "invalid_token"}
    assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    assert len(seen) == 2 and seen[0] != seen[1]  # retried once, with a new token
    assert (await emulator.stats())["token_requests"] == 2


async def test_401_with_the_token_endpoint_down_is_503_and_the_broker_recovers(
    broker: BrokerFactory, emulator: Emulator, rejecting_api: tuple[str, list[str]]
) -> None:
    """A 401 whose refresh fails answers 503 + Retry-After (the 401 is closed, not leaked), and
    later calls work once the token endpoint is back."""
    base, seen = rejecting_api
    async with broker(clients_patch={"api_base_url": base}) as http:
        assert_token(await http.get("/token", headers=HEADERS))
        await emulator.configure(failure_mode="unavailable")
        failed = await http.get(METHODS, headers=HEADERS)
        await emulator.configure(failure_mode="none")
        status = await http.get("/health")
    assert_error(failed, 503, "upstream_unavailable")
    assert int(failed.headers["retry-after"]) >= 1
    assert len(seen) == 1  # not retried without a new token
    assert status.json()["clients"]["checkout"]["last_error"] is not None


async def test_upstream_429_reaches_the_caller_and_pauses_the_budget(
    broker: BrokerFactory, emulator: Emulator
) -> None:
    """With the upstream limit lowered, its 429 and headers reach the caller; afterwards the
    broker sends nothing upstream and /budget/acquire answers 429 until the reset."""
    await emulator.configure(rate_limit=3, rate_window=30)
    async with broker() as http:
        statuses = [(await http.get(METHODS, headers=HEADERS)).status_code for _ in range(3)]
        limited = await http.get(METHODS, headers=HEADERS)
        sent = (await emulator.stats())["api_requests"]
        after = await http.get(METHODS, headers=HEADERS)
        permit = await http.post("/budget/acquire", headers=HEADERS)
    assert statuses == [200, 200, 200]
    assert limited.status_code == 429
    assert limited.headers["x-ratelimit-remaining"] == "0"
    assert int(limited.headers["retry-after"]) > 0
    assert after.status_code == 429 and after.json()["error"] == "budget_exhausted"
    assert permit.status_code == 429
    assert (await emulator.stats())["api_requests"] == sent


async def test_each_upstream_call_takes_a_permit(broker: BrokerFactory, emulator: Emulator) -> None:
    """With 2 permits per minute the third proxied call is refused by the broker, not sent."""
    proxy = {"budget_wait_seconds": 0}
    async with broker(budget={"limit": 2}, proxy=proxy) as http:
        statuses = [(await http.get(METHODS, headers=HEADERS)).status_code for _ in range(3)]
        third = await http.get(METHODS, headers=HEADERS)
    assert statuses == [200, 200, 429]
    assert third.json()["error"] == "budget_exhausted" and "retry-after" in third.headers
    assert (await emulator.stats())["api_requests"] == 2


@pytest.fixture
async def silent_server() -> AsyncIterator[str]:
    """A TCP server that accepts connections and never answers."""
    writers: list[asyncio.StreamWriter] = []

    async def accept(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)

    sock = bound_socket()
    server = await asyncio.start_server(accept, sock=sock)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_upstream_timeout_is_504_and_refused_connection_503(
    broker: BrokerFactory, silent_server: str
) -> None:
    """A silent upstream API gives 504 upstream_timeout; a closed port gives 503."""
    proxy = {"timeout_seconds": 0.3, "connect_timeout_seconds": 0.3}
    async with broker(proxy=proxy) as http:
        await http.get("/token", headers=HEADERS)
    base = {"api_base_url": silent_server}
    async with broker(proxy=proxy, clients_patch=base) as http:
        timeout = await http.get(METHODS, headers=HEADERS)
    async with broker(
        proxy=proxy, clients_patch={"api_base_url": f"http://127.0.0.1:{free_port()}"}
    ) as http:
        refused = await http.get(METHODS, headers=HEADERS)
    assert timeout.status_code == 504 and timeout.json()["error"] == "upstream_timeout"
    assert refused.status_code == 503 and refused.json()["error"] == "upstream_unavailable"


async def test_20mb_bodies_pass_through_with_flat_memory(
    emulator: Emulator, redis_server: object, tmp_path: Path
) -> None:
    """A 20 MB upload and a 20 MB download pass through a broker process whose RSS stays flat."""
    config = broker_config(emulator, {}, proxy={"max_body_bytes": 32 * 1024 * 1024})
    size = 20 * 1024 * 1024
    chunk = uuid.uuid4().bytes * 4096  # 64 KiB

    async def upload() -> AsyncIterator[bytes]:
        for _ in range(size // len(chunk)):
            yield chunk

    expected = hashlib.sha256(chunk * (size // len(chunk))).hexdigest()
    with fleet(config, tmp_path, size=1) as (broker,):
        async with httpx.AsyncClient(base_url=broker.url, timeout=60) as http:
            await http.get(METHODS, headers=HEADERS)
            before = broker.rss_kib()
            echo = await http.post(ECHO, headers=HEADERS, content=upload())
            downloaded = 0
            async with http.stream(
                "GET",
                f"/proxy/checkout/checkout-project/integration/v1/blob?size={size}",
                headers=HEADERS,
            ) as response:
                async for part in response.aiter_bytes():
                    downloaded += len(part)
            after = broker.rss_kib()
    assert echo.json()["body_bytes"] == size and echo.json()["body_sha256"] == expected
    assert downloaded == size
    assert after - before < 8 * 1024, f"RSS grew by {after - before} KiB"


async def test_oversized_body_is_413(broker: BrokerFactory, emulator: Emulator) -> None:
    """A body over proxy.max_body_bytes is refused with 413 and nothing is sent upstream."""
    async with broker(proxy={"max_body_bytes": 1000}) as http:
        response = await http.post(ECHO, headers=HEADERS, content=b"x" * 2000)
    assert response.status_code == 413 and response.json()["error"] == "request_too_large"
    assert (await emulator.stats())["api_requests"] == 0
