"""The warm path of GET /token (`app.api.warm_token`) against the route it stands in for: the
same bytes on the wire, the same log lines and metrics, and everything it cannot answer with a
200 left to the route. Real HTTP on loopback, raw sockets where bytes are compared."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator
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
from tests.support.tls import serve_broker

Spied = tuple[str, list[bool]]
SERVING = ["uvicorn", "broker_server"]


@asynccontextmanager
async def served(
    emulator: Emulator, store_config: dict[str, Any], serving: str = "uvicorn", **overrides: Any
) -> AsyncIterator[Spied]:
    """A broker on loopback, and the list of the warm path's verdicts (True: answered).

    `uvicorn`: the app under plain uvicorn, where `BrokerApp` asks the warm path before its
    middleware; `broker_server`: `BrokerServer`, as `token-broker serve` runs it, where the HTTP
    protocol asks it (`app.transport.quick`) and no ASGI task starts for a warm answer."""
    settings = Settings(**broker_config(emulator, store_config, **overrides))
    app = create_app(settings)
    warm = app.warm_path
    assert warm is not None
    verdicts: list[bool] = []
    answer = warm.answer

    def spy(*args: Any) -> Any:
        verdict = answer(*args)
        verdicts.append(verdict is not None)
        return verdict

    warm.answer = spy  # type: ignore[method-assign,assignment]  # the real method runs; we note its verdict
    if serving == "uvicorn":
        async with serve_app(app) as base:
            yield base, verdicts
    else:
        config = broker_config(emulator, store_config, **overrides)
        async with serve_broker(config, with_ops=False, app=app) as broker:
            yield broker.url, verdicts


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


@pytest.mark.parametrize("serving", SERVING)
async def test_the_warm_answer_is_the_routed_answer_byte_for_byte(
    emulator: Emulator, store_config: dict[str, Any], serving: str
) -> None:
    """A request the warm path answers and one only the route answers (a query string the warm
    path does not know, `client=checkout&`) get the same status line, headers in the same
    order, X-Request-ID and body."""
    headers = {"X-API-Key": API_KEYS["orders"], "X-Request-ID": "same-request-id"}
    async with served(emulator, store_config, serving) as (base, verdicts):
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


@pytest.mark.parametrize("serving", SERVING)
async def test_what_the_warm_path_cannot_answer_goes_to_the_route(
    emulator: Emulator, store_config: dict[str, Any], serving: str
) -> None:
    """Errors, repeated keys, unknown queries and a cold cache are the route's: the answers
    are the contract's, and the warm path said no to each."""
    orders = {"X-API-Key": API_KEYS["orders"]}
    async with served(emulator, store_config, serving) as (base, verdicts):
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


async def pipelined(base: str, requests: list[bytes], answers: int) -> list[bytes]:
    """Send `requests` in one write on one connection; the raw answers, split by status line."""
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"".join(requests))
    data = b""
    while data.count(b"HTTP/1.1 ") < answers or not _complete(data, answers):
        chunk = await asyncio.wait_for(reader.read(65536), 10)
        if not chunk:
            break
        data += chunk
    writer.close()
    await writer.wait_closed()
    return [b"HTTP/1.1 " + part for part in data.split(b"HTTP/1.1 ")[1:]]


def _complete(data: bytes, answers: int) -> bool:
    """Whether `data` holds `answers` whole responses (each with a Content-Length body)."""
    parts = data.split(b"HTTP/1.1 ")[1:]
    if len(parts) < answers:
        return False
    last = parts[-1]
    head, _, body = last.partition(b"\r\n\r\n")
    length = re.search(rb"content-length: (\d+)", head, re.IGNORECASE)
    return length is not None and len(body) >= int(length.group(1))


def get(target: str, rid: str, *, method: str = "GET") -> bytes:
    return (
        f"{method} {target} HTTP/1.1\r\nHost: broker\r\nX-API-Key: {API_KEYS['orders']}\r\n"
        f"X-Request-ID: {rid}\r\nContent-Length: 0\r\n\r\n"
    ).encode()


async def test_pipelined_requests_are_answered_in_order_around_quick_answers(
    emulator: Emulator, store_config: dict[str, Any]
) -> None:
    """Under BrokerServer, requests pipelined on one connection (quick, routed, quick, an
    error) are answered in the order they came, each with its own request id."""
    async with served(emulator, store_config, "broker_server") as (base, verdicts):
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            warmed = await http.get("/token", headers={"X-API-Key": API_KEYS["orders"]})
            assert warmed.status_code == 200
        verdicts.clear()
        answers = await pipelined(
            base,
            [
                get("/token", "r1"),
                get("/token?client=checkout&", "r2"),
                get("/token?client=checkout", "r3"),
                get("/token?client=payouts", "r4"),
            ],
            4,
        )
    statuses = [answer.split(b" ", 2)[1] for answer in answers]
    rids = [re.search(rb"x-request-id: (\S+)", answer).group(1) for answer in answers]  # type: ignore[union-attr]
    assert statuses == [b"200", b"200", b"200", b"403"]
    assert rids == [b"r1", b"r2", b"r3", b"r4"]
    assert verdicts == [True, False, True, False]


async def test_a_request_pipelined_behind_a_quick_answer_outlives_the_keep_alive_timeout(
    emulator: Emulator, store_config: dict[str, Any]
) -> None:
    """A quick answer arms the keep-alive timer; a request pipelined behind it that takes
    longer than `keep_alive_seconds` (a budget permit waited for) still gets its answer."""
    async with served(
        emulator,
        store_config,
        "broker_server",
        server={"keep_alive_seconds": 0.3},
        budget={"limit": 1, "window_seconds": 1.5, "max_wait_seconds": 5},
    ) as (base, verdicts):
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            warmed = await http.get("/token", headers={"X-API-Key": API_KEYS["orders"]})
            taken = await http.post("/budget/acquire", headers={"X-API-Key": API_KEYS["orders"]})
            assert (warmed.status_code, taken.status_code) == (200, 200)
        verdicts.clear()
        started = time.monotonic()
        answers = await pipelined(
            base, [get("/token", "quick"), get("/budget/acquire?wait=5", "slow", method="POST")], 2
        )
        waited = time.monotonic() - started
    assert [answer.split(b" ", 2)[1] for answer in answers] == [b"200", b"200"]
    assert verdicts == [True]
    assert waited > 0.3  # the permit came after the keep-alive timeout had passed
