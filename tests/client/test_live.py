"""The SDK against `token-broker serve` and `token-broker emulator` processes, as deployed."""

from __future__ import annotations

from pathlib import Path

import httpx
import requests
from token_broker_client import BrokerAuth

from tests.client.support import METHODS
from tests.conftest import API_KEYS
from tests.reliability.live import live_broker


def test_sdk_against_broker_and_emulator_processes(tmp_path: Path) -> None:
    """requests and httpx through one BrokerAuth: one upstream token for many calls, and after a
    revocation one more upstream token request and one retry per library."""
    with live_broker(tmp_path) as live, httpx.Client(timeout=10) as plain:
        url = live.emulator_url + METHODS
        with BrokerAuth(live.url, client="checkout", api_key=API_KEYS["orders"]) as auth:
            with httpx.Client(auth=auth, timeout=10) as client:
                warm = [client.get(url) for _ in range(3)]
            warm += [requests.get(url, auth=auth, timeout=10) for _ in range(3)]
            stats = plain.get(f"{live.emulator_url}/_emulator/stats").json()
            plain.post(f"{live.emulator_url}/_emulator/revoke").raise_for_status()
            with httpx.Client(auth=auth, timeout=10) as client:
                after_httpx = client.get(url)
            after_requests = requests.get(url, auth=auth, timeout=10)
            stats_after = plain.get(f"{live.emulator_url}/_emulator/stats").json()
    assert [r.status_code for r in warm] == [200] * 6
    assert stats["token_requests"] == 1
    assert after_httpx.status_code == 200
    assert [r.status_code for r in after_httpx.history] == [401]
    assert after_requests.status_code == 200 and after_requests.history == []
    assert stats_after["token_requests"] == 2
    assert stats_after["api_unauthorized"] - stats["api_unauthorized"] == 1
