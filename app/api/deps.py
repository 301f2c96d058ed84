"""Dependencies the routes declare, as `Annotated` aliases.

They are `async def` although they never await: FastAPI runs a plain `def` dependency in a
worker thread, and two thread hand-offs per request cost more than the work itself (they
halved `GET /token` throughput).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.api.token_answer import TokenAnswers
from app.auth.callers import Caller
from app.auth.identity import presented_identities
from app.auth.xfcc import XFCC_HEADER
from app.errors import Unauthorized
from app.services import Services
from app.transport.certificates import scope_identities


def services_of(request: Request) -> Services:
    """The services the lifespan built."""
    services: Services = request.state.services
    return services


def token_answers(request: Request) -> TokenAnswers:
    """The app's token answers (`app.api.token_answer`), shared with the warm path."""
    answers: TokenAnswers = request.state.token_answers
    return answers


async def get_services(request: Request) -> Services:
    """The services the lifespan built (as a dependency)."""
    return services_of(request)


def caller_identities(request: Request) -> list[str] | None:
    """Identities of the client certificate this request presents (`app.auth.identity` decides)."""
    return presented_identities(
        request.headers.getlist(XFCC_HEADER),
        peer=request.client.host if request.client is not None else None,
        trusted_proxies=services_of(request).settings.server.xfcc_trusted_proxies,
        handshake_identities=scope_identities(request.scope),
    )


async def get_caller(request: Request) -> Caller:
    """Authenticate the request's credentials (API key and/or client certificate)."""
    services = services_of(request)
    keys = request.headers.getlist("x-api-key")
    if len(keys) > 1:  # every credential presented must be valid: no picking one of several
        raise Unauthorized("more than one X-API-Key header")
    caller = services.auth.authenticate(
        api_key=keys[0] if keys else None, identities=caller_identities(request)
    )
    request.state.caller = caller.name
    return caller


ServicesDep = Annotated[Services, Depends(get_services)]
CallerDep = Annotated[Caller, Depends(get_caller)]
