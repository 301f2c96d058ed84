"""The emulator's OAuth2 client-credentials token endpoint and its failure modes.

Checks run in Keycloak's order: a malformed request or a missing ``grant_type`` is 400
``invalid_request``; then client authentication (form fields or HTTP Basic with the RFC 6749
§2.3.1 form-urlencoding) is 401 ``invalid_client``; then a grant other than
``client_credentials`` is 400 ``unsupported_grant_type``. A failure mode that breaks the
transport or the server (``unavailable``, ``hang``, ``garbage``, ``html``, ``reset``) answers
before any check, as a broken upstream would; the ones that distort a success (``no_token``,
``zero_expiry``, ``huge_expiry``) apply only to requests that would have got a token.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import socket
import struct
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl, unquote_plus

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from app.emulator.state import EmulatorState

# The ASGI scope key under which the app records the server's raw transport, for `reset`.
TRANSPORT_SCOPE_KEY = "app.emulator.transport"
HANG_SECONDS = 3600.0
HUGE_EXPIRES_IN = 10**9
_MAX_FORM_BYTES = 64 * 1024
_FORM_TYPE = "application/x-www-form-urlencoded"
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_HTML_ERROR = (
    "<!DOCTYPE html><html><head><title>500 Internal Server Error</title></head>"
    "<body><h1>Internal Server Error</h1><p>The server encountered an internal error.</p>"
    "</body></html>"
)


class EndpointError(Exception):
    """An RFC 6749 §5.2 error response."""

    def __init__(
        self, status: int, error: str, description: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.description = description
        self.headers = dict(headers or {})

    def response(self) -> JSONResponse:
        """The error as a JSON response that must not be cached."""
        body = {"error": self.error, "error_description": self.description}
        return JSONResponse(body, self.status, headers={**_NO_STORE, **self.headers})


def _invalid_client(via_basic: bool) -> EndpointError:
    # RFC 6749 §5.2: a failed Authorization-header authentication names its scheme.
    headers = {"WWW-Authenticate": 'Basic realm="Paysera"'} if via_basic else None
    return EndpointError(401, "invalid_client", "Invalid client credentials", headers)


async def read_body(request: Request) -> bytes:
    """Read the request body, refusing more than a token request could need."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_FORM_BYTES:
            raise EndpointError(400, "invalid_request", "Request body too large")
    return bytes(body)


