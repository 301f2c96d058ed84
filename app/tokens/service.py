"""The token service: the small facade the API calls, over the core's parts.

    get(client) -> L1 (l1.py) -> shared store -> fleet single flight (flight.py) -> upstream
                   (refresher.py: permits, backoff, holds; refresh ahead of expiry)
    status.py keeps what /health and the metrics read.

The hot path is `peek`, a dict lookup in L1. This package imports no backend, framework or
settings: it sees only its ports (`app.tokens.ports`), `app.errors` and `app.clock`, and takes
plain policy values that `app.main` builds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from app.clock import Clock
from app.errors import RefreshThrottled, StoreUnavailable, UnknownClient
from app.tokens.flight import FleetFlight
from app.tokens.l1 import L1Cache
from app.tokens.model import ChangeKind, ClientPolicy, DiscardOutcome, Token, TokenChange, digest
from app.tokens.ports import (
    NO_EVENTS,
    LocalStore,
    PermitTaker,
    RefreshLock,
    TokenEvents,
    TokenFetcher,
    TokenStore,
)
from app.tokens.refresher import RefreshAhead, UpstreamRefresher
from app.tokens.status import ClientReport, ClientStatus, report
from app.tokens.store_state import StoreState


class TokenService:
    """Hands out cached upstream tokens; one instance per process."""

    def __init__(
        self,
        policies: Mapping[str, ClientPolicy],
        shared: tuple[TokenStore, RefreshLock],
        local: LocalStore,
        fetcher: TokenFetcher,
        *,
        clock: Clock,
        l1_max_age: float = 0.5,
        take_permit: PermitTaker | None = None,
        events: TokenEvents = NO_EVENTS,
    ) -> None:
        """`shared` is the fleet's store and lock; `local` this instance's own store, used while
        the shared one is unreachable."""
        self._policies = dict(policies)
        self._store = shared[0]
        self._local = local
        self._clock = clock
        self._status = {name: ClientStatus() for name in self._policies}
        self._store_state = StoreState(clock, events)
        self._l1 = L1Cache(shared[0], self._store_state, clock, events, l1_max_age)
        refresher = UpstreamRefresher(
            self._policies, fetcher, self._status, clock, events, take_permit
        )
        self._flight = FleetFlight(
            self._policies,
            shared,
            local,
            self._store_state,
            self._l1,
            refresher,
            self._status,
            clock,
            events,
        )
        self._ahead = RefreshAhead(self._l1, self._status, clock, self._flight.obtain)

    @property
    def clients(self) -> tuple[str, ...]:
        """Configured client names."""
        return tuple(self._policies)

    @property
    def store_ok(self) -> bool:
        """Whether the shared store answered the last time it was asked."""
        return self._store_state.ok

    def status(self, client: str) -> ClientStatus:
        """This instance's record of `client`."""
        return self._status[client]

    def policy(self, client: str) -> ClientPolicy:
        """The policy of `client`; UnknownClient if it is not configured."""
        try:
            return self._policies[client]
        except KeyError:
            raise UnknownClient(f"unknown client {client!r}", client=client) from None

    def report(self, client: str) -> ClientReport:
        """`client` as /health shows it: its servable token's state and what degrades it."""
        status = self._status[client]
        token = status.token
        if token is not None and self._l1.is_discarded(client, token.digest):
            token = None  # invalidated: no longer what this instance would hand out
        return report(status, token, self._policies[client].refresh_buffer, self._clock.time())

    def serves_without_store(self) -> bool:
        """Whether this instance holds a valid token for every client it has served (and has
        served one): it can go on serving callers while the shared store is unreachable."""
        served = [name for name, status in self._status.items() if status.requested]
        return bool(served) and all(self.report(name).token == "valid" for name in served)

    def hold_remaining(self, client: str) -> float:
        """Seconds until this instance next asks the upstream for `client` (0 if not held)."""
        if client not in self._status:
            return 0.0
        return max(0.0, self._status[client].hold_until - self._clock.monotonic())

    def peek(self, client: str) -> Token | None:
        """The L1 token of `client` if it may be served now, else None; never waits."""
        return self._l1.peek(client)

    async def get(self, client: str) -> Token:
        """A token with more than the refresh buffer left (or a still-valid one if the upstream
        is down)."""
        token = self._l1.peek(client)
        if token is not None:
            return token
        if self._l1.servable_but_unconfirmed(client):
            # Servable, but the store has not confirmed it lately: ask the store first.
            await asyncio.shield(self._l1.revalidate_soon(client))
            token = self._l1.peek(client)
            if token is not None:
                return token
        self.policy(client)  # UnknownClient before any work
        if not self._status[client].requested:
            self._status[client].requested = True
            self._ahead.start(client)
        return await self._flight.join(client)

    async def invalidate(self, client: str, access_token: str) -> Token:
        """Discard `access_token` if it is the cached token, then return the current token."""
        await self.discard(client, access_token)
        return await self.get(client)

    async def discard(self, client: str, access_token: str) -> bool:
        """Discard `access_token` if it is the cached token (RefreshThrottled inside the forced-
        refresh floor); whether it was. The next `get` fetches a new token, once for the fleet."""
        policy = self.policy(client)
        try:
            result = await self._store.discard(client, access_token, policy.min_forced_interval)
        except StoreUnavailable:
            self._store_state.note(ok=False)
            result = await self._local.discard(client, access_token, policy.min_forced_interval)
        if result.outcome is DiscardOutcome.THROTTLED:
            raise RefreshThrottled(
                f"client {client!r} was force-refreshed less than "
                f"{policy.min_forced_interval:g} s ago",
                client=client,
                retry_after=result.retry_after,
            )
        self._l1.forget(client, digest(access_token))
        return result.outcome is DiscardOutcome.DISCARDED

    def credentials_changed(self, client: str, generation: str) -> None:
        """The credentials of `client` changed; `generation` tags the tokens they obtain (see
        `Token.minted_by`). No token obtained with earlier ones is served again: the next
        request reads the store or the upstream anew."""
        if client in self._status:
            self._flight.new_generation(client, generation)

    def on_change(self, change: TokenChange) -> None:
        """Store listener: drop L1 entries that changed and wake local waiters."""
        if change.client not in self._status:
            return
        if change.kind is ChangeKind.DISCARDED:
            self._l1.forget(change.client, change.digest)
        elif change.kind is ChangeKind.SAVED:
            self._l1.saw_saved(change.client, change.digest)
        self._flight.wake(change.client)

    async def close(self) -> None:
        """Stop background refreshers and revalidations."""
        await asyncio.gather(self._ahead.close(), self._l1.close())
