"""The OAuth2 client-credentials client for the upstream token endpoint.

One `httpx.AsyncClient` per process, explicit timeouts. Every outcome becomes a `Token` or one of
`UpstreamCredentialsRejected` / `UpstreamUnavailable`; no httpx exception leaves this module, and
no message carries a secret, a token or a response body.
"""

from __future__ import annotations

import base64
import logging
import math
import re
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any
from urllib.parse import quote_plus

import httpx

from app.clock import SYSTEM_CLOCK, Clock
from app.config import ClientSettings
from app.errors import UpstreamCredentialsRejected, UpstreamTimeout, UpstreamUnavailable
from app.observability.logs import log_event
from app.tokens.model import Token, is_b64token
from app.upstream.credentials import ClientCredentials, Credentials
from app.upstream.failures import translate

log = logging.getLogger(__name__)

MAX_PLAUSIBLE_LIFETIME = 7 * 24 * 3600.0
"""An `expires_in` above this is treated as garbage rather than trusted (the upstream says 3600)."""

MAX_RETRY_AFTER = 300.0
"""A longer (or infinite) Retry-After would hold the fleet off the upstream for that long."""

_ERROR_CODE = re.compile(r"^[a-z_]{1,40}$")


class UpstreamTokenClient:
    """Obtains tokens for the configured clients with the client-credentials grant."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        clients: Mapping[str, ClientSettings],
        *,
        clock: Clock = SYSTEM_CLOCK,
        credentials: ClientCredentials | None = None,
    ) -> None:
        """`credentials` (reloaded secrets, fingerprints) defaults to the settings' secrets."""
        self._http = http
        self._clients = dict(clients)
        self._credentials = credentials or ClientCredentials(clients)
        self._clock = clock

    async def fetch(self, client: str) -> Token:
        """Request a new token for `client` from the upstream, tagged with the credentials
        that obtained it."""
        spec = self._clients[client]
        credentials = self._credentials.get(client)
        sent_at = self._clock.time()
        started = time.perf_counter()
        try:
            response = await self._send(spec, credentials)
        except httpx.HTTPError as exc:
            failure = translate(exc, "the upstream token endpoint", client)
            reason = "timeout" if isinstance(failure, UpstreamTimeout) else "connection_error"
            raise self._unavailable(client, started, reason) from exc
        token = self._parse(client, response, sent_at, started)
        token = replace(token, minted_by=credentials.fingerprint)
        log_event(
            log,
            logging.INFO,
            "upstream.token_obtained",
            client=client,
            token_fp=token.fingerprint,
            expires_in=round(token.lifetime),
            latency_ms=_ms(started),
        )
        return token

    async def _send(self, spec: ClientSettings, credentials: Credentials) -> httpx.Response:
        form = {"grant_type": "client_credentials"}
        headers = {"Accept": "application/json"}
        client_id, secret = credentials.client_id, credentials.secret.get_secret_value()
        if spec.client_auth == "basic":
            # RFC 6749 §2.3.1: form-urlencode id and secret before Basic encoding.
            pair = f"{quote_plus(client_id)}:{quote_plus(secret)}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
        else:
            form |= {"client_id": client_id, "client_secret": secret}
        return await self._http.post(
            spec.token_url, data=form, headers=headers, timeout=spec.timeout_seconds
        )

    def _parse(
        self, client: str, response: httpx.Response, sent_at: float, started: float
    ) -> Token:
        status = response.status_code
        if status == 429 or status >= 500:
            raise self._unavailable(
                client, started, f"http_{status}", retry_after_seconds(response)
            )
        if status >= 400:
            code = _error_code(response)
            log_event(
                log,
                logging.ERROR,
                "upstream.credentials_rejected",
                client=client,
                status=status,
                error=code,
                latency_ms=_ms(started),
            )
            raise UpstreamCredentialsRejected(
                f"the upstream rejected the credentials of client {client!r} "
                f"(HTTP {status}, {code})",
                client=client,
            )
        if status != 200:
            raise self._unavailable(client, started, f"http_{status}")
        try:
            return _token_from(response.json(), sent_at)
        except ValueError as exc:
            raise self._unavailable(client, started, f"bad_response: {exc}") from None

    def _unavailable(
        self, client: str, started: float, reason: str, retry_after: float = 1.0
    ) -> UpstreamUnavailable:
        log_event(
            log,
            logging.WARNING,
            "upstream.unavailable",
            client=client,
            reason=reason,
            latency_ms=_ms(started),
        )
        return UpstreamUnavailable(
            f"the upstream token endpoint failed for client {client!r}: {reason}",
            client=client,
            retry_after=retry_after,
        )


def _token_from(body: Any, sent_at: float) -> Token:
    """Validate the upstream's JSON; raises ValueError with a reason that names no value."""
    if not isinstance(body, dict):
        raise ValueError("not a JSON object")
    access_token = body.get("access_token")
    if not isinstance(access_token, str) or not access_token:
        raise ValueError("no access_token")
    if not is_b64token(access_token):  # e.g. a control character: not even a header value
        raise ValueError("access_token is not an RFC 6750 bearer token")
    token_type = body.get("token_type", "Bearer")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise ValueError("token_type is not Bearer")
    expires_in = body.get("expires_in")
    if isinstance(expires_in, bool) or not isinstance(expires_in, int | float):
        raise ValueError("no numeric expires_in")
    if not 0 < expires_in <= MAX_PLAUSIBLE_LIFETIME or math.isnan(expires_in):
        raise ValueError("implausible expires_in")
    return Token(access_token, expires_at=sent_at + expires_in, obtained_at=sent_at)


def _error_code(response: httpx.Response) -> str:
    try:
        code = response.json().get("error")
    except (ValueError, AttributeError):
        return "unknown"
    return code if isinstance(code, str) and _ERROR_CODE.match(code) else "unknown"


def retry_after_seconds(response: httpx.Response) -> float:
    """The upstream's Retry-After in seconds, within 1 s..MAX_RETRY_AFTER (1 s if unusable)."""
    try:
        seconds = float(response.headers.get("Retry-After", "1"))
    except ValueError:
        return 1.0
    return min(max(1.0, seconds), MAX_RETRY_AFTER) if math.isfinite(seconds) else 1.0


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)
