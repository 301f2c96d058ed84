"""Dependencies the routes declare, as `Annotated` aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.auth.callers import Caller
from app.services import Services
from app.tokens.service import TokenService


def get_services(request: Request) -> Services:
    """The services the lifespan built."""
    services: Services = request.state.services
    return services


def get_token_service(request: Request) -> TokenService:
    """The token service."""
    return get_services(request).tokens


def get_caller(request: Request) -> Caller:
    """Authenticate the request's credentials (API key and/or client certificate)."""
    services = get_services(request)
    caller = services.auth.authenticate(api_key=request.headers.get("x-api-key"), identities=None)
    request.state.caller = caller.name
    return caller


ServicesDep = Annotated[Services, Depends(get_services)]
TokenServiceDep = Annotated[TokenService, Depends(get_token_service)]
CallerDep = Annotated[Caller, Depends(get_caller)]
