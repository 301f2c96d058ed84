"""RFC 8414 authorization server metadata of the drop-in OAuth endpoints.

Each token endpoint is described as its own issuer, found by RFC 8414 §3's path insertion:

    GET /.well-known/oauth-authorization-server                  issuer = BASE
        token_endpoint      BASE/auth/realms/Paysera/protocol/openid-connect/token
        revocation_endpoint BASE/auth/realms/Paysera/protocol/openid-connect/revoke
    GET /.well-known/oauth-authorization-server/oauth2/{client}  issuer = BASE/oauth2/{client}
        token_endpoint      BASE/oauth2/{client}/token
        revocation_endpoint BASE/oauth2/{client}/revoke

BASE is `server.public_url`, or else the request's scheme and Host (what the caller used to get
here). `/.well-known/openid-configuration` is deliberately not served: the broker issues no ID
tokens and has no authorization, userinfo or JWKS endpoint, all of which OpenID Connect
Discovery requires; a client that discovers only that way (openid-client's default) is pointed
at RFC 8414 instead (`algorithm: "oauth2"`).
"""

from __future__ import annotations

import re

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from app.api.deps import ServicesDep
from app.api.oauth import PAYSERA_TOKEN_PATH
from app.api.oauth_revoke import PAYSERA_REVOKE_PATH
from app.config import ServerSettings
from app.errors import InvalidRequest
from app.services import Services

router = APIRouter(tags=["discovery"])

WELL_KNOWN = "/.well-known/oauth-authorization-server"
# A Host header the issuer may be built from: a name or an address, and a port. Anything else
# (userinfo, a path, spaces) would make the advertised endpoints point somewhere unintended.
_HOST = re.compile(
    r"^(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?$"
)
CACHE_HEADERS = {"Cache-Control": "no-store"}  # the document may depend on the request's Host


class AuthorizationServerMetadata(BaseModel):
    """RFC 8414 §2 metadata of one drop-in token endpoint."""

    issuer: str
    token_endpoint: str
    revocation_endpoint: str
    grant_types_supported: list[str] = Field(description='always ["client_credentials"]')
    token_endpoint_auth_methods_supported: list[str]
    revocation_endpoint_auth_methods_supported: list[str]
    response_types_supported: list[str] = Field(
        description="empty: there is no authorization endpoint, so no response type is supported"
    )


def auth_methods(services: Services) -> list[str]:
    """How callers can authenticate as OAuth clients with this configuration."""
    settings = services.settings
    callers = settings.callers.values()
    methods = []
    if any(caller.api_key_sha256 for caller in callers):
        methods += ["client_secret_basic", "client_secret_post"]
    if any(caller.mtls_identities for caller in callers) and certificates_reach_us(settings.server):
        methods.append("tls_client_auth")  # RFC 8705 §2.1: the PKI method, client_id alone
    return methods


def certificates_reach_us(server: ServerSettings) -> bool:
    """Whether a client certificate can identify a caller: mTLS here, or a trusted mesh proxy."""
    return server.tls_client_ca_file is not None or bool(server.xfcc_trusted_proxies)


def base_url(request: Request, services: Services) -> str:
    """`server.public_url`, else the scheme and Host this request came with."""
    configured = services.settings.server.public_url
    if configured is not None:
        return configured
    host = request.headers.get("host", "")
    if not _HOST.match(host):
        raise InvalidRequest("a Host header naming the broker is needed to describe it")
    return f"{request.url.scheme}://{host}"


def metadata(
    request: Request, services: Services, issuer_path: str, token_path: str, revoke_path: str
) -> JSONResponse:
    """The metadata document of the token endpoint at `token_path`."""
    base = base_url(request, services)
    methods = auth_methods(services)
    document = AuthorizationServerMetadata(
        issuer=base + issuer_path,
        token_endpoint=base + token_path,
        revocation_endpoint=base + revoke_path,
        grant_types_supported=["client_credentials"],
        token_endpoint_auth_methods_supported=methods,
        revocation_endpoint_auth_methods_supported=methods,
        response_types_supported=[],
    )
    return JSONResponse(document.model_dump(), headers=CACHE_HEADERS)


@router.get(WELL_KNOWN, response_model=AuthorizationServerMetadata)
async def paysera_path_metadata(request: Request, services: ServicesDep) -> JSONResponse:
    """RFC 8414 metadata of the Paysera-path token endpoint (a caller's only client)."""
    return metadata(request, services, "", PAYSERA_TOKEN_PATH, PAYSERA_REVOKE_PATH)


@router.get(f"{WELL_KNOWN}/oauth2/{{client}}", response_model=AuthorizationServerMetadata)
async def client_metadata(request: Request, client: str, services: ServicesDep) -> JSONResponse:
    """RFC 8414 metadata of `/oauth2/{client}/token` (issuer `BASE/oauth2/{client}`)."""
    services.tokens.policy(client)  # UnknownClient (404) for a client that is not configured
    prefix = f"/oauth2/{client}"
    return metadata(request, services, prefix, f"{prefix}/token", f"{prefix}/revoke")
