"""The Redis adapter's change feed: every instance's saves, discards and releases, on pub/sub.

The scripts that change a client's token publish `client.FP kind digest` on `P:v2:changes` in
the same call. Each instance keeps one subscription, delivers the changes of each client's
current credentials to its listeners, and resubscribes with backoff after a failure; a gap in
the feed is healed by the token service re-reading the store.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.asyncio.client import PubSub

from app.observability.logs import log_event
from app.store.redis_topology import CLIENT_ERRORS, RedisTopology
from app.tokens.model import ChangeKind, TokenChange
from app.tokens.ports import ChangeListener

log = logging.getLogger("app.store.redis")  # the adapter's events keep the one logger name

_RESUBSCRIBE_FIRST_SECONDS = 0.1
_RESUBSCRIBE_MAX_SECONDS = 5.0
SUBSCRIBE_WAIT_SECONDS = 2.0
T = TypeVar("T")


def change_message(tag: str, kind: ChangeKind, digest: str) -> str:
    """The message the scripts publish: `client.FP kind digest` (`tag` is `client.FP`)."""
    return f"{tag} {kind.value} {digest}"


def parse_change_message(data: object) -> TokenChange | None:
    """The change a message names (its client still `client.FP`); None if it is not one."""
    if not isinstance(data, str):
        return None
    parts = data.split(" ")
    if len(parts) != 3:
        return None
    try:
        return TokenChange(parts[0], ChangeKind(parts[1]), parts[2])
    except ValueError:
        return None


class ChangeSubscriber:
    """Delivers the feed's changes of each client's current credentials to the listeners."""

    def __init__(
        self, topology: RedisTopology, channel: str, fingerprint: Callable[[str], str]
    ) -> None:
        """`fingerprint(client)` names the client's current credentials."""
        self._topology = topology
        self._channel = channel
        self._fingerprint = fingerprint
        self._listeners: list[ChangeListener] = []
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        # Reset by every successful subscribe, so a failover long after the last one is
        # followed quickly.
        self._resubscribe_delay = _RESUBSCRIBE_FIRST_SECONDS

    def subscribe(self, listener: ChangeListener) -> None:
        """Call `listener` for every change any instance makes."""
        self._listeners.append(listener)

    async def start(self) -> None:
        """Start listening; Redis may still be down (the listener retries)."""
        self._task = asyncio.create_task(self._listen_forever())
        try:  # so that a cold fleet does not miss the first broadcast
            await asyncio.wait_for(self._subscribed.wait(), SUBSCRIBE_WAIT_SECONDS)
        except TimeoutError:
            log_event(log, logging.WARNING, "store.unreachable_at_start")

    async def close(self) -> None:
        """Stop listening."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

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
        pubsub: PubSub = await self._topology.pubsub()
        try:
            await pubsub.subscribe(self._channel)
            self._subscribed.set()
            self._resubscribe_delay = _RESUBSCRIBE_FIRST_SECONDS
            while True:
                message = await pubsub.get_message(timeout=30.0)
                if message is not None:
                    self._dispatch(message.get("data"))
        finally:
            await _quietly(pubsub.aclose)

    def _dispatch(self, data: object) -> None:
        change = parse_change_message(data)
        if change is None:
            return
        client, _, fingerprint = change.client.partition(".")
        if fingerprint != self._fingerprint(client):
            return  # another generation of this client's credentials (a rolling rotation)
        change = TokenChange(client, change.kind, change.digest)
        for listener in self._listeners:
            listener(change)


async def _quietly(close: Callable[[], Awaitable[T]]) -> None:
    try:
        await close()
    except CLIENT_ERRORS:
        pass
