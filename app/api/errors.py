"""The one table from exception to HTTP status and error code, and its handlers.

Every error body is `{"error": code, "error_description": text}`. Descriptions come from our own
exceptions, whose messages never carry a token, secret or key; request validation errors name
the offending field but never echo its value.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.api.token_answer import NO_STORE
from app.budget.service import rate_limit_headers
from app.errors import (
    BrokerError,
    BudgetExhausted,
    ClientDisconnected,
    ClientRequired,
    Forbidden,
    InvalidRequest,
    OAuthError,
    RefreshThrottled,
    RequestTooLarge,
    RetryableError,
    StoreUnavailable,
    Unauthorized,
    UnknownClient,
    UpstreamCredentialsRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from app.observability.logs import log_event
from app.transport.errors import error_json

log = logging.getLogger(__name__)

ERROR_TABLE: dict[type[BrokerError], tuple[int, str]] = {
    Unauthorized: (401, "unauthorized"),
    Forbidden: (403, "forbidden"),
    UnknownClient: (404, "unknown_client"),
    ClientRequired: (400, "client_required"),
    InvalidRequest: (400, "invalid_request"),
    RequestTooLarge: (413, "request_too_large"),
    # nginx's status for a request whose client closed the connection; only logs see it
    ClientDisconnected: (499, "client_closed_request"),
    UpstreamCredentialsRejected: (502, "upstream_invalid_client"),
    UpstreamUnavailable: (503, "upstream_unavailable"),
    UpstreamTimeout: (504, "upstream_timeout"),
    RefreshThrottled: (429, "refresh_throttled"),
    BudgetExhausted: (429, "budget_exhausted"),
    StoreUnavailable: (503, "store_unavailable"),
}
WWW_AUTHENTICATE = 'ApiKey realm="token-broker", header="X-API-Key"'
# RFC 9110 §15.5.2: every 401 carries a challenge; Basic is the scheme the OAuth endpoints take.
BASIC_CHALLENGE = 'Basic realm="token-broker"'
_HTTP_CODES = {
    400: "invalid_request",  # e.g. a JSON body that does not parse
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
}


def status_and_code(exc: BrokerError) -> tuple[int, str]:
    """Look `exc` up in ERROR_TABLE by its class hierarchy."""
    for cls in type(exc).__mro__:
        if cls in ERROR_TABLE:
            return ERROR_TABLE[cls]
    return 500, "internal_error"


def broker_error_response(exc: BrokerError) -> JSONResponse:
    """The HTTP response for one of our exceptions."""
    status, code = status_and_code(exc)
    headers = {}
    if isinstance(exc, RetryableError):
        headers["Retry-After"] = exc.retry_after_header
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = WWW_AUTHENTICATE
    if isinstance(exc, BudgetExhausted):
        headers |= rate_limit_headers(exc.limit, 0, exc.retry_after)
    return error_json(status, code, exc.message, headers)


def oauth_error_response(exc: OAuthError) -> JSONResponse:
    """An RFC 6749 §5.2 error: `{"error", "error_description"}`, never cached."""
    headers = {**NO_STORE, **exc.headers}
    if exc.status == 401:
        headers.setdefault("WWW-Authenticate", BASIC_CHALLENGE)
    return error_json(exc.status, exc.error, exc.message, headers)


async def _on_oauth_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, OAuthError)
    return oauth_error_response(exc)


async def _on_broker_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, BrokerError)
    return broker_error_response(exc)


async def _on_validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    fields = sorted({".".join(str(p) for p in err["loc"][1:]) or "body" for err in exc.errors()})
    return error_json(400, "invalid_request", f"invalid or missing: {', '.join(fields)}")


async def _on_http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    headers: dict[str, Any] = dict(exc.headers or {})
    return error_json(exc.status_code, code, str(exc.detail), headers)


async def _on_unexpected(_request: Request, exc: Exception) -> JSONResponse:
    log_event(log, logging.ERROR, "http.unhandled_error", error=type(exc).__name__)
    return error_json(500, "internal_error", "internal error")


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers once on `app`."""
    app.add_exception_handler(OAuthError, _on_oauth_error)  # looked up before BrokerError
    app.add_exception_handler(BrokerError, _on_broker_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_unexpected)
