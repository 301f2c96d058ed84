"""`BrokerAuth.permit`: a budget permit as a sync or async context manager that waits for it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
from token_broker_client import BrokerAuth, Forbidden, Permit

from tests.conftest import BrokerFactory

WINDOW = 1.0
MARGIN = 0.1
ONE_PER_WINDOW = {"limit": 1, "window_seconds": WINDOW, "safety_margin_seconds": MARGIN}


async def test_sync_and_async_permits_wait_for_the_next_slot(
    broker: BrokerFactory, make_auth: Callable[..., BrokerAuth]
) -> None:
    """With one permit per window, `with` and `async with` each wait for the slot after it."""
    async with broker(budget=ONE_PER_WINDOW) as http:
        auth = make_auth(str(http.base_url).rstrip("/"))

        def take_sync() -> tuple[Permit, float]:
            started = time.monotonic()
            with auth.permit(wait=5) as permit:
                return permit, time.monotonic() - started

        async def take_async() -> tuple[Permit, float]:
            started = time.monotonic()
            async with auth.permit("checkout", wait=5) as permit:
                return permit, time.monotonic() - started

        first, first_wait = await take_async()
        second, second_wait = await asyncio.to_thread(take_sync)
        third, third_wait = await take_async()
    assert first == Permit(limit=1, remaining=0, reset=first.reset) and first_wait < 0.5
    for permit, waited in ((second, second_wait), (third, third_wait)):
        assert permit.limit == 1 and permit.remaining == 0
        assert WINDOW - 0.2 <= waited <= WINDOW + MARGIN + 1.0


async def test_a_cancelled_async_permit_gives_its_slot_back(
    broker: BrokerFactory, make_auth: Callable[..., BrokerAuth]
) -> None:
    """Cancelling a waiting `async with permit` frees its reserved slot for the next caller."""
    window = {**ONE_PER_WINDOW, "window_seconds": 2.0}
    async with broker(budget=window) as http:
        auth = make_auth(str(http.base_url).rstrip("/"))
        async with auth.permit(wait=5):
            pass
        abandoned = asyncio.create_task(auth.permit(wait=10).__aenter__())
        await asyncio.sleep(0.3)  # it holds the reservation of the next slot now
        abandoned.cancel()
        started = time.monotonic()
        async with auth.permit(wait=10):
            waited = time.monotonic() - started
    assert abandoned.cancelled()
    # The next slot comes 2.1 s after the first grant; had the cancelled caller kept it, this
    # one would have waited another whole window.
    assert waited <= 2.0 + MARGIN + 0.8


async def test_permit_for_a_client_the_caller_may_not_use(
    broker: BrokerFactory, make_auth: Callable[..., BrokerAuth]
) -> None:
    """A permit for another client is Forbidden; a negative wait is refused before any request."""
    async with broker() as http:
        auth = make_auth(str(http.base_url).rstrip("/"))
        with pytest.raises(Forbidden):
            async with auth.permit("payouts"):
                pytest.fail("the permit was granted")
        with pytest.raises(ValueError, match="wait"):
            auth.permit(wait=-1)
