"""L1: this instance's copy of each client's token, the hot path's one dict lookup.

An entry is dropped at once on a change broadcast and re-checked against the shared store in
the background once older than `max_age`; an entry the store has not confirmed for
`L1_HARD_AGE_SECONDS` is re-checked before it is served, so an invalidated token disappears
from every instance within 1 s even if a broadcast is lost. Tokens this instance saw discarded
are remembered as tombstones, so a store read that raced the discard cannot bring one back.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass

from app.clock import Clock
from app.errors import StoreUnavailable
from app.tokens.model import Token
from app.tokens.ports import TokenEvents, TokenStore
from app.tokens.store_state import StoreState

log = logging.getLogger(__name__)

L1_HARD_AGE_SECONDS = 0.9
"""An L1 entry the store has not confirmed for this long is re-checked before it is served, so
an invalidation whose broadcast was lost is honoured within 1 s (the contract's bound)."""
_TOMBSTONES_PER_CLIENT = 8


@dataclass
class L1Entry:
    """One client's token as this instance serves it."""

    token: Token
    serve_until: float  # unix seconds
    checked_at: float  # monotonic: when the store last confirmed it


class L1Cache:
    """Per-client tokens in process memory, kept honest against the shared store."""

    def __init__(
        self,
        store: TokenStore,
        store_state: StoreState,
        clock: Clock,
        events: TokenEvents,
        max_age: float,
    ) -> None:
        self._store = store
        self._store_state = store_state
        self._clock = clock
        self._events = events
        self.max_age = max_age
        self._entries: dict[str, L1Entry] = {}
        self._tombstones: dict[str, deque[str]] = {}
        self._revalidating: dict[str, asyncio.Task[None]] = {}

    def peek(self, client: str) -> Token | None:
        """The token of `client` if it may be served now, else None; never waits.

        A revalidation against the store is started in the background when the entry is older
        than `max_age`; past `L1_HARD_AGE_SECONDS` the entry is not served from here while the
        store answers (the caller re-checks it first).
        """
        entry = self._entries.get(client)
        if entry is None or entry.serve_until <= self._clock.time():
            return None
        age = self._clock.monotonic() - entry.checked_at
        if age > self.max_age:
            if age > L1_HARD_AGE_SECONDS and self._store_state.ok:
                return None
            self.revalidate_soon(client)
        self._events.cache_hit(client, "l1")
        return entry.token

    def entry(self, client: str) -> L1Entry | None:
        """The entry of `client`, servable or not."""
        return self._entries.get(client)

    def servable_but_unconfirmed(self, client: str) -> bool:
        """Whether `client` has an entry within its serving time (that `peek` declined)."""
        entry = self._entries.get(client)
        return entry is not None and entry.serve_until > self._clock.time()

    def put(self, client: str, token: Token, serve_until: float) -> None:
        """Serve `token` until `serve_until`, confirmed as of now."""
        self._entries[client] = L1Entry(token, serve_until, self._clock.monotonic())

    def usable(self, client: str, token: Token | None) -> Token | None:
        """`token` unless this instance saw it discarded (a read that raced an invalidation)."""
        if token is None or self.is_discarded(client, token.digest):
            return None
        return token

    def is_discarded(self, client: str, token_digest: str) -> bool:
        """Whether this instance saw the token with `token_digest` discarded."""
        return token_digest in self._tombstones.get(client, ())

    def forget(self, client: str, token_digest: str) -> None:
        """The token with `token_digest` was discarded: never serve it again."""
        tombstones = self._tombstones.get(client)
        if tombstones is None:
            tombstones = self._tombstones[client] = deque(maxlen=_TOMBSTONES_PER_CLIENT)
        tombstones.append(token_digest)
        entry = self._entries.get(client)
        if entry is not None and entry.token.digest == token_digest:
            del self._entries[client]

    def saw_saved(self, client: str, token_digest: str) -> None:
        """Another token was saved: drop ours if it differs, the next request re-reads."""
        entry = self._entries.get(client)
        if entry is not None and entry.token.digest != token_digest:
            del self._entries[client]

    def revalidate_soon(self, client: str) -> asyncio.Task[None]:
        """The running re-check of `client`'s entry, started if there is none (one at a time:
        a burst of requests at the hard age makes one store read)."""
        running = self._revalidating.get(client)
        if running is None:
            running = self._revalidating[client] = asyncio.ensure_future(self._revalidate(client))
            running.add_done_callback(_revalidation_done)
        return running

    async def close(self) -> None:
        """Stop the revalidations under way."""
        tasks = list(self._revalidating.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _revalidate(self, client: str) -> None:
        """Confirm the entry against the store; drop it if the store has another token."""
        asked_at = self._clock.monotonic()  # the entry is confirmed as of the read, not its end
        try:
            record = await self._store.load(client)
        except StoreUnavailable:
            self._store_state.note(ok=False)  # keep serving L1 while the token is valid
            return
        finally:
            self._revalidating.pop(client, None)
        self._store_state.note(ok=True)
        entry = self._entries.get(client)
        if entry is None:
            return
        if record.token is not None and record.token.digest == entry.token.digest:
            entry.checked_at = asked_at
        else:
            del self._entries[client]


def _revalidation_done(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:  # a bug: keep it visible
        log.error("token.revalidate_failed", exc_info=task.exception())
