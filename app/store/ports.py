"""The capabilities the core needs from shared state, one Protocol each.

Adapters (`memory.py`, `redis.py`) implement them and translate their own failures into
`app.errors.StoreUnavailable`; the core never sees a backend's exception.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from app.budget.model import Reservation, Usage, Window
from app.tokens.model import DiscardResult, HoldReason, Lease, Token, TokenChange, TokenRecord

ChangeListener = Callable[[TokenChange], None]
"""Called from the event loop for every saved or discarded token, whichever instance did it."""


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

    async def release(self, lease: Lease) -> None:
        """Release the lock if this lease still owns it (compare-and-delete)."""
        ...


class ChangeFeed(Protocol):
    """Notifications that a client's token changed, from any instance."""

    def subscribe(self, listener: ChangeListener) -> None:
        """Call `listener` for every change; delivery is best effort (a missed one is healed by
        the token service re-reading the store)."""
        ...


class BudgetStore(Protocol):
    """The fleet's sliding window of upstream permits, decided on the store's clock."""

    async def reserve(self, window: Window, max_wait: float, permit_id: str) -> Reservation:
        """Reserve the earliest permit; granted only if it comes within `max_wait` seconds."""
        ...

    async def confirm(self, permit_id: str) -> float:
        """When a reserved slot arrives: 0 if the permit stands, else the cooldown left (the
        permit is withdrawn because the upstream asked the fleet to pause meanwhile)."""
        ...

    async def withdraw(self, permit_id: str) -> None:
        """Give back a reserved permit not yet used (removing one only lowers counts)."""
        ...

    async def cool_down(self, seconds: float) -> float:
        """Grant nothing for `seconds` (extends, never shortens); returns the cooldown left."""
        ...

    async def usage(self, window: Window) -> Usage:
        """The window's current use, for /health."""
        ...


@dataclass(frozen=True, slots=True)
class InstanceInfo:
    """One broker instance that heartbeats into the store."""

    instance: str
    version: str
    expires_in: float  # seconds until it counts as gone unless it heartbeats again


class InstanceRegistry(Protocol):
    """The fleet view for /health: which instances are alive, with their versions."""

    async def heartbeat(self, instance: str, version: str, ttl: float) -> None:
        """Record that `instance` (running `version`) is alive for the next `ttl` seconds."""
        ...

    async def instances(self) -> list[InstanceInfo]:
        """The instances whose last heartbeat has not yet lapsed, sorted by name."""
        ...


class Store(TokenStore, RefreshLock, ChangeFeed, BudgetStore, InstanceRegistry, Protocol):
    """Everything one backend provides, plus its lifecycle."""

    kind: str

    async def start(self) -> None:
        """Open connections and background listeners."""
        ...

    async def close(self) -> None:
        """Release every connection and task."""
        ...
