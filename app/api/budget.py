"""`POST /budget/acquire` and `POST /budget/report`: the fleet's shared upstream budget."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from app.api.deps import CallerDep, ServicesDep
from app.api.disconnect import unless_disconnected

router = APIRouter(tags=["budget"])


class GrantResponse(BaseModel):
    """A permit for one upstream call, with the upstream-style rate-limit figures."""

    granted: bool = True
    limit: int
    remaining: int
    reset: int = Field(description="whole seconds until the oldest grant leaves the window")


class ReportRequest(BaseModel):
    """What the upstream answered a call made with a permit."""

    model_config = ConfigDict(extra="forbid")
    client: str | None = None
    status: int = Field(ge=100, le=599)
    headers: dict[Annotated[str, Field(max_length=256)], Annotated[str, Field(max_length=1024)]] = (
        Field(default_factory=dict, max_length=64)
    )


@router.post("/budget/acquire", response_model=GrantResponse)
async def acquire_permit(
    request: Request,
    caller: CallerDep,
    services: ServicesDep,
    client: str | None = None,
    wait: Annotated[float, Query(ge=0, allow_inf_nan=False)] = 0.0,
) -> JSONResponse:
    """Take one upstream permit, waiting up to `wait` seconds (capped by max_wait_seconds)."""
    name = services.auth.authorize(caller, client)
    # A caller that gives up (a timeout, a cancelled task) closes its connection: its wait is
    # cancelled then, which takes it out of the queue, so the permit goes to the next caller.
    grant = await unless_disconnected(
        request, services.budget.acquire(name, wait, caller=caller.name)
    )
    body = {
        "granted": True,
        "limit": grant.limit,
        "remaining": grant.remaining,
        "reset": grant.reset,
    }
    return JSONResponse(body, headers={"Cache-Control": "no-store", **grant.headers()})


@router.post("/budget/report", status_code=204)
async def report_upstream_answer(
    body: ReportRequest, caller: CallerDep, services: ServicesDep
) -> Response:
    """Tell the fleet what the upstream answered; a 429 pauses every instance until its reset."""
    services.auth.authorize(caller, body.client)
    await services.budget.report(body.status, body.headers)
    return Response(status_code=204)
