"""Helpers of the SDK tests: how each HTTP library calls the upstream, what the broker counted."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass
from typing import Any

import httpx
import requests
from prometheus_client.parser import text_string_to_metric_families
from token_broker_client import BrokerAuth

from tests.conftest import Emulator
from tests.support.tls import NO_TLS

METHODS = "/checkout-project/integration/v1/methods"
ECHO = "/checkout-project/integration/v1/echo"
KINDS = ("httpx", "httpx-async", "requests")  # the three ways a caller uses BrokerAuth
TOKEN = "GET /token"
INVALIDATE = "POST /token/invalidate"


@dataclass
class Setup:
    """A broker (its test client) in front of the emulator."""

    http: httpx.AsyncClient
    emulator: Emulator

    @property
    def url(self) -> str:
        """The broker's base URL."""
        return str(self.http.base_url).rstrip("/")

    async def broker_requests(self) -> Counter[str]:
        """The broker's own count of answered requests, by "METHOD route" (from /metrics)."""
        return await broker_requests(self.http)


async def broker_requests(http: httpx.AsyncClient) -> Counter[str]:
    """Requests the broker answered, by "METHOD route", from its http_requests counter."""
    counts: Counter[str] = Counter()
    text = (await http.get("/metrics")).raise_for_status().text
    for family in text_string_to_metric_families(text):
        if family.name != "token_broker_http_requests":
            continue
        for sample in family.samples:
            if sample.name.endswith("_total"):
                key = f"{sample.labels['method']} {sample.labels['route']}"
                counts[key] += int(sample.value)
    return counts


@dataclass
class Seen:
    """What a call through BrokerAuth came back with."""

    status: int
    history: list[int]  # statuses of the responses before the final one (the retried 401)
    body: Any

    @property
    def authorization(self) -> str:
        """The Authorization header the emulator's echo endpoint received."""
        return str(self.body["headers"]["authorization"])


async def call(
    kind: str, auth: BrokerAuth, url: str, *, method: str = "GET", content: bytes | None = None
) -> Seen:
    """One request to `url` with `auth`, made the way `kind` makes it (sync ones in a thread)."""
    if kind == "httpx-async":
        async with httpx.AsyncClient(auth=auth, verify=NO_TLS, timeout=10) as client:
            response = await client.request(method, url, content=content)
        return Seen(
            response.status_code, [r.status_code for r in response.history], _json(response)
        )

    def sync() -> Seen:
        if kind == "httpx":
            with httpx.Client(auth=auth, verify=NO_TLS, timeout=10) as client:
                response = client.request(method, url, content=content)
            return Seen(
                response.status_code, [r.status_code for r in response.history], _json(response)
            )
        assert kind == "requests"
        answer = requests.request(method, url, data=content, auth=auth, timeout=10)
        return Seen(answer.status_code, [r.status_code for r in answer.history], answer.json())

    return await asyncio.to_thread(sync)


def _json(response: httpx.Response) -> Any:
    return response.json() if response.content else None
