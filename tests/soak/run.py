"""Soak: 3 broker processes on one redis-server under mixed load for SOAK_SECONDS (600).

`make soak` (or `python -m tests.soak`). Callers ask for tokens, report tokens as rejected
(forced refreshes), take budget permits and report upstream answers, and send API calls through
the proxy to the emulator, whose tokens live 60 s so the fleet also rotates them on its own.
Every answer other than the expected one is an error. At the start (after a warm-up), the
middle and the end it samples each broker's RSS and open file descriptors and the number of
Redis clients. It prints a summary and exits 1 on any error or leak.

Not part of `make test`: it runs for minutes.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import API_KEYS, EMULATOR_ID, EMULATOR_SECRET
from tests.reliability.live import live_config
from tests.support.processes import ServerProcess, emulator, fleet
from tests.support.redis import RedisServer

TOKEN_LIFETIME = 60.0
WARM_UP_SECONDS = 5.0
MAX_FD_GROWTH = 10  # per broker, end vs start: more is a leak
MAX_REDIS_CLIENT_GROWTH = 3
MAX_RSS_GROWTH = 0.15  # end vs middle: memory must be flat once warm
HEADERS = {"X-API-Key": API_KEYS["billing"]}
PROXY_PATH = "/proxy/checkout/checkout-project/integration/v1/methods"


def out(line: str) -> None:
    """Print one line at once (the soak runs for minutes)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def open_fds(pid: int) -> int:
    """Open file descriptors of a process (sockets included)."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def redis_clients(port: int) -> int:
    """`connected_clients` of the redis-server on `port`."""
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(b"INFO clients\r\n")
        data = b""
        while b"connected_clients:" not in data or not data.endswith(b"\r\n"):
            data += sock.recv(4096)
    line = next(x for x in data.split(b"\r\n") if x.startswith(b"connected_clients:"))
    return int(line.split(b":")[1]) - 1  # not counting this connection


@dataclass
class Sample:
    """One look at the fleet's resources."""

    at: float
    rss_kib: list[int]
    fds: list[int]
    redis_clients: int


def sample(brokers: list[ServerProcess], redis: RedisServer, started: float) -> Sample:
    """RSS and fds of every broker, and Redis' client count, now."""
    return Sample(
        round(time.monotonic() - started),
        [b.rss_kib() for b in brokers],
        [open_fds(b.process.pid) for b in brokers],
        redis_clients(redis.port),
    )


@dataclass
class Tally:
    """What the load saw: answers per kind and status, and the unexpected ones."""

    answers: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)

    def note(self, kind: str, status: int | str, expected: tuple[int, ...]) -> None:
        """Count one answer; anything not in `expected` is an error."""
        self.answers[f"{kind} {status}"] += 1
        if status not in expected:
            self.errors[f"{kind} {status}"] += 1


Worker = Callable[[httpx.AsyncClient, str], Coroutine[Any, Any, None]]


class Load:
    """The mixed load: one coroutine per caller, each on its own loop until `stop`."""

    def __init__(self, tally: Tally) -> None:
        self.tally = tally
        self.stop = asyncio.Event()

    async def call(
        self, kind: str, expected: tuple[int, ...], send: Awaitable[httpx.Response]
    ) -> httpx.Response | None:
        """Send one request and tally its answer (a transport error is an error too)."""
        try:
            response = await send
        except httpx.HTTPError as exc:
            self.tally.note(kind, type(exc).__name__, expected)
            return None
        self.tally.note(kind, response.status_code, expected)
        return response

    async def tokens(self, http: httpx.AsyncClient, url: str) -> None:
        """GET /token for either client, ~40 a second."""
        while not self.stop.is_set():
            client = random.choice(("checkout", "payouts"))
            await self.call(
                "token", (200,), http.get(f"{url}/token?client={client}", headers=HEADERS)
            )
            await asyncio.sleep(0.025)

    async def invalidations(self, http: httpx.AsyncClient, url: str) -> None:
        """Report the current token as rejected every 3 s (the floor is 2 s)."""
        while not self.stop.is_set():
            await asyncio.sleep(3.0)
            current = await self.call(
                "token", (200,), http.get(f"{url}/token?client=checkout", headers=HEADERS)
            )
            if current is not None and current.status_code == 200:
                body = {"client": "checkout", "access_token": current.json()["access_token"]}
                await self.call(
                    "invalidate",
                    (200,),
                    http.post(f"{url}/token/invalidate", json=body, headers=HEADERS),
                )

    async def permits(self, http: httpx.AsyncClient, url: str) -> None:
        """Take a budget permit and report a 200 for it, ~3 a second."""
        while not self.stop.is_set():
            await self.call(
                "permit",
                (200,),
                http.post(f"{url}/budget/acquire?client=checkout&wait=1", headers=HEADERS),
            )
            report = {"client": "checkout", "status": 200, "headers": {}}
            await self.call(
                "report", (204,), http.post(f"{url}/budget/report", json=report, headers=HEADERS)
            )
            await asyncio.sleep(0.3)

    async def proxy(self, http: httpx.AsyncClient, url: str) -> None:
        """A proxied API call, ~2 a second."""
        while not self.stop.is_set():
            await self.call("proxy", (200,), http.get(f"{url}{PROXY_PATH}", headers=HEADERS))
            await asyncio.sleep(0.5)


