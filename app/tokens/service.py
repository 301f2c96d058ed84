"""The token service: L1 -> shared store -> fleet single flight -> upstream, and refresh ahead.

Timeline of one client's token (buffer = `refresh_buffer_seconds`, lead = a margin before it):

    obtained ........ refresh-ahead point ... serve_until (expiry - buffer) ... expires_at
                      ^ background task         ^ callers never get it past here
                        refreshes (jittered)      while the upstream answers

The hot path is a dict lookup in L1. L1 entries are dropped at once on a change broadcast and
re-checked against the store in the background once older than `l1_max_age`; an entry not
confirmed for `L1_HARD_AGE_SECONDS` is re-checked before it is served, so an invalidated token
disappears from every instance within 1 s even if a broadcast is lost. Misses go through an
in-process single flight and then the store's refresh lock, so the fleet sends one upstream
request per refresh. This module never imports a backend or a web framework: it sees only the
ports in `app.store.ports` and the `TokenFetcher` below.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from app.clock import SYSTEM_CLOCK, Clock
from app.errors import (
    BudgetExhausted,
    RefreshThrottled,
    StoreUnavailable,
    UnknownClient,
    UpstreamCredentialsRejected,
    UpstreamError,
    UpstreamUnavailable,
)
from app.observability.logs import REDACTOR, log_event
from app.store.memory import MemoryStore
from app.store.ports import RefreshLock, TokenStore
from app.tokens.model import (
    ChangeKind,
    DiscardOutcome,
    Hold,
    HoldReason,
    Lease,
    Token,
    TokenChange,
    digest,
)

log = logging.getLogger(__name__)

BACKOFF_BASE_SECONDS = 1.0
BACKOFF_CAP_SECONDS = 30.0
MAX_WAIT_FOR_BROADCAST_SECONDS = 2.0
L1_HARD_AGE_SECONDS = 0.9
"""An L1 entry the store has not confirmed for this long is re-checked before it is served, so
an invalidation whose broadcast was lost is honoured within 1 s (the contract's bound)."""
STORE_RETRY_SECONDS = 1.0
"""After a store failure, how long the slow path goes straight to the local fallback."""
_TOMBSTONES_PER_CLIENT = 8


class TokenFetcher(Protocol):
    """Obtains a new token from the upstream."""

    async def fetch(self, client: str) -> Token:
        """Raise UpstreamCredentialsRejected or UpstreamUnavailable when no token comes."""
        ...


PermitTaker = Callable[[str], Awaitable[None]]
"""Takes one upstream budget permit for a client before a token request (or raises)."""


class TokenEvents:
    """Hook points for metrics: these defaults do nothing; `app.observability` counts them.

    Called on the hot path and inside the refresh logic, so an implementation must be cheap and
    must not raise. The core stays free of any metrics library.
    """

    def cache_hit(self, client: str, level: str) -> None:
        """A token came from this instance's L1 (`"l1"`) or from the shared store (`"l2"`)."""

    def lock_wait(self, client: str) -> None:
        """Another holder of the refresh lock was refreshing, so this instance waited."""

    def upstream_request(
        self, client: str, outcome: str, seconds: float, detail: str | None
    ) -> None:
        """One upstream token request ended (`ok`, `rejected`, `unavailable`, `error`).

        `detail` is the error's message (our own text: never a token or secret) when it failed.
        """

    def store_error(self) -> None:
        """A store operation failed; the service carries on from its own memory."""


NO_EVENTS = TokenEvents()


def outcome_of(exc: UpstreamError) -> str:
    """The low-cardinality category of an upstream failure, for /health and metrics."""
    if isinstance(exc, UpstreamCredentialsRejected):
        return "rejected"
    if isinstance(exc, UpstreamUnavailable):
        return "unavailable"
    return "error"


@dataclass(frozen=True)
class ClientPolicy:
    """How the service treats one upstream client."""

    refresh_buffer: float = 300.0
    min_forced_interval: float = 10.0
    upstream_timeout: float = 10.0
    permit_wait: float = 0.0  # longest wait for a budget permit before a token request

    @property
    def lock_ttl(self) -> float:
        """Longer than one upstream attempt (and its permit wait), so a live holder never loses
        its lock."""
        return self.permit_wait + self.upstream_timeout * 1.5 + 2.0


@dataclass
class _L1Entry:
    token: Token
    serve_until: float  # unix seconds
    checked_at: float  # monotonic: when the store last confirmed it


@dataclass
class ClientStatus:
    """What this instance knows about one client, for /health and metrics."""

    requested: bool = False
    token: Token | None = None
    last_refresh_at: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    last_error_category: str | None = None  # see outcome_of()
    last_refresh_outcome: str | None = None  # "ok" or the category of the last failure
    upstream_failures: int = 0
    hold_until: float = 0.0  # monotonic
    tombstones: deque[str] = field(default_factory=lambda: deque(maxlen=_TOMBSTONES_PER_CLIENT))


class TokenService:
    """Hands out cached upstream tokens; one instance per process."""

    def __init__(
        self,
        policies: Mapping[str, ClientPolicy],
        store: TokenStore,
        lock: RefreshLock,
        fetcher: TokenFetcher,
        *,
        clock: Clock = SYSTEM_CLOCK,
        l1_max_age: float = 0.5,
        take_permit: PermitTaker | None = None,
        events: TokenEvents = NO_EVENTS,
    ) -> None:
        self._policies = dict(policies)
        self._store, self._lock, self._fetcher = store, lock, fetcher
        # When the shared store is down, an instance keeps going on its own: this store then
        # holds its locks and tokens, so in-process single flight and holds still apply.
        self._local = MemoryStore(clock=clock)
        self._clock = clock
        self._l1_max_age = l1_max_age
        self._take_permit = take_permit
        self._events = events
        self._l1: dict[str, _L1Entry] = {}
        self._status = {name: ClientStatus() for name in self._policies}
        self._inflight: dict[str, asyncio.Future[Token]] = {}
        self._revalidating: dict[str, asyncio.Task[None]] = {}
        self._changed: dict[str, asyncio.Event] = {}
        self._refreshers: dict[str, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.store_ok = True
        self._store_retry_at = 0.0  # monotonic
        self._store_failures = 0

    # -- public API ---------------------------------------------------------------------------

    @property
    def clients(self) -> tuple[str, ...]:
        """Configured client names."""
        return tuple(self._policies)

    def status(self, client: str) -> ClientStatus:
        """This instance's view of `client`."""
        return self._status[client]

    def policy(self, client: str) -> ClientPolicy:
        """The policy of `client`; UnknownClient if it is not configured."""
        try:
            return self._policies[client]
        except KeyError:
            raise UnknownClient(f"unknown client {client!r}", client=client) from None

    def peek(self, client: str) -> Token | None:
        """The L1 token of `client` if it may be served now, else None; never waits.

        The hot path: a dict lookup and a clock read. A revalidation against the store is
        started in the background when the entry is older than `l1_max_age`; past
        `L1_HARD_AGE_SECONDS` the entry is not served from here (`get` re-checks it first).
        """
        entry = self._l1.get(client)
        if entry is None or entry.serve_until <= self._clock.time():
            return None
        age = self._clock.monotonic() - entry.checked_at
        if age > self._l1_max_age:
            if age > L1_HARD_AGE_SECONDS and self.store_ok:
                return None
            self._revalidate_soon(client)
        self._events.cache_hit(client, "l1")
        return entry.token

    async def get(self, client: str) -> Token:
        """A token with more than the refresh buffer left (or a still-valid one if the upstream
        is down)."""
        token = self.peek(client)
        if token is not None:
            return token
        entry = self._l1.get(client)
        if entry is not None and entry.serve_until > self._clock.time():
            # Servable, but the store has not confirmed it lately: ask the store first.
            await asyncio.shield(self._revalidate_soon(client))
            token = self.peek(client)
            if token is not None:
                return token
        return await self._single_flight(client)

    async def invalidate(self, client: str, access_token: str) -> Token:
        """Discard `access_token` if it is the cached token, then return the current token."""
        policy = self.policy(client)
        try:
            result = await self._store.discard(client, access_token, policy.min_forced_interval)
        except StoreUnavailable:
            self._note_store(ok=False)
            result = await self._local.discard(client, access_token, policy.min_forced_interval)
        if result.outcome is DiscardOutcome.THROTTLED:
            raise RefreshThrottled(
                f"client {client!r} was force-refreshed less than "
                f"{policy.min_forced_interval:g} s ago",
                client=client,
                retry_after=result.retry_after,
            )
        self._forget(client, digest(access_token))
        return await self.get(client)

    def on_change(self, change: TokenChange) -> None:
        """Store listener: drop L1 entries that changed and wake local waiters."""
        status = self._status.get(change.client)
        if status is None:
            return
        if change.kind is ChangeKind.DISCARDED:
            self._forget(change.client, change.digest)
        elif change.kind is ChangeKind.SAVED:
            entry = self._l1.get(change.client)
            if entry is not None and entry.token.digest != change.digest:
                del self._l1[change.client]  # a newer token exists: re-read on the next request
        self._wake(change.client)

    async def close(self) -> None:
        """Stop background refreshers and revalidations."""
        tasks = [*self._refreshers.values(), *self._tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- single flight ------------------------------------------------------------------------

    async def _single_flight(self, client: str) -> Token:
        self.policy(client)  # UnknownClient before any work
        self._activate(client)
        future = self._inflight.get(client)
        if future is None:
            future = asyncio.ensure_future(self._obtain(client))
            self._inflight[client] = future
            future.add_done_callback(lambda done: self._flight_done(client, done))
        # shield: a caller that goes away must not cancel the refresh others are waiting for.
        return await asyncio.shield(future)

    def _flight_done(self, client: str, future: asyncio.Future[Token]) -> None:
        if self._inflight.get(client) is future:
            del self._inflight[client]
        if not future.cancelled():
            future.exception()  # retrieved here so an unawaited failure is not reported twice

    async def _obtain(self, client: str, ahead: float = 0.0) -> Token:
        """Return a token servable for `ahead` more seconds, coordinating with the fleet."""
        if self._clock.monotonic() >= self._store_retry_at:
            failures = self._store_failures
            try:
                token = await self._obtain_via(self._store, self._lock, client, ahead)
            except StoreUnavailable:
                self._note_store(ok=False)
            else:
                if self._store_failures == failures:  # no save, hold or release failed either
                    self._note_store(ok=True)
                return token
        entry = self._l1.get(client)
        if entry is not None:
            await self._local.save(client, entry.token)
        return await self._obtain_via(self._local, self._local, client, ahead)

    async def _obtain_via(
        self, store: TokenStore, lock: RefreshLock, client: str, ahead: float
    ) -> Token:
        policy = self._policies[client]
        while True:
            changed = self._changed.setdefault(client, asyncio.Event())  # before reading
            record = await store.load(client)
            token = self._usable(client, record.token)
            if self._fresh(client, token, ahead):
                assert token is not None
                self._events.cache_hit(client, "l2")
                return self._remember(client, token)
            if record.hold is not None:
                return self._held(client, token, record.hold)
            lease = await lock.acquire(client, policy.lock_ttl)
            if lease.acquired:
                try:
                    return await self._refresh_holding_lock(store, client, ahead)
                finally:
                    await self._release(lock, lease)
            # Another instance is refreshing: wait for its broadcast, or for its lease to lapse.
            # The cap re-reads the store now and then in case the broadcast was lost.
            self._events.lock_wait(client)
            await self._wait(changed, min(lease.wait + 0.05, MAX_WAIT_FOR_BROADCAST_SECONDS))

    async def _refresh_holding_lock(self, store: TokenStore, client: str, ahead: float) -> Token:
        record = await store.load(client)  # the previous holder may have just finished
        token = self._usable(client, record.token)
        if self._fresh(client, token, ahead):
            assert token is not None
            self._events.cache_hit(client, "l2")
            return self._remember(client, token)
        if record.hold is not None:
            return self._held(client, token, record.hold)
        try:
            new = await self._fetch(client)
        except BudgetExhausted as exc:
            # No permit for a while: the refresher sleeps until one could come (no spinning).
            self._status[client].hold_until = self._clock.monotonic() + exc.retry_after
            if token is not None and token.expires_at > self._clock.time():
                return self._remember(client, token)  # wait for a permit with the old token
            # The contract's answer for "no valid token and none to be had now" (503).
            raise UpstreamUnavailable(
                f"no valid token for client {client!r} and no budget permit for a request",
                client=client,
                retry_after=exc.retry_after,
            ) from exc
        except UpstreamError as exc:
            hold = self._hold_for(client, exc)
            try:
                await store.hold(client, hold.reason, hold.remaining)
            except StoreUnavailable:
                # Held locally instead, or the fallback would ask the upstream again at once.
                self._note_store(ok=False)
                await self._local.hold(client, hold.reason, hold.remaining)
            return self._held(client, token, hold, exc)
        try:
            new = await store.save(client, new)
        except StoreUnavailable:
            self._note_store(ok=False)  # keep the token we paid for; the store catches up later
        return self._remember(client, new)

    async def _fetch(self, client: str) -> Token:
        if self._take_permit is not None:
            await self._take_permit(client)
        started = self._clock.monotonic()
        try:
            token = await self._fetcher.fetch(client)
        except UpstreamError as exc:
            elapsed = self._clock.monotonic() - started
            self._events.upstream_request(client, outcome_of(exc), elapsed, str(exc))
            raise
        self._events.upstream_request(client, "ok", self._clock.monotonic() - started, None)
        status = self._status[client]
        status.upstream_failures = 0
        status.last_error = None
        status.last_refresh_at = token.obtained_at
        status.last_refresh_outcome = "ok"
        return token

    # -- outcomes -----------------------------------------------------------------------------

    def _hold_for(self, client: str, exc: UpstreamError) -> Hold:
        status = self._status[client]
        status.last_error, status.last_error_at = str(exc), self._clock.time()
        status.last_error_category = status.last_refresh_outcome = outcome_of(exc)
        if isinstance(exc, UpstreamCredentialsRejected):
            return Hold(HoldReason.REJECTED, self._policies[client].min_forced_interval)
        status.upstream_failures += 1
        backoff = min(
            BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2 ** (status.upstream_failures - 1)
        )
        retry_after = exc.retry_after if isinstance(exc, UpstreamUnavailable) else 0.0
        return Hold(HoldReason.UNAVAILABLE, max(retry_after, backoff * random.uniform(0.5, 1.0)))

    def _held(
        self, client: str, token: Token | None, hold: Hold, cause: UpstreamError | None = None
    ) -> Token:
        """Serve a token that has not expired yet, or explain why there is none."""
        self._status[client].hold_until = self._clock.monotonic() + hold.remaining
        if token is not None and token.expires_at > self._clock.time():
            log_event(
                log,
                logging.WARNING,
                "token.served_stale",
                client=client,
                token_fp=token.fingerprint,
                seconds_left=round(token.expires_at - self._clock.time()),
                hold=hold.reason.value,
            )
            return self._remember(client, token)
        if hold.reason is HoldReason.REJECTED:
            if isinstance(cause, UpstreamCredentialsRejected):
                raise cause
            raise UpstreamCredentialsRejected(
                f"the upstream rejected the credentials of client {client!r}; next attempt in "
                f"{hold.remaining:.0f} s",
                client=client,
            )
        raise UpstreamUnavailable(
            f"no valid token for client {client!r} and the upstream is unavailable",
            client=client,
            retry_after=hold.remaining,
        ) from cause

    # -- L1 -----------------------------------------------------------------------------------

    def _usable(self, client: str, token: Token | None) -> Token | None:
        """`token` unless it was discarded (a read that raced an invalidation)."""
        if token is None or token.digest in self._status[client].tombstones:
            return None
        return token

    def _fresh(self, client: str, token: Token | None, ahead: float) -> bool:
        """Whether `token` may still be served `ahead` seconds from now."""
        if token is None:
            return False
        serve_until = token.serve_until(self._policies[client].refresh_buffer)
        return serve_until - ahead > self._clock.time()

    def _remember(self, client: str, token: Token) -> Token:
        REDACTOR.add(token.access_token, key=client, expires_at=token.expires_at)
        policy = self._policies[client]
        self._l1[client] = _L1Entry(
            token, token.serve_until(policy.refresh_buffer), self._clock.monotonic()
        )
        status = self._status[client]
        status.token = token
        status.last_refresh_at = max(status.last_refresh_at or 0.0, token.obtained_at)
        if status.last_error is not None and token.obtained_at > (status.last_error_at or 0.0):
            # Another instance refreshed after this one failed: the fleet has recovered.
            status.last_error, status.last_refresh_outcome = None, "ok"
        return token

    def _forget(self, client: str, token_digest: str) -> None:
        self._status[client].tombstones.append(token_digest)
        entry = self._l1.get(client)
        if entry is not None and entry.token.digest == token_digest:
            del self._l1[client]

    def _revalidate_soon(self, client: str) -> asyncio.Task[None]:
        """The running re-check of `client`'s L1 entry, started if there is none (one at a time:
        a burst of requests at the hard age makes one store read)."""
        running = self._revalidating.get(client)
        if running is None:
            running = self._revalidating[client] = asyncio.ensure_future(self._revalidate(client))
            self._tasks.add(running)
            running.add_done_callback(self._revalidation_done)
        return running

    def _revalidation_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:  # a bug: keep it visible
            log.error("token.revalidate_failed", exc_info=task.exception())

    async def _revalidate(self, client: str) -> None:
        """Confirm the L1 entry against the store; drop it if the store has another token."""
        asked_at = self._clock.monotonic()  # the entry is confirmed as of the read, not its end
        try:
            record = await self._store.load(client)
        except StoreUnavailable:
            self._note_store(ok=False)  # keep serving L1 while the token is valid
            return
        finally:
            self._revalidating.pop(client, None)
        self._note_store(ok=True)
        entry = self._l1.get(client)
        if entry is None:
            return
        if record.token is not None and record.token.digest == entry.token.digest:
            entry.checked_at = asked_at
        else:
            del self._l1[client]

    # -- refresh ahead ------------------------------------------------------------------------

    def _activate(self, client: str) -> None:
        status = self._status[client]
        if not status.requested:
            status.requested = True
            # A fresh context: the refresher's log lines are not the activating request's.
            self._refreshers[client] = asyncio.create_task(
                self._refresh_ahead(client), context=contextvars.Context()
            )

    async def _refresh_ahead(self, client: str) -> None:
        """Refresh the token a little before it enters the buffer, so callers never wait.

        Each instance runs one per client it has served; jitter spreads the fleet's wake-ups and
        the refresh lock lets only the first one call the upstream.
        """
        status = self._status[client]
        while True:
            entry = self._l1.get(client)
            if entry is None:
                await self._clock.sleep(self._l1_max_age)
                continue
            lead = _lead(entry.token.lifetime) * random.uniform(0.5, 1.0)
            await self._clock.sleep(max(0.0, entry.serve_until - lead - self._clock.time()))
            try:
                await self._obtain(client, ahead=lead)
            except (UpstreamError, StoreUnavailable, BudgetExhausted):
                pass  # recorded in the status; callers get the same error or a stale token
            except Exception:  # the refresher must outlive a bug in one round
                log.exception("token.refresh_ahead_failed", extra={"fields": {"client": client}})
            # During a hold the store answers at once; do not spin on it until the hold ends.
            await self._clock.sleep(max(0.05, status.hold_until - self._clock.monotonic()))

    # -- plumbing -----------------------------------------------------------------------------

    def _wake(self, client: str) -> None:
        event = self._changed.pop(client, None)
        if event is not None:
            event.set()

    async def _wait(self, changed: asyncio.Event, timeout: float) -> None:
        try:
            await asyncio.wait_for(changed.wait(), timeout)
        except TimeoutError:
            pass

    async def _release(self, lock: RefreshLock, lease: Lease) -> None:
        try:
            await lock.release(lease)
        except StoreUnavailable:
            self._note_store(ok=False)  # the lease lapses by itself

    def _note_store(self, *, ok: bool) -> None:
        if ok:
            self._store_retry_at = 0.0  # back on the shared store at once, not after the pause
        else:
            self._store_retry_at = self._clock.monotonic() + STORE_RETRY_SECONDS
            self._store_failures += 1
            self._events.store_error()
        if ok != self.store_ok:
            log_event(log, logging.INFO if ok else logging.WARNING, "store.state", ok=ok)
        self.store_ok = ok


def _lead(lifetime: float) -> float:
    """How long before the buffer the background refresh starts: 10 % of the lifetime, 0.3-30 s."""
    return min(30.0, max(0.3, lifetime * 0.1))
