"""Pure parts of the upstream OAuth client."""

from __future__ import annotations

import httpx
import pytest

from app.upstream.oauth import MAX_RETRY_AFTER, _token_from, retry_after_seconds


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


@pytest.mark.parametrize("token", ["bad\x0ctoken", "two words", "tab\there", "ünïcode"])
def test_a_token_that_is_not_an_rfc6750_b64token_is_refused(token: str) -> None:
    """An access token with characters RFC 6750 does not allow (a form feed is not even a
    header value) is a bad response, never a token to hand out."""
    body = {"access_token": token, "token_type": "Bearer", "expires_in": 3600}
    with pytest.raises(ValueError, match="RFC 6750"):
        _token_from(body, 1_800_000_000.0)


def test_a_jwt_shaped_token_is_accepted() -> None:
    """The characters of a JWT (and base64 padding) are accepted."""
    body = {"access_token": "eyJ0.e30-_~+/.sig==", "token_type": "Bearer", "expires_in": 3600}
    assert _token_from(body, 1_800_000_000.0).access_token == "eyJ0.e30-_~+/.sig=="
