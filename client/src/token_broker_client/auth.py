"""`BrokerAuth`: the broker's cached token as auth for httpx (sync and async) and requests.

    auth = BrokerAuth("https://token-broker:8080", client="checkout", api_key=KEY, verify=CA)
    httpx.Client(auth=auth).get(...)            # or httpx.AsyncClient(auth=auth)
    requests.get(..., auth=auth)

Each request carries `Authorization: Bearer <token>`. When Paysera answers 401, the token is
reported to the broker (`POST /token/invalidate`, one request however many callers saw it) and
the request is sent once more with the token the broker answers; a second 401 is returned as it
came. One `BrokerAuth` per process and client is the intended use: it is safe to share between
threads, asyncio tasks and event loops.
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
from collections.abc import AsyncGenerator, Callable, Generator
from types import TracebackType
from typing import TYPE_CHECKING, Any

import httpx

from token_broker_client._broker import BrokerConnection, CertSpec, Permit, VerifySpec
from token_broker_client._cache import TokenCache

if TYPE_CHECKING:  # requests is optional: never imported at run time
    import requests

log = logging.getLogger("token_broker_client")


def fingerprint(token: str) -> str:
    """A token as logs may show it: the first 12 hex digits of its SHA-256."""
    return hashlib.sha256(token.encode()).hexdigest()[:12]


def _bearer(token: str) -> str:
    return f"Bearer {token}"


class BrokerAuth(httpx.Auth):
    """Authorise httpx or requests calls with the broker's token for one client."""

    # httpx reads the request body before the first send, so the retry after a 401 can resend
    # it (a streamed upload could be sent only once).
    requires_request_body = True

    def __init__(
        self,
        broker_url: str,
        *,
        client: str | None = None,
        api_key: str | None = None,
        cert: CertSpec | None = None,
        verify: VerifySpec = True,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`client` may be left out if the caller may use only one. Authenticate with `api_key`,
        a client certificate `cert` (one PEM file or (cert, key)), both, or neither (a service
        mesh's sidecar presents the identity). `verify` is the CA file that signed the broker's
        certificate (or True for the default trust, or an `ssl.SSLContext`). `timeout` bounds
        each token request to the broker; `clock` (monotonic seconds) is for tests."""
        self.broker = BrokerConnection(
            broker_url,
            client=client,
            api_key=api_key,
            cert=cert,
            verify=verify,
            timeout=timeout,
            clock=clock,
        )
        self._tokens = TokenCache(self.broker.fetch, clock)

    def __repr__(self) -> str:
        return f"BrokerAuth({self.broker.base_url!r}, client={self.broker.client!r})"

    # -- the token --------------------------------------------------------------------------------

    def token(self) -> str:
        """The cached token, fetched from the broker when there is none fresh (blocking)."""
        return self._tokens.get()

    async def atoken(self) -> str:
        """The cached token, fetched from the broker when there is none fresh."""
        return await self._tokens.aget()

    def invalidate(self, rejected: str) -> str:
        """Report a token Paysera rejected; the next token (blocking). Raises RefreshThrottled
        when the broker force-refreshed this client too recently."""
        self._log_rejected(rejected)
        return self._tokens.get(rejected)

    async def ainvalidate(self, rejected: str) -> str:
        """Report a token Paysera rejected; the next token."""
        self._log_rejected(rejected)
        return await self._tokens.aget(rejected)

    def _log_rejected(self, rejected: str) -> None:
        log.info(
            "token_broker_client.token_rejected client=%s token_fp=%s",
            self.broker.client,
            fingerprint(rejected),
        )

    # -- httpx -------------------------------------------------------------------------------------

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response]:
        """httpx (sync): send with the token; on 401 report it and send once more."""
        request.read()
        token = self.token()
        request.headers["Authorization"] = _bearer(token)
        response = yield request
        if response.status_code == 401:
            request.headers["Authorization"] = _bearer(self.invalidate(token))
            yield request

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        """httpx (async): send with the token; on 401 report it and send once more."""
        await request.aread()
        token = await self.atoken()
        request.headers["Authorization"] = _bearer(token)
        response = yield request
        if response.status_code == 401:
            request.headers["Authorization"] = _bearer(await self.ainvalidate(token))
            yield request

    # -- requests ----------------------------------------------------------------------------------

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        """requests: the `auth=` protocol (what `requests.auth.AuthBase` subclasses implement)."""
        request.headers["Authorization"] = _bearer(self.token())
        body: object = request.body  # typed bytes | str | None; a file object in fact may be
        position = body.tell() if isinstance(body, io.IOBase) and body.seekable() else None
        request.hooks["response"].append(_RequestsRetry(self, position))
        return request

    # -- permits -----------------------------------------------------------------------------------

    def permit(self, client: str | None = None, *, wait: float = 0.0) -> PermitRequest:
        """`with auth.permit(wait=10) as permit:` (or `async with`): one upstream call's permit
        from the fleet budget, waiting up to `wait` seconds; BudgetExhausted if none came."""
        if not wait >= 0:
            raise ValueError("wait must be a number of seconds >= 0")
        return PermitRequest(self.broker, client, wait)

    # -- lifetime ----------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection to the broker (the cached token is kept)."""
        self.broker.close()

    def __enter__(self) -> BrokerAuth:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> BrokerAuth:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class _RequestsRetry:
    """A requests response hook: on 401, report the token and resend the request once."""

    def __init__(self, auth: BrokerAuth, body_position: int | None) -> None:
        self.auth = auth
        self.body_position = body_position

    def __call__(self, response: requests.Response, **send_kwargs: Any) -> requests.Response:
        if response.status_code != 401:
            return response
        sent = str(response.request.headers.get("Authorization", ""))
        if not sent.startswith("Bearer "):
            return response
        token = self.auth.invalidate(sent.removeprefix("Bearer "))
        retry = response.request.copy()
        retry.headers["Authorization"] = _bearer(token)
        seek = getattr(retry.body, "seek", None)  # a file body: rewind it for the resend
        if self.body_position is not None and callable(seek):
            seek(self.body_position)
        # As requests' own HTTPDigestAuth does: release the first connection, send the copy on
        # the same adapter. Hooks run only for the first response, so there is no second retry.
        response.content  # noqa: B018 - read the body so the connection can be released
        response.close()
        again: requests.Response = response.connection.send(retry, **send_kwargs)
        again.history.append(response)
        again.request = retry
        return again


class PermitRequest:
    """`with` / `async with`: waits for a budget permit on entry; nothing to give back on exit."""

    def __init__(self, broker: BrokerConnection, client: str | None, wait: float) -> None:
        self._broker, self._client, self._wait = broker, client, wait

    def __enter__(self) -> Permit:
        return self._broker.acquire(self._client, self._wait)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    async def __aenter__(self) -> Permit:
        return await self._broker.aacquire(self._client, self._wait)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None
