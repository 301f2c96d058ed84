"""The emulator's app over real HTTP: integration API, rate limit, echo, blob, control, serving."""

from __future__ import annotations

import asyncio
import hashlib
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx

from app.emulator import EmulatorSettings
from tests.emulator.support import (
    API,
    FORM,
    METHODS_PATH,
    TOKEN_PATH,
    FakeClock,
    bearer,
    client_tls,
    emulator,
    get_token,
    stats,
)
from tests.support.servers import free_port

RATE_HEADERS = ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset")
REPO_ROOT = Path(__file__).resolve().parents[2]


# --- integration API: authentication ----------------------------------------------------------


async def test_methods_with_a_valid_token_lists_payment_methods() -> None:
    """A fresh bearer token gets 200 and a non-empty list of payment methods."""
    async with emulator() as client:
        response = await client.get(METHODS_PATH, headers=bearer(await get_token(client)))
    assert response.status_code == 200
    methods = response.json()["methods"]
    assert methods and all({"key", "title"} <= set(m) for m in methods)


async def test_methods_without_a_bearer_token_is_401() -> None:
    """No bearer token gets 401 invalid_token with a Bearer WWW-Authenticate challenge."""
    async with emulator() as client:
        for headers in [{}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer"}]:
            response = await client.get(METHODS_PATH, headers=headers)
            assert response.status_code == 401, headers
            assert response.json() == {
                "error": "invalid_token",
                "error_description": "Missing bearer token",
            }
            challenge = response.headers["www-authenticate"]
            assert challenge.startswith("Bearer") and 'error="invalid_token"' in challenge


async def test_unknown_token_is_401() -> None:
    """A token the emulator never issued gets 401 invalid_token."""
    async with emulator() as client:
        response = await client.get(METHODS_PATH, headers=bearer("emu_forged"))
    assert response.status_code == 401
    assert response.json() == {"error": "invalid_token", "error_description": "Token is not active"}


async def test_revoked_token_is_401_and_a_new_one_works() -> None:
    """After /_emulator/revoke the old token gets 401 and a newly issued one is accepted."""
    async with emulator() as client:
        old = await get_token(client)
        revoked = await client.post("/_emulator/revoke")
        rejected = await client.get(METHODS_PATH, headers=bearer(old))
        accepted = await client.get(METHODS_PATH, headers=bearer(await get_token(client)))
    assert revoked.json() == {"revoked": 1}
    assert rejected.status_code == 401
    assert rejected.json()["error_description"] == "Token has been revoked"
    assert accepted.status_code == 200


async def test_token_expires_on_the_injected_clock(clock: FakeClock) -> None:
    """A token works until its lifetime has passed on the clock, then gets 'Token is expired'."""
    async with emulator(EmulatorSettings(token_lifetime=60), clock) as client:
        headers = bearer(await get_token(client))
        clock.advance(59.9)
        before = await client.get(METHODS_PATH, headers=headers)
        clock.advance(0.1)
        after = await client.get(METHODS_PATH, headers=headers)
    assert before.status_code == 200
    assert after.status_code == 401
    assert after.json() == {"error": "invalid_token", "error_description": "Token is expired"}


async def test_sub_second_lifetime_expires_in_real_time() -> None:
    """A 0.2 s lifetime says expires_in 1 (rounded, at least 1) and the token dies after 0.2 s."""
    async with emulator(EmulatorSettings(token_lifetime=0.2)) as client:
        response = await client.post(TOKEN_PATH, data=FORM)
        headers = bearer(response.json()["access_token"])
        fresh = await client.get(METHODS_PATH, headers=headers)
        await asyncio.sleep(0.3)
        stale = await client.get(METHODS_PATH, headers=headers)
    assert response.json()["expires_in"] == 1
    assert fresh.status_code == 200
    assert stale.status_code == 401


# --- integration API: rate limit --------------------------------------------------------------


async def test_rate_limit_refuses_the_sixth_request_and_recovers(clock: FakeClock) -> None:
    """With 5 per 1 s, the 6th request gets 429 with Retry-After, and a window later it passes."""
    settings = EmulatorSettings(rate_limit=5, rate_window=1.0)
    async with emulator(settings, clock) as client:
        headers = bearer(await get_token(client))
        allowed = [await client.get(METHODS_PATH, headers=headers) for _ in range(5)]
        refused = await client.get(METHODS_PATH, headers=headers)
        clock.advance(1.0)
        recovered = await client.get(METHODS_PATH, headers=headers)
    assert [r.status_code for r in allowed] == [200] * 5
    assert [r.headers["x-ratelimit-remaining"] for r in allowed] == ["4", "3", "2", "1", "0"]
    assert all(r.headers["x-ratelimit-limit"] == "5" for r in allowed)
    assert refused.status_code == 429
    assert refused.json()["error"] == "rate_limit_exceeded"
    assert refused.headers["retry-after"] == "1"
    assert refused.headers["x-ratelimit-reset"] == "1"
    assert refused.headers["x-ratelimit-remaining"] == "0"
    assert recovered.status_code == 200
    assert recovered.headers["x-ratelimit-remaining"] == "4"


async def test_rate_limit_is_a_strict_sliding_window(clock: FakeClock) -> None:
    """No window of rate_window seconds, wherever it starts, holds more than rate_limit requests."""
    settings = EmulatorSettings(rate_limit=3, rate_window=10.0)
    async with emulator(settings, clock) as client:
        headers = bearer(await get_token(client))

        async def status_at(t: float) -> httpx.Response:
            clock.now = 1000.0 + t
            return await client.get(METHODS_PATH, headers=headers)

        codes = [(await status_at(t)).status_code for t in (0, 5, 5)]
        at_9 = await status_at(9)
        at_10 = await status_at(10)
        at_10_5 = await status_at(10.5)
    assert codes == [200, 200, 200]
    assert (at_9.status_code, at_9.headers["retry-after"]) == (429, "1")
    assert at_10.status_code == 200  # the request at 0 has left the window (0, 10]
    assert (at_10_5.status_code, at_10_5.headers["retry-after"]) == (429, "5")


async def test_401s_count_against_the_limit_and_429s_do_not(clock: FakeClock) -> None:
    """Unauthorized requests use a slot; refused (429) requests do not extend the wait."""
    settings = EmulatorSettings(rate_limit=2, rate_window=1.0)
    async with emulator(settings, clock) as client:
        token = await get_token(client)
        unauthorized = await client.get(METHODS_PATH)
        ok = await client.get(METHODS_PATH, headers=bearer(token))
        clock.advance(0.5)
        refused = [await client.get(METHODS_PATH, headers=bearer(token)) for _ in range(3)]
        clock.advance(0.5)
        after = await client.get(METHODS_PATH, headers=bearer(token))
    assert (unauthorized.status_code, unauthorized.headers["x-ratelimit-remaining"]) == (401, "1")
    assert (ok.status_code, ok.headers["x-ratelimit-remaining"]) == (200, "0")
    assert [r.status_code for r in refused] == [429] * 3
    assert (after.status_code, after.headers["x-ratelimit-remaining"]) == (200, "1")


async def test_every_integration_response_carries_rate_limit_headers() -> None:
    """200, 401, 404 and 429 answers of the integration API all carry X-RateLimit-*."""
    async with emulator(EmulatorSettings(rate_limit=3)) as client:
        headers = bearer(await get_token(client))
        responses = [
            await client.get(METHODS_PATH, headers=headers),
            await client.get(METHODS_PATH),
            await client.get(f"{API}/no-such-thing", headers=headers),
            await client.get(METHODS_PATH, headers=headers),
        ]
    assert [r.status_code for r in responses] == [200, 401, 404, 429]
    for response in responses:
        assert all(name in response.headers for name in RATE_HEADERS), response.headers
        assert int(response.headers["x-ratelimit-reset"]) >= 1
    assert "retry-after" in responses[-1].headers


# --- echo and blob ----------------------------------------------------------------------------


async def test_echo_reports_headers_and_the_sha256_of_a_streamed_body() -> None:
    """Echo reports method, path, query, lower-case headers, and size and SHA-256 of 8 MiB sent."""
    chunk = bytes(range(256)) * 1024  # 256 KiB
    expected = hashlib.sha256(chunk * 32)

    async def body() -> AsyncIterator[bytes]:
        for _ in range(32):
            yield chunk

    async with emulator() as client:
        token = await get_token(client)
        response = await client.put(
            f"{API}/echo?a=1&b=two",
            content=body(),
            headers={**bearer(token), "X-Custom-Thing": "abc"},
        )
    assert response.status_code == 200
    echo = response.json()
    assert echo["method"] == "PUT"
    assert echo["path"] == f"{API}/echo"
    assert echo["query"] == "a=1&b=two"
    assert echo["headers"]["x-custom-thing"] == "abc"
    assert echo["headers"]["authorization"] == f"Bearer {token}"
    assert echo["headers"]["transfer-encoding"] == "chunked"
    assert echo["body_bytes"] == 8 * 1024 * 1024
    assert echo["body_sha256"] == expected.hexdigest()


async def test_echo_needs_a_token() -> None:
    """Echo is bearer-authenticated like the rest of the integration API."""
    async with emulator() as client:
        response = await client.post(f"{API}/echo", content=b"x")
    assert response.status_code == 401


async def test_blob_streams_exactly_n_deterministic_bytes() -> None:
    """Blob streams N bytes (byte i is i % 256) with a matching Content-Length."""
    size = 3 * 65536 + 123
    async with emulator() as client:
        headers = bearer(await get_token(client))
        async with client.stream("GET", f"{API}/blob", params={"size": size}, headers=headers) as r:
            content = b"".join([part async for part in r.aiter_raw()])
            status, length = r.status_code, r.headers["content-length"]
    assert status == 200
    assert int(length) == size
    assert content == (bytes(range(256)) * (size // 256 + 1))[:size]


async def test_blob_refuses_a_bad_size() -> None:
    """Blob answers 400 to a size that is missing, negative, not a number or too large."""
    async with emulator() as client:
        headers = bearer(await get_token(client))
        for size in ["", "-1", "abc", str(2**40)]:
            response = await client.get(f"{API}/blob", params={"size": size}, headers=headers)
            assert response.status_code == 400, size
            assert response.json()["error"] == "invalid_request"


# --- control endpoints ------------------------------------------------------------------------


async def test_stats_count_every_kind_of_request() -> None:
    """Stats count token requests, issued and rejected tokens, API calls, 401s and 429s."""
    async with emulator(EmulatorSettings(rate_limit=2)) as client:
        token = await get_token(client)
        await get_token(client)
        await client.post(TOKEN_PATH, data={**FORM, "client_secret": "wrong"})
        await client.get(METHODS_PATH, headers=bearer(token))
        await client.get(METHODS_PATH)
        await client.get(METHODS_PATH, headers=bearer(token))
        counted = await stats(client)
    assert counted == {
        "token_requests": 3,
        "tokens_issued": 2,
        "token_rejected": 1,
        "api_requests": 3,
        "api_unauthorized": 1,
        "api_rate_limited": 1,
    }


async def test_config_changes_behaviour_at_runtime() -> None:
    """POST /_emulator/config changes failure mode, lifetime and clients of a running emulator."""
    async with emulator() as client:
        down = await client.post("/_emulator/config", json={"failure_mode": "unavailable"})
        refused = await client.post(TOKEN_PATH, data=FORM)
        changed = await client.post(
            "/_emulator/config",
            json={"failure_mode": "none", "token_lifetime": 120, "clients": "shop:n3w-s3cret"},
        )
        old_client = await client.post(TOKEN_PATH, data=FORM)
        new_client = await client.post(
            TOKEN_PATH, data={**FORM, "client_id": "shop", "client_secret": "n3w-s3cret"}
        )
    assert down.json()["failure_mode"] == "unavailable"
    assert refused.status_code == 503
    assert changed.status_code == 200
    assert changed.json()["clients"] == ["shop"]
    assert "n3w-s3cret" not in changed.text
    assert old_client.status_code == 401
    assert new_client.json()["expires_in"] == 120


BAD_CONFIG = {
    b'{"token_lifetime": -1}': "token_lifetime",
    b'{"failure_mode": "explode", "token_lifetime": 5}': "failure_mode",
    b'{"rate_limit": true}': "rate_limit",
    b'{"clients": {"a": ""}}': "clients",
    b'{"nope": 1}': "nope",
    b"[1, 2]": "JSON object",
    b"not json": "JSON object",
}


async def test_config_refuses_bad_input_and_changes_nothing() -> None:
    """Bad config input gets 400 naming the problem, and the settings stay as they were."""
    async with emulator() as client:
        before = (await client.get("/_emulator/config")).json()
        for body, named in BAD_CONFIG.items():
            response = await client.post("/_emulator/config", content=body)
            assert response.status_code == 400, body
            assert response.json()["error"] == "invalid_request"
            assert named in response.json()["error_description"], body
        after = (await client.get("/_emulator/config")).json()
    assert before == after


async def test_reset_zeroes_counters_windows_and_tokens(clock: FakeClock) -> None:
    """POST /_emulator/reset zeroes stats, empties rate windows and forgets issued tokens."""
    async with emulator(EmulatorSettings(rate_limit=1), clock) as client:
        token = await get_token(client)
        await client.get(METHODS_PATH, headers=bearer(token))
        limited = await client.get(METHODS_PATH, headers=bearer(token))
        await client.post("/_emulator/reset")
        zeroed = await stats(client)
        forgotten = await client.get(METHODS_PATH, headers=bearer(token))
    assert limited.status_code == 429
    assert set(zeroed.values()) == {0}
    assert forgotten.status_code == 401  # not 429: the window was cleared too
    assert forgotten.json()["error_description"] == "Token is not active"


# --- serve_emulator ---------------------------------------------------------------------------


async def test_serve_emulator_serves_and_stops_despite_a_hanging_request() -> None:
    """serve_emulator serves tokens; SIGINT stops it at once, answering a hung request 503."""
    port = free_port()
    code = (
        "from app.emulator import EmulatorSettings, serve_emulator; "
        f"serve_emulator(EmulatorSettings.from_env(), '127.0.0.1', {port})"
    )
    env = {"EMULATOR_CLIENTS": "demo-client:demo-secret", "PATH": "/usr/bin:/bin"}
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base, verify=client_tls()) as client:
            await _wait_until_serving(client, proc)
            token = await get_token(client)
            await client.post("/_emulator/config", json={"failure_mode": "hang"})
            hung = asyncio.create_task(client.post(TOKEN_PATH, data=FORM, timeout=30))
            while (await stats(client))["token_requests"] < 2:
                await asyncio.sleep(0.02)
            stopping = time.monotonic()
            proc.send_signal(signal.SIGINT)
            released = await hung
        output, _ = await asyncio.to_thread(proc.communicate, timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert time.monotonic() - stopping < 2
    assert proc.returncode == 0, output
    assert released.status_code == 503
    assert released.json()["error_description"] == "Emulator shutting down"
    assert b"Traceback" not in output
    assert b"demo-secret" not in output
    assert token.encode() not in output


async def _wait_until_serving(client: httpx.AsyncClient, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the emulator process exited"
        try:
            await client.get("/_emulator/stats")
            return
        except httpx.TransportError:
            await asyncio.sleep(0.05)
    raise AssertionError("the emulator did not start within 15 s")


async def test_last_token_request_shows_its_trace_headers_and_never_its_credentials() -> None:
    """`/_emulator/last-token-request` returns the traceparent/tracestate of the last token
    request, nothing when it had none, and none of its credentials; reset forgets it."""
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    async with emulator() as client:
        await client.post(
            TOKEN_PATH, data=FORM, headers={"traceparent": traceparent, "tracestate": "tb=1"}
        )
        seen = (await client.get("/_emulator/last-token-request")).json()
        assert seen == {"trace_headers": {"traceparent": traceparent, "tracestate": "tb=1"}}
        await client.post(TOKEN_PATH, data=FORM)
        assert (await client.get("/_emulator/last-token-request")).json() == {"trace_headers": {}}
        await client.post(TOKEN_PATH, data=FORM, headers={"traceparent": traceparent})
        await client.post("/_emulator/reset")
        after_reset = await client.get("/_emulator/last-token-request")
    assert after_reset.json() == {"trace_headers": {}}
    assert FORM["client_secret"] not in str(seen)
