"""Tokens at rest with real `token-broker serve` processes, a real redis-server and the emulator:
nothing readable in Redis, bound to the credentials, validated on read, keys rotated, secrets
reloaded (CONTRACT.md: "nor readable in Redis")."""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from app.store.sealing import new_key_line
from tests.conftest import API_KEYS, EMULATOR_ID, EMULATOR_SECRET, Emulator, broker_config
from tests.support.processes import ServerProcess, running_broker, running_brokers
from tests.support.redis import RedisServer
from tests.support.sealed import client_key
from tests.support.secret_volume import SecretVolume

pytestmark = pytest.mark.fleet

ORDERS = {"X-API-Key": API_KEYS["orders"]}  # may get checkout
BILLING = {"X-API-Key": API_KEYS["billing"]}  # may get checkout and payouts
METHODS = "/checkout-project/integration/v1/methods"
PAYOUTS_ID, PAYOUTS_SECRET = "payouts-id", "payouts-secret-value-5678"  # test-only
NEW_SECRET = "checkout-secret-rotated-9876"  # test-only


async def token(http: httpx.AsyncClient, broker: ServerProcess, client: str = "checkout") -> str:
    """GET /token from `broker`: must be 200."""
    response = await http.get(f"{broker.url}/token?client={client}", headers=BILLING)
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


async def invalidate(http: httpx.AsyncClient, broker: ServerProcess, old: str) -> str:
    """Report `old` to `broker`; the fresh token it answers with."""
    response = await http.post(
        f"{broker.url}/token/invalidate", json={"client": "checkout", "access_token": old},
        headers=ORDERS,
    )  # fmt: skip
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


async def accepted_upstream(emulator: Emulator, access_token: str) -> bool:
    """Whether the emulator's integration API answers 200 to this bearer token."""
    response = await emulator.http.get(METHODS, headers={"Authorization": f"Bearer {access_token}"})
    return response.status_code == 200


async def requests_made(emulator: Emulator) -> int:
    """Token requests the emulator has received."""
    return (await emulator.stats())["token_requests"]


def readable(blob: bytes, needles: list[bytes]) -> list[bytes]:
    """The needles found in `blob`, as is or in any base64 (standard or URL-safe) decoding of
    it or of its parts split at separators."""
    candidates = [blob]
    for part in [blob, *re.split(rb"[^A-Za-z0-9+/=_-]+", blob)]:
        for alphabet in (None, b"-_"):
            try:
                padded = part + b"=" * (-len(part.rstrip(b"=")) % 4)
                candidates.append(base64.b64decode(padded, altchars=alphabet))
            except (binascii.Error, ValueError):
                pass
    return [needle for needle in needles if any(needle in c for c in candidates)]


async def every_stored_byte(redis: aioredis.Redis) -> list[bytes]:
    """Every key name, hash field, member and value in the server, whatever its type."""
    found: list[bytes] = []
    async for key in redis.scan_iter(count=500):
        found.append(key)
        kind = (await redis.type(key)).decode()
        if kind == "string":
            found.append(await redis.get(key))
        elif kind == "hash":
            for field, value in (await redis.hgetall(key)).items():
                found += [field, value]
        elif kind == "zset":
            found += [m for m, _ in await redis.zrange(key, 0, -1, withscores=True)]
        elif kind == "list":
            found += await redis.lrange(key, 0, -1)
        elif kind == "set":
            found += list(await redis.smembers(key))
    return found


