"""`GET /token` and `POST /token/invalidate`."""

from __future__ import annotations

import json
import logging

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from app.api.deps import CallerDep, ServicesDep
from app.observability.logs import log_event
from app.tokens.model import Token

router = APIRouter(tags=["tokens"])
log = logging.getLogger(__name__)

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class TokenResponse(BaseModel):
    """A cached upstream access token."""

    access_token: str
    token_type: str = "Bearer"
    expires_in: int = Field(description="whole seconds left until the upstream expiry")
    expires_at: int = Field(description="the upstream expiry, unix seconds")


class InvalidateRequest(BaseModel):
    """The token a caller saw rejected, and its client."""

    model_config = ConfigDict(extra="forbid")
    client: str | None = None
    access_token: str = Field(min_length=1, max_length=8192)


def token_response(request: Request, client: str, token: Token, now: float) -> Response:
    """The 200 answer for a token, with `Cache-Control: no-store`."""
    request.state.client = client  # for the access log
    expires_in = max(0, int(token.expires_at - now))
    body = {
        "access_token": token.access_token,
        "token_type": token.token_type,
        "expires_in": expires_in,
        "expires_at": int(token.expires_at),
    }
    log_event(
        log,
        logging.INFO,
        "token.issued",
        caller=getattr(request.state, "caller", None),
        client=client,
        token_fp=token.fingerprint,
        seconds_left=expires_in,
    )
    return Response(
        json.dumps(body, separators=(",", ":")), media_type="application/json", headers=NO_STORE
    )


@router.get("/token", response_model=TokenResponse, responses={200: {"headers": NO_STORE}})
async def get_token(
    request: Request, caller: CallerDep, services: ServicesDep, client: str | None = None
) -> Response:
    """A cached access token for `client` (optional when the caller may use only one)."""
    name = services.auth.authorize(caller, client)
    token = await services.tokens.get(name)
    return token_response(request, name, token, services.clock.time())


@router.post("/token/invalidate", response_model=TokenResponse)
async def invalidate_token(
    request: Request, body: InvalidateRequest, caller: CallerDep, services: ServicesDep
) -> Response:
    """Report a token the upstream rejected; answers with the current (possibly new) token."""
    name = services.auth.authorize(caller, body.client)
    token = await services.tokens.invalidate(name, body.access_token)
    return token_response(request, name, token, services.clock.time())
