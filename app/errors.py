"""The broker's one exception tree.

Context travels as attributes (``client``, ``retry_after``), never inside a message that could
carry a token or secret. The API maps each class to an HTTP status and error code in exactly one
place (``app/api/errors.py``).

    BrokerError
    ├── ConfigError                        bad configuration: every problem with its key path
    ├── AuthError
    │   ├── Unauthorized                   401 unauthorized: no, unknown or conflicting credentials
    │   ├── Forbidden                      403 forbidden: caller may not use this client
    │   └── MalformedXfcc                  bad X-Forwarded-Client-Cert: counts as no certificate
    ├── RequestError
    │   ├── UnknownClient                  404 unknown_client
    │   ├── ClientRequired                 400 client_required
    │   ├── InvalidRequest                 400 invalid_request
    │   ├── RequestTooLarge                413 request_too_large
    │   ├── ClientDisconnected             499 client_closed_request: the caller left mid-wait
    │   └── RequestRefused                 414/431/400 answered by the HTTP protocol (app/transport)
    ├── UpstreamError
    │   ├── UpstreamCredentialsRejected    502 upstream_invalid_client
    │   ├── UpstreamUnavailable            503 upstream_unavailable + Retry-After
    │   └── UpstreamTimeout                504 upstream_timeout (proxied calls)
    ├── RefreshThrottled                   429 refresh_throttled + Retry-After
    ├── BudgetExhausted                    429 budget_exhausted + Retry-After
    ├── StoreUnavailable                   503 store_unavailable + Retry-After
    └── OAuthError                         an RFC 6749 §5.2 answer of the OAuth endpoints, which
                                           carries its own status and error code (`app.api.oauth`
                                           translates the classes above into it)
"""

from __future__ import annotations

import math


class BrokerError(Exception):
    """Base of every error the broker raises on purpose."""

    def __init__(self, message: str, *, client: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.client = client


class ConfigError(BrokerError):
    """The configuration is invalid; `problems` lists (key path, message) pairs."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        lines = "\n".join(f"  {path}: {msg}" if path else f"  {msg}" for path, msg in problems)
        super().__init__(f"invalid configuration:\n{lines}")


class AuthError(BrokerError):
    """The caller could not be authenticated or authorised."""


class Unauthorized(AuthError):
    """No credentials, unknown credentials, or credentials naming different callers."""


class Forbidden(AuthError):
    """The caller is authenticated but not allowed the requested client."""


class RequestError(BrokerError):
    """The request itself is wrong."""


class UnknownClient(RequestError):
    """The named upstream client is not configured."""


class ClientRequired(RequestError):
    """The caller may use several clients and named none."""


class InvalidRequest(RequestError):
    """A parameter or body is missing or malformed."""


class RetryableError(BrokerError):
    """An error the caller may retry after `retry_after` seconds."""

    def __init__(
        self, message: str, *, client: str | None = None, retry_after: float = 1.0
    ) -> None:
        super().__init__(message, client=client)
        self.retry_after = retry_after

    @property
    def retry_after_header(self) -> str:
        """`retry_after` as whole seconds for a Retry-After header (1 s to a day)."""
        seconds = self.retry_after if math.isfinite(self.retry_after) else 1.0
        return str(min(86400, max(1, math.ceil(seconds))))


class RequestTooLarge(RequestError):
    """A proxied request body is larger than `proxy.max_body_bytes`."""


class ClientDisconnected(RequestError):
    """The caller disconnected while its request waited; the answer reaches nobody."""


class UpstreamError(BrokerError):
    """The upstream token endpoint did not give us a token."""


class UpstreamCredentialsRejected(UpstreamError):
    """The upstream rejected the client's credentials (invalid_client or another 4xx)."""


class UpstreamUnavailable(UpstreamError, RetryableError):
    """The upstream failed: 5xx, timeout, connection error or an unusable answer."""


class UpstreamTimeout(UpstreamError):
    """A proxied upstream call did not answer in time."""


class RefreshThrottled(RetryableError):
    """A forced refresh came sooner than `min_forced_refresh_interval_seconds` after the last."""


class BudgetExhausted(RetryableError):
    """No budget permit became free within the caller's wait."""

    def __init__(
        self, message: str, *, client: str | None = None, retry_after: float, limit: int
    ) -> None:
        super().__init__(message, client=client, retry_after=retry_after)
        self.limit = limit


class StoreUnavailable(RetryableError):
    """The shared store (Redis) did not answer."""


class MalformedXfcc(AuthError):
    """An X-Forwarded-Client-Cert header that breaks the grammar; it counts as no certificate."""


class RequestRefused(RequestError):
    """A request head refused inside uvicorn's parser callbacks, before the app sees it."""


class OAuthError(BrokerError):
    """An RFC 6749 §5.2 error of the OAuth endpoints: their codes are not the contract's, so it
    carries its status, code and extra headers (`app.api.oauth` raises it)."""

    def __init__(
        self, status: int, error: str, description: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(description)
        self.status, self.error = status, error
        self.headers = dict(headers or {})
