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
from collections.abc import Iterable, Mapping
from typing import Any

from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from app.api.token_answer import TokenAnswers
from app.auth.xfcc import XFCC_HEADER
from app.errors import BrokerError
from app.observability.logs import request_id
from app.observability.request_log import REQUEST_ID_HEADER, RequestLog, incoming_request_id
from app.services import Services
from app.transport.certificates import PEER_CERT
from app.transport.quick import QuickAnswer

TOKEN_ROUTE = "/token"
_API_KEY = b"x-api-key"
_XFCC = XFCC_HEADER.encode()


Headers = list[tuple[bytes, bytes]]


class WarmTokenPath:
    """Answers warm `GET /token` requests from L1: the answer's headers and body, or None."""

    def __init__(self, clients: Iterable[str], request_log: RequestLog) -> None:
        # The only query strings served here; any other (a typo, extra or repeated parameters,
        # escapes) goes to the route, which validates it. Built once, matched as raw bytes.
        self._queries: dict[bytes, str | None] = {b"": None}
        self._queries |= {f"client={name}".encode(): name for name in clients}
        self._request_log = request_log

    def answer(self, scope: Scope, state: Mapping[str, Any] | None) -> tuple[Headers, bytes] | None:
        """The 200 answer to the `GET /token` of `scope` if L1 holds it, logged and counted;
        None for anything else. `state` is the lifespan's (the services)."""
        started = time.perf_counter()
        query = scope["query_string"]
        if query not in self._queries or not state:
            return None
        api_key = _api_key(scope)
        if api_key is None:
            return None
        services: Services = state["services"]
        try:
            caller = services.auth.authenticate(api_key=api_key, identities=None)
            client = services.auth.authorize(caller, self._queries[query])
        except BrokerError:
            return None  # the route answers the error, with its log line and metrics
        token = services.tokens.peek(client)
        if token is None:
            return None
        rid = incoming_request_id(scope)
        context = request_id.set(rid)  # for the token.issued line
        try:
            answers: TokenAnswers = state["token_answers"]
            answer = answers.issue(caller.name, client, token, services.clock.time())
        finally:
            request_id.reset(context)
        headers = [*answer.headers, (REQUEST_ID_HEADER, rid.encode("latin-1"))]
        seconds = time.perf_counter() - started
        self._request_log.record(TOKEN_ROUTE, "GET", 200, seconds, caller.name, client)
        return headers, answer.body

    def quick_answer(self, state: Mapping[str, Any]) -> QuickAnswer:
        """The HTTP protocol's hook (`app.transport.quick.QuickAnswer`) over the lifespan
        `state`: what it returns is sent without starting the app at all."""

        def quick(scope: Scope) -> tuple[Headers, bytes] | None:
            if scope["path"] != TOKEN_ROUTE or scope["method"] != "GET":
                return None
            return self.answer(scope, state)

        return quick


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
    """The broker's FastAPI app, with the warm token path in front of its middleware.

    Under `BrokerServer` the HTTP protocol asks the warm path itself (`quick_answers`), before
    any ASGI task starts, and the app no longer does; under any other ASGI server the app asks
    it first thing."""

    warm_path: WarmTokenPath | None = None
    _protocol_asks = False

    def quick_answers(self, state: Mapping[str, Any]) -> QuickAnswer:
        """The warm path as the HTTP protocol's hook (`app.transport.quick`), over the
        lifespan `state`; from now on the protocol asks it instead of this app."""
        assert self.warm_path is not None
        self._protocol_asks = True
        return self.warm_path.quick_answer(state)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve a warm `GET /token` at once; everything else through FastAPI."""
        if (
            self.warm_path is not None
            and not self._protocol_asks
            and scope["type"] == "http"
            and scope["path"] == TOKEN_ROUTE
            and scope["method"] == "GET"
            and (answer := self.warm_path.answer(scope, scope.get("state"))) is not None
        ):
            headers, body = answer
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        await super().__call__(scope, receive, send)
