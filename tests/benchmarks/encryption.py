"""6. Tokens at rest: what sealing costs on the warm path and on a cold fetch.

The broker's own parts in this process: `TokenService` over a `RedisStore` on the benchmark's
redis-server, fetching from an emulator process over loopback HTTP. Each measurement runs twice,
with the real sealers (AES-256-GCM, HMAC digest, validation on read) and with a baseline sealer
that only encodes the same fields (no cipher, no HMAC, no checks), everything else identical
(the same scripts, the same round trips: the TIME read before a save included, since the
baseline stores the same entry shape). Interleaved, so machine noise hits both alike.

- warm: `TokenService.get` of a cached client in a tight loop (the L1 hit behind `GET /token`);
  seals and opens are counted meanwhile (the L1's re-check against the store reads and opens
  the entry about once per `L1_HARD_AGE_SECONDS`).
- cold: `TokenService.get` of a client never asked for: a store miss, the lock, one emulator
  token request, the sealed save.
- store: `RedisStore.save` then `load` of one token (two scripts and the TIME read).
- one seal / one open: the sealing functions alone.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
from pydantic import SecretStr

from app.clock import SYSTEM_CLOCK
from app.config import ClientSettings, StoreSettings
from app.store.memory import MemoryStore
from app.store.redis import RedisStore
from app.store.sealing import (
    ClientSealer,
    OpenedToken,
    SealedEntry,
    Sealers,
    build_sealer,
    time_text,
)
from app.tokens.model import ClientPolicy, Token
from app.tokens.service import TokenService
from app.upstream.oauth import UpstreamTokenClient
from tests.benchmarks import deployment
from tests.benchmarks.report import Section
from tests.support import processes

TOKEN = "emu_" + "x" * 43  # the emulator's token shape


@dataclass(frozen=True)
class EncryptionPlan:
    """How many of each operation to time."""

    warm_seconds: float = 3.0
    cold_fetches: int = 150
    store_round_trips: int = 1500
    operations: int = 20_000


class PlainSealer(ClientSealer):
    """The baseline: the same entry fields, encoded but neither encrypted nor checked."""

    def digest(self, access_token: str) -> str:
        """Bare SHA-256."""
        return hashlib.sha256(access_token.encode()).hexdigest()

    def seal(
        self, access_token: str, token_type: str, expires_at: float, obtained_at: float
    ) -> SealedEntry:
        """JSON in base64url, no cipher."""
        expires = time_text(expires_at)
        payload = {"tok": access_token, "typ": token_type, "exp": expires}
        payload["obt"] = time_text(obtained_at)
        blob = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()
        return SealedEntry(f"plain.{blob}", self.digest(access_token), expires)

    def open(self, entry: SealedEntry, now: float) -> OpenedToken:
        """Decode, no checks."""
        blob = entry.sealed.partition(".")[2]
        payload = json.loads(base64.urlsafe_b64decode(blob + "=" * (-len(blob) % 4)))
        exp, obt = float(payload["exp"]), float(payload["obt"])
        return OpenedToken(payload["tok"], payload["typ"], exp, obt)


class CountingSealers(Sealers):
    """Sealers that count seals and opens; `plain` builds the baseline sealer."""

    def __init__(self, plain: bool) -> None:
        super().__init__()
        self.plain = plain
        self.seals = 0
        self.opens = 0
        self._built: dict[str, ClientSealer] = {}

    def get(self, client: str) -> ClientSealer:
        """The (counting) sealer of `client`, built on first use."""
        sealer = self._built.get(client)
        if sealer is None:
            sealer = self._built[client] = self._counting(client)
        return sealer

    def _counting(self, client: str) -> ClientSealer:
        inner = build_sealer(client, deployment.EMULATOR_ID, deployment.EMULATOR_SECRET, ())
        base = PlainSealer if self.plain else ClientSealer
        owner = self

        class Counting(base):  # type: ignore[valid-type,misc]
            def seal(self, *args: object) -> SealedEntry:
                owner.seals += 1
                return super().seal(*args)  # type: ignore[no-any-return]

            def open(self, entry: SealedEntry, now: float) -> OpenedToken:
                owner.opens += 1
                return super().open(entry, now)  # type: ignore[no-any-return]

        counting: ClientSealer = Counting.__new__(Counting)
        counting.__dict__.update(inner.__dict__)
        return counting


@dataclass
class Variant:
    """One store + service + fetcher, sealed or plain."""

    name: str
    sealers: CountingSealers
    store: RedisStore
    service: TokenService


def clients_of(upstream_url: str, count: int) -> dict[str, ClientSettings]:
    """`count` clients on the emulator, all with the benchmark's credentials."""
    spec = ClientSettings(
        token_url=f"{upstream_url}/auth/realms/Paysera/protocol/openid-connect/token",
        api_base_url=upstream_url,
        client_id=deployment.EMULATOR_ID,
        client_secret=SecretStr(deployment.EMULATOR_SECRET),
        timeout_seconds=5,
    )
    return {f"c{i}": spec for i in range(count)}


async def _variant(
    name: str, plain: bool, redis_url: str, prefix: str, http: httpx.AsyncClient, clients: dict
) -> Variant:
    sealers = CountingSealers(plain)
    settings = StoreSettings(redis_url=SecretStr(redis_url), key_prefix=f"{prefix}{name}")
    store = RedisStore(settings, sealers=sealers)
    await store.start()
    service = TokenService(
        dict.fromkeys(clients, ClientPolicy()),
        (store, store),
        MemoryStore(),
        UpstreamTokenClient(http, clients),
        clock=SYSTEM_CLOCK,
    )
    store.subscribe(service.on_change)
    return Variant(name, sealers, store, service)


