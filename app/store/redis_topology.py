"""One redis-py client per topology: a single server, Sentinel, or Cluster.

`RedisStore` talks to whichever `RedisTopology` `open_topology` returns; all three run the same
Lua scripts (every script's keys share one hash tag, so one Cluster slot) and the same change
feed. Every client's commands pass the `ConnectionGate` of `app.store.redis_pool`, which keeps
the instance within `store.max_connections` and makes a command at the bound wait.

Sentinel: redis-py asks Sentinel for the primary only when it opens a connection, so pooled
connections would stay on an old primary that Sentinel has not yet demoted (it keeps accepting
writes until then, and two instances could count budget grants on two primaries). The follower
task asks Sentinel every `SENTINEL_POLL_SECONDS` and, when the primary moved, closes every
connection, busy ones included: the next command asks Sentinel again.

Cluster: the change feed uses plain PUBLISH/SUBSCRIBE. A PUBLISH (also from inside a Lua
script) is broadcast over the cluster bus to every node, replicas included, so one subscription
on any node hears every instance; messages are a few per token lifetime, so the broadcast costs
nothing worth sharding for. Sharded pub/sub would need one channel per client hash tag and one
subscription per shard, and the scripts that publish would have to name the channel in their
slot.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from app.observability.logs import log_event
from app.store.redis_pool import ConnectionGate, GatedRedis, GatedRedisCluster
from app.store.topology import SENTINEL_SCHEMES, parse_sentinel_url

if TYPE_CHECKING:  # adapters read settings; only app.main hands them over
    from app.config import StoreSettings

log = logging.getLogger(__name__)

SENTINEL_POLL_SECONDS = 0.5
# What a failing Redis client raises. RuntimeError: redis-py's Cluster client closes every node's
# connections on CLUSTERDOWN while other tasks still write on them, and uvloop refuses a write on
# a closed transport with RuntimeError.
CLIENT_ERRORS = (RedisError, OSError, TimeoutError, RuntimeError)
AnyRedis = aioredis.Redis | RedisCluster


class RedisTopology(Protocol):
    """A connected client and what the store needs beyond plain commands."""

    @property
    def kind(self) -> str:
        """`/health`'s store kind."""
        ...

    @property
    def client(self) -> AnyRedis:
        """The client the scripts run on."""
        ...

    async def start(self) -> None:
        """Start background work (Sentinel: follow the primary)."""
        ...

    async def close(self) -> None:
        """Stop background work and close every connection."""
        ...

    async def ping(self) -> bool:
        """Whether the data node(s) answer right now."""
        ...

    async def pubsub(self) -> PubSub:
        """A fresh subscription connection for the change feed."""
        ...


def _connection_kwargs(settings: StoreSettings) -> dict[str, Any]:
    return {
        "decode_responses": True,
        "socket_timeout": settings.socket_timeout_seconds,
        "socket_connect_timeout": settings.connect_timeout_seconds,
        "retry": _quick_retry(),
        "health_check_interval": 15,
        # The gate keeps commands within max_connections; the one more is the change feed's
        # subscription, which the same pool lends. (Cluster: per node.)
        "max_connections": settings.max_connections + 1,
    }


def _quick_retry() -> Retry:
    # One quick retry rides out a dropped pooled connection; more would only delay the
    # fallback to L1 while Redis is really down (redis-py's default backs off for seconds).
    return Retry(ExponentialBackoff(cap=0.05, base=0.01), 1)


def open_topology(settings: StoreSettings, gate: ConnectionGate) -> RedisTopology:
    """The client `settings` names, its commands passing `gate` (no connection opened yet)."""
    assert settings.redis_url is not None
    url = settings.redis_url.get_secret_value()
    if settings.cluster:
        return ClusterTopology(url, settings, gate)
    if urlsplit(url).scheme in SENTINEL_SCHEMES:
        return SentinelTopology(url, settings, gate)
    return StandaloneTopology(url, settings, gate)


def _gated(client: aioredis.Redis, gate: ConnectionGate) -> GatedRedis:
    assert isinstance(client, GatedRedis)
    client.gate = gate
    return client


async def _ping(client: aioredis.Redis) -> bool:
    try:
        return bool(await client.ping())
    except CLIENT_ERRORS:
        return False


class StandaloneTopology:
    """One server: redis://, rediss:// (TLS) or unix://."""

    kind = "redis"

    def __init__(self, url: str, settings: StoreSettings, gate: ConnectionGate) -> None:
        client = GatedRedis.from_url(url, **_connection_kwargs(settings))
        self.client: aioredis.Redis = _gated(client, gate)

    async def start(self) -> None:
        """Nothing to start."""

    async def close(self) -> None:
        """Close the pool."""
        await self.client.aclose()

    async def ping(self) -> bool:
        """PING the server."""
        return await _ping(self.client)

    async def pubsub(self) -> PubSub:
        """A subscription on the server."""
        return self.client.pubsub(ignore_subscribe_messages=True)


