"""Pure parts of the upstream OAuth client."""

from __future__ import annotations

import httpx
import pytest

from app.upstream.oauth import MAX_RETRY_AFTER, retry_after_seconds


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (None, 1.0),
        ("7", 7.0),
        ("0", 1.0),
        ("-5", 1.0),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 1.0),
        ("inf", 1.0),
        ("nan", 1.0),
        ("1e12", MAX_RETRY_AFTER),
    ],
)
def test_upstream_retry_after_is_bounded(header: str | None, seconds: float) -> None:
    """An upstream Retry-After is used within 1 s..MAX_RETRY_AFTER; garbage or infinity is 1 s."""
    headers = {"Retry-After": header} if header is not None else {}
    assert retry_after_seconds(httpx.Response(503, headers=headers)) == seconds
