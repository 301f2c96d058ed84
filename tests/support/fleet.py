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


def toml_value(value: Any) -> str:
    """A TOML literal for the small set of types our configs use."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(type(value))


def to_toml(config: dict[str, Any], prefix: str = "") -> str:
    """Render a nested dict of tables as TOML."""
    scalars = {k: v for k, v in config.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in config.items() if isinstance(v, dict)}
    lines = [f"[{prefix}]"] if prefix and scalars else []
    lines += [f"{key} = {toml_value(value)}" for key, value in scalars.items()]
    for key, table in tables.items():
        lines.append(to_toml(table, f"{prefix}.{key}" if prefix else key))
    return "\n".join(lines) + "\n"


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


def spawn_broker(config: dict[str, Any], directory: Path, name: str) -> BrokerProcess:
    """Start `token-broker serve` with `config` written as TOML; does not wait for it."""
    port = free_port()
    config_path = directory / f"{name}.toml"
    config_path.write_text(to_toml(config))
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