class NewestViewSentinel(Sentinel):
    """Sentinel client that believes the sentinel with the newest view of the primary.

    redis-py takes the first sentinel that names a healthy primary; right after a failover a
    sentinel that has not yet heard of it (they learn by hello messages, every 2 s) still names
    the old primary, which is alive and accepts writes until it is demoted. All sentinels are
    asked at once and the answer with the highest config-epoch wins.
    """

    async def discover_master(self, service_name: str) -> tuple[str, int]:
        """The primary's address by the newest config-epoch among the sentinels that answer."""
        answers = await asyncio.gather(
            *(sentinel.sentinel_masters() for sentinel in self.sentinels), return_exceptions=True
        )
        best: dict[str, Any] | None = None
        for masters in answers:
            if not isinstance(masters, dict):  # an error (that sentinel is down)
                continue
            state = masters.get(service_name)
            if not state or not self.check_master_state(state, service_name):
                continue
            if best is None or int(state["config-epoch"]) > int(best["config-epoch"]):
                best = state
        if best is None:
            raise MasterNotFoundError(f"No master found for {service_name!r}")
        return str(best["ip"]), int(best["port"])


class SentinelTopology:
    """The primary of a Sentinel-monitored service, followed across failovers."""

    kind = "redis-sentinel"

    def __init__(self, url: str, settings: StoreSettings, gate: ConnectionGate) -> None:
        parts = parse_sentinel_url(url)
        # rediss+sentinel://: TLS to the sentinels and to the data nodes alike (redis-py's
        # Sentinel pool picks its SSL connection class from `ssl`).
        tls: dict[str, Any] = {"ssl": True, **parts.tls_options} if parts.tls else {}
        kwargs = _connection_kwargs(settings) | tls
        sentinel_auth = {"username": parts.username, "password": parts.password}
        if parts.sentinel_password_given:
            sentinel_auth = {"username": None, "password": parts.sentinel_password}
        sentinel_kwargs = {
            "socket_timeout": settings.socket_timeout_seconds,
            "socket_connect_timeout": settings.connect_timeout_seconds,
            "decode_responses": True,
            "retry": _quick_retry(),  # asked twice a second: an unreachable one fails fast
            **sentinel_auth,
            **tls,
        }
        self.sentinel = NewestViewSentinel(  # type: ignore[no-untyped-call]
            list(parts.sentinels), sentinel_kwargs=sentinel_kwargs, **kwargs
        )
        self.service = parts.service_name
        primary = self.sentinel.master_for(
            parts.service_name,
            redis_class=GatedRedis,
            db=parts.db,
            username=parts.username,
            password=parts.password,
        )
        self.client: aioredis.Redis = _gated(primary, gate)
        self._follower: asyncio.Task[None] | None = None
        self._primary: tuple[str, int] | None = None

    @property
    def _pool(self) -> SentinelConnectionPool:
        pool = self.client.connection_pool
        assert isinstance(pool, SentinelConnectionPool)
        return pool

    async def start(self) -> None:
        """Start following the primary."""
        self._follower = asyncio.create_task(self._follow_primary())

    async def close(self) -> None:
        """Stop following; close the primary's pool and the Sentinel connections."""
        if self._follower is not None:
            self._follower.cancel()
            await asyncio.gather(self._follower, return_exceptions=True)
        await self.client.aclose()
        try:
            await self.sentinel.aclose()
        except CLIENT_ERRORS:
            pass

    async def ping(self) -> bool:
        """PING the current primary."""
        return await _ping(self.client)

    async def pubsub(self) -> PubSub:
        """A subscription on the current primary; the follower moves it after a failover."""
        return self.client.pubsub(ignore_subscribe_messages=True)

    async def _follow_primary(self) -> None:
        while True:
            try:
                await self.check_primary()
            except CLIENT_ERRORS as exc:
                # No sentinel answers: keep the connections we have; commands fail on their own
                # if the primary is gone too.
                log_event(
                    log, logging.DEBUG, "store.sentinel_unreachable", error=type(exc).__name__
                )
            await asyncio.sleep(SENTINEL_POLL_SECONDS)

    async def check_primary(self) -> bool:
        """Ask Sentinel for the primary; if it moved, drop every connection. True if it moved.

        The address is compared with the one this follower saw last, not with the pool's: redis-py
        updates the pool's when it opens a connection and then closes only idle connections,
        and busy ones go back into the pool still connected to the old primary.
        """
        address = await self.sentinel.discover_master(self.service)
        previous, self._primary = self._primary, address
        if previous is None or previous == address:
            return False
        self._pool.master_address = address
        await self._pool.disconnect(inuse_connections=True)
        log_event(
            log,
            logging.WARNING,
            "store.primary_switched",
            service=self.service,
            primary=f"{address[0]}:{address[1]}",
        )
        return True


class ClusterTopology:
    """A Redis Cluster found from one seed node; redis-py follows slot moves and failovers."""

    kind = "redis-cluster"

    def __init__(self, url: str, settings: StoreSettings, gate: ConnectionGate) -> None:
        client = GatedRedisCluster.from_url(url, **_connection_kwargs(settings))
        assert isinstance(client, GatedRedisCluster)
        client.gate = gate
        self.client: RedisCluster = client
        self._next_node = 0

    async def start(self) -> None:
        """Nothing to start (the slot map is read on the first command)."""

    async def close(self) -> None:
        """Close every node's connections."""
        await self.client.aclose()

    async def ping(self) -> bool:
        """PING every primary: each holds some clients' keys."""
        try:
            await self.client.initialize()
            return bool(await self.client.ping(target_nodes=RedisCluster.PRIMARIES))
        except CLIENT_ERRORS:
            return False

    async def pubsub(self) -> PubSub:
        """A subscription on the next node in turn (a failed node is not retried first)."""
        await self.client.initialize()
        nodes = sorted(self.client.get_nodes(), key=lambda node: node.name)
        node = nodes[self._next_node % len(nodes)]
        self._next_node += 1
        return self.client.pubsub(node=node, ignore_subscribe_messages=True)
