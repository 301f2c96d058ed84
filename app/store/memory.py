"""The embedded store: one process, no Redis. Same semantics as the Redis adapter.

Tokens are kept in clear: nothing here leaves the process (no network, no disk, no replica, no
backup), so whoever could read this memory could read the L1 cache and the client secrets just
as well; sealing them would protect nothing. What it shares with the Redis adapter is the
binding to credentials: state is kept per *generation* (`generation(client)`, the credential
fingerprint `app.main` injects), so after a client's secret changes nothing obtained with the
old one is found, and a token minted with other credentials than the current ones is not stored.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

from app.observability.fleet import InstanceInfo
from app.store.memory_budget import MemoryBudget
from app.tokens.model import (
    ChangeKind,
    DiscardOutcome,
    DiscardResult,
    Hold,
    HoldReason,
    Lease,
    Token,
    TokenChange,
    TokenRecord,
)
from app.tokens.ports import ChangeListener


@dataclass
class _ClientState:
    token: Token | None = None
    hold_reason: HoldReason | None = None
    hold_until: float = 0.0  # monotonic
    last_discard_at: float | None = None  # monotonic
    lock_owner: str | None = None
    lock_until: float = 0.0  # monotonic


def _no_generation(_client: str) -> str:
    return ""


@dataclass
class MemoryStore(MemoryBudget):
    """Tokens, holds, locks and the budget in memory; changes are announced synchronously."""

    kind: str = "memory"
    generation: Callable[[str], str] = _no_generation  # the client's credential fingerprint
    _clients: dict[str, tuple[str, _ClientState]] = field(default_factory=dict)
    _listeners: list[ChangeListener] = field(default_factory=list)
    _instances: dict[str, tuple[str, float]] = field(default_factory=dict)  # version, until

    def _state(self, client: str) -> _ClientState:
        """The state of `client`'s current generation (a new generation starts empty)."""
        generation = self.generation(client)
        held = self._clients.get(client)
        if held is None or held[0] != generation:
            held = self._clients[client] = (generation, _ClientState())
        return held[1]

    def _announce(self, change: TokenChange) -> None:
        for listener in self._listeners:
            listener(change)

    async def start(self) -> None:
        """Nothing to open."""

    async def close(self) -> None:
        """Nothing to release."""

    async def ping(self) -> bool:
        """Always reachable."""
        return True

    def subscribe(self, listener: ChangeListener) -> None:
        """Register `listener` for every change."""
        self._listeners.append(listener)

    async def load(self, client: str) -> TokenRecord:
        """The client's token and any hold that has not yet lapsed."""
        state = self._state(client)
        remaining = state.hold_until - self.clock.monotonic()
        if state.hold_reason is None or remaining <= 0:
            return TokenRecord(state.token)
        return TokenRecord(state.token, Hold(state.hold_reason, remaining))

    async def save(self, client: str, token: Token) -> Token:
        """Keep whichever of the stored and the new token expires later; a token minted with
        other credentials than the current ones is not stored."""
        if token.minted_by and token.minted_by != self.generation(client):
            return token
        state = self._state(client)
        if state.token is not None and state.token.expires_at >= token.expires_at:
            return state.token
        state.token = token
        state.hold_reason = None  # a fresh token ends any hold
        self._announce(TokenChange(client, ChangeKind.SAVED, token.digest))
        return token

    async def discard(self, client: str, access_token: str, min_interval: float) -> DiscardResult:
        """Compare-and-delete with the forced-refresh floor."""
        state = self._state(client)
        if state.token is None or not secrets.compare_digest(  # bytes: any text compares
            state.token.access_token.encode(), access_token.encode()
        ):
            return DiscardResult(DiscardOutcome.NOT_CURRENT)
        now = self.clock.monotonic()
        if state.last_discard_at is not None and now - state.last_discard_at < min_interval:
            return DiscardResult(
                DiscardOutcome.THROTTLED, min_interval - (now - state.last_discard_at)
            )
        discarded, state.token, state.last_discard_at = state.token, None, now
        self._announce(TokenChange(client, ChangeKind.DISCARDED, discarded.digest))
        return DiscardResult(DiscardOutcome.DISCARDED)

    async def hold(self, client: str, reason: HoldReason, seconds: float) -> None:
        """Pause upstream requests for this client for `seconds`."""
        state = self._state(client)
        state.hold_reason, state.hold_until = reason, self.clock.monotonic() + seconds

    async def acquire(self, client: str, ttl: float) -> Lease:
        """Take the lock if it is free or its holder's lease has lapsed."""
        state = self._state(client)
        now = self.clock.monotonic()
        if state.lock_owner is not None and state.lock_until > now:
            return Lease(client, None, state.lock_until - now)
        state.lock_owner, state.lock_until = (
            f"{self.generation(client)}.{secrets.token_hex(8)}",
            now + ttl,
        )
        return Lease(client, state.lock_owner, 0.0)

    async def release(self, lease: Lease) -> bool:
        """Release the lock if `lease` still owns it; False if it had lapsed (as in Redis, where
        the key expires: nothing is announced then). A lock of older credentials is gone."""
        if lease.owner is None or not lease.owner.startswith(f"{self.generation(lease.client)}."):
            return False
        state = self._state(lease.client)
        if state.lock_owner != lease.owner:
            return False
        state.lock_owner = None
        if state.lock_until <= self.clock.monotonic():
            return False
        self._announce(TokenChange(lease.client, ChangeKind.RELEASED, "-"))
        return True

    # -- fleet view ---------------------------------------------------------------------------

    async def heartbeat(self, instance: str, version: str, ttl: float) -> None:
        """Record `instance` as alive for `ttl` seconds."""
        self._instances[instance] = (version, self.clock.monotonic() + ttl)

    async def instances(self) -> list[InstanceInfo]:
        """Instances whose heartbeat has not lapsed (in one process: this one)."""
        now = self.clock.monotonic()
        self._instances = {k: v for k, v in self._instances.items() if v[1] > now}
        return [
            InstanceInfo(name, version, until - now)
            for name, (version, until) in sorted(self._instances.items())
        ]
