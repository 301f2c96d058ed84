"""RFC 8414 metadata of the drop-in endpoints, read by authlib's RFC 8414 tools over HTTPS."""

from __future__ import annotations

import asyncio
import warnings
from pathlib import Path
from typing import Any

import pytest
from authlib.deprecate import AuthlibDeprecationWarning
from authlib.oauth2.rfc8414 import AuthorizationServerMetadata, get_well_known_url

from tests.api.test_oauth import ORDERS_KEY, cached_token
from tests.conftest import BrokerFactory, Emulator
from tests.support.tls import client_context, mtls_config, new_pki, serve_broker

with warnings.catch_warnings():
    # As in test_oauth.py: authlib 1.9 warns at import that it prefers `httpx2`; scoped here.
    warnings.filterwarnings(
        "ignore", "The httpx module is deprecated", category=AuthlibDeprecationWarning
    )
    from authlib.integrations.httpx_client import AsyncOAuth2Client

WELL_KNOWN = "/.well-known/oauth-authorization-server"
PAYSERA = "/auth/realms/Paysera/protocol/openid-connect"
SECRET_METHODS = ["client_secret_basic", "client_secret_post"]


def expected(base: str, issuer_path: str, token: str, revoke: str, methods: list[str]) -> Any:
    """The metadata document the broker should answer."""
    return {
        "issuer": base + issuer_path,
        "token_endpoint": base + token,
        "revocation_endpoint": base + revoke,
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": methods,
        "revocation_endpoint_auth_methods_supported": methods,
        "response_types_supported": [],
    }


async def test_metadata_documents(broker: BrokerFactory) -> None:
    """The root document describes the Paysera path, the inserted path one client; both name
    the issuer as the request reached the broker and are not to be cached."""
    async with broker() as http:
        base = str(http.base_url).rstrip("/")
        root = await http.get(WELL_KNOWN)
        checkout = await http.get(f"{WELL_KNOWN}/oauth2/checkout")
        aliased = await http.get(WELL_KNOWN, headers={"Host": "tb.example:8443"})
    assert root.status_code == 200
    assert root.headers["cache-control"] == "no-store"
    assert root.json() == expected(
        base, "", f"{PAYSERA}/token", f"{PAYSERA}/revoke", SECRET_METHODS
    )
    assert checkout.json() == expected(
        base,
        "/oauth2/checkout",
        "/oauth2/checkout/token",
        "/oauth2/checkout/revoke",
        SECRET_METHODS,
    )
    assert aliased.json()["token_endpoint"] == f"http://tb.example:8443{PAYSERA}/token"


async def test_configured_public_url_is_the_issuer(broker: BrokerFactory) -> None:
    """With server.public_url set, the documents use it whatever Host the request carried."""
    async with broker(server={"public_url": "https://tb.corp.example/"}) as http:
        documents = [
            (await http.get(f"{WELL_KNOWN}/oauth2/payouts", headers=headers)).json()
            for headers in ({}, {"Host": "elsewhere.example"})
        ]
    for document in documents:
        assert document["issuer"] == "https://tb.corp.example/oauth2/payouts"
        assert document["token_endpoint"] == "https://tb.corp.example/oauth2/payouts/token"


# id -> (path, headers, status, error)
REFUSED: dict[str, tuple[str, dict[str, str], int, str]] = {
    "unknown client": (f"{WELL_KNOWN}/oauth2/nonesuch", {}, 404, "unknown_client"),
    "OpenID Connect discovery": ("/.well-known/openid-configuration", {}, 404, "not_found"),
    "appended form": (
        "/oauth2/checkout/.well-known/oauth-authorization-server",
        {},
        404,
        "not_found",
    ),
    "host with userinfo": (WELL_KNOWN, {"Host": "evil@tb.example"}, 400, "invalid_request"),
    "host with a path": (WELL_KNOWN, {"Host": "tb.example/x"}, 400, "invalid_request"),
}


async def test_what_is_not_described(broker: BrokerFactory) -> None:
    """Unknown clients, OIDC discovery and malformed Host headers get contract errors."""
    async with broker() as http:
        for case, (path, headers, status, error) in REFUSED.items():
            response = await http.get(path, headers=headers)
            assert response.status_code == status, case
            assert response.json()["error"] == error, case


class ClientCredentialsMetadata(AuthorizationServerMetadata):
    """authlib's RFC 8414 validation, but an empty response_types_supported is accepted.

    RFC 8414 makes the member REQUIRED; a server with no authorization endpoint supports no
    response type, so `[]` is its honest value. authlib insists on a non-empty list."""

    def validate_response_types_supported(self) -> None:
        """A JSON array, possibly empty."""
        assert isinstance(self.get("response_types_supported"), list)


@pytest.mark.parametrize("store_config", [{}], ids=["memory"])  # nothing here touches a store
async def test_authlib_discovers_fetches_and_revokes_over_https(
    emulator: Emulator, store_config: dict[str, Any], tmp_path: Path
) -> None:
    """For both issuers: authlib's well-known URL, a document that validates and names its
    issuer, the token from its token_endpoint, and a revocation at its revocation_endpoint."""
    pki = new_pki(tmp_path)
    config = mtls_config(emulator, pki, required=False)
    config["clients"]["checkout"]["min_forced_refresh_interval_seconds"] = 1  # two revocations
    async with serve_broker(config, with_ops=False) as running:
        base = running.url
        for round_, issuer in enumerate((base, f"{base}/oauth2/checkout")):
            if round_:
                await asyncio.sleep(1.1)  # past the forced-refresh floor of the first revocation
            async with pki.http(base) as http:
                cached = await cached_token(http)
                response = await http.get(get_well_known_url(issuer, external=True))
            document = ClientCredentialsMetadata(response.json())
            document.validate()
            assert document["issuer"] == issuer  # RFC 8414 §3.3
            # mTLS is configured and callers list identities: the PKI method is offered too
            assert document["token_endpoint_auth_methods_supported"] == [
                *SECRET_METHODS,
                "tls_client_auth",
            ]
            async with AsyncOAuth2Client(
                "orders", ORDERS_KEY, verify=client_context(pki.server_ca)
            ) as oauth:
                token = await oauth.fetch_token(
                    document["token_endpoint"], grant_type="client_credentials"
                )
                revoked = await oauth.revoke_token(document["revocation_endpoint"])
            assert token["access_token"] == cached
            assert revoked.status_code == 200
    assert (await emulator.stats())["token_requests"] == 2  # the second issuer's after a revocation
