"""The processes a benchmark drives: redis-server, the emulator, brokers and the bare endpoint.

Every one is a real process on a free loopback port, as in production; the harness only ever
talks to them over the network (wrk, httpx) and reads their RSS from /proc.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from app.auth.callers import hash_api_key
from tests.support.processes import ServerProcess, spawn_broker, wait_until_live
from tests.support.servers import free_port

EMULATOR_ID = "bench-client"
EMULATOR_SECRET = "bench-secret-value-0123456789"  # benchmark-only credentials of the emulator
API_KEY = "tbk_bench_orders_key_00000000000000000000"  # benchmark-only caller key
HEADERS = {"X-API-Key": API_KEY}


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOKEN_BROKER_", "EMULATOR_"))}
    return env | extra


@dataclass
class Served:
    """A server process on a loopback port, with its log file."""

    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        """Its base URL."""
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not exit."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def wait_for(
    url: str, process: subprocess.Popen[bytes], log_path: Path, timeout: float = 30
) -> None:
    """Poll `url` until it answers (any status); raise with the log if the process dies."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{url} exited at start:\n{log_path.read_text(errors='replace')}")
        try:
            httpx.get(url, timeout=0.5)
            return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"{url} did not start:\n{log_path.read_text(errors='replace')}")
        time.sleep(0.05)


def _spawn(args: list[str], directory: Path, name: str, env: dict[str, str]) -> Served:
    port = free_port()
    log_path = directory / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, *args, "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    return Served(port, process, log_path)


@contextmanager
def emulator(
    directory: Path, name: str = "emulator", *, lifetime: float = 3600.0, latency: float = 0.0
) -> Iterator[Served]:
    """`token-broker emulator` with the benchmark's credentials, token lifetime and latency."""
    args = ["-m", "app", "emulator", "--token-lifetime", str(lifetime)]
    args += ["--token-latency", str(latency)]
    env = _clean_env(EMULATOR_CLIENTS=f"{EMULATOR_ID}:{EMULATOR_SECRET}")
    served = _spawn(args, directory, name, env)
    try:
        wait_for(f"{served.url}/_emulator/stats", served.process, served.log_path)
        yield served
    finally:
        served.stop()


def token_requests(upstream: Served) -> int:
    """How many token requests the emulator has received."""
    stats = httpx.get(f"{upstream.url}/_emulator/stats", timeout=5).raise_for_status().json()
    return int(stats["token_requests"])


def broker_config(
    upstream: Served,
    redis_url: str,
    prefix: str,
    *,
    refresh_buffer: float = 300.0,
    budget: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One client (`checkout`) on the emulator, one caller (`orders`), the shared Redis."""
    config: dict[str, Any] = {
        "server": {"log_level": "info"},
        "store": {"redis_url": redis_url, "key_prefix": prefix},
        "clients": {
            "checkout": {
                "token_url": f"{upstream.url}/auth/realms/Paysera/protocol/openid-connect/token",
                "api_base_url": upstream.url,
                "client_id": EMULATOR_ID,
                "client_secret": EMULATOR_SECRET,
                "refresh_buffer_seconds": refresh_buffer,
                "min_forced_refresh_interval_seconds": 1,
                "timeout_seconds": 2,
            }
        },
        "callers": {"orders": {"api_key_sha256": hash_api_key(API_KEY), "clients": ["checkout"]}},
    }
    if budget is not None:
        config["budget"] = budget
    return config


@contextmanager
def brokers(
    config: dict[str, Any], directory: Path, count: int = 1, cwd: Path | None = None
) -> Iterator[list[ServerProcess]]:
    """`count` broker processes (`token-broker serve`) with `config`, stopped afterwards; `cwd`
    runs another version's `app/` (see `spawn_broker`)."""
    with ExitStack() as stack:
        started = []
        for i in range(count):
            name = f"broker-{config['store']['key_prefix']}-{i}"
            broker = spawn_broker(config, directory, name, cwd)
            stack.callback(broker.stop)
            started.append(broker)
        for broker in started:
            wait_until_live(broker)
        yield started


@contextmanager
def bare_endpoint(directory: Path, body: bytes) -> Iterator[Served]:
    """The bare FastAPI baseline (`tests.benchmarks.bare`) answering `body` to the bench key."""
    env = _clean_env(BENCH_BARE_BODY=body.decode(), BENCH_BARE_KEY=API_KEY)
    served = _spawn(["-m", "tests.benchmarks.bare"], directory, "bare", env)
    try:
        wait_for(f"{served.url}/token", served.process, served.log_path)
        yield served
    finally:
        served.stop()


def rss_bytes(pid: int) -> int:
    """Resident set size of process `pid`."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")
