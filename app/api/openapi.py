"""The OpenAPI document as the API behaves, not only as the route signatures say.

FastAPI derives a 200 and a 422 from each route's signature. This API answers invalid input with
400 (never 422), authenticates callers by `X-API-Key` or a client certificate, and answers the
errors of CONTRACT.md. `openapi_document(app)` starts from FastAPI's document and corrects it
from the two tables below, kept together so they are reviewed together:

- SECURITY: which credentials each operation takes (components.securitySchemes: `ApiKey`,
  `mTLS` (OpenAPI 3.1 `mutualTLS`), `ClientSecretBasic`); health, metrics and discovery none.
- ERRORS: for each operation, each error status it answers and the codes that status carries;
  each becomes a response whose body schema allows exactly those codes, with the headers that
  come with it (`WWW-Authenticate`, `Retry-After`, `X-RateLimit-*`).

A request the listener refuses before routing (unparseable HTTP 400, target over 16 KiB 414,
headers over the limits 431, an API body over 1 MiB 413) and a bug (500 `internal_error`) can
happen to any operation; the document says so once, in `info.description`.
tests/reliability/test_fuzz_api.py holds the document against what a running broker answers.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

Errors = dict[int, tuple[str, ...]]  # status -> the error codes it carries

DESCRIPTION = """\
Shares Paysera Checkout OAuth2 tokens and the upstream rate budget across a fleet.

