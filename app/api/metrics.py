"""`GET /metrics`: Prometheus text format; no credentials needed, nothing secret inside."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4

from app.api.deps import ServicesDep
from app.api.health import budget_report, fleet_report, store_answers
from app.services import Services

router = APIRouter(tags=["health"])


async def update_state_gauges(services: Services) -> None:
    """Set the gauges that describe the present: token expiries, store, budget, fleet size."""
    metrics = services.metrics
    now = services.clock.time()
    for name in services.tokens.clients:
        token = services.tokens.status(name).token
        metrics.set_expiry(name, None if token is None else token.expires_at - now)
    store_ok, budget, fleet = await asyncio.gather(
        store_answers(services), budget_report(services), fleet_report(services)
    )
    metrics.store_up.set(1 if store_ok else 0)
    metrics.budget_limit.set(budget["limit"])
    if budget["used"] is not None:
        metrics.budget_used.set(budget["used"])
        metrics.budget_cooldown.set(budget["cooldown_seconds"])
    if fleet is not None:
        metrics.fleet_instances.set(fleet["count"])


@router.get("/metrics", response_class=Response)
async def metrics(services: ServicesDep) -> Response:
    """Every metric of this instance, in the Prometheus text format."""
    await update_state_gauges(services)
    return Response(
        services.metrics.exposition(),
        media_type=CONTENT_TYPE_PLAIN_0_0_4,
        headers={"Cache-Control": "no-store"},
    )


router.add_api_route("/metrics", metrics, methods=["HEAD"], include_in_schema=False)  # see health