def config(emulator_url: str, redis: RedisServer) -> dict[str, Any]:
    """The fleet's configuration: 60 s tokens, a budget the load stays under."""
    settings = live_config(
        emulator_url,
        {"redis_url": redis.url, "key_prefix": "soak"},
        budget={"limit": 1000, "window_seconds": 60, "max_wait_seconds": 2},
        server={"log_level": "warning"},
    )
    for client in settings["clients"].values():
        client |= {"refresh_buffer_seconds": 20, "min_forced_refresh_interval_seconds": 2}
    return settings


async def drive(brokers: list[ServerProcess], redis: RedisServer, seconds: float) -> int:
    """Run the load for `seconds`; print samples and the summary; return the exit status."""
    tally = Tally()
    load = Load(tally)
    workers: list[tuple[Worker, int]] = [
        (load.tokens, 6),
        (load.invalidations, 1),
        (load.permits, 2),
        (load.proxy, 2),
    ]
    limits = httpx.Limits(max_connections=50, max_keepalive_connections=50)
    async with httpx.AsyncClient(timeout=30, limits=limits) as http:
        started = time.monotonic()
        tasks = [
            asyncio.create_task(worker(http, brokers[i % len(brokers)].url))
            for worker, count in workers
            for i in range(count)
        ]
        await asyncio.sleep(WARM_UP_SECONDS)
        samples = [sample(brokers, redis, started)]
        out(f"start  {samples[0]}")
        end = started + seconds
        middle_taken = False
        while time.monotonic() < end:
            await asyncio.sleep(min(30.0, max(0.0, end - time.monotonic())))
            now = sample(brokers, redis, started)
            answers, errors = sum(tally.answers.values()), sum(tally.errors.values())
            out(f"{now.at:>5}s {now}  answers={answers} errors={errors}")
            if not middle_taken and time.monotonic() >= started + seconds / 2:
                samples.append(now)
                middle_taken = True
        load.stop.set()
        await asyncio.gather(*tasks)
        elapsed = time.monotonic() - started
    await asyncio.sleep(1.0)  # let the brokers close what the finished load left
    samples.append(sample(brokers, redis, started))
    if len(samples) == 2:
        samples.insert(1, samples[0])
    return summarise(tally, samples, elapsed, brokers)


def summarise(
    tally: Tally, samples: list[Sample], elapsed: float, brokers: list[ServerProcess]
) -> int:
    """Print the summary; 1 if there was an error or a leak."""
    start, middle, end = samples[0], samples[1], samples[-1]
    total = sum(tally.answers.values())
    out("")
    rate = total / elapsed
    out(f"soak: {elapsed:.0f} s, 3 brokers on one redis-server, {total} requests ({rate:.0f}/s)")
    for key, count in sorted(tally.answers.items()):
        out(f"  {key:<22} {count}")
    out(f"errors: {sum(tally.errors.values())} {dict(tally.errors)}")
    out(f"RSS KiB start/middle/end: {start.rss_kib} / {middle.rss_kib} / {end.rss_kib}")
    out(f"open fds start/end: {start.fds} / {end.fds}")
    out(f"Redis clients start/end: {start.redis_clients} / {end.redis_clients}")
    problems = []
    if tally.errors:
        problems.append("errors")
    if any(e - s > MAX_FD_GROWTH for s, e in zip(start.fds, end.fds, strict=True)):
        problems.append("file descriptors grew")
    if end.redis_clients - start.redis_clients > MAX_REDIS_CLIENT_GROWTH:
        problems.append("Redis connections grew")
    if any(e > m * (1 + MAX_RSS_GROWTH) for m, e in zip(middle.rss_kib, end.rss_kib, strict=True)):
        problems.append("memory grew")
    if any(b.process.poll() is not None for b in brokers):
        problems.append("a broker exited")
    out("verdict: " + ("ok" if not problems else "FAILED: " + ", ".join(problems)))
    return 1 if problems else 0


def main() -> int:
    """Start redis-server, the emulator and 3 brokers; soak them; stop everything."""
    seconds = float(os.environ.get("SOAK_SECONDS", "600"))
    directory = Path(tempfile.mkdtemp(prefix="tb-soak-"))
    with (
        RedisServer() as redis,
        emulator(
            directory, {EMULATOR_ID: EMULATOR_SECRET}, lifetime=TOKEN_LIFETIME, rate_limit=100_000
        ) as upstream,
        fleet(config(upstream.url, redis), directory) as brokers,
    ):
        out(f"soaking for {seconds:.0f} s; logs in {directory}")
        status = asyncio.run(drive(brokers, redis, seconds))
        upstream = httpx.get(f"{upstream.url}/_emulator/stats").json()
        out(f"emulator: {upstream}")
        return status
