"""The SDK's HTTP calls to the broker: `GET /token`, `POST /token/invalidate`, `/budget/acquire`.

Token calls use one sync `httpx.Client` (thread-safe, keeps its connection to the broker); async
callers reach it from a worker thread (see `_cache.py`). An async permit request uses a
short-lived `httpx.AsyncClient` on the caller's loop, so cancelling the waiting task closes its
connection rather than leaving a thread blocked; permits are few (the budget is about 50 a minute
for the whole fleet), so the extra connection costs nothing that matters.
The TLS context is built once and shared by every client.
"""

from __future__ import annotations

import os
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import httpx

from token_broker_client._cache import CachedToken, fresh_for
from token_broker_client.errors import BrokerError, BrokerUnavailable, from_answer

try:
    __version__ = version("paysera-token-broker-client")
except PackageNotFoundError:  # a source tree that was not installed
    __version__ = "0.0.0+unknown"

StrPath = str | os.PathLike[str]
CertSpec = StrPath | tuple[StrPath, StrPath]  # one PEM with key and certificate, or (cert, key)
VerifySpec = bool | StrPath | ssl.SSLContext
PERMIT_TIMEOUT_SLACK = 10.0  # seconds beyond the wait before a permit request gives up


@dataclass(frozen=True)
class Permit:
    """One upstream call's permit, with the fleet budget's figures as the broker reported them."""

    limit: int
    remaining: int
    reset: int  # whole seconds until the oldest grant leaves the window


def ssl_context(verify: VerifySpec, cert: CertSpec | None) -> ssl.SSLContext:
    """The TLS context for the broker: `verify` (CA file/dir, True, False or a context) + `cert`."""
    if isinstance(verify, ssl.SSLContext):
        if cert is not None:
            raise ValueError("pass cert= or an SSLContext as verify=, not both: load the chain")
        return verify
    if verify is True:
        context = httpx.create_ssl_context(verify=True)  # httpx's default trust (certifi)
    elif verify is False:
        context = httpx.create_ssl_context(verify=False)
    elif os.path.isdir(verify):
        context = ssl.create_default_context(capath=verify)
    else:
        context = ssl.create_default_context(cafile=verify)
    if cert is not None:
        if isinstance(cert, tuple):
            context.load_cert_chain(cert[0], cert[1])
        else:
            context.load_cert_chain(cert)
    return context


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


class BrokerConnection:
    """Where the broker is and how this caller proves who it is."""

    def __init__(
        self,
        broker_url: str,
        *,
        client: str | None,
        api_key: str | None,
        cert: CertSpec | None,
        verify: VerifySpec,
        timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        url = httpx.URL(broker_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("broker_url must be an absolute http:// or https:// URL")
        self.base_url = str(url).rstrip("/")
        self.client = client
        self.timeout = timeout
        self._clock = clock
        self._headers = {
            "Accept": "application/json",
            "User-Agent": f"paysera-token-broker-client/{__version__}",
        }
        if api_key is not None:
            self._headers["X-API-Key"] = api_key
        # Built now, not at first use: a missing CA or key file is a start-up error.
        self._tls = (
            ssl_context(verify, cert)
            if url.scheme == "https"
            else ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        )
        self._lock = threading.Lock()
        self._http: httpx.Client | None = None

    def _sync(self) -> httpx.Client:
        with self._lock:
            if self._http is None:
                self._http = httpx.Client(
                    base_url=self.base_url,
                    headers=self._headers,
                    verify=self._tls,
                    timeout=self.timeout,
                    trust_env=False,
                )
            return self._http

    def _async(self, timeout: float) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.base_url,
            headers=self._headers,
            verify=self._tls,
            timeout=timeout,
            trust_env=False,
        )

    def close(self) -> None:
        """Close the sync client's connections."""
        with self._lock:
            http, self._http = self._http, None
        if http is not None:
            http.close()

    # -- tokens -----------------------------------------------------------------------------------

    def fetch(self, rejected: str | None) -> CachedToken:
        """`GET /token`, or `POST /token/invalidate` when reporting `rejected`."""
        sent_at = self._clock()
        params = {"client": self.client} if self.client else {}
        try:
            if rejected is None:
                response = self._sync().get("/token", params=params)
            else:
                body = {"client": self.client, "access_token": rejected}
                response = self._sync().post("/token/invalidate", json=body)
        except httpx.TransportError as exc:
            raise unreachable(exc, self.client) from None
        return self._token(response, sent_at)

    def _token(self, response: httpx.Response, sent_at: float) -> CachedToken:
        body = _json(response)
        if response.status_code != 200:
            raise from_answer(response.status_code, response.headers, body, self.client)
        if not isinstance(body, dict):
            raise BrokerUnavailable("the broker's token answer is not JSON", client=self.client)
        token, expires_in = body.get("access_token"), body.get("expires_in")
        if not (isinstance(token, str) and token and type(expires_in) is int and expires_in >= 0):
            raise BrokerUnavailable("the broker's token answer is incomplete", client=self.client)
        return CachedToken(token, expires_in, sent_at + fresh_for(expires_in))

    # -- permits ----------------------------------------------------------------------------------

    def _permit_params(self, client: str | None, wait: float) -> dict[str, str]:
        params = {"wait": repr(float(wait))}
        if client or self.client:
            params["client"] = client or self.client or ""
        return params

    def acquire(self, client: str | None, wait: float) -> Permit:
        """`POST /budget/acquire`: one permit, waiting up to `wait` seconds (blocking)."""
        params = self._permit_params(client, wait)
        try:
            response = self._sync().post(
                "/budget/acquire", params=params, timeout=wait + PERMIT_TIMEOUT_SLACK
            )
        except httpx.TransportError as exc:
            raise unreachable(exc, client or self.client) from None
        return self._permit(response, client)

    async def aacquire(self, client: str | None, wait: float) -> Permit:
        """`POST /budget/acquire` from async code; cancelling it closes the connection."""
        params = self._permit_params(client, wait)
        try:
            async with self._async(wait + PERMIT_TIMEOUT_SLACK) as http:
                response = await http.post("/budget/acquire", params=params)
        except httpx.TransportError as exc:
            raise unreachable(exc, client or self.client) from None
        return self._permit(response, client)

    def _permit(self, response: httpx.Response, client: str | None) -> Permit:
        body = _json(response)
        if response.status_code != 200:
            raise from_answer(response.status_code, response.headers, body, client or self.client)
        try:
            return Permit(int(body["limit"]), int(body["remaining"]), int(body["reset"]))
        except (TypeError, KeyError, ValueError):
            raise BrokerUnavailable(
                "the broker's permit answer is incomplete", client=client or self.client
            ) from None


def unreachable(exc: httpx.TransportError, client: str | None) -> BrokerError:
    """The broker could not be asked; the exception's type says why (never its URL or headers)."""
    return BrokerUnavailable(
        f"the broker could not be reached: {type(exc).__name__}", client=client
    )
