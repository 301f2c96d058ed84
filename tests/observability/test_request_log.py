"""One `http.request` line per request: request id, route template, caller, client, outcome."""

from __future__ import annotations

import json
import re
from typing import Any

from tests.conftest import API_KEYS, BrokerFactory
from tests.contract import assert_error, assert_token, billing, orders
from tests.observability.conftest import LogCapture


def request_lines(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The `http.request` lines among `lines`."""
    return [line for line in lines if line["event"] == "http.request"]


async def test_request_line_carries_the_callers_request_id(
    broker: BrokerFactory, logs: LogCapture
) -> None:
    """A sane X-Request-ID is echoed and tags every line of that request, the issuance too."""
    logs.start("info")
    async with broker() as http:
        response = await http.get("/token", headers={**orders(), "X-Request-ID": "req-42.a:b"})
        assert_token(response)
    _, lines = logs.read()
    assert response.headers["x-request-id"] == "req-42.a:b"
    tagged = [line for line in lines if line.get("request_id") == "req-42.a:b"]
    assert {line["event"] for line in tagged} >= {"http.request", "token.issued"}
    (line,) = request_lines(tagged)
    assert line["level"] == "info"
    assert (line["method"], line["path"], line["status"]) == ("GET", "/token", 200)
    assert (line["caller"], line["client"], line["outcome"]) == ("orders", "checkout", "ok")
    assert isinstance(line["latency_ms"], float) and line["latency_ms"] >= 0


async def test_odd_request_ids_are_replaced(broker: BrokerFactory, logs: LogCapture) -> None:
    """An X-Request-ID with spaces, odd characters or excessive length gets a fresh id."""
    logs.start("info")
    odd = ["has space", "x" * 65, "<script>", "-leading-dash", ""]
    async with broker() as http:
        responses = [await http.get("/health/live", headers={"X-Request-ID": v}) for v in odd]
        plain = await http.get("/health/live")
    ids = [r.headers["x-request-id"] for r in (*responses, plain)]
    assert all(re.fullmatch(r"[0-9a-f]{16}", rid) for rid in ids), ids
    assert len(set(ids)) == len(ids)


async def test_paths_are_route_templates_and_errors_name_their_code(
    broker: BrokerFactory, logs: LogCapture
) -> None:
    """Raw paths never reach the log: templates, `unmatched`, and the error code as outcome."""
    logs.start("info")
    async with broker() as http:
        form = {"grant_type": "client_credentials"}
        auth = ("orders", API_KEYS["orders"])
        assert (await http.post("/oauth2/checkout/token", data=form, auth=auth)).status_code == 200
        await http.get("/token?client=payouts", headers=orders())
        await http.get("/token", headers={"X-API-Key": "tbk_not_a_key_0000000000000"})
        await http.get("/definitely/not/a-route-with-a-secret-ish-name")
        assert_error(await http.get("/token?client=nope", headers=billing()), 404, "unknown_client")
    _, lines = logs.read()
    seen = {(line["path"], line["status"], line["outcome"]) for line in request_lines(lines)}
    assert seen == {
        ("/oauth2/{client}/token", 200, "ok"),
        ("/token", 403, "forbidden"),
        ("/token", 401, "unauthorized"),
        ("unmatched", 404, "not_found"),
        ("/token", 404, "unknown_client"),
    }
    # The test's own HTTP client (logger httpx) logs its URLs; the broker's lines do not.
    ours = json.dumps([line for line in lines if line["logger"] != "httpx"])
    assert "a-route-with-a-secret-ish-name" not in ours and "nope" not in ours
    oauth = next(line for line in request_lines(lines) if line["path"].startswith("/oauth2"))
    assert (oauth["caller"], oauth["client"]) == ("orders", "checkout")


async def test_probes_and_scrapes_log_only_at_debug(
    broker: BrokerFactory, logs: LogCapture
) -> None:
    """/health* and /metrics lines are debug, so at info level probes leave no trace."""
    logs.start("info")
    async with broker() as http:
        for path in ("/health", "/health/live", "/health/ready", "/metrics"):
            assert (await http.get(path)).status_code == 200
    _, lines = logs.read()
    assert request_lines(lines) == []

    logs.start("debug")
    async with broker() as http:
        assert (await http.get("/health/ready")).status_code == 200
    _, lines = logs.read()
    (line,) = [line for line in request_lines(lines) if line["path"] == "/health/ready"]
    assert line["level"] == "debug" and line["outcome"] == "ok"
