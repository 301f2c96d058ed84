"""`GET /token` and `POST /token/invalidate`.

A warm `GET /token` with an API key is mostly answered before routing, by
`app.api.warm_token`; these routes define the behaviour (every error, a cold cache, client
certificates), and both issue the answer through `app.api.token_answer`.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from app.api.deps import CallerDep, ServicesDep, token_answers
from app.api.token_answer import NO_STORE, response
from app.auth.callers import Caller
from app.tokens.model import Token

router = APIRouter(tags=["tokens"])


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


NO_STORE_DOC = {
    name: {"description": value, "schema": {"type": "string"}} for name, value in NO_STORE.items()
}


def issued(request: Request, caller: Caller, client: str, token: Token, now: float) -> Response:
    """The 200 answer for `token`, noted for the access log."""
    request.state.client = client
    return response(token_answers(request).issue(caller.name, client, token, now))


@router.get("/token", response_model=TokenResponse, responses={200: {"headers": NO_STORE_DOC}})
async def get_token(
    request: Request, caller: CallerDep, services: ServicesDep, client: str | None = None
) -> Response:
    """A cached access token for `client` (optional when the caller may use only one)."""
    name = services.auth.authorize(caller, client)
    token = await services.tokens.get(name)
    return issued(request, caller, name, token, services.clock.time())


@router.post(
    "/token/invalidate", response_model=TokenResponse, responses={200: {"headers": NO_STORE_DOC}}
)
async def invalidate_token(
    request: Request, body: InvalidateRequest, caller: CallerDep, services: ServicesDep
) -> Response:
    """Report a token the upstream rejected; answers with the current (possibly new) token."""
    name = services.auth.authorize(caller, body.client)
    token = await services.tokens.invalidate(name, body.access_token)
    return issued(request, caller, name, token, services.clock.time())
