"""`GET /metrics`: Prometheus text format; no credentials needed, nothing secret inside."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.api.deps import ServicesDep
from app.api.health import budget_report, fleet_report, store_answers
from app.services import Services

router = APIRouter(tags=["health"])


async def update_state_gauges(services: Services) -> None:
    """Set the gauges that describe the present: token expiries, store, budget, fleet size."""
    metrics = services.metrics
    state = metrics.state
    now = services.clock.time()
    for name in services.tokens.clients:
        token = services.tokens.status(name).token
        state.set_expiry(name, None if token is None else token.expires_at - now)
    store_ok, budget, fleet = await asyncio.gather(
        store_answers(services), budget_report(services), fleet_report(services)
    )
    state.store_up.set(1 if store_ok else 0)
    state.budget_limit.set(budget["limit"])
    if budget["used"] is not None:
        state.budget_used.set(budget["used"])
        state.budget_cooldown.set(budget["cooldown_seconds"])
    for name, row in budget["callers"].items():
        state.budget_caller_granted.labels(metrics.caller_label(name)).set(row["granted"])
        state.budget_caller_waiting.labels(metrics.caller_label(name)).set(row["waiting"])
    state.budget_token_granted.set(budget["token_requests"]["granted"])
    state.budget_token_waiting.set(budget["token_requests"]["waiting"])
    share = budget.get("local_share")
    state.budget_local_share.set(share["per_window"] if share else 0)
    if fleet is not None:
        state.fleet_instances.set(fleet["count"])


@router.get("/metrics", response_class=Response)
async def metrics(request: Request, services: ServicesDep) -> Response:
    """Every metric of this instance: Prometheus text format, or OpenMetrics when asked for."""
    await update_state_gauges(services)
    body, content_type = services.metrics.exposition(request.headers.get("accept"))
    return Response(body, headers={"Cache-Control": "no-store", "Content-Type": content_type})


router.add_api_route("/metrics", metrics, methods=["HEAD"], include_in_schema=False)  # see health
