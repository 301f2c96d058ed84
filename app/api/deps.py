"""Dependencies the routes declare, as `Annotated` aliases.

They are `async def` although they never await: FastAPI runs a plain `def` dependency in a
worker thread, and two thread hand-offs per request cost more than the work itself (they
halved `GET /token` throughput).
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import Depends, Request

from app.auth.callers import Caller
from app.auth.xfcc import is_trusted_peer, nearest_identities
from app.errors import MalformedXfcc, Unauthorized
from app.observability.logs import log_event
from app.services import Services
from app.tokens.service import TokenService
from app.transport.certificates import scope_identities

log = logging.getLogger(__name__)

XFCC_HEADER = "x-forwarded-client-cert"


def services_of(request: Request) -> Services:
    """The services the lifespan built."""
    services: Services = request.state.services
    return services


async def get_services(request: Request) -> Services:
    """The services the lifespan built (as a dependency)."""
    return services_of(request)


async def get_token_service(request: Request) -> TokenService:
    """The token service."""
    return services_of(request).tokens


def caller_identities(request: Request) -> list[str] | None:
    """Identities of the client certificate this request presents; None when it presents none.

    From a peer inside `server.xfcc_trusted_proxies` that sends X-Forwarded-Client-Cert, the
    certificate is the one that header describes (its last element: the nearest proxy's), and a
    malformed header counts as no certificate. From any other peer the header is ignored and
    the certificate is the one verified in this connection's TLS handshake, if any.
    """
    trusted = services_of(request).settings.server.xfcc_trusted_proxies
    values = request.headers.getlist(XFCC_HEADER)
    peer = request.client.host if request.client is not None else None
    if values and trusted and is_trusted_peer(peer, trusted):
        try:
            # Repeated header lines are one comma-separated list (RFC 9110 section 5.3).
            return nearest_identities(",".join(values))
        except MalformedXfcc as exc:
            log_event(log, logging.WARNING, "auth.xfcc_malformed", peer=peer, problem=str(exc))
            return None
    return scope_identities(request.scope)


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
TokenServiceDep = Annotated[TokenService, Depends(get_token_service)]
CallerDep = Annotated[Caller, Depends(get_caller)]
