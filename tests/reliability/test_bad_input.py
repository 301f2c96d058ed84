"""Bad input against a real `token-broker serve` process: oversized heads and bodies, malformed
requests and a representative set of errors, each answered with the contract's JSON."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from typing import Any

import pytest

from app.transport.limits import MAX_HEADER_BYTES, MAX_HEADER_COUNT, MAX_TARGET_BYTES
from tests.conftest import API_KEYS
from tests.reliability.live import LiveBroker, live_broker

KEY = API_KEYS["billing"]
ORDERS_KEY = API_KEYS["orders"]
MAX_PROXY_BODY = 4096


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveBroker]:
    """A broker process (proxy bodies limited to 4 KiB) in front of an emulator process."""
    with live_broker(
        tmp_path_factory.mktemp("bad-input"), proxy={"max_body_bytes": MAX_PROXY_BODY}
    ) as running:
        yield running


class Answer:
    """A parsed HTTP/1.1 response read off a raw socket."""

    def __init__(self, raw: bytes) -> None:
        head, _, self.body = raw.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split()[1])
        self.headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in lines)
        }

    def json(self) -> Any:
        """The body as JSON."""
        return json.loads(self.body)


async def exchange(live: LiveBroker, *requests: bytes) -> list[Answer]:
    """Send raw requests on one connection (each answered before the next); parse the answers.

    Bytes the server never read (it closed early) are written in the background, and a reset
    after the answer arrived is ignored: the answer is what counts.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", live.broker.port)
    answers = []
    try:
        for request in requests:
            writer.write(request)
            answers.append(Answer(await read_response(reader)))
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return answers


async def read_response(reader: asyncio.StreamReader) -> bytes:
    """One response: the head, then Content-Length bytes of body."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return head + await reader.readexactly(length)


def get(target: str, *headers: str, method: str = "GET", body: bytes = b"") -> bytes:
    """A raw HTTP/1.1 request."""
    lines = [f"{method} {target} HTTP/1.1", "Host: broker", *headers]
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def chunked(target: str, body: bytes) -> bytes:
    """A raw POST with a chunked JSON body (no Content-Length), in 64 KiB chunks."""
    head = f"POST {target} HTTP/1.1\r\nHost: broker\r\nX-API-Key: {KEY}\r\n"
    head += "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    step = 65536
    chunks = [body[i : i + step] for i in range(0, len(body), step)]
    return head.encode() + b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"


def assert_contract(answer: Answer, status: int, code: str) -> None:
    """`status` with `{"error": code, "error_description": ...}` JSON and no-store."""
    assert answer.status == status, answer.body[:300]
    assert answer.headers["content-type"].startswith("application/json")
    assert "no-store" in answer.headers["cache-control"]
    body = answer.json()
    assert set(body) == {"error", "error_description"} and body["error"] == code, body
    assert isinstance(body["error_description"], str) and body["error_description"]
    assert KEY not in answer.body.decode("latin-1")


@pytest.mark.parametrize(
    ("name", "request_bytes", "status", "code"),
    [
        (
            "70 KiB header",
            get("/token", f"X-API-Key: {KEY}", "X-Big: " + "a" * 70_000),
            431,
            "headers_too_large",
        ),
        (
            "1 MiB header",
            get("/token", f"X-API-Key: {KEY}", "X-Big: " + "a" * 1_048_576),
            431,
            "headers_too_large",
        ),
        (
            f"{MAX_HEADER_COUNT + 1} headers",
            get("/token", *(f"X-H{i}: v" for i in range(MAX_HEADER_COUNT + 1))),
            431,
            "headers_too_large",
        ),
        (
            "20 KiB query string",
            get("/token?client=" + "a" * 20_000, f"X-API-Key: {KEY}"),
            414,
            "uri_too_long",
        ),
        ("malformed request line", b"GARBAGE\r\n\r\n", 400, "invalid_request"),
        (
            "bad header line",
            b"GET /token HTTP/1.1\r\nno colon here\r\n\r\n",
            400,
            "invalid_request",
        ),
    ],
)
async def test_oversized_or_malformed_heads_are_refused_with_contract_json(
    live: LiveBroker, name: str, request_bytes: bytes, status: int, code: str
) -> None:
    """Oversized request lines and headers, and unparsable requests, get 414/431/400 JSON."""
    (answer,) = await exchange(live, request_bytes)
    assert_contract(answer, status, code)
    assert answer.headers["connection"] == "close"


async def test_heads_just_under_the_limits_are_served_on_one_keep_alive_connection(
    live: LiveBroker,
) -> None:
    """Three requests each just under the limits pass on one connection: the counts restart."""
    near = MAX_HEADER_BYTES // 2 - 100
    request = get(
        "/health/live?pad=" + "a" * (MAX_TARGET_BYTES - 100),
        *(f"X-Pad{i}: " + "b" * near for i in range(2)),
    )
    answers = await exchange(live, request, request, request)
    assert [a.status for a in answers] == [200, 200, 200]


@pytest.mark.parametrize(
    ("name", "request_bytes", "status", "code"),
    [
        (
            "proxy body over max_body_bytes",
            get(
                "/proxy/checkout/checkout-project/integration/v1/echo",
                f"X-API-Key: {KEY}",
                method="POST",
                body=b"x" * (MAX_PROXY_BODY + 1),
            ),
            413,
            "request_too_large",
        ),
        (
            "2 MB invalidate body",
            get(
                "/token/invalidate",
                f"X-API-Key: {KEY}",
                "Content-Type: application/json",
                method="POST",
                body=json.dumps({"client": "checkout", "access_token": "a" * 2_000_000}).encode(),
            ),
            413,
            "request_too_large",
        ),
        (
            "2 MB report body sent chunked",
            chunked("/budget/report", b'{"client": "checkout", "pad": "' + b"a" * 2_000_000),
            413,
            "request_too_large",
        ),
        (
            "100 KB access_token (under the body limit)",
            get(
                "/token/invalidate",
                f"X-API-Key: {KEY}",
                "Content-Type: application/json",
                method="POST",
                body=json.dumps({"client": "checkout", "access_token": "a" * 100_000}).encode(),
            ),
            400,
            "invalid_request",
        ),
        (
            "200 KB OAuth form",
            get(
                "/oauth2/checkout/token",
                "Content-Type: application/x-www-form-urlencoded",
                method="POST",
                body=b"grant_type=client_credentials&pad=" + b"a" * 200_000,
            ),
            400,
            "invalid_request",
        ),
    ],
)
async def test_oversized_bodies_are_refused_with_contract_json(
    live: LiveBroker, name: str, request_bytes: bytes, status: int, code: str
) -> None:
    """Bodies over each endpoint's limit get its documented error as contract JSON: 413 over
    the API's 1 MiB (declared or chunked) and the proxy's limit, 400 over the OAuth form's."""
    (answer,) = await exchange(live, request_bytes)
    assert_contract(answer, status, code)


