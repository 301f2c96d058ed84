"""The request limits as configuration (`server.max_*`) on a real `token-broker serve` process:
the configured values are the ones applied, and every refusal is logged and counted."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from app.auth.callers import hash_api_key
from app.config import ServerSettings
from app.transport.limits import MAX_BODY_BYTES, HeadLimits
from tests.conftest import API_KEYS
from tests.observability.prom import Scrape, parse
from tests.support.processes import ServerProcess, running_broker

NOWHERE = "http://127.0.0.1:9"  # the upstream is never asked
LIMITS = {"max_target_bytes": 2048, "max_header_bytes": 8192, "max_headers": 20}
MAX_BODY = 4096
KEY = API_KEYS["orders"]


def test_defaults_are_todays_limits() -> None:
    """Left out, the four keys keep the limits the broker always had (16 KiB target, 64 KiB and
    200 header fields, 1 MiB API bodies)."""
    server = ServerSettings()
    limits = HeadLimits(server.max_target_bytes, server.max_header_bytes, server.max_headers)
    assert limits == HeadLimits() == HeadLimits(16 * 1024, 64 * 1024, 200)
    assert server.max_body_bytes == MAX_BODY_BYTES == 1024 * 1024


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A broker process with small request limits, one caller and no reachable upstream."""
    client = {"token_url": f"{NOWHERE}/token", "api_base_url": NOWHERE}
    client |= {"client_id": "checkout-id", "client_secret": "limits-test-secret"}
    config: dict[str, Any] = {
        "server": {**LIMITS, "max_body_bytes": MAX_BODY},
        "clients": {"checkout": client},
        "callers": {"orders": {"api_key_sha256": hash_api_key(KEY), "clients": ["checkout"]}},
    }
    with running_broker(config, tmp_path_factory.mktemp("limits")) as process:
        yield process


def raw(broker: ServerProcess, request: bytes) -> tuple[int, str | None]:
    """Send one raw request on a fresh connection; the answer's status and, for a contract
    error (`{"error", "error_description"}`, checked here), its error code."""
    with socket.create_connection(("127.0.0.1", broker.port), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(65536)
            assert chunk, answer
            answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        length = next(
            (
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            ),
            0,  # a 204 has no body
        )
        while len(body) < length:
            chunk = sock.recv(65536)
            assert chunk, body
            body += chunk
    status, data = int(head.split()[1]), json.loads(body) if body.startswith(b"{") else {}
    if status < 400:
        return status, None
    assert set(data) == {"error", "error_description"} and data["error_description"], data
    return status, data["error"]


def request(target: str, *headers: str, method: str = "GET", body: bytes = b"") -> bytes:
    """A raw HTTP/1.1 request with the orders caller's key."""
    lines = [f"{method} {target} HTTP/1.1", "Host: broker", f"X-API-Key: {KEY}", *headers]
    if method == "POST":
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def scrape(broker: ServerProcess) -> Scrape:
    """The broker's /metrics, parsed."""
    return parse(httpx.get(f"{broker.url}/metrics", timeout=5).text)


def request_lines(broker: ServerProcess) -> list[dict[str, Any]]:
    """The broker's `http.request` log lines so far."""
    lines = [json.loads(line) for line in broker.log().splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("event") == "http.request"]


def test_configured_limits_are_the_ones_applied(broker: ServerProcess) -> None:
    """Requests just under each configured limit pass; just over it they get the contract's
    refusal (the defaults would have let all of them through)."""
    pad = "/health/live?pad="
    target_ok, target_over = pad + "a" * (2048 - len(pad)), pad + "a" * (2049 - len(pad))
    fields_ok = [f"X-H{i}: v" for i in range(20 - 2)]  # + Host and X-API-Key = 20
    header = "X-Big: " + "b" * (8192 - 200)
    pad = {f"X-Pad{i}": "c" * 950 for i in range(4)}  # a body just under 4 KiB
    body_ok = json.dumps({"client": "checkout", "status": 200, "headers": pad}).encode()
    body_over = json.dumps(
        {"client": "checkout", "status": 200, "headers": {**pad, "X": "c" * 200}}
    ).encode()
    assert len(body_ok) <= MAX_BODY < len(body_over)
    answers = {
        "target under": raw(broker, request(target_ok))[0],
        "target over": raw(broker, request(target_over)),
        "20 fields": raw(broker, request("/health/live", *fields_ok))[0],
        "21 fields": raw(broker, request("/health/live", *fields_ok, "X-One-More: v")),
        "8 KiB headers": raw(broker, request("/health/live", header))[0],
        "over 8 KiB headers": raw(broker, request("/health/live", header, "X-More: " + "d" * 300)),
        "body under": raw(broker, request("/budget/report", method="POST", body=body_ok))[0],
        "body over": raw(broker, request("/budget/report", method="POST", body=body_over)),
    }
    assert answers["target under"] == answers["20 fields"] == answers["8 KiB headers"] == 200
    assert answers["target over"] == (414, "uri_too_long")
    assert answers["21 fields"] == (431, "headers_too_large")
    assert answers["over 8 KiB headers"] == (431, "headers_too_large")
    assert answers["body under"] == 204
    assert answers["body over"] == (413, "request_too_large")


def test_refused_requests_are_logged_and_counted_like_any_other(broker: ServerProcess) -> None:
    """Each refusal before routing (414, 431, 400, 413 by Content-Length) adds one
    `http_requests_total` sample of its status class and one `http.request` line with the
    error code as its outcome."""
    before, lines_before = scrape(broker), len(request_lines(broker))
    refusals = [
        (request("/token?pad=" + "a" * 3000), 414, "uri_too_long", "GET"),
        (request("/token", *(f"X-H{i}: v" for i in range(30))), 431, "headers_too_large", "GET"),
        (b"GARBAGE\r\n\r\n", 400, "invalid_request", "OTHER"),
        (request("/token", "no colon here"), 400, "invalid_request", "GET"),
        (
            request("/token/invalidate", method="POST", body=b"{" + b" " * MAX_BODY + b"}"),
            413,
            "request_too_large",
            "POST",
        ),
    ]
    for raw_request, status, code, _ in refusals:
        assert raw(broker, raw_request) == (status, code)
    deadline = time.monotonic() + 5
    while len(request_lines(broker)) < lines_before + len(refusals):
        assert time.monotonic() < deadline, request_lines(broker)[lines_before:]
        time.sleep(0.05)
    after = scrape(broker)

    logged = [
        (line["method"], line["status"], line["outcome"], line["path"])
        for line in request_lines(broker)[lines_before:]
    ]
    assert sorted(logged) == sorted(
        (method, status, code, "unmatched") for _, status, code, method in refusals
    )
    name = "token_broker_http_requests_total"
    for method in ("GET", "POST", "OTHER"):
        expected = sum(1 for *_, m in refusals if m == method)
        labels = {"route": "unmatched", "method": method, "status_class": "4xx"}
        assert after.value(name, **labels) - before.value(name, **labels) == expected, method
