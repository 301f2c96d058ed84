"""The token service's per-client policy derived from the settings (pure)."""

from __future__ import annotations

import pytest

from app.config import Settings
from app.main import policies_of


@pytest.mark.parametrize("counted", [False, True])
def test_the_refresh_lock_outlives_the_permit_wait_and_the_upstream_call(counted: bool) -> None:
    """With token requests counted against the budget, the lock covers the permit wait too, so
    it cannot lapse while its holder waits and let a second instance fetch."""
    settings = Settings(
        clients={"checkout": {"client_id": "id", "client_secret": "s", "timeout_seconds": 10}},
        budget={"count_token_requests": counted, "max_wait_seconds": 30},
    )
    policy = policies_of(settings)["checkout"]
    waited = 30 if counted else 0
    assert policy.lock_ttl > waited + 10
