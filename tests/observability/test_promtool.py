"""A real /metrics scrape passes `promtool check metrics`: names, units last, help and types."""

from __future__ import annotations

from tests.conftest import BrokerFactory, Emulator
from tests.contract import assert_error, assert_token, billing, orders
from tests.observability.test_metrics import rejected_payouts
from tests.support.promtool import promtool


async def test_a_real_scrape_passes_promtool_check_metrics(
    broker: BrokerFactory, emulator: Emulator
) -> None:
    """After fetches, a rejection and budget use, promtool finds nothing to complain about."""
    async with broker(budget={"limit": 1}, clients=rejected_payouts(emulator)) as http:
        assert_token(await http.get("/token", headers=orders()))
        refused = await http.get("/token?client=payouts", headers=billing())
        assert_error(refused, 502, "upstream_invalid_client")
        assert (await http.post("/budget/acquire", headers=orders())).status_code == 200
        assert_error(await http.post("/budget/acquire", headers=orders()), 429, "budget_exhausted")
        text = (await http.get("/metrics")).text
    # The scrape holds the families the linter cares most about: counters, histograms, gauges.
    for name in (
        "token_broker_upstream_token_requests_total",
        "token_broker_http_request_duration_seconds_bucket",
        "token_broker_token_expiry_seconds",
        "process_resident_memory_bytes",
    ):
        assert name in text
    result = promtool("check", "metrics", stdin=text)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")
