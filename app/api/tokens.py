"""`GET /token` and `POST /token/invalidate`, and the warm fast path of `GET /token`.

`WarmTokenPath` answers the common case, a warm `GET /token` with an API key, as a plain ASGI
layer: no routing, no dependency solving, no validation models. It handles only what it can
answer with a 200 at once (a known query, an API key and no certificate, a caller allowed the
client, a token in L1) and passes everything else, errors included, to the FastAPI routes
below, which define the behaviour. What it sends is what `get_token` sends, byte for byte.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.deps import CallerDep, ServicesDep
from app.auth.xfcc import XFCC_HEADER
from app.errors import BrokerError
from app.observability.logs import log_event
from app.services import Services
from app.tokens.model import Token
from app.transport.certificates import PEER_CERT

router = APIRouter(tags=["tokens"])
log = logging.getLogger(__name__)

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_NO_STORE_RAW = [(name.lower().encode(), value.encode()) for name, value in NO_STORE.items()]
_API_KEY = b"x-api-key"
_XFCC = XFCC_HEADER.encode()


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


def token_json(token: Token, expires_in: int) -> bytes:
    """The body of a 200 token answer."""
    body = {
        "access_token": token.access_token,
        "token_type": token.token_type,
        "expires_in": expires_in,
        "expires_at": int(token.expires_at),
    }
    return json.dumps(body, separators=(",", ":")).encode()


def log_issued(caller: str | None, client: str, token_fp: str, expires_in: int) -> None:
    """The `token.issued` line."""
    log_event(
        log,
        logging.INFO,
        "token.issued",
        caller=caller,
        client=client,
        token_fp=token_fp,
        seconds_left=expires_in,
    )


def token_response(request: Request, client: str, token: Token, now: float) -> Response:
    """The 200 answer for a token, with `Cache-Control: no-store`."""
    request.state.client = client  # for the access log
    expires_in = max(0, int(token.expires_at - now))
    log_issued(getattr(request.state, "caller", None), client, token.fingerprint, expires_in)
    return Response(token_json(token, expires_in), media_type="application/json", headers=NO_STORE)


NO_STORE_DOC = {
    name: {"description": value, "schema": {"type": "string"}} for name, value in NO_STORE.items()
}


@router.get("/token", response_model=TokenResponse, responses={200: {"headers": NO_STORE_DOC}})
async def get_token(
    request: Request, caller: CallerDep, services: ServicesDep, client: str | None = None
) -> Response:
    """A cached access token for `client` (optional when the caller may use only one)."""
    name = services.auth.authorize(caller, client)
    token = await services.tokens.get(name)
    return token_response(request, name, token, services.clock.time())


@router.post(
    "/token/invalidate", response_model=TokenResponse, responses={200: {"headers": NO_STORE_DOC}}
)
async def invalidate_token(
    request: Request, body: InvalidateRequest, caller: CallerDep, services: ServicesDep
) -> Response:
    """Report a token the upstream rejected; answers with the current (possibly new) token."""
    name = services.auth.authorize(caller, body.client)
    token = await services.tokens.invalidate(name, body.access_token)
    return token_response(request, name, token, services.clock.time())


class _Answer:
    """The last body built for one client: rebuilt when the token or `expires_in` changes."""

    __slots__ = ("body", "expires_in", "fingerprint", "headers", "token")

    def __init__(self, token: Token, expires_in: int) -> None:
        self.token, self.expires_in = token, expires_in
        self.fingerprint = token.fingerprint
        self.body = token_json(token, expires_in)
        length = str(len(self.body)).encode()
        self.headers = (  # a tuple: shared by every response until the body changes
            *_NO_STORE_RAW,
            (b"content-length", length),
            (b"content-type", b"application/json"),
        )


class WarmTokenPath:
    """ASGI layer: answers warm `GET /token` requests itself, passes on everything else."""

    def __init__(self, app: ASGIApp, clients: Iterable[str]) -> None:
        self.app = app
        # The only query strings served here; any other (a typo, extra or repeated parameters,
        # escapes) goes to the route, which validates it. Built once, matched as raw bytes.
        self._queries: dict[bytes, str | None] = {b"": None}
        self._queries |= {f"client={name}".encode(): name for name in clients}
        self._answers: dict[str, _Answer] = {}
        self._route = next(r for r in router.routes if getattr(r, "path", None) == "/token")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer from L1, or hand the request to the app."""
        if scope["type"] == "http" and scope["path"] == "/token" and scope["method"] == "GET":
            answer = self._warm_answer(scope)
            if answer is not None:
                start = {"type": "http.response.start", "status": 200, "headers": answer.headers}
                await send(start)
                await send({"type": "http.response.body", "body": answer.body})
                return
        await self.app(scope, receive, send)

    def _warm_answer(self, scope: Scope) -> _Answer | None:
        """The answer if this request can be served from L1 with a 200; None otherwise."""
        query = scope["query_string"]
        if query not in self._queries:
            return None
        client = self._queries[query]
        state: dict[str, Any] | None = scope.get("state")
        services: Services | None = state.get("services") if state else None
        api_key = _api_key(scope)
        if services is None or state is None or api_key is None:
            return None
        try:
            caller = services.auth.authenticate(api_key=api_key, identities=None)
            name = services.auth.authorize(caller, client)
        except BrokerError:
            return None  # the route answers the error, with its log line and metrics
        token = services.tokens.peek(name)
        if token is None:
            return None
        expires_in = max(0, int(token.expires_at - services.clock.time()))
        answer = self._answers.get(name)
        if answer is None or answer.token is not token or answer.expires_in != expires_in:
            answer = self._answers[name] = _Answer(token, expires_in)
        state["caller"], state["client"] = caller.name, name  # for the access log
        scope["route"] = self._route
        log_issued(caller.name, name, answer.fingerprint, expires_in)
        return answer


def _api_key(scope: Scope) -> str | None:
    """The one X-API-Key of a request that presents no certificate; None for anything else."""
    tls = (scope.get("extensions") or {}).get("tls")
    if tls and tls.get(PEER_CERT):
        return None
    key = None
    for name, value in scope["headers"]:
        if name == _API_KEY:
            if key is not None:
                return None  # repeated: the route decides
            key = value.decode("latin-1")
        elif name == _XFCC:
            return None
    return key
