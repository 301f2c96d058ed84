"""RFC 7009 token revocation beside the drop-in token endpoints.

`POST /oauth2/{client}/revoke` and `POST /auth/realms/Paysera/protocol/openid-connect/revoke`
take `token` (and an optional `token_type_hint`, which is ignored: the broker hands out access
tokens only) with the token endpoint's client authentication (`app.api.oauth`). A generic OAuth
client whose token the upstream stopped accepting revokes it here, then asks the token endpoint
again and gets a new one: the broker's `/token/invalidate`, spoken in a protocol OAuth libraries
know.

- The client's cached token: discarded, as `/token/invalidate` does (the fleet's next token
  request fetches one new token; the forced-refresh floor applies).
- Any other token (an old one, a stranger's, garbage): 200 and nothing happens (RFC 7009 §2.2).
- Either way the answer is 200 with `{}` (the client ignores the body).
- On the Paysera path the token names its client: each client the caller may use is checked.

Errors are RFC 6749 §5.2 JSON, like the token endpoint's:

    no, wrong or mixed client credentials   401 invalid_client + WWW-Authenticate: Basic
    missing `token`, bad form, unknown client
                                            400 invalid_request
    caller not allowed the client           400 unauthorized_client
    inside the forced-refresh floor         429 temporarily_unavailable + Retry-After
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request, Response

from app.api.deps import ServicesDep
from app.api.oauth import (
    FORM_TYPE,
    OAuthErrorBody,
    authenticate_client,
    invalid_request,
    read_form,
    translate,
)
from app.api.token_answer import NO_STORE
from app.auth.callers import Caller
from app.errors import BrokerError, OAuthError, RefreshThrottled
from app.observability.logs import log_event
from app.services import Services
from app.tokens.model import fingerprint

router = APIRouter(tags=["oauth2"])
log = logging.getLogger(__name__)

PAYSERA_REVOKE_PATH = "/auth/realms/Paysera/protocol/openid-connect/revoke"
MAX_TOKEN_CHARS = 8192  # as /token/invalidate: longer is no token the broker ever handed out


def throttled(exc: RefreshThrottled) -> OAuthError:
    """429 with Retry-After: the token is current, but was fetched by a forced refresh too
    recently to be replaced again (the broker's refresh_throttled, in OAuth's words)."""
    headers = {"Retry-After": exc.retry_after_header}
    return OAuthError(429, "temporarily_unavailable", exc.message, headers)


def clients_to_check(services: Services, caller: Caller, client: str | None) -> list[str]:
    """`client` if the caller may use it; on the Paysera path, every client it may use."""
    if client is not None:
        return [services.auth.authorize(caller, client)]
    return sorted(caller.clients)


async def revoke(request: Request, services: Services, client: str | None) -> Response:
    """Discard `token` if it is the cached token of `client` (None: of any of the caller's)."""
    form = await read_form(request)
    caller = authenticate_client(services, request, form)
    request.state.caller = caller.name
    token = form.get("token", "")
    if not token:
        raise invalid_request("missing parameter: token")
    discarded_from = None
    try:
        for name in clients_to_check(services, caller, client):
            request.state.client = name  # for the access log
            if len(token) <= MAX_TOKEN_CHARS and await services.tokens.discard(name, token):
                discarded_from = name
                break
    except RefreshThrottled as exc:
        raise throttled(exc) from exc
    except BrokerError as exc:
        raise translate(exc, 0.0) from exc
    log_event(
        log,
        logging.INFO,
        "token.revoked" if discarded_from else "token.revoke_ignored",
        caller=caller.name,
        client=discarded_from or client,
        token_fp=fingerprint(token),
    )
    # RFC 7009 §2.2: the client ignores the body. An empty JSON object rather than no body:
    # clients that parse every answer as JSON (simple-oauth2) fail on an empty, untyped one.
    return Response(b"{}", media_type="application/json", headers=NO_STORE)


# -- routes ---------------------------------------------------------------------------------------

_FORM_SCHEMA = {
    "type": "object",
    "required": ["token"],
    "properties": {
        "token": {"type": "string", "description": "the access token to revoke"},
        "token_type_hint": {"type": "string", "description": "ignored"},
        "client_id": {"type": "string", "description": "the caller's name"},
        "client_secret": {"type": "string", "description": "the caller's API key"},
    },
}
_OPENAPI = {"requestBody": {"required": True, "content": {FORM_TYPE: {"schema": _FORM_SCHEMA}}}}
_RESPONSES: dict[int | str, dict[str, object]] = {
    200: {
        "description": "revoked, or not a current token (nothing happened); an empty object",
        "content": {"application/json": {"schema": {"type": "object", "maxProperties": 0}}},
    },
    400: {"model": OAuthErrorBody},
    401: {"model": OAuthErrorBody},
    429: {"model": OAuthErrorBody},
}


@router.post(
    "/oauth2/{client}/revoke", response_model=None, responses=_RESPONSES, openapi_extra=_OPENAPI
)
async def client_revoke(request: Request, client: str, services: ServicesDep) -> Response:
    """RFC 7009: revoke `client`'s token; the next token request gets a new one."""
    return await revoke(request, services, client)


@router.post(PAYSERA_REVOKE_PATH, response_model=None, responses=_RESPONSES, openapi_extra=_OPENAPI)
async def paysera_revoke(request: Request, services: ServicesDep) -> Response:
    """RFC 7009 beside the upstream's token URL: revoke the token of whichever of the caller's
    clients holds it."""
    return await revoke(request, services, None)
