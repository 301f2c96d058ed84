"""Authenticate callers and authorise them for upstream clients.

API keys are stored only as SHA-256 hashes and compared in constant time. Certificate identities
(`CN=...`, `URI:...`, `DNS:...`) come from a verified TLS peer or a trusted proxy's
X-Forwarded-Client-Cert. Every credential presented must be valid and all must name the same
caller: a wrong key beside a good certificate, or two credentials naming different callers, is
refused rather than resolved.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from app.config import CallerSettings
from app.errors import ClientRequired, Forbidden, Unauthorized, UnknownClient


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated internal caller and the clients it may use."""

    name: str
    clients: frozenset[str]
    default_client: str | None  # set when the caller may use exactly one client


def hash_api_key(api_key: str) -> str:
    """The `api_key_sha256` value for a key."""
    return hashlib.sha256(api_key.encode()).hexdigest()


def new_api_key() -> str:
    """A fresh random API key (256 bits, URL-safe)."""
    return "tbk_" + secrets.token_urlsafe(32)


class CallerAuthenticator:
    """Maps presented credentials to exactly one configured caller."""

    def __init__(self, callers: Mapping[str, CallerSettings], known_clients: Iterable[str]) -> None:
        self._known_clients = frozenset(known_clients)
        self._callers = {
            name: Caller(
                name,
                frozenset(spec.clients),
                spec.clients[0] if len(set(spec.clients)) == 1 else None,
            )
            for name, spec in callers.items()
        }
        self._key_hashes = [
            (bytes.fromhex(spec.api_key_sha256), name)
            for name, spec in callers.items()
            if spec.api_key_sha256 is not None
        ]
        self._identities = {
            identity: name for name, spec in callers.items() for identity in spec.mtls_identities
        }

    def caller(self, name: str) -> Caller | None:
        """The configured caller called `name`, if any."""
        return self._callers.get(name)

    def by_api_key(self, api_key: str) -> Caller | None:
        """The caller whose key hash matches, comparing against every hash in constant time."""
        presented = hashlib.sha256(api_key.encode()).digest()
        found = None
        for stored, name in self._key_hashes:  # no early exit: timing says nothing
            if hmac.compare_digest(stored, presented):
                found = name
        return self._callers[found] if found is not None else None

    def by_identities(self, identities: Iterable[str]) -> Caller | None:
        """The caller that lists any of the certificate's identities; None if none or several."""
        names = {self._identities[i] for i in identities if i in self._identities}
        return self._callers[names.pop()] if len(names) == 1 else None

    def authenticate(self, *, api_key: str | None, identities: Iterable[str] | None) -> Caller:
        """The one caller all presented credentials name; Unauthorized otherwise."""
        by_key = by_cert = None
        if api_key is not None:
            by_key = self.by_api_key(api_key)
            if by_key is None:
                raise Unauthorized("unknown API key")
        identities = list(identities or ())
        if identities:  # a certificate that carries no identity cannot name anyone: ignored
            by_cert = self.by_identities(identities)
            if by_cert is None:
                raise Unauthorized("the client certificate matches no caller")
        if by_key is not None and by_cert is not None and by_key.name != by_cert.name:
            raise Unauthorized("the API key and the certificate name different callers")
        caller = by_key or by_cert
        if caller is None:
            raise Unauthorized("credentials required: X-API-Key or a client certificate")
        return caller

    def authorize(self, caller: Caller, client: str | None) -> str:
        """The client this request is for, if `caller` may use it."""
        if client is None or client == "":
            if caller.default_client is None:
                raise ClientRequired(
                    f"caller {caller.name!r} may use several clients; name one with ?client="
                )
            return caller.default_client
        if client not in self._known_clients:
            shown = client if len(client) <= 64 else f"{client[:64]}..."  # echo a bounded name
            raise UnknownClient(f"unknown client {shown!r}", client=client)
        if client not in caller.clients:
            raise Forbidden(f"caller {caller.name!r} may not use client {client!r}", client=client)
        return client
