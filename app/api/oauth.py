"""RFC 6749 client-credentials token endpoints in front of the token cache.

`POST /oauth2/{client}/token`, and `POST /auth/realms/Paysera/protocol/openid-connect/token` for
callers allowed exactly one client, speak the upstream's own protocol, so code written against
the upstream's token URL adopts the broker by changing a URL and a credential.

The *caller* is the OAuth client: `client_id` is its name in `[callers.*]`, `client_secret` its
API key, sent as form fields or HTTP Basic (values form-urlencoded, RFC 6749 §2.3.1), or its
client certificate with `client_id` alone (RFC 8705 §2). Checks run in the upstream's (Keycloak's)
order: the request's form, client authentication, the grant type, the caller's access to the
client, and only then the token cache. The answer has the upstream's exact shape.

Errors follow RFC 6749 §5.2, whose codes differ from the broker's contract codes, so this router
raises `OAuthError` (rendered by `app.api.errors`). Broker exceptions are translated in one
table, `OAUTH_ERRORS`:

    Unauthorized (any credential)    401 invalid_client + WWW-Authenticate: Basic
    Forbidden                        400 unauthorized_client
    UnknownClient, ClientRequired    400 invalid_request (an unsupported parameter value)
    UpstreamUnavailable, StoreUnavailable, BudgetExhausted
                                     503 temporarily_unavailable + Retry-After
    UpstreamCredentialsRejected      503 temporarily_unavailable + Retry-After (until the
                                     broker's next upstream attempt): the *broker's* upstream
                                     credentials were refused, not the caller's, so never
                                     invalid_client, which would send callers to check theirs
    any other BrokerError            500 server_error
"""

from __future__ import annotations

import base64
import binascii
import math
from collections import Counter
from collections.abc import Mapping
from urllib.parse import parse_qsl, unquote_plus

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from app.api.deps import ServicesDep, caller_identities, token_answers
from app.api.token_answer import NO_STORE, OAUTH_SCOPE, Shape, response
from app.auth.callers import Caller
from app.errors import (
    BrokerError,
    BudgetExhausted,
    ClientRequired,
    Forbidden,
    InvalidRequest,
    OAuthError,
    RetryableError,
    StoreUnavailable,
    Unauthorized,
    UnknownClient,
    UpstreamCredentialsRejected,
    UpstreamUnavailable,
)
from app.services import Services

router = APIRouter(tags=["oauth2"])

PAYSERA_TOKEN_PATH = "/auth/realms/Paysera/protocol/openid-connect/token"
FORM_TYPE = "application/x-www-form-urlencoded"
MAX_BODY_BYTES = 64 * 1024
KNOWN_PARAMETERS = ("grant_type", "client_id", "client_secret", "scope")
INVALID_CLIENT = "Invalid client credentials"  # the upstream's wording; says nothing more

OAUTH_ERRORS: dict[type[BrokerError], tuple[int, str]] = {
    Unauthorized: (401, "invalid_client"),
    Forbidden: (400, "unauthorized_client"),
    UnknownClient: (400, "invalid_request"),
    ClientRequired: (400, "invalid_request"),
    InvalidRequest: (400, "invalid_request"),
    UpstreamCredentialsRejected: (503, "temporarily_unavailable"),
    UpstreamUnavailable: (503, "temporarily_unavailable"),
    BudgetExhausted: (503, "temporarily_unavailable"),
    StoreUnavailable: (503, "temporarily_unavailable"),
}


def invalid_request(description: str) -> OAuthError:
    """400 invalid_request: a missing, repeated or malformed parameter, or a bad body."""
    return OAuthError(400, "invalid_request", description)


def invalid_client() -> OAuthError:
    """401 invalid_client, worded alike for every cause so it tells a prober nothing."""
    return OAuthError(401, "invalid_client", INVALID_CLIENT)


def translate(exc: BrokerError, hold_seconds: float) -> OAuthError:
    """The OAuth error for a broker exception; `hold_seconds` is Retry-After when it has none."""
    if isinstance(exc, OAuthError):
        return exc
    status, code = next(
        (OAUTH_ERRORS[cls] for cls in type(exc).__mro__ if cls in OAUTH_ERRORS),
        (500, "server_error"),
    )
    headers = {}
    if status == 503:
        retry = exc.retry_after if isinstance(exc, RetryableError) else hold_seconds
        headers["Retry-After"] = str(max(1, math.ceil(retry)))
    return OAuthError(status, code, exc.message, headers)


# -- the request ----------------------------------------------------------------------------------


async def read_form(request: Request) -> dict[str, str]:
    """The form body; wrong type, oversize, malformed or repeated parameters are invalid."""
    content_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if content_type != FORM_TYPE:
        raise invalid_request(f"Content-Type must be {FORM_TYPE}")
    if "client_secret" in dict(parse_qsl(request.url.query)):
        raise invalid_request("client credentials belong in the body, never in the URL")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise invalid_request(f"request body larger than {MAX_BODY_BYTES} bytes")
    try:
        # Not Starlette's form parser: it keeps one value of a repeated parameter silently.
        pairs = parse_qsl(
            body.decode(), keep_blank_values=True, strict_parsing=True, errors="strict"
        )
    except ValueError:  # UnicodeDecodeError included
        raise invalid_request("malformed form body") from None
    repeated = [name for name, count in Counter(name for name, _ in pairs).items() if count > 1]
    if repeated:
        # Only parameter names we know are echoed: an unknown name could be anything.
        known = [name for name in KNOWN_PARAMETERS if name in repeated]
        raise invalid_request(f"repeated parameter: {', '.join(known) or 'unrecognised'}")
    return dict(pairs)


