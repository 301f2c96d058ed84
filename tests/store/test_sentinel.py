"""Redis Sentinel: a real 1 primary + 1 replica + 3 sentinels setup; the primary fails over
under load, killed or by `SENTINEL FAILOVER` (which leaves the old primary accepting writes for
seconds: Sentinel demotes it only on its next 10 s INFO round)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Emulator, broker_config
from tests.support.failover_drill import DataNode, Drill
from tests.support.processes import fleet
from tests.support.redis_topologies import PASSWORD, SERVICE, SentinelSetup

pytestmark = pytest.mark.fleet

BUDGET = {"limit": 10, "window_seconds": 2, "safety_margin_seconds": 0.1, "max_wait_seconds": 2}


@pytest.fixture
def sentinel_setup() -> Iterator[SentinelSetup]:
    """1 primary, 1 replica and 3 sentinels (down-after 1 s) on free loopback ports."""
    setup = SentinelSetup().start()
    try:
        yield setup
    finally:
        setup.cleanup()


@pytest.mark.parametrize("how", ["kill", "sentinel-failover"])
async def test_primary_fails_over_under_load_without_caller_errors(
    how: str, emulator: Emulator, sentinel_setup: SentinelSetup, tmp_path: Path
) -> None:
    """The primary fails over under load: the brokers follow the new primary, no token caller
    sees an error, at most 2 upstream token requests, no budget window over the limit."""
    setup = sentinel_setup
    config = broker_config(emulator, {"redis_url": setup.url, "key_prefix": "sent"}, budget=BUDGET)
    nodes = [DataNode(server.port, PASSWORD) for server in (setup.primary, setup.replica)]

    def fail_over() -> float:
        if how == "kill":
            setup.primary.kill()
        else:
            with setup.sentinels[0].conn() as sentinel:
                sentinel.sentinel_failover(SERVICE)
        return setup.wait_for_primary(setup.replica.port)

    with fleet(config, tmp_path, size=2) as brokers:
        drill = Drill(
            brokers, emulator, nodes, "sent:v1:{budget}:grants", window_seconds=2,
            before_seconds=2.5, after_seconds=5.0,
        )  # fmt: skip
        figures = await drill.run(fail_over)
    print(figures.line(f"sentinel_{how}"))  # noqa: T201 - the figures quoted in the issue note
    assert not figures.token_errors and figures.token_calls > 300
    assert figures.upstream_token_requests <= 2
    assert figures.worst_window_redis_time <= BUDGET["limit"]
    assert figures.fenced, "the new primary must fence the budget"
    assert figures.budget_statuses[200] > BUDGET["limit"]  # the budget was used before and after
    assert figures.invalidation_reached_all