async def test_no_token_or_secret_is_readable_in_redis_or_its_command_stream(
    emulator: Emulator, own_redis: RedisServer, tmp_path: Path
) -> None:
    """After tokens for two clients (and an invalidation), a scan of every key, field and value
    (base64-decoded too) and a MONITOR of every command the brokers sent find no token and no
    secret."""
    await emulator.configure(clients={EMULATOR_ID: EMULATOR_SECRET, PAYOUTS_ID: PAYOUTS_SECRET})
    config = broker_config(emulator, {"redis_url": own_redis.url, "key_prefix": "scan"})
    config["clients"]["payouts"] |= {"client_id": PAYOUTS_ID, "client_secret": PAYOUTS_SECRET}
    monitor_log = tmp_path / "monitor.log"
    with monitor_log.open("wb") as out:
        monitor = subprocess.Popen(["redis-cli", "-p", str(own_redis.port), "monitor"], stdout=out)
    try:
        await asyncio.sleep(0.3)  # MONITOR is listening
        with running_brokers(tmp_path, (config, "a"), (config, "b")) as (a, b):
            async with httpx.AsyncClient(timeout=10) as http:
                first = await token(http, a, "checkout")
                payouts = await token(http, b, "payouts")
                second = await invalidate(http, b, first)
                assert await token(http, a, "checkout") == second
        await asyncio.sleep(0.3)
    finally:
        monitor.terminate()
        monitor.wait(timeout=10)
    async with aioredis.Redis.from_url(own_redis.url) as redis:
        stored = await every_stored_byte(redis)
        assert await redis.exists(client_key("scan", "checkout", EMULATOR_ID, EMULATOR_SECRET))
    needles = [t.encode() for t in (first, second, payouts, EMULATOR_SECRET, PAYOUTS_SECRET)]
    assert len(stored) > 5
    assert [readable(blob, needles) for blob in stored if readable(blob, needles)] == []
    commands = monitor_log.read_bytes()
    assert b'"HSET"' in commands or b'"hset"' in commands.lower()  # the monitor saw the saves
    assert readable(commands, needles) == []
    for line in commands.splitlines():
        assert readable(line, needles) == [], line[:80]


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"client_secret": NEW_SECRET}, id="new secret"),
        pytest.param({"client_id": PAYOUTS_ID, "client_secret": PAYOUTS_SECRET}, id="new client"),
    ],
)
async def test_a_changed_client_keeps_nothing_from_the_old_credentials(
    emulator: Emulator,
    redis_server: RedisServer,
    tmp_path: Path,
    change: dict[str, str],
) -> None:
    """Two broker processes on one Redis, the second with credentials the upstream accepts
    instead: it fetches its own token rather than serve the stored one, and both generations
    keep serving their own tokens without overwriting each other (a rolling rotation)."""
    store = {"redis_url": redis_server.url, "key_prefix": f"c{uuid.uuid4().hex[:8]}"}
    old_config = broker_config(emulator, store)
    new_config = broker_config(emulator, store, clients_patch=change)
    with running_broker(old_config, tmp_path, "old") as old:
        async with httpx.AsyncClient(timeout=10) as http:
            old_token = await token(http, old)
            new_id = change.get("client_id", EMULATOR_ID)
            await emulator.configure(clients={new_id: change["client_secret"]})
            with running_broker(new_config, tmp_path, "new") as new:
                new_token = await token(http, new)
                assert await requests_made(emulator) == 2
                assert await token(http, old) == old_token  # not replaced in its generation
            with running_brokers(tmp_path, (old_config, "old2"), (new_config, "new2")) as (
                old2,
                new2,
            ):
                assert await token(http, old2) == old_token
                assert await token(http, new2) == new_token
    assert new_token != old_token
    assert await accepted_upstream(emulator, new_token)
    assert await requests_made(emulator) == 2


