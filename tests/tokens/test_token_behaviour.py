"""The token service's guarantees, observed through real HTTP and the emulator's counters."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx

from tests.conftest import BrokerFactory, Emulator, broker_config
from tests.contract import assert_error, assert_token, orders, retry_after


def checkout_with(emulator: Emulator, **changes: Any) -> dict[str, Any]:
    """A `clients` override replacing `checkout` by the default client with `changes`."""
    client = broker_config(emulator, {})["clients"]["checkout"]
    return {"checkout": {**client, **changes}}


async def raw_request(
    base_url: httpx.URL, method: str, path: str, headers: dict[str, str], body: bytes = b""
) -> httpx.Response:
    """One HTTP/1.1 request on its own new connection, written by hand.

    httpx's pool scans every connection per request, which makes hundreds of simultaneous
    connections slow enough (on a small CI machine) to blur the concurrency under test.
    """
    reader, writer = await asyncio.open_connection(base_url.host, base_url.port)
    head = [f"{method} {path} HTTP/1.1", f"Host: {base_url.host}", "Connection: close"]
    head += [f"{name}: {value}" for name, value in headers.items()]
    head += [f"Content-Length: {len(body)}", "", ""]
    writer.write("\r\n".join(head).encode() + body)
    raw = await reader.read()  # until the server closes
    writer.close()
    await writer.wait_closed()
    status_headers, _, content = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = status_headers.decode("latin-1").split("\r\n")
    parsed = [tuple(part.strip() for part in line.split(":", 1)) for line in header_lines]
    return httpx.Response(int(status_line.split()[1]), headers=parsed, content=content)


async def concurrently(
    http: httpx.AsyncClient,
    count: int,
    method: str,
    path: str,
    headers: dict[str, str],
    json_body: Any = None,
) -> list[httpx.Response]:
    """Send `count` identical requests at once, each on its own connection."""
    body = b"" if json_body is None else json.dumps(json_body).encode()
    if json_body is not None:
        headers = {**headers, "Content-Type": "application/json"}
    requests = (raw_request(http.base_url, method, path, headers, body) for _ in range(count))
    return list(await asyncio.gather(*requests))


async def token_requests(emulator: Emulator) -> int:
    """How many token requests reached the emulator so far."""
    return (await emulator.stats())["token_requests"]


async def sleep_until(moment: float) -> None:
    """Sleep until wall time `moment`."""
    await asyncio.sleep(max(0.0, moment - time.time()))


# -- single flight -------------------------------------------------------------------------------


async def test_cold_start_stampede_makes_one_upstream_request(
    broker: BrokerFactory, emulator: Emulator
) -> None:
    """200 concurrent callers at cold start cause exactly 1 upstream request and share its token."""
    await emulator.configure(token_latency=0.3)  # keep the first fetch open while all arrive
    async with broker() as http:
        responses = await concurrently(http, 200, "GET", "/token", orders())
    tokens = {assert_token(response)["access_token"] for response in responses}
    assert len(tokens) == 1
    assert await token_requests(emulator) == 1


async def test_concurrent_invalidations_make_one_upstream_request(
    broker: BrokerFactory, emulator: Emulator
) -> None:
    """50 concurrent reports of one token cause exactly 1 more upstream request, one new token."""
    async with broker() as http:
        old = assert_token(await http.get("/token", headers=orders()))["access_token"]
        await emulator.configure(token_latency=0.3)
        body = {"access_token": old}
        responses = await concurrently(http, 50, "POST", "/token/invalidate", orders(), body)
        tokens = {assert_token(response)["access_token"] for response in responses}
        after = assert_token(await http.get("/token", headers=orders()))["access_token"]
    assert len(tokens) == 1
    assert old not in tokens
    assert after in tokens
    assert await token_requests(emulator) == 2


async def test_report_of_an_old_token_fetches_nothing(
    broker: BrokerFactory, emulator: Emulator
) -> None:
    """Reporting a token that is not the cached one returns the current token, no upstream call."""
    async with broker() as http:
        first = assert_token(await http.get("/token", headers=orders()))["access_token"]
        body = {"access_token": first}
        current = assert_token(await http.post("/token/invalidate", json=body, headers=orders()))
        assert await token_requests(emulator) == 2
        for reported in (first, "some-token-the-broker-never-issued"):
            body = {"access_token": reported}
            again = assert_token(await http.post("/token/invalidate", json=body, headers=orders()))
            assert again["access_token"] == current["access_token"]
    assert await token_requests(emulator) == 2


# -- rejected credentials ------------------------------------------------------------------------


async def test_rejected_credentials_are_not_retried_within_the_floor(
    broker: BrokerFactory, emulator: Emulator
) -> None:
    """30 requests with rejected credentials cause at most 1 upstream attempt within the floor."""
    await emulator.configure(clients={"someone-else": "other-secret"})
    async with broker() as http:  # floor: 10 s
        burst = await concurrently(http, 15, "GET", "/token", orders())
        sequential = [await http.get("/token", headers=orders()) for _ in range(10)]
        invalidations = [
            await http.post("/token/invalidate", json={"access_token": "x"}, headers=orders())
            for _ in range(5)
        ]
    for response in [*burst, *sequential, *invalidations]:
        assert_error(response, 502, "upstream_invalid_client")
    assert await token_requests(emulator) == 1


async def test_rejected_credentials_are_retried_after_the_floor(
    broker: BrokerFactory, emulator: Emulator
) -> None:
    """Once the floor has passed and the credentials are accepted again, tokens flow again."""
    await emulator.configure(clients={"someone-else": "other-secret"})
    overrides = checkout_with(emulator, min_forced_refresh_interval_seconds=1)
    async with broker(clients=overrides) as http:
        assert_error(await http.get("/token", headers=orders()), 502, "upstream_invalid_client")
        await emulator.configure(clients={"checkout-id": "checkout-secret-value-1234"})
        assert_error(await http.get("/token", headers=orders()), 502, "upstream_invalid_client")
        await asyncio.sleep(1.1)
        assert_token(await http.get("/token", headers=orders()))
    assert await token_requests(emulator) == 2


# -- upstream down -------------------------------------------------------------------------------


async def health(http: httpx.AsyncClient) -> dict[str, Any]:
    """The /health document."""
    response = await http.get("/health")
    assert response.status_code == 200
    return response.json()  # type: ignore[no-any-return]


async def test_upstream_down_serves_valid_token_then_503_then_recovers(
    broker: BrokerFactory, emulator: Emulator
) -> None:
    """Upstream down: a still-valid token is served (degraded); expired is 503; then recovery."""
    await emulator.configure(token_lifetime=2)
    async with broker(clients=checkout_with(emulator, refresh_buffer_seconds=1)) as http:
        before = time.time()
        token = assert_token(await http.get("/token", headers=orders()))["access_token"]
        after = time.time()
        await emulator.configure(failure_mode="unavailable")

        # Inside the buffer (serve_until = sent + 1) but before the expiry (sent + 2).
        await sleep_until(after + 1.2)
        stale = assert_token(await http.get("/token", headers=orders()))
        assert stale["access_token"] == token
        assert stale["expires_in"] < 1
        report = await health(http)
        assert report["status"] == "degraded"
        assert report["clients"]["checkout"]["token"] == "valid"
        assert report["clients"]["checkout"]["last_error"]

        await sleep_until(before + 2.1)  # expired now
        expired = await http.get("/token", headers=orders())
        assert_error(expired, 503, "upstream_unavailable", hidden=(token,))
        retry_after(expired)
        assert (await health(http))["status"] == "down"

        await emulator.configure(failure_mode="none")
        deadline = time.monotonic() + 10  # the backoff hold may still run for a few seconds
        while True:
            response = await http.get("/token", headers=orders())
            if response.status_code == 200 or time.monotonic() > deadline:
                break
            assert_error(response, 503, "upstream_unavailable")
            await asyncio.sleep(min(0.2, retry_after(response)))
        fresh = assert_token(response)
        assert fresh["access_token"] != token
        assert fresh["expires_in"] >= 1
        assert (await health(http))["status"] == "ok"


async def test_tokens_are_never_handed_out_inside_the_buffer(
    broker: BrokerFactory, emulator: Emulator
) -> None:
    """While the upstream answers, every token handed out has more than the buffer left."""
    await emulator.configure(token_lifetime=4)
    async with broker(clients=checkout_with(emulator, refresh_buffer_seconds=2)) as http:
        seen: set[str] = set()
        deadline = time.monotonic() + 2.5  # past the first token's serve_until (~2 s)
        while time.monotonic() < deadline:
            body = assert_token(await http.get("/token", headers=orders()))
            # expires_in is whole seconds rounded down: >= 2 means at least 2 s were left.
            assert body["expires_in"] >= 2, body["expires_in"]
            seen.add(body["access_token"])
            await asyncio.sleep(0.02)
    assert len(seen) >= 2
    assert await token_requests(emulator) <= len(seen) + 1


async def test_token_is_refreshed_ahead_without_a_caller_waiting(
    broker: BrokerFactory, emulator: Emulator
) -> None:
    """A token is replaced in the background before it enters the buffer; no caller waits."""
    await emulator.configure(token_lifetime=4)
    async with broker(clients=checkout_with(emulator, refresh_buffer_seconds=2)) as http:
        first = assert_token(await http.get("/token", headers=orders()))["access_token"]
        obtained = time.time()
        await emulator.configure(token_latency=0.5)  # a caller that waited would notice
        # The first token may be served until ~obtained + 2; refresh-ahead starts 0.2-0.4 s sooner
        # and, with the latency, has its new token by obtained + 2.3 at the latest.
        await sleep_until(obtained + 2.5)
        assert await token_requests(emulator) == 2  # refreshed with no caller asking
        started = time.monotonic()
        second = assert_token(await http.get("/token", headers=orders()))
        waited = time.monotonic() - started
    assert second["access_token"] != first
    assert second["expires_in"] >= 3
    assert waited < 0.4, f"the caller waited {waited:.2f} s for a refresh"