Every error is JSON `{"error": code, "error_description": text}` with `Cache-Control: no-store`.
Besides the statuses listed per operation, any request may be refused before it is routed:
400 `invalid_request` (not parseable as HTTP/1.1), 413 `request_too_large` (an API body over
1 MiB), 414 `uri_too_long`, 431 `headers_too_large`; and 500 `internal_error` is a bug. With
`server.limit_concurrency` set, uvicorn answers a plain-text 503 beyond that many connections.
"""

SECURITY_SCHEMES: dict[str, Any] = {
    "ApiKey": {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": "A caller's API key (`token-broker new-api-key`).",
    },
    "mTLS": {
        "type": "mutualTLS",
        "description": "A client certificate whose CN=, URI: or DNS: identity a caller lists in "
        "`mtls_identities`, presented to the broker or, through a trusted proxy, in "
        "`X-Forwarded-Client-Cert`. With an API key too, both must name the same caller.",
    },
    "ClientSecretBasic": {
        "type": "http",
        "scheme": "basic",
        "description": "OAuth client authentication: `client_id` = the caller's name, "
        "`client_secret` = its API key (RFC 6749 §2.3.1). The two may instead be sent as form "
        "fields (client_secret_post); with a certificate, `client_id` alone.",
    },
}
CALLER_SECURITY: list[dict[str, list[str]]] = [{"ApiKey": []}, {"mTLS": []}]
OAUTH_SECURITY: list[dict[str, list[str]]] = [{"ClientSecretBasic": []}, {"mTLS": []}]

# -- the statuses each operation answers ------------------------------------------------------


def merged(*parts: Errors) -> Errors:
    """The union of error tables; codes of one status are collected in order."""
    result: Errors = {}
    for part in parts:
        for status, codes in part.items():
            result[status] = (*result.get(status, ()), *codes)
    return result


CALLER: Errors = {401: ("unauthorized",)}
CLIENT: Errors = {400: ("client_required",), 403: ("forbidden",), 404: ("unknown_client",)}
TOKEN: Errors = {502: ("upstream_invalid_client",), 503: ("upstream_unavailable",)}
JSON_BODY: Errors = {400: ("invalid_request",), 413: ("request_too_large",)}
OAUTH_TOKEN: Errors = {
    400: ("invalid_request", "unsupported_grant_type", "unauthorized_client"),
    401: ("invalid_client",),
    503: ("temporarily_unavailable",),
}
OAUTH_REVOKE: Errors = {
    400: ("invalid_request", "unauthorized_client"),
    401: ("invalid_client",),
    429: ("temporarily_unavailable",),
}
PROXY: Errors = merged(
    CALLER,
    CLIENT,
    # A path with a line break in it matches no route (Starlette's {path:path} is `.*`)
    {404: ("not_found",)},
    {400: ("invalid_request",), 413: ("request_too_large",)},
    {429: ("budget_exhausted",), 502: ("upstream_invalid_client",)},
    {503: ("upstream_unavailable", "store_unavailable"), 504: ("upstream_timeout",)},
)
PROXY_METHODS = ("get", "post", "put", "patch", "delete", "head", "options")
WELL_KNOWN = "/.well-known/oauth-authorization-server"

ERRORS: dict[tuple[str, str], Errors] = {
    ("get", "/token"): merged(CALLER, CLIENT, TOKEN),
    ("post", "/token/invalidate"): merged(
        CALLER, CLIENT, JSON_BODY, TOKEN, {429: ("refresh_throttled",)}
    ),
    ("post", "/budget/acquire"): merged(
        CALLER,
        CLIENT,
        {400: ("invalid_request",), 429: ("budget_exhausted",), 503: ("store_unavailable",)},
    ),
    ("post", "/budget/report"): merged(CALLER, CLIENT, JSON_BODY, {503: ("store_unavailable",)}),
    ("post", "/oauth2/{client}/token"): OAUTH_TOKEN,
    ("post", "/auth/realms/Paysera/protocol/openid-connect/token"): OAUTH_TOKEN,
    ("post", "/oauth2/{client}/revoke"): OAUTH_REVOKE,
    ("post", "/auth/realms/Paysera/protocol/openid-connect/revoke"): OAUTH_REVOKE,
    **{(method, "/proxy/{client}/{path}"): PROXY for method in PROXY_METHODS},
    ("get", "/health"): {},
    ("get", "/health/live"): {},
    ("get", "/health/ready"): {},  # its 503 is not an error body: see `_health`
    ("get", "/metrics"): {},
    ("get", WELL_KNOWN): {400: ("invalid_request",)},
    ("get", WELL_KNOWN + "/oauth2/{client}"): {400: ("invalid_request",), 404: ("unknown_client",)},
}
PUBLIC = {"/health", "/health/live", "/health/ready", "/metrics", WELL_KNOWN}

# -- headers ------------------------------------------------------------------------------------


def _header(description: str, *, required: bool = True, integer: bool = False) -> dict[str, Any]:
    return {
        "description": description,
        "required": required,
        "schema": {"type": "integer" if integer else "string"},
    }


NO_STORE = _header("no-store")
RATE_LIMIT = {
    "X-RateLimit-Limit": _header("the fleet budget's limit", integer=True),
    "X-RateLimit-Remaining": _header("permits left in the window", integer=True),
    "X-RateLimit-Reset": _header("whole seconds until the oldest grant leaves it", integer=True),
}
CALLER_CHALLENGE = 'ApiKey realm="token-broker", header="X-API-Key"'


def error_headers(path: str, status: int, codes: Iterable[str]) -> dict[str, Any]:
    """The headers an error answer of `status` carries on `path`."""
    proxied = path.startswith("/proxy/")  # the upstream's own answers share these statuses
    headers: dict[str, Any] = {"Cache-Control": {**NO_STORE, "required": not proxied}}
    if status == 401:
        oauth = "unauthorized" not in codes
        challenge = 'Basic realm="token-broker"' if oauth else CALLER_CHALLENGE
        headers["WWW-Authenticate"] = _header(challenge, required=not proxied)
    if status in (429, 503):
        headers["Retry-After"] = _header("whole seconds", required=not proxied, integer=True)
    if "budget_exhausted" in codes:
        headers |= {
            name: {**header, "required": not proxied} for name, header in RATE_LIMIT.items()
        }
    return headers


def error_response(path: str, status: int, codes: tuple[str, ...]) -> dict[str, Any]:
    """The response object of one error status: its codes, body schema and headers."""
    schema = {
        "type": "object",
        "required": ["error", "error_description"],
        "additionalProperties": False,
        "properties": {
            "error": {"type": "string", "enum": list(dict.fromkeys(codes))},
            "error_description": {"type": "string", "minLength": 1},
        },
    }
    described = ", ".join(f"`{code}`" for code in dict.fromkeys(codes))
    if path.startswith("/proxy/"):
        # The upstream's own answers come with the same statuses and bodies of any shape.
        return {
            "description": f"the broker's {described}, or the upstream's answer",
            "headers": error_headers(path, status, codes),
            "content": {
                "application/json": {"schema": {"anyOf": [schema, {"description": "upstream"}]}},
                "*/*": {"schema": {}},
            },
        }
    return {
        "description": described,
        "headers": error_headers(path, status, codes),
        "content": {"application/json": {"schema": schema}},
    }


# -- the document --------------------------------------------------------------------------------


def _health(paths: dict[str, Any]) -> None:
    """Bodies FastAPI cannot see: the dashboard, the metrics text, readiness's 503."""
    health = paths["/health"]["get"]["responses"]["200"]
    health["content"] = {
        "application/json": {"schema": {"type": "object"}},
        "text/html": {"schema": {"type": "string"}, "description": "the dashboard"},
    }
    paths["/metrics"]["get"]["responses"]["200"]["content"] = {
        "text/plain": {"schema": {"type": "string"}, "description": "Prometheus text format"}
    }
    readiness = {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"type": "string"}, "reason": {"type": "string"}},
    }
    ready = paths["/health/ready"]["get"]["responses"]
    ready["200"]["content"] = {"application/json": {"schema": readiness}}
    ready["503"] = {
        "description": "starting, or the store is unreachable and no valid token is held",
        "content": {"application/json": {"schema": readiness}},
    }


