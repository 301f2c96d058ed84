"""ClientStatus and report(): what /health says about each client."""

from __future__ import annotations

import pytest

from app.errors import UpstreamCredentialsRejected, UpstreamError, UpstreamUnavailable
from app.tokens.model import Token
from app.tokens.status import ClientStatus, outcome_of, report

NOW = 1_800_000_000.0
BUFFER = 300.0


def token(lifetime: float = 3600.0, left: float = 3000.0, name: str = "a") -> Token:
    """A token of `lifetime` seconds with `left` seconds of it to go at NOW."""
    return Token(f"token-{name}", NOW + left, NOW + left - lifetime)


def failed_status(*, requested: bool = True) -> ClientStatus:
    """A status whose last upstream request failed."""
    status = ClientStatus(requested=requested)
    status.failed(UpstreamUnavailable("down (test)"), NOW - 5)
    return status


@pytest.mark.parametrize(
    ("current", "state", "expires_in"),
    [(None, "missing", None), (token(left=0.0), "expired", 0), (token(left=99.7), "valid", 99)],
)
def test_report_states_whether_the_token_is_valid_missing_or_expired(
    current: Token | None, state: str, expires_in: int | None
) -> None:
    """A client's token is reported missing, expired (0 s left) or valid (whole seconds left)."""
    client = report(ClientStatus(requested=True), current, BUFFER, NOW)
    assert (client.token, client.expires_in) == (state, expires_in)
    assert client.lifetime_seconds == (None if current is None else 3600)


@pytest.mark.parametrize(
    ("lifetime", "buffer", "reported"), [(100.0, 300.0, 50), (3600.0, 300.0, 300), (None, 300, 300)]
)
def test_the_reported_buffer_is_capped_at_half_the_token_lifetime(
    lifetime: float | None, buffer: float, reported: int
) -> None:
    """The refresh buffer shown is the configured one, or half the lifetime if that is shorter."""
    current = None if lifetime is None else token(lifetime, left=lifetime)
    assert report(ClientStatus(), current, buffer, NOW).refresh_buffer_seconds == reported


@pytest.mark.parametrize(
    ("status", "current", "degraded"),
    [
        (ClientStatus(requested=True), token(), False),
        (ClientStatus(requested=True), None, False),
        (ClientStatus(requested=True), token(left=BUFFER), True),  # at the refresh point
        (failed_status(), token(), True),
        (failed_status(requested=False), token(left=10), False),  # nobody asked for it
    ],
    ids=["healthy", "not-yet-fetched", "inside-buffer", "last-refresh-failed", "not-requested"],
)
def test_a_requested_client_is_degraded_by_a_failure_or_a_token_inside_its_buffer(
    status: ClientStatus, current: Token | None, degraded: bool
) -> None:
    """A client degrades /health when it was asked for and either its last refresh failed or
    its token is inside the refresh buffer; one nobody asked for never does."""
    assert report(status, current, BUFFER, NOW).degraded is degraded


@pytest.mark.parametrize(
    ("status", "current", "servable"),
    [
        (failed_status(), token(left=10), True),
        (failed_status(), None, False),
        (failed_status(), token(left=0), False),
        (ClientStatus(requested=True), None, True),
    ],
    ids=["valid-despite-failure", "missing-after-failure", "expired-after-failure", "untried"],
)
def test_a_client_is_servable_with_a_valid_token_or_before_anything_failed(
    status: ClientStatus, current: Token | None, servable: bool
) -> None:
    """A client counts as servable while it has a valid token, or while nothing has failed."""
    assert report(status, current, BUFFER, NOW).servable is servable


@pytest.mark.parametrize(("obtained_after_error", "cleared"), [(5.0, True), (-5.0, False)])
def test_holds_clears_an_older_error_when_another_instance_refreshed_later(
    obtained_after_error: float, cleared: bool
) -> None:
    """Holding a token obtained after this instance's failure clears the error (the fleet
    recovered); one obtained before it does not."""
    status = ClientStatus()
    status.failed(UpstreamUnavailable("down (test)"), NOW)
    later = Token("token-theirs", NOW + obtained_after_error + 3600, NOW + obtained_after_error)
    status.holds(later)
    assert status.token is later
    assert (status.last_error is None) is cleared
    assert status.last_refresh_outcome == ("ok" if cleared else "unavailable")


def test_holds_never_moves_last_refresh_at_back() -> None:
    """Holding an older token keeps the later last_refresh_at."""
    status = ClientStatus()
    status.fetched(token(left=3600))
    status.holds(token(left=1800, name="older"))
    assert status.last_refresh_at == NOW


def test_fetched_clears_the_error_and_the_failure_count() -> None:
    """A fetched token ends the backoff and the error, and dates the last refresh."""
    status = failed_status()
    status.fetched(token(left=3600))
    assert (status.upstream_failures, status.last_error) == (0, None)
    assert (status.last_refresh_at, status.last_refresh_outcome) == (NOW, "ok")


@pytest.mark.parametrize(
    ("error", "category", "counted"),
    [
        (UpstreamUnavailable("down (test)"), "unavailable", 1),
        (UpstreamCredentialsRejected("rejected (test)"), "rejected", 0),
        (UpstreamError("odd answer (test)"), "error", 1),
    ],
)
def test_failed_records_the_category_and_counts_only_retryable_failures(
    error: UpstreamError, category: str, counted: int
) -> None:
    """A failure is recorded with its category; rejected credentials do not grow the backoff."""
    status = ClientStatus()
    status.failed(error, NOW)
    assert outcome_of(error) == category
    assert (status.last_error, status.last_error_at) == (str(error), NOW)
    assert status.last_error_category == status.last_refresh_outcome == category
    assert status.upstream_failures == counted
