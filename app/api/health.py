"""`/health` (JSON, or the HTML dashboard), `/health/live`, `/health/ready`.

No credentials needed and nothing secret inside: keep these paths (and /metrics) inside the
cluster. `server.health_details = false` leaves out the per-client detail and error texts.
The report is cheap: no upstream call, and the store is asked three short questions (ping,
budget use, fleet) at once, each bounded by `PING_TIMEOUT_SECONDS`.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from app.api.dashboard import DASHBOARD_HEADERS, prefers_html, render_dashboard
from app.api.deps import ServicesDep
from app.budget.model import TOKEN_CALLER, Usage
from app.errors import StoreUnavailable
from app.services import Services

router = APIRouter(tags=["health"])

PING_TIMEOUT_SECONDS = 0.5
CACHE_HEADERS = {"Cache-Control": "no-store", "Vary": "Accept"}


async def store_answers(services: Services) -> bool:
    """One short ping of the store."""
    try:
        return await asyncio.wait_for(services.store.ping(), PING_TIMEOUT_SECONDS)
    except TimeoutError:
        return False


def client_report(services: Services, name: str) -> dict[str, Any]:
    """This instance's view of one client, with the reasons it degrades health."""
    report = services.tokens.report(name)
    status = report.status
    return {
        "token": report.token,
        "expires_in": report.expires_in,
        "lifetime_seconds": report.lifetime_seconds,
        "refresh_buffer_seconds": report.refresh_buffer_seconds,
        "last_refresh_at": int(status.last_refresh_at) if status.last_refresh_at else None,
        "last_refresh_outcome": status.last_refresh_outcome,
        "last_error": status.last_error,
        "last_error_category": status.last_error_category,
        "last_error_at": int(status.last_error_at) if status.last_error_at else None,
        "requested": status.requested,
        "_degraded": report.degraded,
        "_servable": report.servable,
    }


def overall(
    store_ok: bool, clients: dict[str, dict[str, Any]], *, details: bool = True
) -> tuple[str, list[str]]:
    """`ok`, `degraded` or `down`, with the reasons (without client detail if `details` is off)."""
    reasons = [] if store_ok else ["store unreachable"]
    degraded = {name: c for name, c in clients.items() if c["_degraded"]}
    if details:
        reasons += [
            f"client {name}: {c['last_error'] or 'token inside the refresh buffer'}"
            for name, c in degraded.items()
        ]
    elif degraded:
        reasons.append(f"{len(degraded)} client(s) failing to refresh or inside the buffer")
    requested = [c for c in clients.values() if c["requested"]]
    if requested and not any(c["_servable"] for c in requested):
        return "down", reasons
    return ("degraded" if reasons else "ok"), reasons


def upstream_state(clients: dict[str, dict[str, Any]]) -> str:
    """`ok`, `failing` (some client's last refresh failed) or `unknown` (nothing asked yet)."""
    outcomes = [c["last_refresh_outcome"] for c in clients.values() if c["last_refresh_outcome"]]
    if any(outcome != "ok" for outcome in outcomes):
        return "failing"
    return "ok" if outcomes else "unknown"


def _by_caller(services: Services, usage: Usage, report: dict[str, Any]) -> None:
    """Per configured caller (and the broker's own token requests): granted in the window,
    waiting; any other name (none in practice) counts as `other`."""
    for kind, counts in (("granted", usage.granted), ("waiting", usage.waiting)):
        for name, count in counts.items():
            if name == TOKEN_CALLER:
                row = report["token_requests"]
            else:
                row = report["callers"].setdefault(
                    name if name in services.settings.callers else "other",
                    {"granted": 0, "waiting": 0},
                )
            row[kind] += count


async def budget_report(services: Services) -> dict[str, Any]:
    """The fleet budget: limit, use, cooldown and per caller grants and waiters, from the
    shared window; while the store is down, this instance's share and its own use."""
    policy = services.budget.policy
    report: dict[str, Any] = {
        "limit": policy.limit,
        "window_seconds": policy.window_seconds,
        "used": None,
        "remaining": None,
        "cooldown_seconds": None,
        "mode": "shared",
        "degraded": False,
        "callers": {name: {"granted": 0, "waiting": 0} for name in services.settings.callers},
        "token_requests": {"granted": 0, "waiting": 0},
    }
    try:
        usage = await asyncio.wait_for(services.budget.usage(), PING_TIMEOUT_SECONDS)
    except (StoreUnavailable, TimeoutError):
        report["degraded"] = True
        report["mode"] = "local_share" if policy.outage_share else "fail_closed"
        share = services.budget.local_share()
        if share is not None:
            report["local_share"] = {
                "per_window": share.share,
                "fleet_size": share.fleet,
                "granted": share.usage.used,
                "cooldown_seconds": math.ceil(share.usage.cooldown),
            }
            _by_caller(services, share.usage, report)
        return report
    report["used"] = usage.used
    report["remaining"] = max(0, policy.limit - usage.used)
    services.metrics.history.budget_use(usage.used, policy.limit)
    report["cooldown_seconds"] = math.ceil(usage.cooldown)
    _by_caller(services, usage, report)
    return report


