"""A local stand-in for the Paysera Checkout auth and integration API, for tests and demos.

Upstream endpoints (as in ``shared/upstream/paysera-checkout-auth.txt``):

``POST /auth/realms/Paysera/protocol/openid-connect/token``
    OAuth2 client credentials, form fields or HTTP Basic; see `app.emulator.token`.
``GET /checkout-project/integration/v1/methods``
    Bearer auth; a small list of payment methods.
``ANY /checkout-project/integration/v1/echo``
    Bearer auth; describes the request it got: method, path, query, headers (lower-case names,
    values verbatim, the ``Authorization`` header included) and the body's size and SHA-256,
    hashed as it streams in.
``GET /checkout-project/integration/v1/blob?size=N``
    Bearer auth; streams N bytes (byte i is ``i % 256``) in 64 KiB chunks with Content-Length.
Any other path under ``/checkout-project/`` is a bearer-authenticated, rate-limited 404.

Integration API rules: a strict sliding-window log of ``rate_limit`` requests per
``rate_window`` per client IP, checked before authentication. A request that gets 429 is not
counted (it did not use the API); every other request is, 401s included (they reached the API).
Every integration response, 401 and 429 included, carries ``X-RateLimit-Limit``,
``X-RateLimit-Remaining`` and ``X-RateLimit-Reset`` (whole seconds, rounded up, until the oldest
counted request leaves the window; when refused, until a slot frees); 429 adds ``Retry-After``.
A missing, unknown, revoked or expired token is 401 ``invalid_token`` with
``WWW-Authenticate: Bearer error="invalid_token"``.

Test-control endpoints (no authentication, not rate-limited, not counted):

``GET /_emulator/stats``
    ``{"token_requests", "tokens_issued", "token_rejected", "api_requests", "api_unauthorized",
    "api_rate_limited"}``; token requests are counted on arrival.
``GET /_emulator/last-token-request``
    ``{"trace_headers": {...}}``: the W3C ``traceparent``/``tracestate`` the last token request
    carried (nothing else of it: never its credentials).
``POST /_emulator/revoke``
    Revokes every issued token; ``{"revoked": <tokens that were still unexpired>}``.
``GET /_emulator/config``, ``POST /_emulator/config``
    Read, or change with a JSON object of any of ``clients`` (object or ``"id:secret,..."``),
    ``token_lifetime``, ``token_latency``, ``failure_mode``, ``rate_limit``, ``rate_window``;
    answers the settings with client ids only. Bad input is 400 and changes nothing.
``POST /_emulator/reset``
    Zeroes the counters, clears the rate windows and forgets every token (settings stay).

Failure modes (token endpoint only; flag, ``EMULATOR_FAILURE_MODE`` or ``/_emulator/config``):
``none``; ``unavailable`` 503 JSON; ``hang`` no answer for an hour, ended early when the client
goes away or `serve_emulator` stops (then 503); ``garbage`` 200 with a non-JSON body; ``html`` 500
HTML page; ``no_token`` 200 JSON without ``access_token``; ``zero_expiry`` ``expires_in`` 0 (the
token is already expired); ``huge_expiry`` ``expires_in`` 10**9; ``reset`` the TCP connection is
reset (RST) with no response: this reaches into uvicorn's transport, so it needs uvicorn.

Secrets and tokens are never logged (a token only as a SHA-256 fingerprint).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from app.emulator.settings import EmulatorSettings
from app.emulator.state import EmulatorState
from app.emulator.token import TRANSPORT_SCOPE_KEY, token_endpoint

TOKEN_PATH = "/auth/realms/Paysera/protocol/openid-connect/token"
API_PREFIX = "/checkout-project/integration/v1"
BLOB_MAX_BYTES = 1 << 31
_BLOB_CHUNK = bytes(range(256)) * 256  # 64 KiB; a multiple of 256 keeps byte i == i % 256
_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
# How long `serve_emulator` lets in-flight requests (a long blob) run after a stop is asked for.
_SHUTDOWN_GRACE_SECONDS = 5
_PAYMENT_METHODS = [
    {"key": "card", "title": "Payment card", "countries": ["lt", "lv", "ee", "pl"]},
    {"key": "swedbank", "title": "Swedbank", "countries": ["lt", "lv", "ee"]},
    {"key": "seb", "title": "SEB", "countries": ["lt", "lv", "ee"]},
    {"key": "paysera", "title": "Paysera account", "countries": ["lt", "lv", "ee", "pl"]},
]

Handler = Callable[[Request], Awaitable[Response]]


def _error(status: int, error: str, description: str) -> JSONResponse:
    return JSONResponse({"error": error, "error_description": description}, status)


def _bearer_token(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").strip().partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


async def _methods(_: Request) -> Response:
    return JSONResponse({"methods": _PAYMENT_METHODS})


async def _echo(request: Request) -> Response:
    digest = hashlib.sha256()
    size = 0
    async for chunk in request.stream():
        digest.update(chunk)
        size += len(chunk)
    headers: dict[str, str] = {}
    for name, value in request.headers.items():
        key = name.lower()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    body = {
        "method": request.method,
        "path": request.url.path,
        "query": request.url.query,
        "headers": headers,
        "body_bytes": size,
        "body_sha256": digest.hexdigest(),
    }
    return JSONResponse(body)


async def _blob_chunks(size: int) -> AsyncIterator[bytes]:
    for offset in range(0, size, len(_BLOB_CHUNK)):
        yield _BLOB_CHUNK[: min(len(_BLOB_CHUNK), size - offset)]


async def _blob(request: Request) -> Response:
    raw = request.query_params.get("size", "")
    if not raw.isdigit() or int(raw) > BLOB_MAX_BYTES:
        return _error(400, "invalid_request", f"size must be a whole number <= {BLOB_MAX_BYTES}")
    size = int(raw)
    headers = {"Content-Length": str(size)}
    return StreamingResponse(
        _blob_chunks(size), media_type="application/octet-stream", headers=headers
    )


async def _not_found(_: Request) -> Response:
    return _error(404, "not_found", "No such integration endpoint")


class _Endpoints:
    """The routes' handlers, bound to one emulator's state."""

    def __init__(self, state: EmulatorState) -> None:
        self.state = state

    async def token(self, request: Request) -> Response:
        """The OAuth2 token endpoint."""
        return await token_endpoint(self.state, request)

    def integration(self, handler: Handler) -> Handler:
        """Wrap `handler` in the integration API's rate limit and bearer authentication."""

        async def guarded(request: Request) -> Response:
            state = self.state
            state.stats.api_requests += 1
            decision = state.hit_rate_limit(request.client.host if request.client else "?")
            if not decision.allowed:
                state.stats.api_rate_limited += 1
                response: Response = _error(429, "rate_limit_exceeded", "Too many requests")
            elif (problem := state.tokens.problem(_bearer_token(request))) is not None:
                state.stats.api_unauthorized += 1
                response = _error(401, "invalid_token", problem)
                response.headers["WWW-Authenticate"] = (
                    f'Bearer realm="Paysera", error="invalid_token", error_description="{problem}"'
                )
            else:
                response = await handler(request)
            response.headers.update(decision.headers())
            return response

        return guarded

    async def stats(self, _: Request) -> Response:
        """``GET /_emulator/stats``."""
        return JSONResponse(self.state.stats.as_dict())

    async def last_token_request(self, _: Request) -> Response:
        """``GET /_emulator/last-token-request``."""
        return JSONResponse({"trace_headers": self.state.last_token_trace})

    async def revoke(self, _: Request) -> Response:
        """``POST /_emulator/revoke``."""
        return JSONResponse({"revoked": self.state.tokens.revoke_all()})

    async def get_config(self, _: Request) -> Response:
        """``GET /_emulator/config``."""
        return JSONResponse(self.state.settings.public_view())

    async def set_config(self, request: Request) -> Response:
        """``POST /_emulator/config``."""
        try:
            changes = json.loads(await request.body())
        except ValueError:
            return _error(400, "invalid_request", "Body must be a JSON object")
        if not isinstance(changes, dict):
            return _error(400, "invalid_request", "Body must be a JSON object")
        try:
            settings = self.state.configure(changes)
        except ValueError as exc:
            return _error(400, "invalid_request", str(exc))
        return JSONResponse(settings.public_view())

    async def reset(self, _: Request) -> Response:
        """``POST /_emulator/reset``."""
        self.state.reset()
        return JSONResponse({"reset": True})


