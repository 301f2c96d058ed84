"""Several broker processes (`token-broker serve`) sharing one store: the fleet under test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.support.servers import free_port
from tests.tomlfile import dump_toml as to_toml
from tests.tomlfile import write_toml

__all__ = ["BrokerProcess", "fleet", "spawn_broker", "to_toml"]


@dataclass
class BrokerProcess:
    """One `token-broker serve` process."""

    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        """Its base URL."""
        return f"http://127.0.0.1:{self.port}"

    def kill(self) -> None:
        """SIGKILL, as a crashed pod."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM and wait (graceful drain)."""
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


def spawn_broker(
    config: dict[str, Any], directory: Path, name: str, cwd: Path | None = None
) -> BrokerProcess:
    """Start `token-broker serve` with `config` written as TOML; does not wait for it. `cwd`: a
    directory holding another version's `app/` to run instead (a benchmark's baseline)."""
    port = free_port()
    config_path = directory / f"{name}.toml"
    write_toml(config_path, config)
    log_path = directory / f"{name}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKEN_BROKER_")}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "app",
                "serve",
                "--config",
                str(config_path),
                "--port",
                str(port),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
        )
    return BrokerProcess(port, process, log_path)


def wait_until_live(broker: BrokerProcess, timeout: float = 30) -> None:
    """Poll /health/live; raise with the broker's log if it exits or never answers."""
    deadline = time.monotonic() + timeout
    while True:
        if broker.process.poll() is not None:
            raise RuntimeError(f"broker on {broker.port} exited at start:\n{broker.log()}")
        try:
            if httpx.get(f"{broker.url}/health/live", timeout=0.5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            broker.kill()
            raise RuntimeError(f"broker on {broker.port} did not start:\n{broker.log()}")
        time.sleep(0.05)


@contextmanager
def fleet(config: dict[str, Any], directory: Path, size: int = 3) -> Iterator[list[BrokerProcess]]:
    """`size` broker processes with the same config, started together; all stopped afterwards."""
    brokers = [spawn_broker(config, directory, f"broker{i}") for i in range(size)]
    try:
        for broker in brokers:
            wait_until_live(broker)
        yield brokers
    finally:
        for broker in brokers:
            if broker.process.poll() is None:
                broker.process.terminate()
        for broker in brokers:
            broker.stop()
