"""What the token core needs from the world outside it, one Protocol per capability.

Adapters implement them (`app/store/memory.py`, `app/store/redis.py`, `app/upstream/oauth.py`)
and translate their own failures into `app.errors` exceptions; the core never sees a backend's
exception, and never imports an adapter.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from app.tokens.model import DiscardResult, HoldReason, Lease, Token, TokenChange, TokenRecord

ChangeListener = Callable[[TokenChange], None]
"""Called from the event loop for every saved or discarded token, whichever instance did it."""

PermitTaker = Callable[[str], Awaitable[None]]
"""Takes one upstream budget permit for a client before a token request (or raises)."""


class TokenStore(Protocol):
    """Cached tokens per client, shared by every instance that uses the same store."""

    async def load(self, client: str) -> TokenRecord:
        """The client's current token and hold, in one round trip."""
        ...

    async def save(self, client: str, token: Token) -> Token:
        """Store `token` unless a token that expires later is already stored; return the winner.

        A writer whose lock lapsed therefore can never replace a newer token with an older one.
        """
        ...

    async def discard(self, client: str, access_token: str, min_interval: float) -> DiscardResult:
        """Delete the token if it is `access_token` (compare-and-delete).

        Throttled instead when the previous discard of this client is less than `min_interval`
        seconds old.
        """
        ...

    async def hold(self, client: str, reason: HoldReason, seconds: float) -> None:
        """Make every instance hold off the upstream for this client for `seconds`."""
        ...

    async def ping(self) -> bool:
        """Whether the store answers right now (bounded by a short timeout)."""
        ...


class RefreshLock(Protocol):
    """Fleet-wide single flight: at most one instance refreshes a client at a time."""

    async def acquire(self, client: str, ttl: float) -> Lease:
        """Try once to take the lock for `ttl` seconds; never waits."""
        ...

    async def release(self, lease: Lease) -> bool:
        """Release the lock if this lease still owns it (compare-and-delete).

        False when it did not: the lease had lapsed (and perhaps another instance took the lock).
        """
        ...


class LocalStore(TokenStore, RefreshLock, Protocol):
    """This instance's own store, used while the shared one is unreachable."""


class ChangeFeed(Protocol):
    """Notifications that a client's token changed, from any instance."""

    def subscribe(self, listener: ChangeListener) -> None:
        """Call `listener` for every change; delivery is best effort (a missed one is healed by
        the token service re-reading the store)."""
        ...


class TokenFetcher(Protocol):
    """Obtains a new token from the upstream."""

    async def fetch(self, client: str) -> Token:
        """Raise UpstreamCredentialsRejected or UpstreamUnavailable when no token comes."""
        ...


class TokenEvents:
    """Hook points for metrics and logs: these defaults do nothing; `app.observability` acts.

    Called on the hot path and inside the refresh logic, so an implementation must be cheap and
    must not raise. The core stays free of any metrics or logging set-up.
    """

    def cache_hit(self, client: str, level: str) -> None:
        """A token came from this instance's L1 (`"l1"`) or from the shared store (`"l2"`)."""

    def token_held(self, client: str, token: Token) -> None:
        """This instance now holds `token` (it may hand it out): e.g. scrub it from logs."""

    def lock_wait(self, client: str) -> None:
        """Another holder of the refresh lock was refreshing, so this instance waited."""

    def lease_lapsed(self, client: str) -> None:
        """This instance's refresh lock had lapsed before it released it (a slow refresh)."""

    def upstream_request(
        self, client: str, outcome: str, seconds: float, detail: str | None
    ) -> None:
        """One upstream token request ended (`ok`, `rejected`, `unavailable`, `error`).

        `detail` is the error's message (our own text: never a token or secret) when it failed.
        """

    def served_stale(self, client: str, token: Token, seconds_left: float, hold: str) -> None:
        """The upstream is held off, so a token inside its refresh buffer was served."""

    def store_state(self, ok: bool) -> None:
        """The shared store became reachable (`ok`) or unreachable."""

    def store_error(self) -> None:
        """A store operation failed; the service carries on from its own memory."""


NO_EVENTS = TokenEvents()
