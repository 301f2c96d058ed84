"""The broker's error answers arrive as typed exceptions, without the token or the API key."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from token_broker_client import (
    BrokerAuth,
    BrokerError,
    BrokerUnavailable,
    BudgetExhausted,
    ClientRequired,
    Forbidden,
    InvalidRequest,
    RefreshThrottled,
    RetryLater,
    Unauthorized,
    UnknownClient,
    UpstreamCredentialsRejected,
)
from token_broker_client.errors import from_answer

from tests.client.support import Setup
from tests.conftest import API_KEYS, EMULATOR_ID, EMULATOR_SECRET, BrokerFactory, Emulator
from tests.support.servers import free_port

WRONG_KEY = "tbk_wrong_key_for_the_sdk_000000000"


def assert_nothing_secret(exc: BaseException, *secrets: str) -> None:
    """Neither the message nor the repr of `exc` holds any of `secrets` or the test keys."""
    for text in (str(exc), repr(exc), repr(exc.args)):
        for secret in (*secrets, *API_KEYS.values(), WRONG_KEY, EMULATOR_SECRET):
            assert secret not in text


# id -> (BrokerAuth keyword arguments, exception class, status, error code)
REFUSALS: dict[str, tuple[dict[str, Any], type[BrokerError], int, str]] = {
    "wrong key": ({"api_key": WRONG_KEY}, Unauthorized, 401, "unauthorized"),
    "no credentials": ({"api_key": None}, Unauthorized, 401, "unauthorized"),
    "client not allowed": ({"client": "payouts"}, Forbidden, 403, "forbidden"),
    "unknown client": ({"client": "nonesuch"}, UnknownClient, 404, "unknown_client"),
    "several clients, none named": (
        {"client": None, "api_key": API_KEYS["billing"]},
        ClientRequired,
        400,
        "client_required",
    ),
}


async def test_refusals_are_typed(setup: Setup, make_auth: Callable[..., BrokerAuth]) -> None:
    """Each refusal in REFUSALS raises its class with status, code and client, sync and async."""
    for case, (kwargs, cls, status, code) in REFUSALS.items():
        auth = make_auth(setup.url, **kwargs)
        with pytest.raises(cls) as raised:
            await auth.atoken()
        with pytest.raises(cls):
            await asyncio.to_thread(auth.token)
        exc = raised.value
        expected = (status, code, kwargs.get("client", "checkout"))
        assert (exc.status, exc.error, exc.client) == expected, case
        assert exc.description and code in str(exc), case
        assert_nothing_secret(exc)
    assert (await setup.emulator.stats())["token_requests"] == 0


async def test_upstream_down_is_broker_unavailable_with_retry_after(
    setup: Setup, make_auth: Callable[..., BrokerAuth]
) -> None:
    """A cold broker whose upstream fails answers 503: BrokerUnavailable with retry_after."""
    await setup.emulator.configure(failure_mode="unavailable")
    with pytest.raises(BrokerUnavailable) as raised:
        await make_auth(setup.url).atoken()
    exc = raised.value
    assert (exc.status, exc.error) == (503, "upstream_unavailable")
    assert exc.retry_after is not None and exc.retry_after >= 1
    assert isinstance(exc, RetryLater)


async def test_rejected_upstream_credentials(
    setup: Setup, make_auth: Callable[..., BrokerAuth]
) -> None:
    """Paysera refusing the broker's own credentials is UpstreamCredentialsRejected (502)."""
    await setup.emulator.configure(clients={EMULATOR_ID: "rotated-secret-value"})
    with pytest.raises(UpstreamCredentialsRejected) as raised:
        await make_auth(setup.url).atoken()
    assert (raised.value.status, raised.value.error) == (502, "upstream_invalid_client")
    assert_nothing_secret(raised.value, "rotated-secret-value")


async def test_unreachable_broker(make_auth: Callable[..., BrokerAuth]) -> None:
    """A broker nobody listens for is BrokerUnavailable without a status or a retry_after."""
    auth = make_auth(f"http://127.0.0.1:{free_port()}", timeout=2)
    with pytest.raises(BrokerUnavailable) as raised:
        await auth.atoken()
    exc = raised.value
    assert (exc.status, exc.error, exc.retry_after) == (None, None, None)
    assert "ConnectError" in str(exc)
    assert_nothing_secret(exc)


async def test_reporting_the_fresh_token_again_is_refresh_throttled(
    setup: Setup, make_auth: Callable[..., BrokerAuth]
) -> None:
    """A token reported right after a forced refresh raises RefreshThrottled with retry_after,
    and never carries either token in its message."""
    auth = make_auth(setup.url)
    first = await auth.atoken()
    second = await auth.ainvalidate(first)
    assert second != first
    with pytest.raises(RefreshThrottled) as raised:
        await auth.ainvalidate(second)
    exc = raised.value
    assert (exc.status, exc.error) == (429, "refresh_throttled")
    assert exc.retry_after is not None and 1 <= exc.retry_after <= 10
    assert_nothing_secret(exc, first, second)
    assert (await setup.emulator.stats())["token_requests"] == 2


async def test_budget_exhausted_carries_retry_after_and_limit(
    broker: BrokerFactory, emulator: Emulator, make_auth: Callable[..., BrokerAuth]
) -> None:
    """No permit within the wait: BudgetExhausted with retry_after, limit and reset."""
    async with broker(budget={"limit": 1, "window_seconds": 30}) as http:
        auth = make_auth(str(http.base_url).rstrip("/"))
        async with auth.permit() as permit:
            assert (permit.limit, permit.remaining) == (1, 0)
        with pytest.raises(BudgetExhausted) as raised:
            async with auth.permit(wait=0):
                pytest.fail("no permit was to be had")
    exc = raised.value
    assert (exc.status, exc.error, exc.limit) == (429, "budget_exhausted", 1)
    assert exc.retry_after is not None and 1 <= exc.retry_after <= 32
    assert exc.reset is not None and exc.reset >= 1


# (status, headers, parsed body, expected class, expected retry_after)
ANSWERS: list[tuple[int, dict[str, str], Any, type[BrokerError], float | None]] = [
    (
        503,
        {"retry-after": "7"},
        {"error": "store_unavailable", "error_description": "x"},
        BrokerUnavailable,
        7.0,
    ),
    (504, {}, {"error": "upstream_timeout", "error_description": "x"}, BrokerUnavailable, None),
    (
        429,
        {"retry-after": "3"},
        {"error": "something_new", "error_description": "x"},
        RetryLater,
        3.0,
    ),
    (400, {}, {"error": "invalid_request", "error_description": "x"}, InvalidRequest, None),
    (413, {}, {"error": "request_too_large", "error_description": "x"}, InvalidRequest, None),
    (502, {}, "<html>bad gateway</html>", BrokerUnavailable, None),
    (500, {}, None, BrokerUnavailable, None),
    (401, {}, None, Unauthorized, None),
]


@pytest.mark.parametrize(("status", "headers", "body", "cls", "retry_after"), ANSWERS)
def test_answers_without_a_known_code_fall_back_on_the_status(
    status: int,
    headers: dict[str, str],
    body: Any,
    cls: type[BrokerError],
    retry_after: float | None,
) -> None:
    """Codes map to classes; an unknown code or a non-JSON body is classed by its status."""
    exc = from_answer(status, headers, body, "checkout")
    assert type(exc) is cls
    assert exc.status == status
    assert getattr(exc, "retry_after", None) == retry_after
    assert "html" not in str(exc)  # a body that is not the contract's JSON is never shown