def _routes(endpoints: _Endpoints) -> list[Route]:
    api = endpoints.integration
    return [
        Route(TOKEN_PATH, endpoints.token, methods=["POST"]),
        Route(f"{API_PREFIX}/methods", api(_methods), methods=["GET"]),
        Route(f"{API_PREFIX}/echo", api(_echo), methods=_ALL_METHODS),
        Route(f"{API_PREFIX}/blob", api(_blob), methods=["GET"]),
        Route("/checkout-project/{path:path}", api(_not_found), methods=_ALL_METHODS),
        Route("/_emulator/stats", endpoints.stats, methods=["GET"]),
        Route("/_emulator/last-token-request", endpoints.last_token_request, methods=["GET"]),
        Route("/_emulator/revoke", endpoints.revoke, methods=["POST"]),
        Route("/_emulator/config", endpoints.get_config, methods=["GET"]),
        Route("/_emulator/config", endpoints.set_config, methods=["POST"]),
        Route("/_emulator/reset", endpoints.reset, methods=["POST"]),
    ]


def create_emulator_app(
    settings: EmulatorSettings | None = None, *, clock: Callable[[], float] = time.monotonic
) -> EmulatorApp:
    """Build an emulator app; its state is ``app.state.emulator`` (an `EmulatorState`)."""
    return EmulatorApp(EmulatorState(settings or EmulatorSettings(), clock))


class EmulatorApp(Starlette):
    """The emulator's Starlette app; records the raw transport so `reset` can break it."""

    def __init__(self, state: EmulatorState) -> None:
        super().__init__(routes=_routes(_Endpoints(state)))
        self.emulator = state
        self.state.emulator = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI connection scope."""
        if scope["type"] == "http":
            # uvicorn's `send` is a bound method of its request cycle, which holds the transport.
            scope[TRANSPORT_SCOPE_KEY] = getattr(getattr(send, "__self__", None), "transport", None)
        await super().__call__(scope, receive, send)


class _EmulatorServer(uvicorn.Server):
    """uvicorn, telling the emulator when it begins to stop so a `hang` ends at once."""

    def __init__(self, config: uvicorn.Config, state: EmulatorState) -> None:
        super().__init__(config)
        self._emulator = state

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Release deliberately slow requests, then shut down as uvicorn does."""
        self._emulator.stopping.set()
        await super().shutdown(sockets)


def serve_emulator(settings: EmulatorSettings, host: str, port: int) -> None:
    """Serve the emulator with uvicorn on (host, port) until interrupted; blocks."""
    app = create_emulator_app(settings)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        timeout_graceful_shutdown=_SHUTDOWN_GRACE_SECONDS,
    )
    # As `uvicorn.run`: after a graceful stop uvicorn re-raises the signal; Ctrl+C is no error.
    with contextlib.suppress(KeyboardInterrupt):
        _EmulatorServer(config, app.emulator).run()
