"""Cache entries as a broker writes them (schema v2), for tests that read or forge Redis state."""

from __future__ import annotations

from collections.abc import Sequence

import redis.asyncio as aioredis

from app.store.sealing import Key, build_sealer, credential_fingerprint


def client_key(prefix: str, client: str, client_id: str, secret: str, kind: str = "token") -> str:
    """`P:v2:{client.FP}:kind` for these credentials."""
    return f"{prefix}:v2:{{{client}.{credential_fingerprint(client_id, secret)}}}:{kind}"


async def write_sealed_token(
    redis: aioredis.Redis,
    prefix: str,
    client: str,
    credentials: tuple[str, str],
    access_token: str,
    lifetime: float = 3600.0,
    keyring: Sequence[Key] = (),
) -> None:
    """Store `access_token` as another instance's `save` would (without its PUBLISH)."""
    client_id, secret = credentials
    seconds, micros = await redis.time()
    now = seconds + micros / 1e6
    entry = build_sealer(client, client_id, secret, keyring).seal(
        access_token, "Bearer", now + lifetime, now
    )
    key = client_key(prefix, client, client_id, secret)
    await redis.delete(key)
    await redis.hset(
        key,
        mapping={"sealed": entry.sealed, "digest": entry.digest, "expires_at": entry.expires_at},
    )
    await redis.pexpire(key, int((lifetime + 1) * 1000))
