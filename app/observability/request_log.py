"""Request logging and HTTP metrics as a pure ASGI middleware (no BaseHTTPMiddleware overhead).

For every HTTP request it:
* sets the request id (the caller's `X-Request-ID` when it looks sane, else a fresh one) in the
  `request_id` context variable, so every log line of the request carries it, and echoes it in
  the response's `X-Request-ID`;
* logs one `http.request` line: method, route *template* (never the raw path, which may carry
  a client name someone mistyped or worse), status, latency_ms, caller, client, outcome (`ok`
  or the error code of the JSON error body). Probes of `/health*` and scrapes of `/metrics` log
  at debug level, so they do not drown the interesting lines;
* counts the request in the app's metrics, token requests also by client, caller and outcome.

Caller and client come from `scope["state"]` (`request.state.caller` set by authentication,
`request.state.client` if a route sets it), the `client` path or query parameter, or the
caller's only client; anything not configured is not named.
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.observability.logs import LineTemplate, request_id
from app.observability.metrics import BrokerMetrics

if TYPE_CHECKING:  # adapters read settings; only app.main hands them over
    from app.config import Settings

log = logging.getLogger("app.http")

REQUEST_ID_HEADER = b"x-request-id"
_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
_ERROR_CODE = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
_MAX_ERROR_BODY = 4096
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
TOKEN_ROUTES = frozenset(
    {
        "/token",
        "/token/invalidate",
        "/oauth2/{client}/token",
        "/auth/realms/Paysera/protocol/openid-connect/token",
    }
)
UNMATCHED = "unmatched"
# Request ids only correlate log lines; they guard nothing, so they need not be unpredictable.
# os.urandom (secrets) costs a system call per request; this generator, seeded from it once
# per process, does not.
_REQUEST_IDS = random.Random()


def is_ops_route(route: str) -> bool:
    """`/health`, `/health/...` and `/metrics`: polled often, logged at debug level."""
    return route in ("/health", "/metrics") or route.startswith("/health/")


def incoming_request_id(scope: Scope) -> str:
    """The caller's X-Request-ID if it is short and plain, else a fresh random id."""
    for name, value in scope.get("headers", ()):
        if name == REQUEST_ID_HEADER:
            text: str = value.decode("latin-1")
            if _SANE_REQUEST_ID.match(text):
                return text
            break
    return f"{_REQUEST_IDS.getrandbits(64):016x}"


def error_code(body: bytes) -> str | None:
    """The `error` field of a small JSON error body, if it looks like an error code."""
    if len(body) > _MAX_ERROR_BODY:
        return None
    try:
        data = json.loads(body)
    except ValueError:
        return None
    code = data.get("error") if isinstance(data, dict) else None
    if isinstance(code, str) and _ERROR_CODE.match(code):
        return code
    return None


@dataclass
class _Answer:
    """What the app sent back, as far as the log line needs it."""

    status: int = 0
    json: bool = False
    code: str | None = None


class RequestLog:
    """Counts a request in the HTTP metrics and writes its `http.request` line: the one record
    of a request, whoever answered it (the app, the warm token path, the HTTP layer's
    refusals)."""

    MAX_LINES = 4096  # line templates kept (routes, callers, clients, outcomes are few)

    def __init__(self, metrics: BrokerMetrics) -> None:
        self.metrics = metrics
        self._lines: dict[tuple[str, str, int, str | None, str | None, str], LineTemplate] = {}

    def record(
        self,
        route: str,
        method: str,
        status: int,
        seconds: float,
        caller: str | None = None,
        client: str | None = None,
        outcome: str = "ok",
    ) -> None:
        """One answered request: `route` a template (or `unmatched`), `caller` and `client`
        configured names or None, `outcome` `ok` or an error code."""
        method = method if method in _METHODS else "OTHER"
        self.metrics.http_request(route, method, status, seconds)
        ops = is_ops_route(route)
        if ops and not log.isEnabledFor(logging.DEBUG):
            return  # the hot probe path: nothing more to work out
        if route in TOKEN_ROUTES:
            self.metrics.token_request(client, caller, outcome)
        key = (route, method, status, caller, client, outcome)
        line = self._lines.get(key)
        if line is None:
            if len(self._lines) >= self.MAX_LINES:
                self._lines.clear()
            line = self._lines[key] = LineTemplate(
                log,
                logging.DEBUG if ops else logging.INFO,
                "http.request",
                "latency_ms",
                method=method,
                path=route,
                status=status,
                latency_ms=0.0,
                caller=caller,
                client=client,
                outcome=outcome,
            )
        line.log(round(seconds * 1000, 1))


class RequestLogMiddleware:
    """One `http.request` log line and the HTTP metrics per request; sets the request id."""

    def __init__(self, app: ASGIApp, settings: Settings, request_log: RequestLog) -> None:
        self.app = app
        self.request_log = request_log
        self.clients = frozenset(settings.clients)
        self.callers = frozenset(settings.callers)
        callers = settings.callers.items()
        self.only_client = {name: c.clients[0] for name, c in callers if len(c.clients) == 1}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve the request through the app, then log and count it."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = incoming_request_id(scope)
        context = request_id.set(rid)
        started = time.perf_counter()
        answer = _Answer()

        async def send_noting(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = self._started(message, answer, rid)
            elif message["type"] == "http.response.body" and answer.json and answer.code is None:
                answer.json = False  # only the first chunk of an error body is looked at
                answer.code = error_code(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, send_noting)
        except BaseException:
            if answer.status == 0:
                answer.status, answer.code = 500, "internal_error"
            raise
        finally:
            self._finish(scope, answer, time.perf_counter() - started)
            request_id.reset(context)

    @staticmethod
    def _started(message: Message, answer: _Answer, rid: str) -> Message:
        answer.status = message["status"]
        headers = list(message.get("headers", ()))
        names = [name.lower() for name, _ in headers]
        if answer.status >= 400:
            for name, value in headers:
                if name.lower() == b"content-type":
                    answer.json = value.startswith(b"application/json")
        if REQUEST_ID_HEADER not in names:  # a proxied upstream answer may carry its own
            headers.append((REQUEST_ID_HEADER, rid.encode("latin-1")))
        return {**message, "headers": headers}

    def _finish(self, scope: Scope, answer: _Answer, seconds: float) -> None:
        route_object = scope.get("route")
        route = getattr(route_object, "path", None) or UNMATCHED
        status = answer.status
        state: Mapping[str, Any] = scope.get("state") or {}
        caller = state.get("caller")
        caller = caller if caller in self.callers else None
        client = self._client(scope, state, caller)
        outcome = "ok" if 0 < status < 400 else (answer.code or f"http_{status}")
        self.request_log.record(route, scope["method"], status, seconds, caller, client, outcome)

    def _client(self, scope: Scope, state: Mapping[str, Any], caller: str | None) -> str | None:
        """The configured client this request was about, if one can be told."""
        client = state.get("client") or scope.get("path_params", {}).get("client")
        query = scope.get("query_string", b"")
        if client is None and b"client=" in query:
            values = parse_qs(query.decode("latin-1")).get("client")
            client = values[0] if values else None
        if client is None and caller is not None:
            client = self.only_client.get(caller)
        return client if client in self.clients else None


def refused_request_log(request_log: RequestLog) -> Callable[[str, int, str, float], None]:
    """What the HTTP layer calls for a request it refused before routing (an oversized or
    malformed head, a declared body over the limit): recorded as any other request, with the
    route `unmatched` and no caller or client."""

    def record(method: str, status: int, code: str, seconds: float) -> None:
        request_log.record(UNMATCHED, method, status, seconds, outcome=code)

    return record
