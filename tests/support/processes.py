"""The server processes of the tests and the benchmarks: brokers, the emulator, the bare endpoint.

Each is a real process on a free loopback port, logging to a file in a directory the caller
gives; tests and benchmarks talk to it over the network only. The CLI's one-shot commands run
here too (`run_cli`). redis-server processes live in `tests.support.redis` and
`tests.support.redis_topologies`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.support.servers import free_port
from tests.tomlfile import write_toml

TOKEN_BROKER = str(Path(sys.executable).with_name("token-broker"))
STARTUP_TIMEOUT = 30.0


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without the developer's TOKEN_BROKER_* and EMULATOR_* settings, plus
    `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOKEN_BROKER_", "EMULATOR_"))}
    return env | extra


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `token-broker ARGS` to completion."""
    return subprocess.run(
        [TOKEN_BROKER, *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=env or clean_env(),
        check=False,
    )


@dataclass
class ServerProcess:
    """One server process on a loopback port, with the file it logs to."""

    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    ops_port: int | None = None  # a broker's plain-HTTP ops listener, when it has one

    @property
    def url(self) -> str:
        """Its base URL."""
        return f"http://127.0.0.1:{self.port}"

    def kill(self) -> None:
        """SIGKILL, as a crashed pod."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM and wait (graceful drain); SIGKILL if it does not exit."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)

    def log(self) -> str:
        """Everything it logged."""
        return self.log_path.read_text(errors="replace")

    def rss_kib(self) -> int:
        """Its resident set size, KiB."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError(f"no VmRSS for pid {self.process.pid}")


def _start(
    args: list[str],
    directory: Path,
    name: str,
    env: dict[str, str],
    cwd: Path | None = None,
) -> ServerProcess:
    """`python ARGS --port P` on a free port P, logging to `directory/name.log`; no wait."""
    port = free_port()
    log_path = directory / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, *args, "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
        )
    return ServerProcess(port, process, log_path)


def _wait_until(
    server: ServerProcess,
    url: str,
    ready: Callable[[httpx.Response], bool],
    timeout: float = STARTUP_TIMEOUT,
) -> None:
    """Poll `url` until its answer is `ready`; raise with the server's log if it exits first or
    is not ready within `timeout` (then it is killed)."""
    deadline = time.monotonic() + timeout
    while True:
        if server.process.poll() is not None:
            raise RuntimeError(f"{url} exited at start:\n{server.log()}")
        try:
            if ready(httpx.get(url, timeout=0.5)):
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            server.kill()
            raise RuntimeError(f"{url} did not start:\n{server.log()}")
        time.sleep(0.05)


# --- brokers -----------------------------------------------------------------------------------


def spawn_broker(
    config: dict[str, Any], directory: Path, name: str, cwd: Path | None = None
) -> ServerProcess:
    """Start `token-broker serve` with `config` written as `directory/name.toml`; does not wait
    for it. `cwd`: a directory holding another version's `app/` to run instead (a benchmark's
    baseline)."""
    config_path = write_toml(directory / f"{name}.toml", config)
    args = ["-m", "app", "serve", "--config", str(config_path)]
    broker = _start(args, directory, name, clean_env(), cwd)
    broker.ops_port = config.get("server", {}).get("ops_port")
    return broker


def wait_until_live(broker: ServerProcess, timeout: float = STARTUP_TIMEOUT) -> None:
    """Poll /health/live (on the ops port when there is one: the main port may want TLS) until
    it answers 200."""
    port = broker.port if broker.ops_port is None else broker.ops_port
    url = f"http://127.0.0.1:{port}/health/live"
    _wait_until(broker, url, lambda response: response.status_code == 200, timeout)


@contextmanager
def running_brokers(
    directory: Path, *specs: tuple[dict[str, Any], str], cwd: Path | None = None
) -> Iterator[list[ServerProcess]]:
    """Broker processes of these (config, name) pairs, started together, all live; all stopped
    on the way out."""
    brokers = [spawn_broker(config, directory, name, cwd) for config, name in specs]
    try:
        for broker in brokers:
            wait_until_live(broker)
        yield brokers
    finally:
        for broker in brokers:  # SIGTERM to all first: they drain at the same time
            if broker.process.poll() is None:
                broker.process.terminate()
        for broker in brokers:
            broker.stop()


@contextmanager
def running_broker(
    config: dict[str, Any], directory: Path, name: str = "broker"
) -> Iterator[ServerProcess]:
    """One broker process with `config`, live; stopped on the way out."""
    with running_brokers(directory, (config, name)) as (broker,):
        yield broker


@contextmanager
def fleet(
    config: dict[str, Any],
    directory: Path,
    size: int = 3,
    *,
    name: str = "broker",
    cwd: Path | None = None,
) -> Iterator[list[ServerProcess]]:
    """`size` broker processes with the same config (`name0`, `name1`, ...), started together;
    all stopped afterwards."""
    specs = [(config, f"{name}{i}") for i in range(size)]
    with running_brokers(directory, *specs, cwd=cwd) as brokers:
        yield brokers


# --- the emulator and the bare endpoint --------------------------------------------------------


@contextmanager
def emulator(
    directory: Path,
    clients: Mapping[str, str],
    name: str = "emulator",
    *,
    lifetime: float = 3600.0,
    latency: float = 0.0,
    rate_limit: int | None = None,
) -> Iterator[ServerProcess]:
    """`token-broker emulator` accepting `clients` (id -> secret), with this token lifetime,
    token latency and (when given) integration API rate limit; stopped on the way out."""
    args = ["-m", "app", "emulator", "--token-lifetime", str(lifetime)]
    args += ["--token-latency", str(latency)]
    if rate_limit is not None:
        args += ["--rate-limit", str(rate_limit)]
    # The credentials go by environment, not flags: flags show in ps.
    env = clean_env(EMULATOR_CLIENTS=",".join(f"{i}:{s}" for i, s in clients.items()))
    served = _start(args, directory, name, env)
    try:
        _wait_until(served, f"{served.url}/_emulator/stats", lambda response: response.is_success)
        yield served
    finally:
        served.stop()


@contextmanager
def bare_endpoint(directory: Path, body: bytes, api_key: str) -> Iterator[ServerProcess]:
    """The bare FastAPI baseline (`tests.benchmarks.bare`) answering `body` to `api_key`."""
    env = clean_env(BENCH_BARE_BODY=body.decode(), BENCH_BARE_KEY=api_key)
    served = _start(["-m", "tests.benchmarks.bare"], directory, "bare", env)
    try:
        # Any answer will do: without the key the endpoint says 401.
        _wait_until(served, f"{served.url}/token", lambda _: True)
        yield served
    finally:
        served.stop()