async def _timed(call: Callable[[], Awaitable[object]]) -> float:
    started = time.perf_counter()
    await call()
    return time.perf_counter() - started


async def _warm(variants: list[Variant], seconds: float) -> dict[str, tuple[float, int, int, int]]:
    """Per variant: (seconds per get, gets, seals, opens) of L1 hits of one client, in
    alternating chunks of 1000 calls for `seconds` each."""
    counted = {v.name: (v.sealers.seals, v.sealers.opens) for v in variants}
    spent = dict.fromkeys(counted, 0.0)
    calls = dict.fromkeys(counted, 0)
    for variant in variants:
        await variant.service.get("c0")
    while min(spent.values()) < seconds:
        for variant in variants:
            get = variant.service.get
            started = time.perf_counter()
            for _ in range(1000):
                await get("c0")
            spent[variant.name] += time.perf_counter() - started
            calls[variant.name] += 1000
    return {
        v.name: (
            spent[v.name] / calls[v.name],
            calls[v.name],
            v.sealers.seals - counted[v.name][0],
            v.sealers.opens - counted[v.name][1],
        )
        for v in variants
    }


def _per_op(function: Callable[[], object], count: int) -> float:
    started = time.perf_counter()
    for _ in range(count):
        function()
    return (time.perf_counter() - started) / count


async def _measure(plan: EncryptionPlan, redis_url: str, upstream_url: str, prefix: str) -> dict:
    clients = clients_of(upstream_url, plan.cold_fetches + 1)
    results: dict[str, dict[str, float]] = {"sealed": {}, "plain": {}}
    async with httpx.AsyncClient() as http:
        variants = [
            await _variant("sealed", False, redis_url, prefix, http, clients),
            await _variant("plain", True, redis_url, prefix, http, clients),
        ]
        try:
            for variant in variants:  # one warm-up fetch each
                await variant.service.get("c0")
            cold: dict[str, list[float]] = {"sealed": [], "plain": []}
            for i in range(1, plan.cold_fetches + 1):
                for variant in variants if i % 2 else variants[::-1]:
                    client = f"c{i}"
                    cold[variant.name].append(
                        await _timed(lambda v=variant, c=client: v.service.get(c))
                    )
            store: dict[str, list[float]] = {"sealed": [], "plain": []}
            for i in range(plan.store_round_trips):
                for variant in variants if i % 2 else variants[::-1]:
                    now = time.time()
                    token = Token(TOKEN, now + 3600 + i, now)

                    async def round_trip(v: Variant = variant, t: Token = token) -> None:
                        await v.store.save("bench", t)
                        await v.store.load("bench")

                    store[variant.name].append(await _timed(round_trip))
            warm = await _warm(variants, plan.warm_seconds)
            for variant in variants:
                per_get, gets, seals, opens = warm[variant.name]
                results[variant.name] |= {
                    "warm": per_get,
                    "warm_gets": gets,
                    "warm_seals": seals,
                    "warm_opens": opens,
                    "cold": statistics.median(cold[variant.name]),
                    "store": statistics.median(store[variant.name]),
                }
            for variant in variants:
                sealer = variant.sealers.get("ops")
                now = time.time()
                entry = sealer.seal(TOKEN, "Bearer", now + 3600, now)
                results[variant.name]["seal"] = _per_op(
                    lambda s=sealer, n=now: s.seal(TOKEN, "Bearer", n + 3600, n), plan.operations
                )
                results[variant.name]["open"] = _per_op(
                    lambda s=sealer, e=entry, n=now: s.open(e, n), plan.operations
                )
        finally:
            for variant in variants:
                await variant.service.close()
                await variant.store.close()
    return results


def measure(plan: EncryptionPlan, redis_url: str, directory: Path, prefix: str) -> Section:
    """Run both variants against an emulator process; the section with the ratios."""
    with processes.emulator(directory, deployment.CLIENTS, "emulator-encryption") as upstream:
        results = asyncio.run(_measure(plan, redis_url, upstream.url, prefix))
    sealed, plain = results["sealed"], results["plain"]

    def row(label: str, key: str, scale: float, unit: str) -> list[str]:
        return [
            label,
            f"{sealed[key] * scale:.2f} {unit}",
            f"{plain[key] * scale:.2f} {unit}",
            f"{sealed[key] / plain[key]:.2f}",
        ]

    section = Section(
        "6. Tokens at rest: the cost of AES-256-GCM sealing (in-process, real Redis + emulator)",
        ["operation", "sealed (AES-256-GCM)", "plain baseline", "ratio"],
    )
    section.rows += [
        row("warm `get` (L1 hit), per call", "warm", 1e9, "ns"),
        row("cold `get` (miss, lock, upstream, save), median", "cold", 1e3, "ms"),
        row("store save + load (real Redis), median", "store", 1e6, "µs"),
        row("one seal", "seal", 1e6, "µs"),
        row("one open (with its checks)", "open", 1e6, "µs"),
    ]
    per_100k = 100_000 / sealed["warm_gets"]
    section.notes.append(
        f"During {sealed['warm_gets']:,} warm gets: {sealed['warm_seals']} seals and "
        f"{sealed['warm_opens']} opens ({sealed['warm_opens'] * per_100k:.1f} per 100k gets: "
        "the L1's background re-check of the store, about once per 0.9 s); the hot path itself "
        "never seals or opens, L1 holds the plaintext."
    )
    return section
