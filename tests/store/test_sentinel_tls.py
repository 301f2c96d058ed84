"""`rediss+sentinel://`: the store reaches a TLS-only Sentinel and its TLS-only primary (client
certificates required, as `tls-auth-clients yes`), both real redis-server processes."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trustme

from app.config import StoreSettings
from app.errors import StoreUnavailable
from app.store.redis import RedisStore
from app.tokens.model import Token
from tests.support.redis import redis_server_binary
from tests.support.servers import free_port

SERVICE = "tlsdrill"


@dataclass
class Pem:
    """A CA and one key + certificate it issued for 127.0.0.1 (server and client use)."""

    directory: Path
    ca: Path = field(init=False)
    cert: Path = field(init=False)
    key: Path = field(init=False)

    def __post_init__(self) -> None:
        authority = trustme.CA()
        leaf = authority.issue_cert("127.0.0.1")
        self.ca, self.cert, self.key = (self.directory / n for n in ("ca.pem", "c.pem", "k.pem"))
        authority.cert_pem.write_to_path(str(self.ca))
        leaf.cert_chain_pems[0].write_to_path(str(self.cert))
        leaf.private_key_pem.write_to_path(str(self.key))

    def server_args(self) -> list[str]:
        """redis-server arguments for TLS with these files (client certificates required)."""
        return [
            "--tls-cert-file", str(self.cert),
            "--tls-key-file", str(self.key),
            "--tls-ca-cert-file", str(self.ca),
        ]  # fmt: skip

    def answers(self, port: int, command: bytes) -> bytes:
        """Send `command` over TLS (with the client certificate); the first reply bytes."""
        context = ssl.create_default_context(cafile=str(self.ca))
        context.load_cert_chain(self.cert, self.key)
        try:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=0.5) as raw,
                context.wrap_socket(raw, server_hostname="127.0.0.1") as sock,
            ):
                sock.sendall(command)
                return sock.recv(4096)
        except OSError:
            return b""


@pytest.fixture
def tls_sentinel() -> Iterator[tuple[int, Pem]]:
    """A TLS-only primary and a TLS-only sentinel monitoring it; yields the sentinel's port."""
    directory = Path(tempfile.mkdtemp(prefix="tb-tls-sentinel-"))
    pem = Pem(directory)
    primary_port, sentinel_port = free_port(), free_port()
    (directory / "primary").mkdir()
    primary = subprocess.Popen(
        [
            redis_server_binary(),
            "--port", "0", "--tls-port", str(primary_port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", str(directory / "primary"),
            *pem.server_args(),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    config = directory / "sentinel.conf"
    config.write_text(
        "\n".join(
            [
                "port 0",
                f"tls-port {sentinel_port}",
                "bind 127.0.0.1",
                f"dir {directory}",
                f"tls-cert-file {pem.cert}",
                f"tls-key-file {pem.key}",
                f"tls-ca-cert-file {pem.ca}",
                "tls-replication yes",  # the sentinel talks TLS to the primary too
                f"sentinel monitor {SERVICE} 127.0.0.1 {primary_port} 1",
                "",
            ]
        )
    )
    sentinel = subprocess.Popen(
        [redis_server_binary(), str(config), "--sentinel"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 15
        query = f"SENTINEL get-master-addr-by-name {SERVICE}\r\n".encode()
        while str(primary_port).encode() not in pem.answers(sentinel_port, query):
            assert primary.poll() is None and sentinel.poll() is None, "redis-server exited"
            assert time.monotonic() < deadline, "the TLS sentinel never named the primary"
            time.sleep(0.05)
        assert pem.answers(primary_port, b"PING\r\n").startswith(b"+PONG")
        yield sentinel_port, pem
    finally:
        for process in (sentinel, primary):
            process.terminate()
            process.wait(timeout=10)
        shutil.rmtree(directory, ignore_errors=True)


async def test_rediss_sentinel_url_reaches_a_tls_sentinel_and_primary(
    tls_sentinel: tuple[int, Pem],
) -> None:
    """With rediss+sentinel:// and the CA and client certificate as query options, the store
    finds the primary through the sentinel and saves and loads a token, all over TLS."""
    port, pem = tls_sentinel
    options = f"ssl_ca_certs={pem.ca}&ssl_certfile={pem.cert}&ssl_keyfile={pem.key}"
    url = f"rediss+sentinel://127.0.0.1:{port}/{SERVICE}/0?{options}"
    store = RedisStore(StoreSettings(redis_url=url, key_prefix="tls"))
    await store.start()
    try:
        assert store.kind == "redis-sentinel"
        assert await store.ping()
        now = time.time()
        saved = await store.save("checkout", Token("tls-token", now + 60, now))
        loaded = (await store.load("checkout")).token
    finally:
        await store.close()
    assert saved.access_token == "tls-token"
    assert loaded is not None and loaded.access_token == "tls-token"


async def test_plain_sentinel_url_cannot_use_a_tls_sentinel(tls_sentinel: tuple[int, Pem]) -> None:
    """The same setup through redis+sentinel:// (no TLS) gets no answer: TLS is what the URL
    scheme asks for."""
    port, _ = tls_sentinel
    settings = StoreSettings(
        redis_url=f"redis+sentinel://127.0.0.1:{port}/{SERVICE}/0",
        key_prefix="plain",
        socket_timeout_seconds=0.2,  # a TLS port does not answer plain text: fail fast
        connect_timeout_seconds=0.2,
    )
    store = RedisStore(settings)
    await store.start()
    try:
        assert not await store.ping()
        with pytest.raises(StoreUnavailable):
            await store.load("checkout")
    finally:
        await store.close()
