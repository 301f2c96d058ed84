"""The Redis adapter: tokens, holds and the refresh lock shared by a fleet of brokers.

Key schema v1 (see alembic-free-migrations.md); `P` is `store.key_prefix`, and every key of one
client carries the hash tag `{client}` so a script's keys share one Redis Cluster slot:

    P:v1:{client}:token    hash   access_token, token_type, expires_at, obtained_at (Redis clock)
    P:v1:{client}:hold     string why the fleet holds off the upstream; expires when the hold ends
    P:v1:{client}:forced   string present while a forced refresh is too recent; expires by itself
    P:v1:{client}:lock     string refresh lock owner; SET NX PX, compare-and-delete release
    P:v1:changes           pub/sub channel, messages "client kind digest"
    P:v1:{budget}:grants   zset   permit id -> slot (ms of Redis time); the fleet's sliding window
    P:v1:{budget}:cooldown string present until the upstream's reported reset (or a failover
                                  fence) has passed
    P:v1:{budget}:epoch    string run_id of the Redis process that counts the window
    P:v1:instances         zset   "INSTANCE VERSION" -> Redis ms at which its heartbeat lapses

Every redis-py exception is translated into `StoreUnavailable` here. The topology (one server,
Sentinel, Cluster) is `app.store.redis_topology`'s business.

After a failover (Sentinel or Cluster) the new primary may lack the last writes the old one
acknowledged (replication is asynchronous). The budget is fenced: `budget_reserve` records the
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
from importlib import resources
from typing import TYPE_CHECKING, Any, TypeVar

from redis.asyncio.client import PubSub

from app.budget.model import Reservation, Usage, Window
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

SCHEMA_VERSION = "v1"
_SCRIPTS = (
    "load",
    "save",
    "discard",
    "acquire",
    "release",
    "budget_reserve",
    "budget_confirm",
    "budget_cooldown",
    "budget_usage",
    "heartbeat",
    "instances",
)
_RESUBSCRIBE_FIRST_SECONDS = 0.1
_RESUBSCRIBE_MAX_SECONDS = 5.0
SUBSCRIBE_WAIT_SECONDS = 2.0
T = TypeVar("T")


def lua(name: str) -> str:
    """The text of `app/store/lua/<name>.lua`."""
    return resources.files("app.store").joinpath("lua", f"{name}.lua").read_text("utf-8")


class KeySchema:
    """Key names of schema v1 under a prefix."""

    def __init__(self, prefix: str) -> None:
        self.base = f"{prefix}:{SCHEMA_VERSION}"
        self.changes = f"{self.base}:changes"
        self.instances = f"{self.base}:instances"

    def client(self, client: str, kind: str) -> str:
        """`P:v1:{client}:kind`."""
        return f"{self.base}:{{{client}}}:{kind}"

    @property
    def budget(self) -> list[str]:
        """The budget scripts' keys: grants zset and cooldown, in one slot."""
        return [f"{self.base}:{{budget}}:grants", f"{self.base}:{{budget}}:cooldown"]

    @property
    def budget_epoch(self) -> str:
        """The run_id of the Redis process that counts the window; in the budget's slot."""
        return f"{self.base}:{{budget}}:epoch"


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
    ) -> None:
        assert settings.redis_url is not None
        self._clock = clock
        self.keys = KeySchema(settings.key_prefix)
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

    def _token(self, access_token: Any, token_type: Any, expires_in: Any, age: Any) -> Token | None:
        """A stored token, its times moved from Redis' clock (relative) onto this instance's."""
        if not access_token:
            return None
        now = self._clock.time()
        return Token(
            access_token, now + float(expires_in), now - float(age), token_type or "Bearer"
        )

    async def load(self, client: str) -> TokenRecord:
        """Token and hold in one script call."""
        k = self.keys
        raw = await self._run("load", [k.client(client, "token"), k.client(client, "hold")], [])
        token = self._token(raw[0], raw[1], raw[2], raw[3])
        hold = None
        if raw[4] and int(raw[5]) > 0:
            hold = Hold(HoldReason(raw[4]), int(raw[5]) / 1000)
        return TokenRecord(token, hold)

    async def save(self, client: str, token: Token) -> Token:
        """Store `token` unless a later-expiring one is stored; return the winner."""
        k = self.keys
        now = self._clock.time()
        ttl_ms = max(1000, int((token.expires_at - now) * 1000) + 1000)
        raw = await self._run(
            "save",
            [k.client(client, "token"), k.client(client, "hold")],
            [
                token.access_token,
                token.token_type,
                repr(token.expires_at - now),
                repr(max(0.0, now - token.obtained_at)),
                ttl_ms,
                k.changes,
                _message(client, ChangeKind.SAVED, token.digest),
            ],
        )
        if int(raw[0]) == 1:
            return token
        winner = self._token(raw[1], raw[2], raw[3], raw[4])
        assert winner is not None
        return winner

    async def discard(self, client: str, access_token: str, min_interval: float) -> DiscardResult:
        """Compare-and-delete with the forced-refresh floor, decided inside Redis."""
        k = self.keys
        raw = await self._run(
            "discard",
            [k.client(client, "token"), k.client(client, "forced")],
            [
                access_token,
                int(min_interval * 1000),
                k.changes,
                _message(client, ChangeKind.DISCARDED, digest(access_token)),
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
        """SET NX PX with a fresh owner id per acquisition."""
        owner = secrets.token_hex(12)
        raw = await self._run(
            "acquire", [self.keys.client(client, "lock")], [owner, int(ttl * 1000)]
        )
        if int(raw[0]) == 1:
            return Lease(client, owner)
        return Lease(client, None, max(0.0, int(raw[1]) / 1000))

    async def release(self, lease: Lease) -> bool:
        """Compare-and-delete; wakes waiters. False when the lease had lapsed."""
        if lease.owner is None:
            return False
        released = await self._run(
            "release",
            [self.keys.client(lease.client, "lock")],
            [lease.owner, self.keys.changes, _message(lease.client, ChangeKind.RELEASED, "-")],
        )
        return bool(released)

    # -- budget -------------------------------------------------------------------------------

    async def reserve(self, window: Window, max_wait: float, permit_id: str) -> Reservation:
        """One script call decides the permit on Redis time, behind the failover fence."""
        now = self._clock.monotonic()
        expected = self._epoch if now - self._epoch_seen_at < window.seconds else ""
        raw = await self._run(
            "budget_reserve",
            [*self.keys.budget, self.keys.budget_epoch],
            [
                window.limit,
                _ms(window.seconds),
                _ms(max_wait),
                permit_id,
                _ms(window.seconds + self.failover_grace),
                expected,
            ],
        )
        granted, delay, remaining, reset = (int(x) for x in raw[:4])
        self._epoch, self._epoch_seen_at = str(raw[4]), now
        if int(raw[5]) == 1:
            log_event(
                log,
                logging.WARNING,
                "budget.failover_fence",
                seconds=round(window.seconds + self.failover_grace, 3),
            )
        return Reservation(granted == 1, delay / 1000, remaining, reset / 1000, permit_id)

    async def confirm(self, permit_id: str) -> float:
        """Withdrawn (seconds of cooldown left, > 0) if a cooldown began after the reservation
        or a failover lost it."""
        raw = await self._run("budget_confirm", self.keys.budget, [permit_id])
        return 0.0 if int(raw[0]) == 1 else max(0.001, int(raw[1]) / 1000)

    async def withdraw(self, permit_id: str) -> None:
        """ZREM the unused reservation."""
        async with translated("withdraw"):
            await self.redis.zrem(self.keys.budget[0], permit_id)

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
        """Grants in the window and the cooldown left, on Redis time."""
        raw = await self._run("budget_usage", self.keys.budget, [_ms(window.seconds)])
        return Usage(int(raw[0]), int(raw[1]) / 1000)

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
        for listener in self._listeners:
            listener(change)


def _ms(seconds: float) -> int:
    return max(0, round(seconds * 1000))


def _message(client: str, kind: ChangeKind, digest: str) -> str:
    return f"{client} {kind.value} {digest}"


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
