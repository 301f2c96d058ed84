"""The SDK's exceptions: one class per error the broker answers (its contract's error codes).

    BrokerError                        status, error (the code), description, client
    ├── Unauthorized                   401 unauthorized: the broker refused the API key/certificate
    ├── Forbidden                      403 forbidden: this caller may not use the client
    ├── UnknownClient                  404 unknown_client
    ├── ClientRequired                 400 client_required: name a client, the caller has several
    ├── InvalidRequest                 400 invalid_request, and any other 4xx
    ├── UpstreamCredentialsRejected    502 upstream_invalid_client: Paysera refused the *broker's*
    │                                  credentials for the client
    └── RetryLater                     retry_after: seconds from Retry-After (None if not sent)
        ├── RefreshThrottled           429 refresh_throttled: a forced refresh came too soon
        ├── BudgetExhausted            429 budget_exhausted: no permit within the wait
        └── BrokerUnavailable          503 upstream_unavailable / store_unavailable, other 5xx,
                                       or the broker could not be reached at all

Messages hold the broker's `error_description` (which by contract never carries a token, secret
or key) and never anything the SDK was given: no token, no API key.
"""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Mapping

MAX_DESCRIPTION = 300  # a description is shown, never a whole body (a proxy's HTML page, say)


class BrokerError(Exception):
    """An error answer of the broker, or a failure to reach it."""

    def __init__(
        self,
        description: str,
        *,
        status: int | None = None,
        error: str | None = None,
        client: str | None = None,
    ) -> None:
        self.description = description
        self.status = status
        self.error = error
        self.client = client
        detail = ", ".join(
            part
            for part in (
                error,
                f"HTTP {status}" if status is not None else None,
                f"client {client!r}" if client else None,
            )
            if part
        )
        super().__init__(f"{description} ({detail})" if detail else description)


class Unauthorized(BrokerError):
    """401: the broker did not accept the credentials (no, unknown or conflicting ones)."""


class Forbidden(BrokerError):
    """403: the caller is authenticated but not allowed this client."""


class UnknownClient(BrokerError):
    """404: the broker has no such client."""


class ClientRequired(BrokerError):
    """400: the caller may use several clients and named none."""


class InvalidRequest(BrokerError):
    """400 or another 4xx: the broker refused the request itself."""


class UpstreamCredentialsRejected(BrokerError):
    """502: Paysera rejected the broker's credentials for the client; retrying will not help."""


class RetryLater(BrokerError):
    """An error that may pass: `retry_after` is the broker's Retry-After in seconds, or None."""

    def __init__(
        self,
        description: str,
        *,
        status: int | None = None,
        error: str | None = None,
        client: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(description, status=status, error=error, client=client)
        self.retry_after = retry_after


class RefreshThrottled(RetryLater):
    """429: the client's token was force-refreshed less than the broker's floor ago."""


class BudgetExhausted(RetryLater):
    """429: no budget permit within the wait; `limit` and `reset` as X-RateLimit-* said."""

    def __init__(
        self,
        description: str,
        *,
        status: int | None = None,
        error: str | None = None,
        client: str | None = None,
        retry_after: float | None = None,
        limit: int | None = None,
        reset: int | None = None,
    ) -> None:
        super().__init__(
            description, status=status, error=error, client=client, retry_after=retry_after
        )
        self.limit = limit
        self.reset = reset


class BrokerUnavailable(RetryLater):
    """503 (or another 5xx), or no answer at all: try again after `retry_after` seconds."""


BY_CODE: dict[str, type[BrokerError]] = {
    "unauthorized": Unauthorized,
    "forbidden": Forbidden,
    "unknown_client": UnknownClient,
    "client_required": ClientRequired,
    "invalid_request": InvalidRequest,
    "upstream_invalid_client": UpstreamCredentialsRejected,
    "refresh_throttled": RefreshThrottled,
    "budget_exhausted": BudgetExhausted,
    "upstream_unavailable": BrokerUnavailable,
    "store_unavailable": BrokerUnavailable,
    "upstream_timeout": BrokerUnavailable,
}
BY_STATUS: dict[int, type[BrokerError]] = {
    401: Unauthorized,
    403: Forbidden,
    404: UnknownClient,
    429: RetryLater,
}


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds: delta-seconds or an HTTP date; None if absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    seconds = when.timestamp() - (time.time() if now is None else now)
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _int_header(headers: Mapping[str, str], name: str) -> int | None:
    value = headers.get(name)
    return int(value) if value is not None and value.strip().isdigit() else None


def error_class(status: int, code: str | None) -> type[BrokerError]:
    """The exception class for an error answer: by the contract's code, else by status."""
    if code in BY_CODE:
        return BY_CODE[code]
    if status in BY_STATUS:
        return BY_STATUS[status]
    return BrokerUnavailable if status >= 500 else InvalidRequest


def from_answer(
    status: int,
    headers: Mapping[str, str],
    body: object,
    client: str | None,
) -> BrokerError:
    """The exception for one error answer (`body` is the parsed JSON, or None if it was not)."""
    code: str | None = None
    description = f"the broker answered HTTP {status}"
    if isinstance(body, dict):
        if isinstance(body.get("error"), str):
            code = body["error"]
        text = body.get("error_description")
        if isinstance(text, str) and text:
            description = text[:MAX_DESCRIPTION]
    cls = error_class(status, code)
    if issubclass(cls, BudgetExhausted):
        return cls(
            description,
            status=status,
            error=code,
            client=client,
            retry_after=retry_after_seconds(headers.get("retry-after")),
            limit=_int_header(headers, "x-ratelimit-limit"),
            reset=_int_header(headers, "x-ratelimit-reset"),
        )
    if issubclass(cls, RetryLater):
        return cls(
            description,
            status=status,
            error=code,
            client=client,
            retry_after=retry_after_seconds(headers.get("retry-after")),
        )
    return cls(description, status=status, error=code, client=client)
