"""What this instance knows about each client: the source of `/health` and the metrics gauges."""

from __future__ import annotations

from dataclasses import dataclass

from app.errors import UpstreamCredentialsRejected, UpstreamError, UpstreamUnavailable
from app.tokens.model import Token


def outcome_of(exc: UpstreamError) -> str:
    """The low-cardinality category of an upstream failure, for /health and metrics."""
    if isinstance(exc, UpstreamCredentialsRejected):
        return "rejected"
    if isinstance(exc, UpstreamUnavailable):
        return "unavailable"
    return "error"


@dataclass
class ClientStatus:
    """This instance's record of one client."""

    requested: bool = False
    token: Token | None = None  # the last token this instance held
    last_refresh_at: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    last_error_category: str | None = None  # see outcome_of()
    last_refresh_outcome: str | None = None  # "ok" or the category of the last failure
    upstream_failures: int = 0  # consecutive, for the backoff
    hold_until: float = 0.0  # monotonic: no upstream request for this client before then

    def fetched(self, token: Token) -> None:
        """This instance obtained `token` from the upstream."""
        self.upstream_failures = 0
        self.last_error = None
        self.last_refresh_at = token.obtained_at
        self.last_refresh_outcome = "ok"

    def failed(self, exc: UpstreamError, now: float) -> None:
        """An upstream token request failed with `exc` at unix time `now`."""
        self.last_error, self.last_error_at = str(exc), now
        self.last_error_category = self.last_refresh_outcome = outcome_of(exc)
        if not isinstance(exc, UpstreamCredentialsRejected):
            self.upstream_failures += 1

    def holds(self, token: Token) -> None:
        """This instance now serves `token` (its own, or one another instance obtained)."""
        self.token = token
        self.last_refresh_at = max(self.last_refresh_at or 0.0, token.obtained_at)
        if self.last_error is not None and token.obtained_at > (self.last_error_at or 0.0):
            # Another instance refreshed after this one failed: the fleet has recovered.
            self.last_error, self.last_refresh_outcome = None, "ok"


@dataclass(frozen=True, slots=True)
class ClientReport:
    """One client as `/health` shows it, with the two facts the overall status derives from."""

    token: str  # "valid", "missing" or "expired"
    expires_in: int | None
    lifetime_seconds: int | None
    refresh_buffer_seconds: int  # the refresh point: never handed out with less than this left
    status: ClientStatus
    degraded: bool  # asked for, and failing to refresh or inside the buffer
    servable: bool  # a valid token, or nothing has failed yet


def report(status: ClientStatus, current: Token | None, buffer: float, now: float) -> ClientReport:
    """The report of a client whose servable token is `current` (None: none, or discarded)."""
    if current is None:
        state, expires_in = "missing", None
    elif current.expires_at <= now:
        state, expires_in = "expired", 0
    else:
        state, expires_in = "valid", int(current.expires_at - now)
    in_buffer = current is not None and now >= current.serve_until(buffer)
    return ClientReport(
        token=state,
        expires_in=expires_in,
        lifetime_seconds=None if current is None else int(current.lifetime),
        refresh_buffer_seconds=int(
            buffer if current is None else min(buffer, current.lifetime / 2)
        ),
        status=status,
        degraded=status.requested and (status.last_error is not None or in_buffer),
        servable=state == "valid" or status.last_error is None,
    )
