"""Forward callers' Paysera API calls: bearer token, budget permit, one retry after a 401.

Every upstream call (the retry too) takes one permit from the fleet budget. On a 401 the token
that was used is invalidated with compare-and-delete, so many concurrent 401s cause one refresh,
and the call is retried once; a second 401 goes back to the caller as is. A 429 (or
`X-RateLimit-Remaining: 0`) puts the whole fleet into cooldown until the upstream's reset.

Request bodies are spooled (in memory up to 1 MiB, then to a temporary file) so that the retry
can resend them without holding a large body in memory; responses stream straight through.
"""

from __future__ import annotations

import logging
import re
import tempfile
from collections.abc import AsyncIterator, Iterable
from typing import IO
from urllib.parse import unquote

import httpx

from app.budget.model import ANONYMOUS
from app.budget.service import BudgetService
from app.config import ClientSettings, ProxySettings
from app.errors import (
    InvalidRequest,
    RefreshThrottled,
    RequestTooLarge,
    StoreUnavailable,
)
from app.observability.logs import log_event
from app.observability.metrics import PROXY_CALLS, status_class
from app.tokens.model import Token
from app.tokens.service import TokenService
from app.upstream.failures import translate

log = logging.getLogger(__name__)

SPOOL_IN_MEMORY_BYTES = 1024 * 1024
CHUNK_BYTES = 64 * 1024

# Never forwarded upstream: the caller's own credentials, hop-by-hop headers (RFC 9110 §7.6.1)
# and what our infrastructure adds about the caller.
_HOP_BY_HOP = frozenset(
    "connection keep-alive proxy-connection te trailer transfer-encoding upgrade".split()
)
_DROP_REQUEST = _HOP_BY_HOP | {
    "host",
    "x-api-key",
    "authorization",
    "cookie",
    "proxy-authorization",
    "content-length",
    "forwarded",
    "via",
    "x-real-ip",
    "x-forwarded-client-cert",
}
_DROP_RESPONSE = _HOP_BY_HOP | {"set-cookie", "date"}  # uvicorn sends its own Date
_SCHEME_LIKE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def checked_path(raw_path: str) -> str:
    """The path below `api_base_url`, as received (still percent-encoded), if it is safe.

    Refuses anything that could leave the base URL or be read differently upstream: dot
    segments (also percent-encoded), encoded slashes or backslashes, backslashes, `@`, empty
    segments, control characters and a scheme-like first segment (an absolute URL).
    """
    if not raw_path or raw_path.startswith("/"):
        raise InvalidRequest("the proxied path must be relative to the client's api_base_url")
    lowered = raw_path.lower()
    if "%2f" in lowered or "%5c" in lowered or "\\" in raw_path or "@" in raw_path:
        raise InvalidRequest("the proxied path contains an encoded slash, backslash or '@'")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in unquote(raw_path)):
        raise InvalidRequest("the proxied path contains control characters")
    segments = raw_path.split("/")
    if _SCHEME_LIKE.match(unquote(segments[0])):
        raise InvalidRequest("the proxied path must not be an absolute URL")
    for segment in segments[:-1] if segments[-1] == "" else segments:
        if unquote(segment) in ("", ".", ".."):
            raise InvalidRequest("the proxied path contains an empty or dot segment")
    return raw_path


def forwarded_request_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The caller's end-to-end headers, minus credentials, hop-by-hop and internal ones."""
    pairs = list(headers)
    named_in_connection = {
        token.strip().lower()
        for name, value in pairs
        if name.lower() == "connection"
        for token in value.split(",")
    }
    return [
        (name, value)
        for name, value in pairs
        if (lower := name.lower()) not in _DROP_REQUEST
        and lower not in named_in_connection
        and not lower.startswith("x-forwarded-")
    ]


def forwarded_response_headers(headers: httpx.Headers) -> list[tuple[str, str]]:
    """The upstream's end-to-end response headers (repeated ones kept)."""
    return [
        (name, value) for name, value in headers.multi_items() if name.lower() not in _DROP_RESPONSE
    ]


class SpooledBody:
    """A request body read once from the caller and replayable for the retry."""

    def __init__(self, file: IO[bytes], size: int) -> None:
        self._file = file
        self.size = size

    @classmethod
    async def read(cls, chunks: AsyncIterator[bytes], limit: int) -> SpooledBody:
        """Spool `chunks`; RequestTooLarge beyond `limit` bytes."""
        file = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY_BYTES)
        size = 0
        async for chunk in chunks:
            size += len(chunk)
            if size > limit:
                file.close()
                raise RequestTooLarge(f"the request body is larger than {limit} bytes")
            file.write(chunk)
        return cls(file, size)

    async def stream(self) -> AsyncIterator[bytes]:
        """The body from the start, in chunks."""
        self._file.seek(0)
        while chunk := self._file.read(CHUNK_BYTES):
            yield chunk

    def close(self) -> None:
        """Delete the spool."""
        self._file.close()


class UpstreamProxy:
    """Sends one caller request to the upstream API with the client's token and a permit."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        clients: dict[str, ClientSettings],
        settings: ProxySettings,
        tokens: TokenService,
        budget: BudgetService,
    ) -> None:
        self._http = http
        self._clients = clients
        self._settings = settings
        self._tokens = tokens
        self._budget = budget
        self._timeout = httpx.Timeout(
            settings.timeout_seconds, connect=settings.connect_timeout_seconds
        )

    async def forward(
        self,
        client: str,
        method: str,
        path: str,
        query: str,
        headers: list[tuple[str, str]],
        body: SpooledBody,
        *,
        caller: str = ANONYMOUS,
    ) -> httpx.Response:
        """The upstream's response, opened for streaming (the caller must close it); the permits
        count against `caller`'s fair share."""
        url = f"{self._clients[client].api_base_url.rstrip('/')}/{path}"
        if query:
            url = f"{url}?{query}"
        token = await self._tokens.get(client)
        response = await self._send(client, caller, method, url, headers, body, token)
        if response.status_code != 401:
            return response
        try:
            fresh = await self._tokens.invalidate(client, token.access_token)
        except RefreshThrottled:
            return response  # refreshed moments ago already: the 401 is the upstream's answer
        except BaseException:
            await response.aclose()  # no new token (e.g. upstream down): the error says why
            raise
        if fresh.access_token == token.access_token:
            return response
        await response.aclose()
        return await self._send(client, caller, method, url, headers, body, fresh)

    async def _send(
        self,
        client: str,
        caller: str,
        method: str,
        url: str,
        headers: list[tuple[str, str]],
        body: SpooledBody,
        token: Token,
    ) -> httpx.Response:
        await self._budget.acquire(client, self._settings.budget_wait_seconds, caller=caller)
        outgoing = [*headers, ("Authorization", f"Bearer {token.access_token}")]
        content = body.stream() if body.size else None
        if body.size:
            outgoing.append(("Content-Length", str(body.size)))
        request = self._http.build_request(
            method, url, headers=outgoing, content=content, timeout=self._timeout
        )
        try:
            response = await self._http.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise translate(exc, "the upstream API", client) from exc
        PROXY_CALLS.labels(client, status_class(response.status_code)).inc()
        try:
            await self._budget.report(response.status_code, response.headers)
        except StoreUnavailable as exc:
            # The call was made and answered: the caller gets the answer; the fleet misses one
            # report (a 429 also shows in the upstream's headers the caller receives).
            log_event(log, logging.WARNING, "proxy.report_failed", client=client, problem=str(exc))
        except BaseException:
            await response.aclose()
            raise
        return response
