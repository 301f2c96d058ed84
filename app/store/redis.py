"""The Redis adapter: tokens, holds and the refresh lock shared by a fleet of brokers.

Its parts: the key names (`redis_keys`), the Lua scripts and the translation of every redis-py
exception into `StoreUnavailable` (`redis_scripts`), the sealed token entries and the rejection
of those that fail their checks (`redis_entries`), the pub/sub change feed (`redis_changes`).
The topology (one server, Sentinel, Cluster) is `app.store.redis_topology`'s business.

After a failover (Sentinel or Cluster) the new primary may lack the last writes the old one
acknowledged (replication is asynchronous). The budget is fenced: `budget_ask` records the
run_id of the Redis process that counts the window and, when another process answers, grants
nothing for one window + `failover_grace`. A lost lock costs one extra upstream request and
`save` never stores an earlier-expiring token. The reasoning, and why not `WAIT`, is in
alembic-free-migrations.md ("Topologies and failover").
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from app.budget.model import (
    LEASE_GRACE_SECONDS,
    SNAPSHOT_MAX_GRANTS,
    Answer,
    Outcome,
    PermitRequest,
    Snapshot,
    Usage,
    Window,
)
from app.clock import SYSTEM_CLOCK, Clock
from app.observability.fleet import InstanceInfo
from app.observability.logs import log_event
from app.store.redis_changes import ChangeSubscriber, change_message
from app.store.redis_entries import RejectListener, SealedEntries, not_counted
from app.store.redis_keys import KeySchema
from app.store.redis_pool import ConnectionGate
from app.store.redis_scripts import RedisScripts, translated
from app.store.redis_topology import SENTINEL_POLL_SECONDS, AnyRedis, open_topology
from app.store.sealing import Sealers
from app.tokens.model import (
    ChangeKind,
    DiscardOutcome,
    DiscardResult,
    HoldReason,
    Lease,
    Token,
    TokenRecord,
    digest,
)
from app.tokens.ports import ChangeListener

if TYPE_CHECKING:  # adapters read settings; only app.main hands them over
    from app.config import StoreSettings

log = logging.getLogger(__name__)

USAGE_MAX_ATTRIBUTED = 10_000  # grants and waiters attributed to callers per /health
_OUTCOMES = {1: Outcome.GRANTED, 0: Outcome.WAITING, -1: Outcome.DENIED}


class RedisStore:
    """`Store` on Redis: one server (`redis://`, `rediss://`, Unix socket), Sentinel or Cluster."""

    def __init__(
        self,
        settings: StoreSettings,
        *,
        clock: Clock = SYSTEM_CLOCK,
        on_pool_exhausted: Callable[[], None] | None = None,
        sealers: Sealers | None = None,
        on_rejected: RejectListener = not_counted,
    ) -> None:
        """`sealers` holds each client's credential-bound keys (`app.main` binds every client;
        without it, keys derive from client names alone: for tests and tools)."""
        assert settings.redis_url is not None
        self._clock = clock
        self.sealers = sealers or Sealers()
        self.keys = KeySchema(settings.key_prefix, self._fingerprint)
        # At most max_connections commands at once; one at the bound waits, then fails.
        self.gate = ConnectionGate(
            settings.max_connections, settings.pool_timeout_seconds, on_pool_exhausted
        )
        self.topology = open_topology(settings, self.gate)
        self.kind = self.topology.kind
        self.redis: AnyRedis = self.topology.client
        # How long an instance may still write to an old primary after the switch: two polls
        # of Sentinel and one command's timeout.
        self.failover_grace = 2 * SENTINEL_POLL_SECONDS + settings.socket_timeout_seconds
        self._epoch = ""  # the budget epoch this instance last saw, and when (monotonic)
        self._epoch_seen_at = float("-inf")
        self._scripts = RedisScripts(self.redis)
        self._entries = SealedEntries(self._scripts, self.keys, self.sealers, clock, on_rejected)
        self._changes = ChangeSubscriber(self.topology, self.keys.changes, self._fingerprint)

    def _fingerprint(self, client: str) -> str:
        return self.sealers.get(client).fingerprint

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start listening for changes; Redis may still be down (the listener retries)."""
        await self.topology.start()
        await self._changes.start()

    async def close(self) -> None:
        """Stop the listener and close the pool."""
        await self._changes.close()
        await self.topology.close()

    async def ping(self) -> bool:
        """Whether Redis answers PING (Cluster: every primary)."""
        return await self.topology.ping()

    def subscribe(self, listener: ChangeListener) -> None:
        """Call `listener` for every change any instance makes."""
        self._changes.subscribe(listener)

    # -- tokens -------------------------------------------------------------------------------

    async def load(self, client: str) -> TokenRecord:
        """Token and hold in one script call; an entry that fails any check is missing."""
        return await self._entries.load(client)

    async def save(self, client: str, token: Token) -> Token:
        """Store `token` sealed, unless a later-expiring one is stored; return the winner (see
        `SealedEntries.save`)."""
        return await self._entries.save(client, token)

    async def discard(self, client: str, access_token: str, min_interval: float) -> DiscardResult:
        """Compare-and-delete (on the keyed digest) with the forced-refresh floor, decided
        inside Redis."""
        sealer = self.sealers.get(client)
        fp = sealer.fingerprint
        raw = await self._scripts.run(
            "discard",
            [self.keys.client(client, "token", fp), self.keys.client(client, "forced", fp)],
            [
                sealer.digest(access_token),
                int(min_interval * 1000),
                self.keys.changes,
                change_message(
                    self.keys.tag(client, fp), ChangeKind.DISCARDED, digest(access_token)
                ),
            ],
        )
        code = int(raw[0])
        if code == 0:
            return DiscardResult(DiscardOutcome.NOT_CURRENT)
        if code == 2:
            return DiscardResult(DiscardOutcome.THROTTLED, int(raw[1]) / 1000)
        return DiscardResult(DiscardOutcome.DISCARDED)

    async def hold(self, client: str, reason: HoldReason, seconds: float) -> None:
        """SET the hold with its own expiry (at least 1 ms: PX 0 is an error); as in memory,
        the latest hold decides, so a hold of no time ends the current one."""
        key = self.keys.client(client, "hold")
        async with translated("hold"):
            if seconds <= 0:
                await self.redis.delete(key)
            else:
                await self.redis.set(key, reason.value, px=max(1, _ms(seconds)))

    # -- lock ---------------------------------------------------------------------------------

    async def acquire(self, client: str, ttl: float) -> Lease:
        """SET NX PX with a fresh owner id per acquisition, on the lock of the client's current
        credentials (the owner id names them, for the release)."""
        fingerprint = self._fingerprint(client)
        owner = f"{fingerprint}.{secrets.token_hex(12)}"
        raw = await self._scripts.run(
            "acquire",
            [self.keys.client(client, "lock", fingerprint)],
            [owner, int(ttl * 1000)],
        )
        if int(raw[0]) == 1:
            return Lease(client, owner)
        return Lease(client, None, max(0.0, int(raw[1]) / 1000))

    async def release(self, lease: Lease) -> bool:
        """Compare-and-delete; wakes waiters. False when the lease had lapsed."""
        if lease.owner is None:
            return False
        fingerprint = lease.owner.partition(".")[0]
        released = await self._scripts.run(
            "release",
            [self.keys.client(lease.client, "lock", fingerprint)],
            [
                lease.owner,
                self.keys.changes,
                change_message(self.keys.tag(lease.client, fingerprint), ChangeKind.RELEASED, "-"),
            ],
        )
        return bool(released)

    # -- budget -------------------------------------------------------------------------------

    async def ask(self, window: Window, request: PermitRequest, max_wait: float) -> Answer:
        """One script call decides on Redis time, behind the failover fence (see budget_ask.lua)."""
        now = self._clock.monotonic()
        expected = self._epoch if now - self._epoch_seen_at < window.seconds else ""
        raw = await self._scripts.run(
            "budget_ask",
            [*self.keys.budget, self.keys.budget_epoch, *self.keys.budget_queue],
            [
                window.limit,
                _ms(window.seconds),
                window.reserve,
                _ms(max_wait),
                request.id,
                request.caller,
                request.cost,
                "1" if request.token else "0",
                _ms(window.seconds + self.failover_grace),
                expected,
                _ms(request.fence),
                SNAPSHOT_MAX_GRANTS if request.snapshot else 0,
                _ms(LEASE_GRACE_SECONDS),
            ],
        )
        outcome, delay, remaining, reset = (int(x) for x in raw[:4])
        self._epoch, self._epoch_seen_at = str(raw[4]), now
        if int(raw[5]) == 1:
            log_event(
                log,
                logging.WARNING,
                "budget.failover_fence",
                seconds=round(window.seconds + self.failover_grace, 3),
            )
        snapshot = None
        if len(raw) > 6 and int(raw[6]) == 1:
            snapshot = Snapshot(tuple(int(age) / 1000 for age in raw[7:]))
        return Answer(_OUTCOMES[outcome], delay / 1000, remaining, reset / 1000, snapshot)

    async def leave(self, request_id: str) -> None:
        """Take the request out of the fair queue."""
        await self._scripts.run("budget_leave", self.keys.budget_queue, [request_id])

    async def cool_down(self, seconds: float) -> float:
        """Extend the cooldown to at least `seconds` (a positive time is at least 1 ms: PX 0 is
        an error); no time only reads the cooldown left, as in memory."""
        if seconds <= 0:
            async with translated("cool_down"):
                left = await self.redis.pttl(self.keys.budget[1])
            return max(0, int(left)) / 1000
        raw = await self._scripts.run(
            "budget_cooldown", [self.keys.budget[1]], [max(1, _ms(seconds))]
        )
        return int(raw) / 1000

    async def usage(self, window: Window) -> Usage:
        """Grants in the window and waiters, per caller, and the cooldown left, on Redis time."""
        leases, waiters = self.keys.budget_queue[2:4]
        raw = await self._scripts.run(
            "budget_usage",
            [*self.keys.budget, leases, waiters],
            [_ms(window.seconds), USAGE_MAX_ATTRIBUTED],
        )
        return Usage(int(raw[0]), int(raw[1]) / 1000, _counts(raw[2]), _counts(raw[3]))

    # -- fleet view ---------------------------------------------------------------------------

    async def heartbeat(self, instance: str, version: str, ttl: float) -> None:
        """ZADD this instance with its lapse time (Redis clock); prune lapsed ones."""
        await self._scripts.run(
            "heartbeat", [self.keys.instances], [f"{instance} {version}", _ms(ttl)]
        )

    async def instances(self) -> list[InstanceInfo]:
        """Instances alive on Redis time."""
        raw = await self._scripts.run("instances", [self.keys.instances], [])
        alive = []
        for member, left_ms in zip(raw[::2], raw[1::2], strict=True):
            instance, _, version = str(member).partition(" ")
            alive.append(InstanceInfo(instance, version, int(left_ms) / 1000))
        return sorted(alive, key=lambda info: info.instance)


def _counts(flat: list[Any]) -> dict[str, int]:
    return {str(name): int(count) for name, count in zip(flat[::2], flat[1::2], strict=True)}


def _ms(seconds: float) -> int:
    return max(0, round(seconds * 1000))