def basic_credentials(authorization: str | None) -> tuple[str, str] | None:
    """(client_id, client_secret) from an HTTP Basic header, form-urlencoded values decoded."""
    if authorization is None:
        return None
    scheme, _, encoded = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        raise invalid_client()  # an unsupported authentication method (RFC 6749 §5.2)
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
        client_id, colon, secret = decoded.partition(":")
        if not colon or not client_id:
            raise ValueError("not client_id:client_secret")
        # Keys made by `token-broker new-api-key` are URL-safe, so clients that skip the
        # encoding RFC 6749 §2.3.1 asks for (authlib, httpx-auth) send the same bytes.
        return unquote_plus(client_id, errors="strict"), unquote_plus(secret, errors="strict")
    except (binascii.Error, ValueError):
        raise invalid_client() from None


def authenticate_client(services: Services, request: Request, form: Mapping[str, str]) -> Caller:
    """The caller named by `client_id`, proven by its key (Basic or form) or its certificate."""
    basic = basic_credentials(request.headers.get("authorization"))
    secret: str | None
    if basic is not None:
        if "client_secret" in form:
            raise invalid_request("more than one client authentication method")
        if form.get("client_id", basic[0]) != basic[0]:
            raise invalid_request("client_id differs from the HTTP Basic client_id")
        client_id, secret = basic
    else:
        client_id, secret = form.get("client_id", ""), form.get("client_secret")
    identities = caller_identities(request)  # TLS handshake or a trusted proxy's XFCC
    if not client_id:
        if secret is None and identities is None:
            raise invalid_client()  # no client authentication at all
        raise invalid_request("missing parameter: client_id")
    if secret is None and identities is None:
        raise invalid_client()  # a client_id alone proves nothing: there are no public clients
    try:
        caller = services.auth.authenticate(api_key=secret, identities=identities)
    except Unauthorized:
        raise invalid_client() from None
    if caller.name != client_id:  # a valid key or certificate, but of another caller
        raise invalid_client()
    return caller


# -- the answer -----------------------------------------------------------------------------------


async def issue_token(request: Request, services: Services, client: str | None) -> Response:
    """Run the client-credentials grant for `client` (None: the caller's only client)."""
    form = await read_form(request)
    if not form.get("grant_type"):
        raise invalid_request("missing parameter: grant_type")
    caller = authenticate_client(services, request, form)
    request.state.caller = caller.name
    if form["grant_type"] != "client_credentials":
        raise OAuthError(400, "unsupported_grant_type", "only client_credentials is supported")
    if client is None and caller.default_client is None:
        raise invalid_request(
            f"caller {caller.name!r} may use several clients; use POST /oauth2/{{client}}/token"
        )
    try:
        name = services.auth.authorize(caller, client)
        request.state.client = name  # for the access log
        token = await services.tokens.get(name)
    except BrokerError as exc:
        raise translate(exc, services.tokens.hold_remaining(exc.client or "")) from exc
    answer = token_answers(request).issue(
        caller.name, name, token, services.clock.time(), Shape.OAUTH
    )
    return response(answer)


# -- routes ---------------------------------------------------------------------------------------


class OAuthToken(BaseModel):
    """The upstream's token response (RFC 6749 §5.1)."""

    model_config = ConfigDict(populate_by_name=True)
    access_token: str
    expires_in: int = Field(description="whole seconds left until the upstream expiry")
    refresh_expires_in: int = 0
    token_type: str = "Bearer"
    not_before_policy: int = Field(0, alias="not-before-policy")
    scope: str = OAUTH_SCOPE


class OAuthErrorBody(BaseModel):
    """An RFC 6749 §5.2 error."""

    error: str
    error_description: str


_FORM_SCHEMA = {
    "type": "object",
    "required": ["grant_type"],
    "properties": {
        "grant_type": {"type": "string", "enum": ["client_credentials"]},
        "client_id": {"type": "string", "description": "the caller's name"},
        "client_secret": {"type": "string", "description": "the caller's API key"},
        "scope": {"type": "string", "description": "ignored"},
    },
}
_OPENAPI = {
    "requestBody": {"required": True, "content": {FORM_TYPE: {"schema": _FORM_SCHEMA}}},
}
_RESPONSES: dict[int | str, dict[str, object]] = {
    200: {
        "model": OAuthToken,
        "headers": {
            name: {"description": value, "schema": {"type": "string"}}
            for name, value in NO_STORE.items()
        },
    },
    400: {"model": OAuthErrorBody},
    401: {"model": OAuthErrorBody},
    503: {"model": OAuthErrorBody},
}


@router.post(
    "/oauth2/{client}/token",
    response_model=None,
    responses=_RESPONSES,
    openapi_extra=_OPENAPI,
)
async def client_token(request: Request, client: str, services: ServicesDep) -> Response:
    """RFC 6749 client credentials: `client`'s cached token for the authenticated caller."""
    return await issue_token(request, services, client)


@router.post(PAYSERA_TOKEN_PATH, response_model=None, responses=_RESPONSES, openapi_extra=_OPENAPI)
async def paysera_token(request: Request, services: ServicesDep) -> Response:
    """The upstream's token URL: the cached token of the caller's only client."""
    return await issue_token(request, services, None)
