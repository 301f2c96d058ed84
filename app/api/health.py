"""`/health` (JSON), `/health/live`, `/health/ready`: no credentials needed, nothing secret."""

from __future__ import annotations

import asyncio
import math
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.api.deps import ServicesDep
from app.errors import StoreUnavailable
from app.services import Services

router = APIRouter(tags=["health"])

PING_TIMEOUT_SECONDS = 0.5


async def store_answers(services: Services) -> bool:
    """One short ping of the store."""
    try:
        return await asyncio.wait_for(services.store.ping(), PING_TIMEOUT_SECONDS)
    except TimeoutError:
        return False


def client_report(services: Services, name: str, now: float) -> dict[str, Any]:
    """This instance's view of one client, with the reasons it degrades health."""
    status = services.tokens.status(name)
    token = status.token
    if token is None:
        state, expires_in = "missing", None
    elif token.expires_at <= now:
        state, expires_in = "expired", 0
    else:
        state, expires_in = "valid", int(token.expires_at - now)
    in_buffer = token is not None and now >= token.serve_until(
        services.tokens.policy(name).refresh_buffer
    )
    return {
        "token": state,
        "expires_in": expires_in,
        "last_refresh_at": int(status.last_refresh_at) if status.last_refresh_at else None,
        "last_error": status.last_error,
        "last_error_at": int(status.last_error_at) if status.last_error_at else None,
        "requested": status.requested,
        "_degraded": status.requested and (status.last_error is not None or in_buffer),
        "_servable": state == "valid" or status.last_error is None,
    }


def overall(store_ok: bool, clients: dict[str, dict[str, Any]]) -> tuple[str, list[str]]:
    """`ok`, `degraded` or `down`, with the reasons."""
    reasons = [] if store_ok else ["store unreachable"]
    reasons += [
        f"client {name}: {c['last_error'] or 'token inside the refresh buffer'}"
        for name, c in clients.items()
        if c["_degraded"]
    ]
    requested = [c for c in clients.values() if c["requested"]]
    if requested and not any(c["_servable"] for c in requested):
        return "down", reasons
    return ("degraded" if reasons else "ok"), reasons


async def budget_report(services: Services) -> dict[str, Any]:
    """The fleet budget's limit and current use (use unknown while the store is down)."""
    settings = services.budget.settings
    report: dict[str, Any] = {
        "limit": settings.limit,
        "window_seconds": settings.window_seconds,
        "used": None,
        "remaining": None,
        "cooldown_seconds": None,
    }
    try:
        usage = await asyncio.wait_for(services.budget.usage(), PING_TIMEOUT_SECONDS)
    except (StoreUnavailable, TimeoutError):
        return report
    report["used"] = usage.used
    report["remaining"] = max(0, settings.limit - usage.used)
    report["cooldown_seconds"] = math.ceil(usage.cooldown)
    return report


async def health_report(services: Services) -> dict[str, Any]:
    """The full /health document."""
    now = services.clock.time()
    store_ok = await store_answers(services)
    clients = {name: client_report(services, name, now) for name in services.tokens.clients}
    status, reasons = overall(store_ok, clients)
    for report in clients.values():
        del report["_degraded"], report["_servable"]
    return {
        "status": status,
        "reasons": reasons,
        "version": services.version,
        "instance": services.instance,
        "uptime_seconds": int(now - services.started_at),
        "store": {"kind": services.store.kind, "ok": store_ok},
        "clients": clients,
        "budget": await budget_report(services),
    }


@router.get("/health")
async def health(services: ServicesDep) -> JSONResponse:
    """The ops view: overall status, store, per-client token state, budget."""
    return JSONResponse(await health_report(services), headers={"Cache-Control": "no-store"})


@router.get("/health/live")
async def live() -> JSONResponse:
    """200 while the process serves."""
    return JSONResponse({"status": "live"})


@router.get("/health/ready")
async def ready(services: ServicesDep) -> JSONResponse:
    """200 when the configuration is loaded and the store answers; 503 otherwise."""
    if await store_answers(services):
        return JSONResponse({"status": "ready"})
    return JSONResponse({"status": "not_ready", "reason": "store unreachable"}, status_code=503)