CASES = [
    ("unknown route", get("/nope"), 404, "not_found"),
    ("unknown route with a key", get("/token/nope", f"X-API-Key: {KEY}"), 404, "not_found"),
    (
        "method not allowed",
        get("/token/invalidate", f"X-API-Key: {KEY}"),
        405,
        "method_not_allowed",
    ),
    ("method not allowed on /token", get("/token", method="DELETE"), 405, "method_not_allowed"),
    ("no credentials", get("/token"), 401, "unauthorized"),
    ("unknown key", get("/token", "X-API-Key: tbk_nobody"), 401, "unauthorized"),
    (
        "client not allowed",
        get("/token?client=payouts", f"X-API-Key: {ORDERS_KEY}"),
        403,
        "forbidden",
    ),
    ("unknown client", get("/token?client=nope", f"X-API-Key: {KEY}"), 404, "unknown_client"),
    ("client required", get("/token", f"X-API-Key: {KEY}"), 400, "client_required"),
    (
        "non-numeric wait",
        get("/budget/acquire?client=checkout&wait=abc", f"X-API-Key: {KEY}", method="POST"),
        400,
        "invalid_request",
    ),
    (
        "negative wait",
        get("/budget/acquire?client=checkout&wait=-1", f"X-API-Key: {KEY}", method="POST"),
        400,
        "invalid_request",
    ),
    (
        "invalid JSON",
        get(
            "/token/invalidate",
            f"X-API-Key: {KEY}",
            "Content-Type: application/json",
            method="POST",
            body=b"{not json",
        ),
        400,
        "invalid_request",
    ),
    (
        "wrong field type",
        get(
            "/budget/report",
            f"X-API-Key: {KEY}",
            "Content-Type: application/json",
            method="POST",
            body=b'{"client": "checkout", "status": "soon", "headers": []}',
        ),
        400,
        "invalid_request",
    ),
    (
        "proxy path escape",
        get("/proxy/checkout/..%2F..%2Fetc", f"X-API-Key: {KEY}"),
        400,
        "invalid_request",
    ),
    (
        "OAuth wrong content type",
        get("/oauth2/checkout/token", "Content-Type: text/plain", method="POST", body=b"x"),
        400,
        "invalid_request",
    ),
    (
        "OAuth unknown caller",
        get(
            "/oauth2/checkout/token",
            "Content-Type: application/x-www-form-urlencoded",
            method="POST",
            body=b"grant_type=client_credentials&client_id=nobody&client_secret=x",
        ),
        401,
        "invalid_client",
    ),
]


@pytest.mark.parametrize(("name", "request_bytes", "status", "code"), CASES)
async def test_every_error_is_contract_json(
    live: LiveBroker, name: str, request_bytes: bytes, status: int, code: str
) -> None:
    """A representative error of each kind is `{"error", "error_description"}` JSON, no-store."""
    (answer,) = await exchange(live, request_bytes)
    assert_contract(answer, status, code)