def parse_form(headers: Headers, body: bytes) -> dict[str, str]:
    """Parse a form-urlencoded body; repeated or undecodable parameters are invalid."""
    content_type = headers.get("content-type", "").partition(";")[0].strip().lower()
    if content_type != _FORM_TYPE:
        raise EndpointError(400, "invalid_request", f"Content-Type must be {_FORM_TYPE}")
    try:
        pairs = parse_qsl(body.decode(), keep_blank_values=True, errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise EndpointError(400, "invalid_request", "Malformed form body") from None
    form = dict(pairs)
    if len(form) != len(pairs):
        raise EndpointError(400, "invalid_request", "Repeated form parameter")
    return form


def _basic_credentials(authorization: str | None) -> tuple[str, str] | None:
    scheme, _, encoded = (authorization or "").strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
        client_id, sep, secret = decoded.partition(":")
        if not sep:
            raise ValueError("no colon")
        return unquote_plus(client_id, errors="strict"), unquote_plus(secret, errors="strict")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise _invalid_client(via_basic=True) from None


def authenticate_client(
    clients: Mapping[str, str], headers: Headers, form: Mapping[str, str]
) -> str:
    """Return the authenticated client_id, from HTTP Basic or from the form fields."""
    basic = _basic_credentials(headers.get("authorization"))
    if basic is not None:
        if "client_secret" in form:
            raise EndpointError(400, "invalid_request", "Multiple client authentication methods")
        if form.get("client_id", basic[0]) != basic[0]:
            raise EndpointError(400, "invalid_request", "client_id does not match the credentials")
        client_id, secret = basic
    else:
        client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
    expected = clients.get(client_id)
    if expected is None or not hmac.compare_digest(expected.encode(), secret.encode()):
        raise _invalid_client(via_basic=basic is not None)
    return client_id


def check_grant(headers: Headers, body: bytes, clients: Mapping[str, str]) -> str:
    """Validate a token request in Keycloak's order; return the authenticated client_id."""
    form = parse_form(headers, body)
    if not form.get("grant_type"):
        raise EndpointError(400, "invalid_request", "Missing form parameter: grant_type")
    client_id = authenticate_client(clients, headers, form)
    if form["grant_type"] != "client_credentials":
        raise EndpointError(400, "unsupported_grant_type", "Unsupported grant_type")
    return client_id


def token_response(state: EmulatorState, client_id: str, mode: str) -> JSONResponse:
    """Issue a token for `client_id` and answer in the guide's shape, distorted by `mode`."""
    lifetime = state.settings.token_lifetime
    expires_in = max(1, round(lifetime))
    if mode == "zero_expiry":
        lifetime = expires_in = 0
    elif mode == "huge_expiry":
        lifetime = expires_in = HUGE_EXPIRES_IN
    body: dict[str, Any] = {
        "expires_in": expires_in,
        "refresh_expires_in": 0,
        "token_type": "Bearer",
        "not-before-policy": 0,
        "scope": "profile email",
    }
    if mode != "no_token":
        body = {"access_token": state.tokens.issue(client_id, lifetime), **body}
        state.stats.tokens_issued += 1
    return JSONResponse(body, headers=_NO_STORE)


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass  # unread body chunks: discard them and keep listening


async def wait_for_client(request: Request, stopping: asyncio.Event, seconds: float) -> str:
    """Wait up to `seconds`; say why it ended: "disconnected", "stopping" or "elapsed"."""
    waiters = {
        asyncio.ensure_future(_disconnected(request)): "disconnected",
        asyncio.ensure_future(stopping.wait()): "stopping",
    }
    try:
        done, _ = await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
    reasons = {waiters[waiter] for waiter in done}
    return next((r for r in ("disconnected", "stopping") if r in reasons), "elapsed")


def _shutting_down() -> Response:
    body = {"error": "temporarily_unavailable", "error_description": "Emulator shutting down"}
    return JSONResponse(body, 503, headers={"Connection": "close"})


def _never_sent() -> Response:
    # The client is gone: uvicorn drops whatever a handler answers after a disconnect.
    return Response(status_code=499)


async def _unavailable(_state: EmulatorState, _request: Request) -> Response:
    body = {"error": "temporarily_unavailable", "error_description": "Service unavailable"}
    return JSONResponse(body, 503)


async def _garbage(_state: EmulatorState, _request: Request) -> Response:
    return Response(b"\x00\xffnot json <<<", 200, media_type="application/json")


async def _html(_state: EmulatorState, _request: Request) -> Response:
    return HTMLResponse(_HTML_ERROR, 500)


async def _hang(state: EmulatorState, request: Request) -> Response:
    reason = await wait_for_client(request, state.stopping, HANG_SECONDS)
    if reason == "stopping":
        return _shutting_down()
    if reason == "disconnected":
        return _never_sent()
    return JSONResponse({"error": "timeout", "error_description": "Gave up hanging"}, 504)


async def _reset(state: EmulatorState, request: Request) -> Response:
    transport = request.scope.get(TRANSPORT_SCOPE_KEY)
    if not isinstance(transport, asyncio.Transport):
        raise RuntimeError("the server's transport is not reachable; cannot reset the connection")
    sock = transport.get_extra_info("socket")
    if sock is not None:
        # Linger 0: closing sends a TCP RST instead of an orderly FIN.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
    # Wait until the server has noticed, so it drops the response below instead of writing it.
    await wait_for_client(request, state.stopping, 5.0)
    return _never_sent()


# Failure modes that answer before the request is even looked at.
TRANSPORT_FAILURES: dict[str, Callable[[EmulatorState, Request], Awaitable[Response]]] = {
    "unavailable": _unavailable,
    "hang": _hang,
    "garbage": _garbage,
    "html": _html,
    "reset": _reset,
}


TRACE_HEADERS = ("traceparent", "tracestate")


async def token_endpoint(state: EmulatorState, request: Request) -> Response:
    """``POST /auth/realms/Paysera/protocol/openid-connect/token``."""
    state.stats.token_requests += 1  # at arrival: concurrent, slow requests are all counted
    state.last_token_trace = {
        name: value for name in TRACE_HEADERS if (value := request.headers.get(name)) is not None
    }
    try:
        body = await read_body(request)
    except EndpointError as exc:
        state.stats.token_rejected += 1
        return exc.response()
    settings = state.settings  # the behaviour is fixed when the request has arrived
    if settings.token_latency > 0:
        reason = await wait_for_client(request, state.stopping, settings.token_latency)
        if reason != "elapsed":
            return _shutting_down() if reason == "stopping" else _never_sent()
    failure = TRANSPORT_FAILURES.get(settings.failure_mode)
    if failure is not None:
        return await failure(state, request)
    try:
        client_id = check_grant(request.headers, body, settings.clients)
    except EndpointError as exc:
        state.stats.token_rejected += 1
        return exc.response()
    return token_response(state, client_id, settings.failure_mode)
