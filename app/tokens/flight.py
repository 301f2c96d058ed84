"""Fleet-wide single flight: one upstream request per refresh, however many callers ask.

In this process, concurrent misses of a client share one future. Across the fleet, the store's
refresh lock lets one instance ask the upstream while the others wait for its broadcast (or for
its lease to lapse, if it died). While the shared store is unreachable, the same protocol runs
on this instance's own store, so in-process single flight and holds still apply.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from app.clock import Clock
from app.errors import BudgetExhausted, StoreUnavailable, UpstreamError, UpstreamUnavailable
from app.tokens.l1 import L1Cache
from app.tokens.model import ClientPolicy, Lease, Token
from app.tokens.ports import LocalStore, RefreshLock, TokenEvents, TokenStore
from app.tokens.refresher import UpstreamRefresher
from app.tokens.status import ClientStatus
from app.tokens.store_state import StoreState

MAX_WAIT_FOR_BROADCAST_SECONDS = 2.0
MAX_GENERATION_RETRIES = 3
"""How often one `obtain` starts over when the client's credentials changed under it."""


class FleetFlight:
    """Obtains tokens that are not in L1, coordinating with this process and the fleet."""

    def __init__(
        self,
        policies: Mapping[str, ClientPolicy],
        shared: tuple[TokenStore, RefreshLock],
        local: LocalStore,
        store_state: StoreState,
        l1: L1Cache,
        refresher: UpstreamRefresher,
        status: Mapping[str, ClientStatus],
        clock: Clock,
        events: TokenEvents,
    ) -> None:
        self._policies = policies
        self._store, self._lock = shared
        self._local = local
        self._store_state = store_state
        self._l1 = l1
        self._refresher = refresher
        self._status = status
        self._clock = clock
        self._events = events
        self._inflight: dict[str, asyncio.Future[Token]] = {}
        self._changed: dict[str, asyncio.Event] = {}
        self._generations: dict[str, str] = {}  # client -> tag of its current credentials

    async def join(self, client: str) -> Token:
        """The token of `client`, obtained once for every concurrent caller in this process."""
        future = self._inflight.get(client)
        if future is None:
            future = asyncio.ensure_future(self.obtain(client))
            self._inflight[client] = future
            future.add_done_callback(lambda done: self._flight_done(client, done))
        # shield: a caller that goes away must not cancel the refresh others are waiting for.
        return await asyncio.shield(future)

    async def obtain(self, client: str, ahead: float = 0.0) -> Token:
        """A token servable for `ahead` more seconds: from the shared store, or fetched; always
        one obtained with the client's current credentials."""
        for _ in range(MAX_GENERATION_RETRIES):
            token = await self._obtain_once(client, ahead)
            if self.current(client, token):
                return token
            # The credentials changed while this token was being read or fetched: start over.
        raise UpstreamUnavailable(
            f"the credentials of client {client!r} kept changing while a token was obtained",
            client=client,
            retry_after=1.0,
        )

    def current(self, client: str, token: Token) -> bool:
        """Whether `token` was obtained with the client's current credentials (any token, until
        they first change)."""
        generation = self._generations.get(client)
        return generation is None or token.minted_by == generation

    def new_generation(self, client: str, generation: str) -> None:
        """From now on serve only tokens tagged `generation`; forget the one in L1 if older."""
        self._generations[client] = generation
        entry = self._l1.entry(client)
        if entry is not None and not self.current(client, entry.token):
            self._l1.forget(client, entry.token.digest)
        status = self._status[client]
        if status.token is not None and not self.current(client, status.token):
            status.token = None
        self.wake(client)

    async def _obtain_once(self, client: str, ahead: float) -> Token:
        if self._store_state.worth_trying():
            failures = self._store_state.failures
            try:
                token = await self._obtain_via(self._store, self._lock, client, ahead)
            except StoreUnavailable:
                self._store_state.note(ok=False)
            else:
                if self._store_state.failures == failures:  # no save, hold or release failed
                    self._store_state.note(ok=True)
                return token
        entry = self._l1.entry(client)
        if entry is not None:
            await self._local.save(client, entry.token)
        return await self._obtain_via(self._local, self._local, client, ahead)

    def wake(self, client: str) -> None:
        """A change of `client` was broadcast: waiters re-read the store now."""
        event = self._changed.pop(client, None)
        if event is not None:
            event.set()

    def remember(self, client: str, token: Token) -> Token:
        """Serve `token` from L1 from now on (unless older credentials obtained it)."""
        self._events.token_held(client, token)
        if not self.current(client, token):
            return token  # `obtain` starts over
        self._l1.put(client, token, token.serve_until(self._policies[client].refresh_buffer))
        self._status[client].holds(token)
        return token

    def _flight_done(self, client: str, future: asyncio.Future[Token]) -> None:
        if self._inflight.get(client) is future:
            del self._inflight[client]
        if not future.cancelled():
            future.exception()  # retrieved here so an unawaited failure is not reported twice

    async def _obtain_via(
        self, store: TokenStore, lock: RefreshLock, client: str, ahead: float
    ) -> Token:
        policy = self._policies[client]
        while True:
            changed = self._changed.setdefault(client, asyncio.Event())  # before reading
            served, _ = await self._read(store, client, ahead)
            if served is not None:
                return served
            lease = await lock.acquire(client, policy.lock_ttl)
            if lease.acquired:
                try:
                    return await self._refresh_holding_lock(store, client, ahead)
                finally:
                    await self._release(lock, lease)
            # Another instance is refreshing: wait for its broadcast, or for its lease to lapse.
            # The cap re-reads the store now and then in case the broadcast was lost.
            self._events.lock_wait(client)
            await _wait(changed, min(lease.wait + 0.05, MAX_WAIT_FOR_BROADCAST_SECONDS))

    async def _read(
        self, store: TokenStore, client: str, ahead: float
    ) -> tuple[Token | None, Token | None]:
        """One store read: (what to serve without a refresh, if anything; the stored token).

        What to serve is the stored token when it is fresh enough, or the answer of a hold.
        """
        record = await store.load(client)
        token = self._l1.usable(client, record.token)
        if token is not None and not self.current(client, token):
            token = None  # read under credentials that changed meanwhile: as good as none
        if token is not None and self._fresh(client, token, ahead):
            self._events.cache_hit(client, "l2")
            return self.remember(client, token), token
        if record.hold is not None:
            return self.remember(client, self._refresher.held(client, token, record.hold)), token
        return None, token

    async def _refresh_holding_lock(self, store: TokenStore, client: str, ahead: float) -> Token:
        served, token = await self._read(store, client, ahead)  # the previous holder may
        if served is not None:  # have just finished
            return served
        try:
            new = await self._refresher.fetch(client)
        except BudgetExhausted as exc:
            return self.remember(client, self._refresher.no_permit(client, token, exc))
        except UpstreamError as exc:
            hold = self._refresher.hold_for(client, exc, token)
            try:
                await store.hold(client, hold.reason, hold.remaining)
            except StoreUnavailable:
                # Held locally instead, or the fallback would ask the upstream again at once.
                self._store_state.note(ok=False)
                await self._local.hold(client, hold.reason, hold.remaining)
            return self.remember(client, self._refresher.held(client, token, hold, exc))
        try:
            new = await store.save(client, new)
        except StoreUnavailable:
            self._store_state.note(ok=False)  # keep the token we paid for; the store catches up
        return self.remember(client, new)

    def _fresh(self, client: str, token: Token, ahead: float) -> bool:
        """Whether `token` may still be served `ahead` seconds from now."""
        serve_until = token.serve_until(self._policies[client].refresh_buffer)
        return serve_until - ahead > self._clock.time()

    async def _release(self, lock: RefreshLock, lease: Lease) -> None:
        try:
            released = await lock.release(lease)
        except StoreUnavailable:
            self._store_state.note(ok=False)  # the lease lapses by itself
            return
        if not released:
            self._events.lease_lapsed(lease.client)


async def _wait(changed: asyncio.Event, timeout: float) -> None:
    try:
        await asyncio.wait_for(changed.wait(), timeout)
    except TimeoutError:
        pass
