"""The verified TLS client certificate: from uvicorn's connection to the ASGI scope to identities.

No released ASGI server hands the client certificate to the app. `ClientCertProtocol` is
uvicorn's httptools protocol with one addition: once the handshake is done it reads the peer
certificate from the connection's `ssl_object` and puts the ASGI TLS extension
(`scope["extensions"]["tls"]`) into the scope of every request on that connection. This reaches
into uvicorn's protocol internals (`connection_made`, `self.app`), so uvicorn is pinned; the mTLS
tests fail if the extension stops appearing.

Besides the extension's standard keys the broker adds `peer_cert`: Python's decoded form of the
certificate (`ssl.SSLObject.getpeercert()`), so identities need no X.509 parser at run time.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

PEER_CERT = "peer_cert"  # our addition to the ASGI TLS extension
_TLS_VERSIONS = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}
# Short names RFC 4514 section 3 knows; others are written as Python names them.
_RDN_NAMES = {
    "commonName": "CN",
    "localityName": "L",
    "stateOrProvinceName": "ST",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "streetAddress": "STREET",
    "domainComponent": "DC",
    "userId": "UID",
}
_RDN_SPECIAL = frozenset('\\,+"<>;=')

PeerCert = Mapping[str, Any]  # the shape of ssl.SSLObject.getpeercert()


def certificate_identities(peer_cert: PeerCert) -> list[str]:
    """`CN=...` for each common name, `URI:...` and `DNS:...` for each such SAN."""
    found = [
        f"CN={value}"
        for rdn in peer_cert.get("subject", ())
        for name, value in rdn
        if name == "commonName"
    ]
    for kind, value in peer_cert.get("subjectAltName", ()):
        if kind in ("URI", "DNS"):
            found.append(f"{kind}:{value}")
    return found


def subject_name(peer_cert: PeerCert) -> str | None:
    """The subject as an RFC 4514 string (most specific attribute first), None if it has none."""
    rdns = [
        "+".join(f"{_RDN_NAMES.get(name, name)}={_escape(value)}" for name, value in rdn)
        for rdn in reversed(peer_cert.get("subject", ()))
    ]
    return ",".join(rdns) or None


def _escape(value: str) -> str:
    escaped = "".join(f"\\{char}" if char in _RDN_SPECIAL else char for char in value)
    if escaped.startswith((" ", "#")):
        escaped = "\\" + escaped
    return escaped[:-1] + "\\ " if escaped.endswith(" ") else escaped


def tls_extension(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> dict[str, Any]:
    """The ASGI TLS extension for a finished handshake (spec keys plus `peer_cert`)."""
    peer_cert = ssl_object.getpeercert() or {}  # {} when no certificate was asked for or sent
    der = ssl_object.getpeercert(binary_form=True) if peer_cert else None
    return {
        "server_cert": None,  # the spec allows None; nothing here needs it
        "client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)] if der else [],
        "client_cert_name": subject_name(peer_cert) if peer_cert else None,
        "client_cert_error": None,  # a certificate that failed verification ends the handshake
        "tls_version": _TLS_VERSIONS.get(ssl_object.version() or ""),
        "cipher_suite": None,  # Python exposes the suite's name only, not its number
        PEER_CERT: peer_cert or None,
    }


def scope_identities(scope: Mapping[str, Any]) -> list[str] | None:
    """Identities of the request's verified client certificate; None when it presented none."""
    tls = (scope.get("extensions") or {}).get("tls") or {}
    peer_cert = tls.get(PEER_CERT)
    return certificate_identities(peer_cert) if peer_cert else None


def with_tls_extension(app: ASGIApp, tls: dict[str, Any]) -> ASGIApp:
    """`app`, with `tls` as the TLS extension of every HTTP request's scope."""

    async def app_with_tls(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            extensions: dict[str, Any] = dict(scope.get("extensions") or {})
            extensions["tls"] = tls
            scope["extensions"] = extensions
        await app(scope, receive, send)

    return app_with_tls


class ClientCertProtocol(HttpToolsProtocol):
    """uvicorn's httptools HTTP protocol that adds the ASGI TLS extension to each request."""

    def connection_made(  # type: ignore[override]  # uvicorn's own signature
        self, transport: asyncio.Transport
    ) -> None:
        """Read the finished handshake once per connection; wrap the app for its requests."""
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        if isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket):
            self.app = with_tls_extension(self.app, tls_extension(ssl_object))