def metric(text: str, name: str, labels: str) -> float:
    """The value of one sample in a Prometheus exposition (0 if absent)."""
    match = re.search(rf"^{re.escape(name)}\{{{re.escape(labels)}\}} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def flip_ciphertext(sealed: bytes) -> bytes:
    """`sealed` ("key.base64url") with one bit of its middle ciphertext byte flipped, encoded
    again: still well formed, so only the authenticated decryption can notice."""
    name, _, blob = sealed.partition(b".")
    raw = bytearray(base64.urlsafe_b64decode(blob + b"=" * (-len(blob) % 4)))
    raw[len(raw) // 2] ^= 1
    return name + b"." + base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=")


def flip_middle_bit(value: bytes) -> bytes:
    middle = len(value) // 2
    return value[:middle] + bytes([value[middle] ^ 1]) + value[middle + 1 :]


def break_encoding(sealed: bytes) -> bytes:
    """`sealed` with its middle character replaced by one base64url never uses."""
    middle = len(sealed) // 2 + len(sealed) // 4
    return sealed[:middle] + b"!" + sealed[middle + 1 :]


@pytest.mark.parametrize(
    ("field", "tamper", "reason"),
    [
        ("sealed", flip_ciphertext, "decrypt"),
        ("sealed", break_encoding, "malformed"),
        ("digest", flip_middle_bit, "tampered"),
        ("expires_at", flip_middle_bit, "tampered"),
    ],
    ids=["sealed-decrypt", "sealed-malformed", "digest-tampered", "expires_at-tampered"],
)
async def test_a_tampered_entry_is_never_served_and_a_fresh_instance_gets_a_working_token(
    emulator: Emulator,
    redis_server: RedisServer,
    tmp_path: Path,
    field: str,
    tamper: Callable[[bytes], bytes],
    reason: str,
) -> None:
    """With one field of the cached entry altered, a fresh instance answers 200 with a new
    token the upstream accepts, logs token.cache_entry_rejected with the reason, counts it in
    /metrics, removes the entry, and nothing answers 5xx."""
    prefix = f"x{uuid.uuid4().hex[:8]}"
    config = broker_config(emulator, {"redis_url": redis_server.url, "key_prefix": prefix})
    key = client_key(prefix, "checkout", EMULATOR_ID, EMULATOR_SECRET)
    async with (
        httpx.AsyncClient(timeout=10) as http,
        aioredis.Redis.from_url(redis_server.url) as redis,
    ):
        with running_broker(config, tmp_path, "first") as first:
            stored_token = await token(http, first)
        value = await redis.hget(key, field)
        assert value is not None
        await redis.hset(key, field, tamper(value))
        with running_broker(config, tmp_path, "fresh") as fresh:
            served = await token(http, fresh)
            metrics = (await http.get(f"{fresh.url}/metrics")).text
            health = await http.get(f"{fresh.url}/health")
        log = fresh.log()
        rewritten = await redis.hget(key, field)
    assert served != stored_token
    assert await accepted_upstream(emulator, served)
    assert await requests_made(emulator) == 2
    labels = f'client="checkout",reason="{reason}"'
    assert metric(metrics, "token_broker_token_cache_rejected_total", labels) == 1
    assert re.search(rf'"event":"token.cache_entry_rejected".*"reason":"{reason}"', log)
    assert stored_token not in log and EMULATOR_SECRET not in log
    assert health.status_code == 200
    assert rewritten is not None and rewritten != value  # removed, then the new token stored
    assert " 500 " not in log and '"status":500' not in log


def keyring_file(directory: Path, name: str, *lines: str) -> str:
    """A keyring file with these lines; its path."""
    path = directory / name
    path.write_text("\n".join(lines) + "\n")
    return str(path)


async def sealed_with(redis: aioredis.Redis, prefix: str) -> str:
    """The name of the key that sealed the cached checkout token."""
    sealed = await redis.hget(
        client_key(prefix, "checkout", EMULATOR_ID, EMULATOR_SECRET), "sealed"
    )
    assert sealed is not None
    return sealed.decode().partition(".")[0]


async def test_a_keyring_rotation_loses_no_cached_token(
    emulator: Emulator, redis_server: RedisServer, tmp_path: Path
) -> None:
    """Derived keys -> keyring [k1] -> [k1, k2] -> [k2, k1] (alongside [k1, k2]) -> [k2]: each
    step serves the token cached before it with no upstream request, and new entries are sealed
    with the ring's first key."""
    k1, k2 = new_key_line("k1"), new_key_line("k2")
    prefix = f"r{uuid.uuid4().hex[:8]}"
    base = broker_config(
        emulator,
        {"redis_url": redis_server.url, "key_prefix": prefix},
        clients_patch={"min_forced_refresh_interval_seconds": 1},
    )

    def with_ring(*lines: str) -> dict[str, Any]:
        ring = keyring_file(tmp_path, f"keys-{len(lines)}-{lines[0][:2]}", *lines)
        return {**base, "store": {**base["store"], "encryption_keys_file": ring}}

    async with (
        httpx.AsyncClient(timeout=10) as http,
        aioredis.Redis.from_url(redis_server.url) as redis,
    ):
        with running_broker(base, tmp_path, "derived") as derived:
            t0 = await token(http, derived)
        assert await sealed_with(redis, prefix) == "derived"
        with running_broker(with_ring(k1), tmp_path, "ring1") as ring1:
            assert await token(http, ring1) == t0  # the derived key still decrypts
            t1 = await invalidate(http, ring1, t0)
        assert await sealed_with(redis, prefix) == "k1"
        asked = await requests_made(emulator)
        with running_brokers(
            tmp_path, (with_ring(k1, k2), "step1"), (with_ring(k2, k1), "step2")
        ) as (step1, step2):
            assert await token(http, step1) == t1
            assert await token(http, step2) == t1  # reordered: the old first key decrypts
            assert await requests_made(emulator) == asked
            await asyncio.sleep(1.1)  # the forced-refresh floor
            t2 = await invalidate(http, step2, t1)
            assert await sealed_with(redis, prefix) == "k2"
            await asyncio.sleep(1.0)  # step1's L1 re-reads the store
            assert await token(http, step1) == t2  # still on [k1, k2]: decrypts k2
        with running_broker(with_ring(k2), tmp_path, "step3") as step3:
            assert await token(http, step3) == t2
        logs = "".join(p.read_text() for p in tmp_path.glob("*.log"))
    assert await requests_made(emulator) == asked + 1  # t2 only
    assert "token.cache_entry_rejected" not in logs
    for line in (k1, k2):
        assert line.partition(":")[2] not in logs


@pytest.mark.parametrize("store", ["memory", "redis"])
async def test_a_rewritten_client_secret_file_is_picked_up_without_a_restart(
    emulator: Emulator, redis_server: RedisServer, tmp_path: Path, store: str
) -> None:
    """A Kubernetes-style update of client_secret_file: the broker logs the reload (without the
    secret), stops serving the token of the old secret, and its next upstream request uses the
    new one (the upstream now refuses the old)."""
    volume = SecretVolume(tmp_path / "secret-volume", EMULATOR_SECRET)
    store_table = (
        {"redis_url": redis_server.url, "key_prefix": f"s{uuid.uuid4().hex[:8]}"}
        if store == "redis"
        else {}
    )
    config = broker_config(emulator, store_table)
    for client in config["clients"].values():
        del client["client_secret"]
        client["client_secret_file"] = str(volume.path)
    async with httpx.AsyncClient(timeout=10) as http:
        with running_broker(config, tmp_path, "broker") as broker:
            old = await token(http, broker)
            await emulator.configure(clients={EMULATOR_ID: NEW_SECRET})
            volume.update(NEW_SECRET)
            deadline = time.monotonic() + 15
            while "credentials.reloaded" not in broker.log():
                assert time.monotonic() < deadline, "the secret file change was not picked up"
                await asyncio.sleep(0.2)
            new = await token(http, broker)
            again = await token(http, broker)
        log = broker.log()
    stats = await emulator.stats()
    assert new != old and again == new
    assert await accepted_upstream(emulator, new)
    assert stats["token_requests"] == 2 and stats["token_rejected"] == 0
    for secret in (EMULATOR_SECRET, NEW_SECRET, old, new):
        assert secret not in log
