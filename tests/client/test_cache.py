"""How long the SDK keeps a token: until `expires_in` less 10 %, at most 30 s, on its clock."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from token_broker_client import BrokerAuth
from token_broker_client._cache import fresh_for

from tests.client.support import TOKEN, Setup


@pytest.mark.parametrize(
    ("expires_in", "used_for"), [(3600, 3570), (300, 270), (100, 90), (10, 9), (0, 0)]
)
def test_margin_is_ten_percent_at_most_thirty_seconds(expires_in: int, used_for: float) -> None:
    """A token is used for `expires_in` less min(30 s, 10 %)."""
    assert fresh_for(expires_in) == pytest.approx(used_for)


@pytest.mark.parametrize(("lifetime", "kept", "refetched"), [(3600, 3567, 3572), (100, 88, 92)])
async def test_token_is_asked_for_again_shortly_before_it_expires(
    setup: Setup,
    make_auth: Callable[..., BrokerAuth],
    lifetime: int,
    kept: float,
    refetched: float,
) -> None:
    """With the SDK's clock moved on, the token is reused until its margin, then fetched again."""
    await setup.emulator.configure(token_lifetime=lifetime)
    now = [1000.0]
    auth = make_auth(setup.url, clock=lambda: now[0])
    before = await setup.broker_requests()
    token = await auth.atoken()
    now[0] += kept
    assert await auth.atoken() == token
    middle = await setup.broker_requests()
    now[0] += refetched - kept
    await auth.atoken()
    after = await setup.broker_requests()
    assert middle[TOKEN] - before[TOKEN] == 1
    assert after[TOKEN] - middle[TOKEN] == 1
