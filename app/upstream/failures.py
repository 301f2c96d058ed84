"""httpx's transport failures in the broker's exception tree: the one place they are translated."""

from __future__ import annotations

import httpx

from app.errors import UpstreamTimeout, UpstreamUnavailable


def translate(
    exc: httpx.HTTPError, what: str, client: str
) -> UpstreamTimeout | UpstreamUnavailable:
    """UpstreamTimeout when `what` did not answer in time; UpstreamUnavailable when it could not
    be reached (connection refused or reset, protocol errors)."""
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamTimeout(f"{what} did not answer in time ({client})", client=client)
    return UpstreamUnavailable(f"{what} could not be reached ({client})", client=client)
