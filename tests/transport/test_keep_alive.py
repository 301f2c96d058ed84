"""Idle keep-alive (`server.keep_alive_seconds`) on real `token-broker serve` processes.

Load balancers and mesh sidecars reuse pooled connections after up to 60 s of quiet; uvicorn's
own default closes them after 5 s. Each check here holds one raw socket (h11 on top, TLS where
the listener serves it), makes a request, stays idle longer than 5 s, and makes a second
request on the *same* socket: a socket object cannot reconnect, so a 200 proves reuse.
"""

from __future__ import annotations

import select
import socket
import ssl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h11
import trustme

from tests.support.processes import running_brokers
from tests.support.servers import free_port
from tests.support.tls import LOOPBACK, client_context

IDLE_SECONDS = 6.0  # longer than uvicorn's default keep-alive (5 s)
NOWHERE = "http://127.0.0.1:9"  # the upstream is never asked: only /health/live is requested


class Http11:
    """One HTTP/1.1 connection over a socket we hold, so nothing can silently reconnect."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.h11 = h11.Connection(h11.CLIENT)

    def get(self, path: str) -> int:
        """Send GET `path` on this connection and read the whole answer; its status."""
        request = h11.Request(method="GET", target=path, headers=[("Host", LOOPBACK)])
        self.sock.sendall(self.h11.send(request) + self.h11.send(h11.EndOfMessage()))
        status = 0
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                self.h11.receive_data(self.sock.recv(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.EndOfMessage):
                self.h11.start_next_cycle()
                return status
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionError("the server closed the connection")

    def closed_by_server(self) -> bool:
        """Whether the server has closed its end (readable with nothing to read: EOF)."""
        readable, _, _ = select.select([self.sock], [], [], 0)
        if not readable:
            return False
        if isinstance(self.sock, ssl.SSLSocket):
            try:
                return self.sock.recv(1) == b""
            except (ssl.SSLError, OSError):
                return True
        return self.sock.recv(1, socket.MSG_PEEK) == b""


def config(server: dict[str, Any]) -> dict[str, Any]:
    """A broker config with one client (never fetched) and `server` as its [server] table."""
    client = {"token_url": f"{NOWHERE}/token", "api_base_url": NOWHERE}
    client |= {"client_id": "checkout-id", "client_secret": "keep-alive-test-secret"}
    return {"server": server, "clients": {"checkout": client}}


@contextmanager
def brokers(tmp_path: Path, servers: dict[str, dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """One `token-broker serve` per [server] table (each gets an ops port), all started at once;
    yields name -> (process, main port, ops port)."""
    specs = [
        (config({**server, "ops_port": free_port()}), name) for name, server in servers.items()
    ]
    with running_brokers(tmp_path, *specs) as started:
        yield {
            name: (broker, broker.port, broker.ops_port)
            for name, broker in zip(servers, started, strict=True)
        }


@contextmanager
def connect(port: int, tls: ssl.SSLContext | None = None) -> Iterator[Http11]:
    """A connection to 127.0.0.1:`port`, over TLS with `tls`."""
    sock = socket.create_connection((LOOPBACK, port), timeout=10)
    if tls is not None:
        sock = tls.wrap_socket(sock, server_hostname=LOOPBACK)
    with sock:
        yield Http11(sock)


def test_default_keep_alive_reuses_connections_idle_longer_than_5_s(tmp_path: Path) -> None:
    """With keep_alive_seconds at its default (75), a connection idle for 6 s still carries the
    next request on the main port (plain and TLS) and on the ops port."""
    ca = trustme.CA()
    leaf = ca.issue_cert(LOOPBACK)
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    tls_server = {"tls_cert_file": str(cert), "tls_key_file": str(key)}
    with (
        brokers(tmp_path, {"plain": {}, "tls": tls_server}) as running,
        connect(running["plain"][1]) as plain_main,
        connect(running["plain"][2]) as plain_ops,
        connect(running["tls"][1], client_context(ca)) as tls_main,
        connect(running["tls"][2]) as tls_ops,
    ):
        connections = {
            "main (plain)": plain_main,
            "ops": plain_ops,
            "main (TLS)": tls_main,
            "ops beside TLS": tls_ops,
        }
        first = {name: conn.get("/health/live") for name, conn in connections.items()}
        time.sleep(IDLE_SECONDS)
        closed = {name: conn.closed_by_server() for name, conn in connections.items()}
        second = {name: conn.get("/health/live") for name, conn in connections.items()}
    assert first == dict.fromkeys(connections, 200)
    assert closed == dict.fromkeys(connections, False)
    assert second == dict.fromkeys(connections, 200)


def test_keep_alive_of_5_s_closes_a_connection_idle_for_6_s(tmp_path: Path) -> None:
    """The same check with keep_alive_seconds = 5 finds the connection closed by the server on
    both ports: the setting is what keeps it open."""
    with (
        brokers(tmp_path, {"short": {"keep_alive_seconds": 5}}) as running,
        connect(running["short"][1]) as main,
        connect(running["short"][2]) as ops,
    ):
        assert (main.get("/health/live"), ops.get("/health/live")) == (200, 200)
        time.sleep(IDLE_SECONDS)
        assert (main.closed_by_server(), ops.closed_by_server()) == (True, True)
        for conn in (main, ops):
            try:
                status = conn.get("/health/live")
            except (ConnectionError, h11.RemoteProtocolError):
                status = None
            assert status is None
