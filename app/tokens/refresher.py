"""Asking the upstream: permits, outcomes, backoff and holds; and refreshing ahead of expiry.

Timeline of one client's token (buffer = `refresh_buffer_seconds`, lead = a margin before it):

    obtained ........ refresh-ahead point ... serve_until (expiry - buffer) ... expires_at
                      ^ background task         ^ callers never get it past here
                        refreshes (jittered)      while the upstream answers

A failed request puts the client on hold fleet-wide (exponential backoff with jitter, or the
forced-refresh floor when the credentials were rejected), so no instance loops on the upstream;
during a hold a token that has not expired is still served.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import random
from collections.abc import Awaitable, Callable, Mapping

from app.clock import Clock
from app.errors import (
    BudgetExhausted,
    StoreUnavailable,
    UpstreamCredentialsRejected,
    UpstreamError,
    UpstreamUnavailable,
)
from app.tokens.l1 import L1Cache
from app.tokens.model import ClientPolicy, Hold, HoldReason, Token
from app.tokens.ports import PermitTaker, TokenEvents, TokenFetcher
from app.tokens.status import ClientStatus, outcome_of

log = logging.getLogger(__name__)

BACKOFF_BASE_SECONDS = 1.0
BACKOFF_CAP_SECONDS = 30.0
PROBE_INTERVAL_SECONDS = 1.0
"""With no valid token to serve, the fleet asks the upstream about this often (CONTRACT.md: a
caller gets a token within 2 s of the upstream's return)."""

Obtain = Callable[[str, float], Awaitable[Token]]
"""Obtains a token of a client servable for the given seconds more, coordinating with the fleet."""


class UpstreamRefresher:
    """One upstream token request at a time per caller of it, with its outcome recorded."""

    def __init__(
        self,
        policies: Mapping[str, ClientPolicy],
        fetcher: TokenFetcher,
        status: Mapping[str, ClientStatus],
        clock: Clock,
        events: TokenEvents,
        take_permit: PermitTaker | None,
    ) -> None:
        self._policies = policies
        self._fetcher = fetcher
        self._status = status
        self._clock = clock
        self._events = events
        self._take_permit = take_permit

    async def fetch(self, client: str) -> Token:
        """A new token from the upstream (after a budget permit, when token requests count)."""
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
        self._status[client].fetched(token)
        return token

    def hold_for(self, client: str, exc: UpstreamError, token: Token | None) -> Hold:
        """Record the failure and decide how long the fleet holds off the upstream.

        While `token` is still valid, the hold backs off exponentially (callers are served
        meanwhile), but never past the token's expiry; with nothing valid to serve, callers
        are waiting, so the upstream is probed about once a second (the fleet's refresh lock
        makes that one request), and a caller gets a token soon after the upstream returns.
        """
        status = self._status[client]
        now = self._clock.time()
        status.failed(exc, now)
        if isinstance(exc, UpstreamCredentialsRejected):
            return Hold(HoldReason.REJECTED, self._policies[client].min_forced_interval)
        backoff = min(
            BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2 ** (status.upstream_failures - 1)
        )
        valid_for = 0.0 if token is None else token.expires_at - now
        pause = min(backoff * random.uniform(0.5, 1.0), max(valid_for, PROBE_INTERVAL_SECONDS))
        if valid_for <= 0:
            pause = PROBE_INTERVAL_SECONDS
        retry_after = exc.retry_after if isinstance(exc, UpstreamUnavailable) else 0.0
        return Hold(HoldReason.UNAVAILABLE, max(retry_after, pause))

    def held(
        self, client: str, token: Token | None, hold: Hold, cause: UpstreamError | None = None
    ) -> Token:
        """During `hold`: the token to serve if it has not expired yet, or the reason there is
        none (raised)."""
        self._status[client].hold_until = self._clock.monotonic() + hold.remaining
        now = self._clock.time()
        if token is not None and token.expires_at > now:
            self._events.served_stale(client, token, token.expires_at - now, hold.reason.value)
            return token
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

    def no_permit(self, client: str, token: Token | None, exc: BudgetExhausted) -> Token:
        """No budget permit for a while: keep serving a valid token, or answer 503."""
        # The refresher sleeps until a permit could come (no spinning).
        self._status[client].hold_until = self._clock.monotonic() + exc.retry_after
        if token is not None and token.expires_at > self._clock.time():
            return token  # wait for a permit with the old token
        # The contract's answer for "no valid token and none to be had now" (503).
        raise UpstreamUnavailable(
            f"no valid token for client {client!r} and no budget permit for a request",
            client=client,
            retry_after=exc.retry_after,
        ) from exc


class RefreshAhead:
    """One background task per client this instance has served, refreshing before the buffer.

    Jitter spreads the fleet's wake-ups and the refresh lock lets only the first one call the
    upstream, so callers never wait for a refresh.
    """

    def __init__(
        self, l1: L1Cache, status: Mapping[str, ClientStatus], clock: Clock, obtain: Obtain
    ) -> None:
        self._l1 = l1
        self._status = status
        self._clock = clock
        self._obtain = obtain
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def start(self, client: str) -> None:
        """Start refreshing `client` ahead (once)."""
        if client not in self._tasks:
            # A fresh context: the refresher's log lines are not the activating request's.
            self._tasks[client] = asyncio.create_task(
                self._run(client), context=contextvars.Context()
            )

    async def close(self) -> None:
        """Stop every refresher."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, client: str) -> None:
        status = self._status[client]
        while True:
            entry = self._l1.entry(client)
            if entry is not None:
                lead = lead_time(entry.token.lifetime) * random.uniform(0.5, 1.0)
                await self._clock.sleep(max(0.0, entry.serve_until - lead - self._clock.time()))
            elif status.last_error is not None:
                # Nothing held and the last attempt failed: try again when the hold ends, so the
                # client recovers (and /health with it) without waiting for a caller.
                lead = 0.0
                await self._clock.sleep(max(0.0, status.hold_until - self._clock.monotonic()))
            else:
                await self._clock.sleep(self._l1.max_age)  # dropped by a change: re-read on use
                continue
            try:
                await self._obtain(client, lead)
            except (UpstreamError, StoreUnavailable, BudgetExhausted):
                pass  # recorded in the status; callers get the same error or a stale token
            except Exception:  # the refresher must outlive a bug in one round
                log.exception("token.refresh_ahead_failed", extra={"fields": {"client": client}})
            # During a hold the store answers at once; do not spin on it until the hold ends.
            await self._clock.sleep(max(0.05, status.hold_until - self._clock.monotonic()))


def lead_time(lifetime: float) -> float:
    """How long before the buffer the background refresh starts: 10 % of the lifetime, 0.3-30 s."""
    return min(30.0, max(0.3, lifetime * 0.1))
