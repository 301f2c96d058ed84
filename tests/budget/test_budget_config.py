"""The budget settings: weights, the token reserve, the outage share, as main.py builds them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from app.config import Settings, load_settings
from app.errors import ConfigError
from app.main import budget_policy_of
from tests.tomlfile import write_toml

CLIENT = {"client_id": "id", "client_secret": "secret-value", "token_url": "http://127.0.0.1/t"}
CALLER = {"api_key_sha256": "a" * 64, "clients": ["checkout"]}


def settings(budget: dict[str, Any] | None = None, **caller: Any) -> Settings:
    """Settings with one client and callers `light` (weight 1) and `heavy` (given fields)."""
    return Settings(
        clients={"checkout": CLIENT},
        callers={"light": CALLER, "heavy": {**CALLER, "api_key_sha256": "b" * 64, **caller}},
        budget=budget or {},
    )


def test_weights_reserve_and_outage_share_reach_the_policy() -> None:
    """budget_weight per caller, token_reserve only when token requests take permits, and the
    local share while Redis is down by default (as CONTRACT.md states)."""
    counted = settings({"count_token_requests": True, "token_reserve": 3}, budget_weight=3)
    policy = budget_policy_of(counted.budget, counted.callers)
    assert dict(policy.weights) == {"light": 1.0, "heavy": 3.0}
    assert policy.token_reserve == 3 and policy.window.api_limit == 47
    assert policy.outage_share and policy.expected_instances == 3
    uncounted = settings({"token_reserve": 3})
    assert budget_policy_of(uncounted.budget, uncounted.callers).token_reserve == 0
    closed = settings({"on_store_unavailable": "fail_closed"})
    assert not budget_policy_of(closed.budget).outage_share


def test_a_reserve_of_the_whole_limit_leaves_api_requests_one_permit() -> None:
    """A token_reserve as large as the limit is cut to limit - 1: API requests still get one."""
    counted = settings({"limit": 2, "count_token_requests": True})
    assert budget_policy_of(counted.budget).window.api_limit == 1


@pytest.mark.parametrize("weight", [0, -1, 1001, "nan"])
def test_a_bad_budget_weight_is_refused_with_its_key_path(weight: object, tmp_path: Path) -> None:
    """budget_weight must be a finite number in (0, 1000]; the problem names its key path."""
    value = float("nan") if weight == "nan" else weight
    config = {"clients": {"checkout": CLIENT}, "callers": {"x": {**CALLER, "budget_weight": value}}}
    with pytest.raises(ConfigError) as raised:
        load_settings(write_toml(tmp_path / "broker.toml", config))
    assert "callers.x.budget_weight" in str(raised.value)
