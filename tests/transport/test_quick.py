"""Quick answers (`app.transport.quick`) under BrokerServer: a hook that fails costs the
shortcut, never the request."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx
import pytest
from starlette.types import Scope

from app.config import Settings
from app.main import create_app
from app.transport.quick import QUICK_ANSWER_STATE, QuickAnswer
from tests.conftest import API_KEYS, Emulator, broker_config
from tests.support.tls import serve_broker


async def test_a_failing_quick_answer_leaves_the_request_to_the_app(
    emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    """With a hook that raises, every GET /token is still answered (by the route), and the
    fault is logged once per request as http.quick_answer_failed with its type only."""
    config = broker_config(emulator, {})
    app = create_app(Settings(**config))
    calls: list[Scope] = []

    def broken(_state: Mapping[str, Any]) -> QuickAnswer:
        def quick(scope: Scope) -> None:
            calls.append(scope)
            raise RuntimeError("a bug in the hook")

        return quick

    setattr(app.state, QUICK_ANSWER_STATE, broken)
    async with serve_broker(config, with_ops=False, app=app) as broker:
        async with httpx.AsyncClient(base_url=broker.url, timeout=10) as http:
            answers = [
                await http.get("/token", headers={"X-API-Key": API_KEYS["orders"]})
                for _ in range(3)
            ]
    assert [answer.status_code for answer in answers] == [200, 200, 200]
    assert len({answer.json()["access_token"] for answer in answers}) == 1
    assert len(calls) == 3
    failures = [r for r in caplog.records if r.getMessage() == "http.quick_answer_failed"]
    assert [getattr(r, "fields", {}) for r in failures] == [{"error": "RuntimeError"}] * 3
