"""The Redis adapter's sealed entries (schema v2), against a real redis-server."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace

import pytest
import redis.asyncio as aioredis
from pydantic import SecretStr

from app.config import StoreSettings
from app.store.redis import RedisStore
from app.store.redis_scripts import lua
from app.store.sealing import MAX_UPSTREAM_LIFETIME_SECONDS, Sealers, credential_fingerprint
from app.tokens.model import DiscardOutcome, Token, TokenChange
from tests.support.redis import RedisServer
from tests.support.sealed import client_key

CLIENT = "checkout"
ID = "checkout-id"
SECRET_A, SECRET_B = "secret-a-0000000000000001", "secret-b-0000000000000002"
TOKEN = "emu_sealed-entry-test-token-0123456789"


class Rejections(list[tuple[str, str]]):
    """The (client, reason) pairs the store reported."""

    def __call__(self, client: str, reason: str) -> None:
        """The `on_rejected` hook."""
        self.append((client, reason))


@asynccontextmanager
async def opened(
    server: RedisServer, prefix: str, secret: str = SECRET_A
) -> AsyncIterator[tuple[RedisStore, Rejections]]:
    """A started RedisStore whose `checkout` is bound to (ID, secret)."""
    sealers = Sealers()
    sealers.bind(CLIENT, ID, secret)
    rejected = Rejections()
    settings = StoreSettings(redis_url=SecretStr(server.url), key_prefix=prefix)
    store = RedisStore(settings, sealers=sealers, on_rejected=rejected)
    await store.start()
    try:
        yield store, rejected
    finally:
        await store.close()


@pytest.fixture
def prefix() -> str:
    """A key prefix nobody used yet."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def raw(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """A plain client of the session's Redis (bytes in, bytes out)."""
    async with aioredis.Redis.from_url(redis_server.url) as client:
        yield client


def fresh(lifetime: float = 3600.0, name: str = TOKEN, minted_by: str = "") -> Token:
    """A token obtained now."""
    now = time.time()
    return Token(name, now + lifetime, now, minted_by=minted_by)


async def test_a_saved_token_is_sealed_and_loads_back(
    redis_server: RedisServer, prefix: str, raw: aioredis.Redis
) -> None:
    """The stored hash has only `sealed`, `digest`, `expires_at`, none containing the token;
    loading it gives the token back, tagged with the credentials' fingerprint."""
    async with opened(redis_server, prefix) as (store, rejected):
        saved = fresh()
        assert await store.save(CLIENT, saved) == saved
        loaded = (await store.load(CLIENT)).token
    key = client_key(prefix, CLIENT, ID, SECRET_A)
    entry = await raw.hgetall(key)
    assert sorted(entry) == [b"digest", b"expires_at", b"sealed"]
    assert all(TOKEN.encode() not in value for value in entry.values())
    assert loaded is not None and loaded.access_token == TOKEN
    assert loaded.minted_by == credential_fingerprint(ID, SECRET_A)
    assert abs(loaded.expires_at - saved.expires_at) < 0.5
    assert rejected == []


def flipped(value: bytes, position: int) -> bytes:
    """`value` with the byte at `position` changed (lowest bit)."""
    return value[:position] + bytes([value[position] ^ 0x01]) + value[position + 1 :]


@pytest.mark.parametrize("field", [b"sealed", b"digest", b"expires_at"])
async def test_every_flipped_byte_is_rejected_counted_and_removed(
    redis_server: RedisServer, prefix: str, raw: aioredis.Redis, field: bytes
) -> None:
    """For each byte of the field in turn: the flipped entry loads as missing, is reported with
    a reason and is deleted from Redis."""
    key = client_key(prefix, CLIENT, ID, SECRET_A)
    async with opened(redis_server, prefix) as (store, rejected):
        await store.save(CLIENT, fresh())
        original = await raw.hgetall(key)
        ttl = await raw.pttl(key)
        for position in range(len(original[field])):
            await raw.hset(key, field, flipped(original[field], position))
            assert (await store.load(CLIENT)).token is None, position
            assert not await raw.exists(key), position
            await raw.hset(key, mapping=original)
            await raw.pexpire(key, ttl)
        assert len(rejected) == len(original[field])
        assert {client for client, _ in rejected} == {CLIENT}
        assert (await store.load(CLIENT)).token is not None  # the original still opens


@pytest.mark.parametrize(
    "corrupt",
    [
        pytest.param(lambda r, k: r.set(k, "plain-token"), id="a string"),
        pytest.param(lambda r, k: r.rpush(k, "x"), id="a list"),
        pytest.param(lambda r, k: r.hset(k, "sealed", b"\xff\xfe\x00garbage"), id="non-UTF-8"),
        pytest.param(lambda r, k: r.hset(k, "access_token", TOKEN), id="a v1-style entry"),
    ],
)
async def test_an_entry_of_any_other_shape_is_missing_and_removed(
    redis_server: RedisServer, prefix: str, raw: aioredis.Redis, corrupt: object
) -> None:
    """A key of the wrong type, bytes that are not text or fields of another schema read as no
    token (never an exception), are reported as malformed and removed; a save then works."""
    key = client_key(prefix, CLIENT, ID, SECRET_A)
    async with opened(redis_server, prefix) as (store, rejected):
        await corrupt(raw, key)  # type: ignore[operator]
        assert (await store.load(CLIENT)).token is None
        assert rejected == [(CLIENT, "malformed")]
        assert not await raw.exists(key)
        await raw.set(key, "in the way again")
        assert await store.save(CLIENT, fresh()) is not None
        assert (await store.load(CLIENT)).token is not None


