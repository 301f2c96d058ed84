"""The warm path of GET /token (`app.api.warm_token`) against the route it stands in for: the
same bytes on the wire, the same log lines and metrics, and everything it cannot answer with a
200 left to the route. Real HTTP on loopback, raw sockets where bytes are compared."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from app.config import Settings
from app.main import create_app
from app.tokens.model import fingerprint
from tests.conftest import API_KEYS, Emulator, broker_config
from tests.observability.prom import scrape
from tests.support.servers import serve_app

Spied = tuple[str, list[bool]]


@asynccontextmanager
async def served(emulator: Emulator, store_config: dict[str, Any]) -> AsyncIterator[Spied]:
    """A broker app on loopback, and the list of the warm path's verdicts (True: answered)."""
    app = create_app(Settings(**broker_config(emulator, store_config)))
    warm = app.warm_path
    assert warm is not None
    verdicts: list[bool] = []
    answered: Callable[..., Awaitable[bool]] = warm.answered

    async def spy(*args: Any) -> bool:
        verdict = await answered(*args)
        verdicts.append(verdict)
        return verdict

    warm.answered = spy  # type: ignore[method-assign]  # the real method runs; we note its verdict
    async with serve_app(app) as base:
        yield base, verdicts


async def raw_get(base: str, target: str, headers: dict[str, str]) -> bytes:
    """The exact bytes of the answer to one HTTP/1.1 GET (Connection: close)."""
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    lines = [f"GET {target} HTTP/1.1", f"Host: {host}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    answer = await reader.read()
    writer.close()
    await writer.wait_closed()
    return answer


def without_date(answer: bytes) -> bytes:
    """The answer less its Date header (the one part that may change between two answers)."""
    return re.sub(rb"\r\ndate: [^\r]*", b"", answer, flags=re.IGNORECASE)


async def test_the_warm_answer_is_the_routed_answer_byte_for_byte(
    emulator: Emulator, store_config: dict[str, Any]
) -> None:
    """A request the warm path answers and one only the route answers (a query string the warm
    path does not know, `client=checkout&`) get the same status line, headers in the same
    order, X-Request-ID and body."""
    headers = {"X-API-Key": API_KEYS["orders"], "X-Request-ID": "same-request-id"}
    async with served(emulator, store_config) as (base, verdicts):
        await raw_get(base, "/token?client=checkout", headers)  # fills L1 (cold: routed)
        for _ in range(3):  # the two must fall in the same second (expires_in)
            verdicts.clear()
            warm = await raw_get(base, "/token?client=checkout", headers)
            routed = await raw_get(base, "/token?client=checkout&", headers)
            if without_date(warm) == without_date(routed):
                break
    assert verdicts == [True, False]  # the first answered warm, the second by the route
    assert warm.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nx-request-id: same-request-id\r\n" in warm
    assert b"\r\ncache-control: no-store\r\npragma: no-cache\r\n" in warm
    assert without_date(warm) == without_date(routed)


async def test_what_the_warm_path_cannot_answer_goes_to_the_route(
    emulator: Emulator, store_config: dict[str, Any]
) -> None:
    """Errors, repeated keys, unknown queries and a cold cache are the route's: the answers
    are the contract's, and the warm path said no to each."""
    orders = {"X-API-Key": API_KEYS["orders"]}
    async with served(emulator, store_config) as (base, verdicts):
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            cold = await http.get("/token", headers=orders)
            assert verdicts == [False] and cold.status_code == 200
            verdicts.clear()
            cases = [
                (await http.get("/token"), 401),
                (await http.get("/token", headers={"X-API-Key": "tbk_wrong"}), 401),
                (await http.get("/token?client=payouts", headers=orders), 403),
                (await http.get("/token?client=nope", headers=orders), 404),
                (
                    await http.get(
                        "/token",
                        headers=[("X-API-Key", API_KEYS["orders"])] * 2,
                    ),
                    401,
                ),
            ]
            assert [answer.status_code for answer, _ in cases] == [code for _, code in cases]
            assert verdicts == [False] * len(cases)
            warm = await http.get("/token", headers=orders)
            assert warm.status_code == 200 and verdicts[-1] is True
            assert warm.json()["access_token"] == cold.json()["access_token"]


async def test_warm_answers_are_logged_and_counted_as_routed_ones(
    emulator: Emulator, store_config: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """Each answer, warm or routed, writes `token.issued` and `http.request` (route /token,
    status 200, caller, client, outcome ok), and /metrics counts it."""
    orders = {"X-API-Key": API_KEYS["orders"]}
    caplog.set_level(logging.INFO)
    async with served(emulator, store_config) as (base, verdicts):
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            answers = [await http.get("/token", headers=orders) for _ in range(5)]
            assert [answer.status_code for answer in answers] == [200] * 5
            first = answers[0].json()
            scraped = await scrape(http)
    assert verdicts.count(True) == 4  # the first was cold
    requests_total = scraped.value(
        "token_broker_token_requests_total", client="checkout", caller="orders", outcome="ok"
    )
    http_total = scraped.value(
        "token_broker_http_requests_total", route="/token", method="GET", status_class="2xx"
    )
    assert requests_total == http_total == 5
    lines = [(r.getMessage(), getattr(r, "fields", {})) for r in caplog.records]
    requests = [f for event, f in lines if event == "http.request" and f["path"] == "/token"]
    issued = [f for event, f in lines if event == "token.issued"]
    assert len(requests) == len(issued) == 5
    assert all(
        (f["status"], f["caller"], f["client"], f["outcome"]) == (200, "orders", "checkout", "ok")
        for f in requests
    )
    assert {f["token_fp"] for f in issued} == {fingerprint(first["access_token"])}
