"""The OpenAPI document says what the API does: credentials, statuses, error codes, no 422.

What a running broker answers is held against the document by the schemathesis drill
(tests/reliability/test_fuzz_api.py); these tests check the document itself and one answer
the drill found wrong.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from app.api.errors import _HTTP_CODES, ERROR_TABLE
from app.api.openapi import ERRORS
from tests.conftest import API_KEYS, BrokerFactory
from tests.reliability.test_fuzz_api import DOCUMENT

OAUTH_CODES = {
    "invalid_request",
    "invalid_client",
    "unsupported_grant_type",
    "unauthorized_client",
    "temporarily_unavailable",
}
CONTRACT_CODES = {code for _, code in ERROR_TABLE.values()} | set(_HTTP_CODES.values())
PUBLIC = ("/health", "/metrics", "/.well-known/")


def operations() -> list[tuple[str, str, dict[str, Any]]]:
    """(method, path, operation) of every documented operation."""
    return [(m, p, op) for p, ops in DOCUMENT["paths"].items() for m, op in ops.items()]


def test_no_422_anywhere() -> None:
    """The API answers 400 for invalid input: no operation documents a 422 or its schema."""
    text = json.dumps(DOCUMENT)
    assert '"422"' not in text
    assert "HTTPValidationError" not in text


def test_every_operation_states_its_credentials() -> None:
    """Caller operations take X-API-Key or mTLS, OAuth ones client authentication, ops and
    discovery nothing; the schemes include OpenAPI 3.1's mutualTLS."""
    schemes = DOCUMENT["components"]["securitySchemes"]
    assert schemes["mTLS"]["type"] == "mutualTLS"
    assert schemes["ApiKey"] == {**schemes["ApiKey"], "type": "apiKey", "in": "header"}
    assert schemes["ApiKey"]["name"] == "X-API-Key"
    for method, path, operation in operations():
        security = operation["security"]
        if path.startswith(PUBLIC):
            assert security == [], (method, path)
        elif path.startswith(("/oauth2/", "/auth/realms/")):
            assert security == [{"ClientSecretBasic": []}, {"mTLS": []}], (method, path)
        else:
            assert security == [{"ApiKey": []}, {"mTLS": []}], (method, path)
            assert "401" in operation["responses"], (method, path)


def test_error_responses_name_their_codes_and_headers() -> None:
    """Every documented error lists codes of the contract (RFC 6749 ones on the OAuth paths),
    401s carry WWW-Authenticate and 429/503 Retry-After (required, except proxied)."""
    for method, path, operation in operations():
        for status, response in operation["responses"].items():
            if status == "default" or int(status) < 400 or path == "/health/ready":
                continue
            schema = response["content"]["application/json"]["schema"]
            schema = schema["anyOf"][0] if "anyOf" in schema else schema
            codes = set(schema["properties"]["error"]["enum"])
            allowed = OAUTH_CODES if path.startswith(("/oauth2/", "/auth/")) else CONTRACT_CODES
            assert codes <= allowed, (method, path, status, codes - allowed)
            headers = response["headers"]
            required = not path.startswith("/proxy/")
            if status == "401":
                assert headers["WWW-Authenticate"]["required"] is required, (method, path)
            if status in ("429", "503"):
                assert headers["Retry-After"]["required"] is required, (method, path)


def test_the_error_table_names_only_routes_that_exist() -> None:
    """ERRORS has an entry for each operation and none for an operation that is gone."""
    assert set(ERRORS) == {(method, path) for method, path, _ in operations()}


@pytest.mark.parametrize("store_config", [{}], ids=["memory"])
async def test_a_body_that_is_not_json_is_invalid_request(
    broker: BrokerFactory, store_config: dict[str, Any]
) -> None:
    """A JSON body that does not parse is 400 invalid_request (it was 400 `http_error`, a code
    of no contract, until the schemathesis drill held answers against the document)."""
    async with broker() as http:
        response = await http.post(
            "/token/invalidate",
            content=b"\x1e\xff<",
            headers={"X-API-Key": API_KEYS["orders"], "Content-Type": "application/json"},
        )
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"
