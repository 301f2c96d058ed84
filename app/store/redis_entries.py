"""A client's token entry in Redis: sealed on write, opened and checked on read.

Nothing read from Redis is trusted: an entry that does not decrypt, parse or pass the checks of
`ClientSealer.open` is treated as missing, logged as `token.cache_entry_rejected` (never its
contents), counted through `on_rejected`, and removed with compare-and-delete (`reject.lua`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

from app.clock import Clock
from app.observability.logs import log_event
from app.store.redis_changes import change_message
from app.store.redis_keys import KeySchema
from app.store.redis_scripts import RedisScripts
from app.store.sealing import (
    MAX_UPSTREAM_LIFETIME_SECONDS,
    ClientSealer,
    EntryRejected,
    SealedEntry,
    Sealers,
)
from app.tokens.model import ChangeKind, Hold, HoldReason, Token, TokenRecord

log = logging.getLogger("app.store.redis")  # the adapter's events keep the one logger name

RejectListener = Callable[[str, str], None]
"""Called with (client, reason) for every cache entry this instance rejected."""

SAVE_ATTEMPTS = 3
"""A stored winner that fails the checks is removed and the save tried again, this often."""


def not_counted(_client: str, _reason: str) -> None:
    """The `RejectListener` that counts nothing."""


@dataclass(frozen=True, slots=True)
class SealedEntries:
    """Loads and saves the clients' token entries (with their holds) through the scripts."""

    scripts: RedisScripts
    keys: KeySchema
    sealers: Sealers
    clock: Clock
    on_rejected: RejectListener = not_counted

    async def load(self, client: str) -> TokenRecord:
        """Token and hold in one script call; an entry that fails any check is missing."""
        token, hold = await self._read(client, self.sealers.get(client))
        return TokenRecord(token, hold)

    async def save(self, client: str, token: Token) -> Token:
        """Store `token` sealed, unless a later-expiring one is stored; return the winner.

        A token minted with other credentials than the client's current ones is not stored
        (it is returned as is: the token service does not serve it either).
        """
        sealer = self.sealers.get(client)
        if token.minted_by and token.minted_by != sealer.fingerprint:
            return token
        token = _within_upstream_lifetime(client, token)
        for _ in range(SAVE_ATTEMPTS):
            if await self._store_sealed(client, sealer, token):
                return token
            winner, _ = await self._read(client, sealer)
            if winner is not None:
                return winner
        return token  # kept by this instance; the store catches up at the next refresh

    async def _read(self, client: str, sealer: ClientSealer) -> tuple[Token | None, Hold | None]:
        keys = self.keys.token(client, sealer.fingerprint)
        raw = await self.scripts.run("load", keys, [])
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
        now = self.clock.time()  # the token's times move from Redis' clock onto this one's
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
            removed = bool(await self.scripts.run("reject", [key], [entry_id]))
        finally:  # logged and counted even when Redis fails between the read and the removal
            log_event(
                log,
                logging.WARNING,
                "token.cache_entry_rejected",
                client=client,
                reason=reason,
                removed=removed,
            )
            self.on_rejected(client, reason)

    async def _store_sealed(self, client: str, sealer: ClientSealer, token: Token) -> bool:
        keys = self.keys.token(client, sealer.fingerprint)
        # The times are sealed with the entry, so they are taken on Redis' clock first (the
        # node that holds the key), as the relative times v1 passed to the script were.
        redis_now = float(await self.scripts.run("time", keys[:1], []))
        now = self.clock.time()
        expires_at = redis_now + (token.expires_at - now)
        obtained_at = redis_now - max(0.0, now - token.obtained_at)
        entry = sealer.seal(token.access_token, token.token_type, expires_at, obtained_at)
        ttl_ms = max(1000, int((token.expires_at - now) * 1000) + 1000)
        tag = self.keys.tag(client, sealer.fingerprint)
        stored = await self.scripts.run(
            "save",
            keys,
            [
                entry.sealed,
                entry.digest,
                entry.expires_at,
                ttl_ms,
                self.keys.changes,
                change_message(tag, ChangeKind.SAVED, token.digest),
            ],
        )
        return int(stored) == 1


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