def budget_reason(budget: dict[str, Any]) -> str | None:
    """Why the budget degrades health, if it does."""
    if budget["mode"] == "fail_closed":
        return "budget: no permits while the store is unreachable (fail_closed)"
    if budget["degraded"]:
        share = budget.get("local_share")
        per_window = f"{share['per_window']} per window" if share else "its share"
        return f"budget: this instance grants alone from {per_window}"
    return None


async def fleet_report(services: Services) -> dict[str, Any] | None:
    """The instances heartbeating into the store, with their versions (None: store down)."""
    try:
        alive = await asyncio.wait_for(services.store.instances(), PING_TIMEOUT_SECONDS)
    except (StoreUnavailable, TimeoutError):
        return None
    instances = [
        {
            "instance": info.instance,
            "version": info.version,
            "expires_in": round(info.expires_in, 1),
            "self": info.instance == services.instance,
        }
        for info in alive
    ]
    return {"count": len(instances), "instances": instances}


def recent_errors(services: Services) -> list[dict[str, Any]]:
    """The last kinds of error this instance saw, newest first."""
    return [
        {
            "source": error.source,
            "client": error.client,
            "category": error.category,
            "message": error.message,
            "at": int(error.last_at),
            "count": error.count,
        }
        for error in services.metrics.errors.latest()
    ]


async def health_report(services: Services) -> dict[str, Any]:
    """The full /health document."""
    details = services.settings.server.health_details
    now = services.clock.time()
    store_ok, budget, fleet = await asyncio.gather(
        store_answers(services), budget_report(services), fleet_report(services)
    )
    clients = {name: client_report(services, name) for name in services.tokens.clients}
    status, reasons = overall(store_ok, clients, details=details)
    if (reason := budget_reason(budget)) is not None:
        reasons.append(reason)
        status = "degraded" if status == "ok" else status
    upstream = upstream_state(clients)
    for report in clients.values():
        del report["_degraded"], report["_servable"]
    document: dict[str, Any] = {
        "status": status,
        "reasons": reasons,
        "version": services.version,
        "instance": services.instance,
        "uptime_seconds": int(now - services.started_at),
        "store": {"kind": services.store.kind, "ok": store_ok},
        "upstream": {"state": upstream},
        "clients": clients,
        "budget": budget,
        "fleet": fleet,
        "recent_errors": recent_errors(services),
        "details": details,
        "generated_at": int(now),
    }
    if not details:
        del document["clients"], document["recent_errors"]
    return document


@router.get("/health", response_model=None)
async def health(request: Request, services: ServicesDep) -> Response:
    """The ops view: status, store, upstream, per-client tokens, budget, fleet; JSON or HTML."""
    report = await health_report(services)
    if prefers_html(request.headers.get("accept")):
        page = render_dashboard(report, history=services.metrics.history.buckets())
        return HTMLResponse(page, headers={**CACHE_HEADERS, **DASHBOARD_HEADERS})
    return JSONResponse(report, headers=CACHE_HEADERS)


@router.get("/health/live")
async def live() -> JSONResponse:
    """200 while the process serves."""
    return JSONResponse({"status": "live"})


@router.get("/health/ready")
async def ready(services: ServicesDep) -> JSONResponse:
    """200 while this instance can serve callers: the store answers, or it holds a valid token
    for every client it has served; 503 when it can serve nothing."""
    if await store_answers(services):
        return JSONResponse({"status": "ready"})
    if services.tokens.serves_without_store():
        return JSONResponse({"status": "ready", "reason": "store unreachable; serving held tokens"})
    return JSONResponse(
        {"status": "not_ready", "reason": "store unreachable and no valid token held"},
        status_code=503,
    )


# HEAD answers like GET without a body (uptime checkers use it); left out of the OpenAPI
# document, where HEAD is implied by GET.
for _path, _endpoint in (("/health", health), ("/health/live", live), ("/health/ready", ready)):
    router.add_api_route(_path, _endpoint, methods=["HEAD"], include_in_schema=False)