def _success_headers(paths: dict[str, Any]) -> None:
    grant = paths["/budget/acquire"]["post"]["responses"]["200"]
    grant["headers"] = {"Cache-Control": NO_STORE, **RATE_LIMIT}
    for method in PROXY_METHODS:
        responses = paths["/proxy/{client}/{path}"][method]["responses"]
        responses.pop("200", None)
        responses["default"] = {"description": "the upstream's answer, status and headers as sent"}


def openapi_document(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document for `app`, corrected by SECURITY and ERRORS (see the docstring)."""
    document = get_openapi(
        title=app.title,
        version=app.version,
        description=DESCRIPTION,
        routes=app.routes,
    )
    paths: dict[str, Any] = document["paths"]
    for path, operations in paths.items():
        for method, operation in operations.items():
            key = (method, path)
            if key not in ERRORS:
                raise KeyError(f"{method.upper()} {path} is missing from app.api.openapi.ERRORS")
            responses = operation["responses"]
            responses.pop("422", None)  # validation errors are 400 invalid_request
            for status, codes in sorted(ERRORS[key].items()):
                responses[str(status)] = error_response(path, status, codes)
            operation["security"] = security_of(path, ERRORS[key])
    _health(paths)
    _success_headers(paths)
    components = document.setdefault("components", {})
    components["schemas"] = referenced_schemas(paths, components.get("schemas", {}))
    components["securitySchemes"] = SECURITY_SCHEMES
    return document


def security_of(path: str, errors: Errors) -> list[dict[str, list[str]]]:
    """The credentials an operation takes: none, OAuth client authentication, or a caller's."""
    if path in PUBLIC or path.startswith(WELL_KNOWN):
        return []
    return OAUTH_SECURITY if errors in (OAUTH_TOKEN, OAUTH_REVOKE) else CALLER_SECURITY


def referenced_schemas(paths: dict[str, Any], schemas: dict[str, Any]) -> dict[str, Any]:
    """`schemas` less those nothing refers to any more (HTTPValidationError, OAuthErrorBody...)."""
    kept: dict[str, Any] = {}
    pending = [json.dumps(paths)]
    while pending:
        text = pending.pop()
        for name, schema in schemas.items():
            if name not in kept and f'"#/components/schemas/{name}"' in text:
                kept[name] = schema
                pending.append(json.dumps(schema))
    return dict(sorted(kept.items()))


def install_openapi(app: FastAPI) -> None:
    """Serve the corrected document at /openapi.json (built once, on first request)."""
    cache: list[dict[str, Any]] = []

    def document() -> dict[str, Any]:
        if not cache:
            cache.append(openapi_document(app))
        return cache[0]

    app.openapi = document  # type: ignore[method-assign]  # FastAPI's documented override
