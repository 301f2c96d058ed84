"""The warm path: `GET /token` answered from L1 before FastAPI's middleware and routing.

The common request, a warm `GET /token` with an API key, needs no routing, dependency solving
or validation model, and FastAPI's stack (its error, telemetry and body-limit middleware, the
request log's send wrapper) costs more than the answer. `BrokerApp` asks `WarmTokenPath`
first; it answers only what it can answer with a 200 at once (a known query, one API key and no
certificate, a caller allowed the client, a token in L1) and passes everything else, errors
included, to the routes of `app.api.tokens`, which define the behaviour.

What it sends is what the route sends, byte for byte (both issue the answer through
`app.api.token_answer`; `tests/api/test_warm_token.py` compares them): the same headers and
`X-Request-ID`, the same `token.issued` and `http.request` lines (`RequestLog`), the same
metrics.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from app.api.token_answer import TokenAnswer, TokenAnswers
from app.auth.xfcc import XFCC_HEADER
from app.errors import BrokerError
from app.observability.logs import request_id
from app.observability.request_log import REQUEST_ID_HEADER, RequestLog, incoming_request_id
from app.services import Services
from app.transport.certificates import PEER_CERT

TOKEN_ROUTE = "/token"
_API_KEY = b"x-api-key"
_XFCC = XFCC_HEADER.encode()


class WarmTokenPath:
    """Answers warm `GET /token` requests from L1; says whether it did."""

    def __init__(self, clients: Iterable[str], request_log: RequestLog) -> None:
        # The only query strings served here; any other (a typo, extra or repeated parameters,
        # escapes) goes to the route, which validates it. Built once, matched as raw bytes.
        self._queries: dict[bytes, str | None] = {b"": None}
        self._queries |= {f"client={name}".encode(): name for name in clients}
        self._request_log = request_log

    async def answered(self, scope: Scope, send: Send) -> bool:
        """Send the answer if this request can be served from L1 with a 200."""
        started = time.perf_counter()
        query = scope["query_string"]
        if query not in self._queries:
            return False
        state: dict[str, Any] | None = scope.get("state")
        api_key = _api_key(scope)
        if not state or api_key is None:
            return False
        services: Services = state["services"]
        try:
            caller = services.auth.authenticate(api_key=api_key, identities=None)
            client = services.auth.authorize(caller, self._queries[query])
        except BrokerError:
            return False  # the route answers the error, with its log line and metrics
        token = services.tokens.peek(client)
        if token is None:
            return False
        rid = incoming_request_id(scope)
        context = request_id.set(rid)  # for the token.issued line
        try:
            answers: TokenAnswers = state["token_answers"]
            answer = answers.issue(caller.name, client, token, services.clock.time())
            await _send(send, answer, rid)
        finally:
            request_id.reset(context)
        seconds = time.perf_counter() - started
        self._request_log.record(TOKEN_ROUTE, "GET", 200, seconds, caller.name, client)
        return True


async def _send(send: Send, answer: TokenAnswer, rid: str) -> None:
    headers = [*answer.headers, (REQUEST_ID_HEADER, rid.encode("latin-1"))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": answer.body})


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


class BrokerApp(FastAPI):
    """The broker's FastAPI app, with the warm token path in front of its middleware."""

    warm_path: WarmTokenPath | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve a warm `GET /token` at once; everything else through FastAPI."""
        if (
            self.warm_path is not None
            and scope["type"] == "http"
            and scope["path"] == TOKEN_ROUTE
            and scope["method"] == "GET"
            and await self.warm_path.answered(scope, send)
        ):
            return
        await super().__call__(scope, receive, send)
