"""The Redis adapter: tokens, holds and the refresh lock shared by a fleet of brokers.

Key schema v2 (see alembic-free-migrations.md); `P` is `store.key_prefix`. Every key of one
client carries the hash tag `{client.FP}`, FP being the fingerprint of the client's credentials
(`app.store.sealing`), so a script's keys share one Redis Cluster slot and each generation of
credentials has keys of its own:

    P:v2:{client.FP}:token   hash   sealed, digest, expires_at: the token sealed with AES-256-GCM
    P:v2:{client.FP}:hold    string why the fleet holds off the upstream; expires with the hold
    P:v2:{client.FP}:forced  string present while a forced refresh is too recent
    P:v2:{client.FP}:lock    string refresh lock owner; SET NX PX, compare-and-delete release
    P:v2:changes             pub/sub channel, messages "client.FP kind digest"
    P:v1:{budget}:grants     zset   "caller permit-id" -> grant time (ms of Redis time); the
                                    fleet's sliding window
    P:v1:{budget}:cooldown   string present until the upstream's reported reset (or a failover
                                    fence) has passed
    P:v1:{budget}:epoch      string run_id of the Redis process that counts the window
    P:v1:{budget}:tq         zset   waiting token requests -> arrival number
    P:v1:{budget}:aq         zset   waiting API permit requests -> virtual finish tag
    P:v1:{budget}:leases     zset   waiting request -> ms at which it is dropped unless asked again
    P:v1:{budget}:waiters    hash   waiting request -> "t caller" / "a caller"
    P:v1:{budget}:fair       hash   v (virtual time), seq, pace, tag:CALLER, n:CALLER (while any
                                    waits)
    P:v1:instances           zset   "INSTANCE VERSION" -> Redis ms at which its heartbeat lapses

The budget and instance keys keep their v1 names: a budget window must never be split between
two schema versions during a rolling upgrade. The fair queue (issue 18) only added keys and
names its grants "caller permit-id": instances of either version count every grant in the one
window, so the limit holds across the upgrade (the fair order only among the new ones).

Nothing read from Redis is trusted: an entry that does not decrypt, parse or pass the checks of
`ClientSealer.open` is treated as missing, logged as `token.cache_entry_rejected` (never its
contents), counted through `on_rejected`, and removed with compare-and-delete (`reject.lua`).

Every redis-py exception is translated into `StoreUnavailable` here. The topology (one server,
Sentinel, Cluster) is `app.store.redis_topology`'s business.

After a failover (Sentinel or Cluster) the new primary may lack the last writes the old one
acknowledged (replication is asynchronous). The budget is fenced: `budget_ask` records the
run_id of the Redis process that counts the window and, when another process answers, grants
nothing for one window + `failover_grace`. A lost lock costs one extra upstream request and
`save` never stores an earlier-expiring token. The reasoning, and why not `WAIT`, is in
alembic-free-migrations.md ("Topologies and failover").
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from importlib import resources
from typing import TYPE_CHECKING, Any, TypeVar

from redis.asyncio.client import PubSub

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
from app.errors import StoreUnavailable
from app.observability.fleet import InstanceInfo
from app.observability.logs import log_event
from app.store.redis_pool import ConnectionGate
from app.store.redis_topology import (
    CLIENT_ERRORS,
    SENTINEL_POLL_SECONDS,
    AnyRedis,
    open_topology,
)
from app.store.sealing import (
    MAX_UPSTREAM_LIFETIME_SECONDS,
    SCHEMA_VERSION,
    ClientSealer,
    EntryRejected,
    SealedEntry,
    Sealers,
)
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
    digest,
)
from app.tokens.ports import ChangeListener

if TYPE_CHECKING:  # adapters read settings; only app.main hands them over
    from app.config import StoreSettings

log = logging.getLogger(__name__)

FLEET_SCHEMA_VERSION = "v1"
"""The budget and instance keys: unchanged since v1 (the token keys are `SCHEMA_VERSION`)."""
_SCRIPTS = (
    "load",
    "save",
    "discard",
    "reject",
    "time",
    "acquire",
    "release",
    "budget_ask",
    "budget_leave",
    "budget_cooldown",
    "budget_usage",
    "heartbeat",
    "instances",
)
_RESUBSCRIBE_FIRST_SECONDS = 0.1
_RESUBSCRIBE_MAX_SECONDS = 5.0
SUBSCRIBE_WAIT_SECONDS = 2.0
T = TypeVar("T")
USAGE_MAX_ATTRIBUTED = 10_000  # grants and waiters attributed to callers per /health
_OUTCOMES = {1: Outcome.GRANTED, 0: Outcome.WAITING, -1: Outcome.DENIED}

RejectListener = Callable[[str, str], None]
"""Called with (client, reason) for every cache entry this instance rejected."""


def _not_counted(_client: str, _reason: str) -> None:
    pass


def lua(name: str) -> str:
    """The text of `app/store/lua/<name>.lua`."""
    return resources.files("app.store").joinpath("lua", f"{name}.lua").read_text("utf-8")


def _no_fingerprint(_client: str) -> str:
    return ""


class KeySchema:
    """Key names under a prefix: a client's keys (v2) name its credentials' fingerprint."""

    def __init__(self, prefix: str, fingerprint: Callable[[str], str] = _no_fingerprint) -> None:
        self.base = f"{prefix}:{FLEET_SCHEMA_VERSION}"
        self.tokens = f"{prefix}:{SCHEMA_VERSION}"
        self.changes = f"{self.tokens}:changes"
        self.instances = f"{self.base}:instances"
        self._fingerprint = fingerprint

    def tag(self, client: str, fingerprint: str | None = None) -> str:
        """`client.FP`: the hash tag of one client's keys under one generation of credentials
        (the current one unless `fingerprint` is given)."""
        return f"{client}.{self._fingerprint(client) if fingerprint is None else fingerprint}"

    def client(self, client: str, kind: str, fingerprint: str | None = None) -> str:
        """`P:v2:{client.FP}:kind`."""
        return f"{self.tokens}:{{{self.tag(client, fingerprint)}}}:{kind}"

    @property
    def budget(self) -> list[str]:
        """The budget scripts' keys: grants zset and cooldown, in one slot."""
        return [f"{self.base}:{{budget}}:grants", f"{self.base}:{{budget}}:cooldown"]

    @property
    def budget_epoch(self) -> str:
        """The run_id of the Redis process that counts the window; in the budget's slot."""
        return f"{self.base}:{{budget}}:epoch"

    @property
    def budget_queue(self) -> list[str]:
        """The fair queue's keys: token queue, API queue, leases, waiters, state."""
        return [
            f"{self.base}:{{budget}}:{kind}" for kind in ("tq", "aq", "leases", "waiters", "fair")
        ]