async def test_reject_deletes_only_the_entry_that_was_read(
    redis_server: RedisServer, prefix: str, raw: aioredis.Redis
) -> None:
    """The compare-and-delete of a rejected entry leaves an entry that changed since alone."""
    key = client_key(prefix, CLIENT, ID, SECRET_A)
    async with opened(redis_server, prefix) as (store, _):
        await store.save(CLIENT, fresh())
    stale_id = "0" * 40
    assert await raw.eval(lua("reject"), 1, key, stale_id) == 0
    assert await raw.exists(key)


async def test_a_tampered_winner_does_not_block_saves(
    redis_server: RedisServer, prefix: str, raw: aioredis.Redis
) -> None:
    """An entry whose clear expiry was raised would win every save; the loser reads it, rejects
    and removes it, and stores its own token."""
    key = client_key(prefix, CLIENT, ID, SECRET_A)
    async with opened(redis_server, prefix) as (store, rejected):
        await store.save(CLIENT, fresh(name="first-token"))
        await raw.hset(key, "expires_at", "99999999999.000000")
        new = fresh(name="second-token")
        assert await store.save(CLIENT, new) == new
        loaded = (await store.load(CLIENT)).token
    assert loaded is not None and loaded.access_token == "second-token"
    assert rejected == [(CLIENT, "tampered")]


async def test_compare_and_delete_works_on_sealed_entries(
    redis_server: RedisServer, prefix: str
) -> None:
    """Discarding the stored token (compared by keyed digest) removes it; another token does
    not."""
    async with opened(redis_server, prefix) as (store, _):
        await store.save(CLIENT, fresh())
        assert (await store.discard(CLIENT, "another", 0)).outcome is DiscardOutcome.NOT_CURRENT
        assert (await store.discard(CLIENT, TOKEN, 0)).outcome is DiscardOutcome.DISCARDED
        assert (await store.load(CLIENT)).token is None


async def test_new_credentials_read_nothing_and_write_their_own_keys(
    redis_server: RedisServer, prefix: str, raw: aioredis.Redis
) -> None:
    """Two generations of one client's credentials (a rolling rotation): each reads only its
    own token, neither overwrites the other, and each hears only its own changes."""
    heard_a: list[TokenChange] = []
    heard_b: list[TokenChange] = []
    async with (
        opened(redis_server, prefix, SECRET_A) as (old, _),
        opened(redis_server, prefix, SECRET_B) as (new, rejected),
    ):
        old.subscribe(heard_a.append)
        new.subscribe(heard_b.append)
        await old.save(CLIENT, fresh(name="token-of-a"))
        assert (await new.load(CLIENT)).token is None
        await new.save(CLIENT, fresh(name="token-of-b", lifetime=1800))
        loaded_old = (await old.load(CLIENT)).token
        loaded_new = (await new.load(CLIENT)).token
        assert (await old.acquire(CLIENT, 5)).acquired and (await new.acquire(CLIENT, 5)).acquired
        await asyncio.sleep(0.3)
    assert loaded_old is not None and loaded_old.access_token == "token-of-a"
    assert loaded_new is not None and loaded_new.access_token == "token-of-b"
    assert [c.digest for c in heard_a] == [fresh(name="token-of-a").digest]
    assert [c.digest for c in heard_b] == [fresh(name="token-of-b").digest]
    assert {c.client for c in heard_a + heard_b} == {CLIENT}
    assert await raw.exists(client_key(prefix, CLIENT, ID, SECRET_A))
    assert await raw.exists(client_key(prefix, CLIENT, ID, SECRET_B))
    assert rejected == []


async def test_a_token_of_replaced_credentials_is_not_stored(
    redis_server: RedisServer, prefix: str
) -> None:
    """`save` refuses a token tagged with another fingerprint than the client's current one."""
    async with opened(redis_server, prefix, SECRET_B) as (store, _):
        stale = fresh(minted_by=credential_fingerprint(ID, SECRET_A))
        assert await store.save(CLIENT, stale) is stale
        assert (await store.load(CLIENT)).token is None


async def test_a_token_living_longer_than_the_upstream_grants_is_stored_capped(
    redis_server: RedisServer, prefix: str
) -> None:
    """A token with a 2-hour lifetime is stored (and returned) as living 3600 s, so readers,
    who reject longer claims, accept it."""
    async with opened(redis_server, prefix) as (store, rejected):
        long_lived = fresh(lifetime=7200)
        saved = await store.save(CLIENT, long_lived)
        loaded = (await store.load(CLIENT)).token
    assert saved == replace(
        long_lived, expires_at=long_lived.obtained_at + MAX_UPSTREAM_LIFETIME_SECONDS
    )
    assert loaded is not None and abs(loaded.lifetime - MAX_UPSTREAM_LIFETIME_SECONDS) < 0.5
    assert rejected == []


async def test_a_hold_of_unknown_value_or_type_is_ignored(
    redis_server: RedisServer, prefix: str, raw: aioredis.Redis
) -> None:
    """A hold key holding anything but a known reason, or of another type, is no hold."""
    key = client_key(prefix, CLIENT, ID, SECRET_A, "hold")
    async with opened(redis_server, prefix) as (store, _):
        await raw.set(key, "forever", px=60_000)
        assert (await store.load(CLIENT)).hold is None
        await raw.delete(key)
        await raw.hset(key, "x", "y")
        assert (await store.load(CLIENT)).hold is None
