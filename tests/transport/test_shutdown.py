"""Graceful shutdown of a real `token-broker serve` process: SIGTERM drains what is in flight."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import httpx

from app.auth.callers import hash_api_key
from tests.conftest import API_KEYS, EMULATOR_ID, EMULATOR_SECRET, Emulator
from tests.support.processes import running_broker

CLIENTS = [f"client{i}" for i in range(10)]
UPSTREAM_LATENCY = 3.0  # seconds each forced refresh waits on the emulator
HEADERS = {"X-API-Key": API_KEYS["orders"]}


def ten_clients(emulator: Emulator) -> dict[str, Any]:
    """Ten upstream clients on the emulator and one caller allowed all of them."""
    client = {
        "token_url": emulator.token_url,
        "api_base_url": emulator.base_url,
        "client_id": EMULATOR_ID,
        "client_secret": EMULATOR_SECRET,
        "timeout_seconds": 10,  # longer than the emulator's latency
    }
    caller = {"api_key_sha256": hash_api_key(API_KEYS["orders"]), "clients": CLIENTS}
    return {"clients": dict.fromkeys(CLIENTS, client), "callers": {"orders": caller}}


async def refused(url: str) -> bool:
    """Whether a new connection to `url` is refused (the listener has stopped accepting)."""
    try:
        async with httpx.AsyncClient(timeout=1) as fresh:
            await fresh.get(f"{url}/health/live")
    except httpx.ConnectError:
        return True
    except httpx.TransportError:
        return False
    return False


async def test_sigterm_during_ten_forced_refreshes_answers_all_and_exits_0(
    emulator: Emulator, tmp_path: Path
) -> None:
    """SIGTERM while 10 forced refreshes wait on a slow upstream: new connections are refused at
    once, all 10 callers still get 200 with a new token, and the process exits 0."""
    with running_broker(ten_clients(emulator), tmp_path) as broker:
        async with httpx.AsyncClient(base_url=broker.url, timeout=30) as http:
            old = {}
            for name in CLIENTS:
                response = await http.get("/token", params={"client": name}, headers=HEADERS)
                old[name] = response.json()["access_token"]
            await emulator.configure(token_latency=UPSTREAM_LATENCY)
            refreshes = [
                asyncio.ensure_future(
                    http.post(
                        "/token/invalidate",
                        json={"client": name, "access_token": old[name]},
                        headers=HEADERS,
                    )
                )
                for name in CLIENTS
            ]
            deadline = time.monotonic() + 10
            while (await emulator.stats())["token_requests"] < 2 * len(CLIENTS):
                assert time.monotonic() < deadline, "the forced refreshes never reached upstream"
                await asyncio.sleep(0.02)
            # All ten are now waiting on the upstream.
            broker.process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            while not await refused(broker.url):
                assert time.monotonic() - signalled < 2, "still accepting after SIGTERM"
                await asyncio.sleep(0.05)
            in_flight_when_closed = sum(not task.done() for task in refreshes)
            answers = await asyncio.gather(*refreshes)
        code = await asyncio.to_thread(broker.process.wait, 30)
    assert in_flight_when_closed == len(CLIENTS)
    assert [answer.status_code for answer in answers] == [200] * len(CLIENTS)
    new = {
        name: answer.json()["access_token"] for name, answer in zip(CLIENTS, answers, strict=True)
    }
    assert all(new[name] != old[name] for name in CLIENTS)
    assert len(set(new.values())) == len(CLIENTS)
    assert code == 0, broker.log()
    assert '"event":"server.stopped"' in broker.log()
    assert (await emulator.stats())["token_requests"] == 2 * len(CLIENTS)