@asynccontextmanager
async def translated(operation: str) -> AsyncIterator[None]:
    """Turn any Redis or socket failure into StoreUnavailable (the core's only store error)."""
    try:
        yield
    except CLIENT_ERRORS as exc:
        raise StoreUnavailable(
            f"store unavailable during {operation}: {type(exc).__name__}"
        ) from exc


class RedisStore:
    """`Store` on Redis: one server (`redis://`, `rediss://`, Unix socket), Sentinel or Cluster."""

    def __init__(
        self,
        settings: StoreSettings,
        *,
        clock: Clock = SYSTEM_CLOCK,
        on_pool_exhausted: Callable[[], None] | None = None,
        sealers: Sealers | None = None,
        on_rejected: RejectListener = _not_counted,
    ) -> None:
        """`sealers` holds each client's credential-bound keys (`app.main` binds every client;
        without it, keys derive from client names alone: for tests and tools)."""
        assert settings.redis_url is not None
        self._clock = clock
        self.sealers = sealers or Sealers()
        self._on_rejected = on_rejected
        self.keys = KeySchema(
            settings.key_prefix, lambda client: self.sealers.get(client).fingerprint
        )
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
        self._scripts = {name: self.redis.register_script(lua(name)) for name in _SCRIPTS}
        self._listeners: list[ChangeListener] = []
        self._subscriber: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        # Reset by every successful subscribe, so a failover long after the last one is
        # followed quickly.
        self._resubscribe_delay = _RESUBSCRIBE_FIRST_SECONDS

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start listening for changes; Redis may still be down (the listener retries)."""
        await self.topology.start()
        self._subscriber = asyncio.create_task(self._listen_forever())
        try:  # so that a cold fleet does not miss the first broadcast
            await asyncio.wait_for(self._subscribed.wait(), SUBSCRIBE_WAIT_SECONDS)
        except TimeoutError:
            log_event(log, logging.WARNING, "store.unreachable_at_start")

    async def close(self) -> None:
        """Stop the listener and close the pool."""
        if self._subscriber is not None:
            self._subscriber.cancel()
            await asyncio.gather(self._subscriber, return_exceptions=True)
        await self.topology.close()

    async def ping(self) -> bool:
        """Whether Redis answers PING (Cluster: every primary)."""
        return await self.topology.ping()

    def subscribe(self, listener: ChangeListener) -> None:
        """Call `listener` for every change any instance makes."""
        self._listeners.append(listener)

    # -- tokens -------------------------------------------------------------------------------

    async def _run(self, name: str, keys: list[str], args: list[Any]) -> Any:
        async with translated(name):
            return await self._scripts[name](keys=keys, args=args)

    async def load(self, client: str) -> TokenRecord:
        """Token and hold in one script call; an entry that fails any check is missing."""
        sealer = self.sealers.get(client)
        token, hold = await self._read(client, sealer)
        return TokenRecord(token, hold)

    async def _read(self, client: str, sealer: ClientSealer) -> tuple[Token | None, Hold | None]:
        keys = self._token_keys(client, sealer.fingerprint)
        raw = await self._run("load", keys, [])
        hold = None
        if raw[5] and int(raw[6]) > 0:
            hold = Hold(HoldReason(raw[5]), int(raw[6]) / 1000)
        entry_id = raw[3]
        if entry_id is None:
            return None, hold
        redis_now = float(raw[4])
        try:
            if raw[0] is None or raw[1] is None or raw[2] is None:
                raise EntryRejected("malformed")
            opened = sealer.open(SealedEntry(raw[0], raw[1], raw[2]), redis_now)
        except EntryRejected as exc:
            await self._reject(client, keys[0], entry_id, exc.reason)
            return None, hold
        now = self._clock.time()  # the token's times move from Redis' clock onto this one's
        token = Token(
            opened.access_token,
            now + (opened.expires_at - redis_now),
            now - (redis_now - opened.obtained_at),
            opened.token_type,
            minted_by=sealer.fingerprint,
        )
        return token, hold

    async def _reject(self, client: str, key: str, entry_id: str, reason: str) -> None:
        """Log, count and compare-and-delete an entry that must not be served."""
        removed = False
        try:
            removed = bool(await self._run("reject", [key], [entry_id]))
        finally:  # logged and counted even when Redis fails between the read and the removal
            log_event(
                log,
                logging.WARNING,
                "token.cache_entry_rejected",
                client=client,
                reason=reason,
                removed=removed,
            )
            self._on_rejected(client, reason)

    def _token_keys(self, client: str, fingerprint: str) -> list[str]:
        return [
            self.keys.client(client, "token", fingerprint),
            self.keys.client(client, "hold", fingerprint),
        ]

    async def save(self, client: str, token: Token) -> Token:
        """Store `token` sealed, unless a later-expiring one is stored; return the winner.

        A token minted with other credentials than the client's current ones is not stored
        (it is returned as is: the token service does not serve it either).
        """
        sealer = self.sealers.get(client)
        if token.minted_by and token.minted_by != sealer.fingerprint:
            return token
        token = _within_upstream_lifetime(client, token)
        keys = self._token_keys(client, sealer.fingerprint)
        for _ in range(3):  # a stored winner that fails the checks is removed, then try again
            if await self._store_sealed(client, sealer, keys, token):
                return token
            winner, _ = await self._read(client, sealer)
            if winner is not None:
                return winner
        return token  # kept by this instance; the store catches up at the next refresh

    async def _store_sealed(
        self, client: str, sealer: ClientSealer, keys: list[str], token: Token
    ) -> bool:
        # The times are sealed with the entry, so they are taken on Redis' clock first (the
        # node that holds the key), as the relative times v1 passed to the script were.
        redis_now = float(await self._run("time", keys[:1], []))
        now = self._clock.time()
        expires_at = redis_now + (token.expires_at - now)
        obtained_at = redis_now - max(0.0, now - token.obtained_at)
        entry = sealer.seal(token.access_token, token.token_type, expires_at, obtained_at)
        ttl_ms = max(1000, int((token.expires_at - now) * 1000) + 1000)
        stored = await self._run(
            "save",
            keys,
            [
                entry.sealed,
                entry.digest,
                entry.expires_at,
                ttl_ms,
                self.keys.changes,
                _message(self.keys.tag(client, sealer.fingerprint), ChangeKind.SAVED, token.digest),
            ],
        )
        return int(stored) == 1

    async def discard(self, client: str, access_token: str, min_interval: float) -> DiscardResult:
        """Compare-and-delete (on the keyed digest) with the forced-refresh floor, decided
        inside Redis."""
        sealer = self.sealers.get(client)
        fp = sealer.fingerprint
        raw = await self._run(
            "discard",
            [self.keys.client(client, "token", fp), self.keys.client(client, "forced", fp)],
            [
                sealer.digest(access_token),
                int(min_interval * 1000),
                self.keys.changes,
                _message(self.keys.tag(client, fp), ChangeKind.DISCARDED, digest(access_token)),
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
        fingerprint = self.sealers.get(client).fingerprint
        owner = f"{fingerprint}.{secrets.token_hex(12)}"
        raw = await self._run(
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
        released = await self._run(
            "release",
            [self.keys.client(lease.client, "lock", fingerprint)],
            [
                lease.owner,
                self.keys.changes,
                _message(self.keys.tag(lease.client, fingerprint), ChangeKind.RELEASED, "-"),
            ],
        )
        return bool(released)

    # -- budget -------------------------------------------------------------------------------

    async def ask(self, window: Window, request: PermitRequest, max_wait: float) -> Answer:
        """One script call decides on Redis time, behind the failover fence (see budget_ask.lua)."""
        now = self._clock.monotonic()
        expected = self._epoch if now - self._epoch_seen_at < window.seconds else ""
        raw = await self._run(
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
        await self._run("budget_leave", self.keys.budget_queue, [request_id])

    async def cool_down(self, seconds: float) -> float:
        """Extend the cooldown to at least `seconds` (a positive time is at least 1 ms: PX 0 is
        an error); no time only reads the cooldown left, as in memory."""
        if seconds <= 0:
            async with translated("cool_down"):
                left = await self.redis.pttl(self.keys.budget[1])
            return max(0, int(left)) / 1000
        raw = await self._run("budget_cooldown", [self.keys.budget[1]], [max(1, _ms(seconds))])
        return int(raw) / 1000

    async def usage(self, window: Window) -> Usage:
        """Grants in the window and waiters, per caller, and the cooldown left, on Redis time."""
        leases, waiters = self.keys.budget_queue[2:4]
        raw = await self._run(
            "budget_usage",
            [*self.keys.budget, leases, waiters],
            [_ms(window.seconds), USAGE_MAX_ATTRIBUTED],
        )
        return Usage(int(raw[0]), int(raw[1]) / 1000, _counts(raw[2]), _counts(raw[3]))

    # -- fleet view ---------------------------------------------------------------------------

    async def heartbeat(self, instance: str, version: str, ttl: float) -> None:
        """ZADD this instance with its lapse time (Redis clock); prune lapsed ones."""
        await self._run("heartbeat", [self.keys.instances], [f"{instance} {version}", _ms(ttl)])

    async def instances(self) -> list[InstanceInfo]:
        """Instances alive on Redis time."""
        raw = await self._run("instances", [self.keys.instances], [])
        alive = []
        for member, left_ms in zip(raw[::2], raw[1::2], strict=True):
            instance, _, version = str(member).partition(" ")
            alive.append(InstanceInfo(instance, version, int(left_ms) / 1000))
        return sorted(alive, key=lambda info: info.instance)

    # -- change feed --------------------------------------------------------------------------

    async def _listen_forever(self) -> None:
        """Deliver change messages to listeners; reconnect with backoff after a failure."""
        while True:
            try:
                await self._listen_once()
            except asyncio.CancelledError:
                raise
            except CLIENT_ERRORS as exc:
                log_event(log, logging.DEBUG, "store.subscriber_retry", error=type(exc).__name__)
            # A gap in the feed is healed by the token service re-reading the store.
            await asyncio.sleep(self._resubscribe_delay)
            self._resubscribe_delay = min(_RESUBSCRIBE_MAX_SECONDS, self._resubscribe_delay * 2)

    async def _listen_once(self) -> None:
        pubsub: PubSub = await self.topology.pubsub()
        try:
            await pubsub.subscribe(self.keys.changes)
            self._subscribed.set()
            self._resubscribe_delay = _RESUBSCRIBE_FIRST_SECONDS
            while True:
                message = await pubsub.get_message(timeout=30.0)
                if message is not None:
                    self._dispatch(message.get("data"))
        finally:
            await _quietly(pubsub.aclose)

    def _dispatch(self, data: object) -> None:
        change = _parse_message(data)
        if change is None:
            return
        client, _, fingerprint = change.client.partition(".")
        if fingerprint != self.sealers.get(client).fingerprint:
            return  # another generation of this client's credentials (a rolling rotation)
        change = TokenChange(client, change.kind, change.digest)
        for listener in self._listeners:
            listener(change)


def _counts(flat: list[Any]) -> dict[str, int]:
    return {str(name): int(count) for name, count in zip(flat[::2], flat[1::2], strict=True)}


def _ms(seconds: float) -> int:
    return max(0, round(seconds * 1000))


def _within_upstream_lifetime(client: str, token: Token) -> Token:
    """`token`, its expiry brought forward to the longest lifetime the upstream grants.

    Readers reject entries that claim to live longer (a tampered expiry looks like that), so a
    longer-lived token is stored, and served, as if it lived that long: refreshed early, never
    refetched in a loop.
    """
    if token.lifetime <= MAX_UPSTREAM_LIFETIME_SECONDS:
        return token
    log_event(
        log,
        logging.INFO,
        "token.lifetime_capped",
        client=client,
        lifetime=round(token.lifetime),
        capped_to=round(MAX_UPSTREAM_LIFETIME_SECONDS),
    )
    return replace(token, expires_at=token.obtained_at + MAX_UPSTREAM_LIFETIME_SECONDS)


def _message(tag: str, kind: ChangeKind, digest: str) -> str:
    return f"{tag} {kind.value} {digest}"


def _parse_message(data: object) -> TokenChange | None:
    if not isinstance(data, str):
        return None
    parts = data.split(" ")
    if len(parts) != 3:
        return None
    try:
        return TokenChange(parts[0], ChangeKind(parts[1]), parts[2])
    except ValueError:
        return None


async def _quietly(close: Callable[[], Awaitable[T]]) -> None:
    try:
        await close()
    except CLIENT_ERRORS:
        pass
