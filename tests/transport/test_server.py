"""BrokerServer: the ops listener beside an mTLS main listener; `serve` as a process and SIGTERM."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import httpx
import pytest
import trustme

from tests.conftest import API_KEYS, Emulator, broker_config
from tests.contract import assert_error, assert_token
from tests.support.processes import spawn_broker, wait_until_live
from tests.support.servers import free_port
from tests.support.tls import (
    CALLERS,
    LOOPBACK,
    Pki,
    client_context,
    issue_client_cert,
    mtls_config,
    plain_http,
    serve_broker,
    server_files,
)


async def test_ops_port_serves_only_health_and_metrics_over_plain_http(
    emulator: Emulator, pki: Pki
) -> None:
    """With client certificates required, ops_port answers /health* and /metrics (GET and HEAD),
    404 otherwise."""
    cert = pki.client("orders", common_name="orders")
    async with (
        serve_broker(mtls_config(emulator, pki)) as broker,
        pki.http(broker.url, cert) as main,
        plain_http(broker.ops_url) as ops,
    ):
        assert (await ops.get("/health/ready")).json() == {"status": "ready"}
        assert (await ops.get("/health/live")).status_code == 200
        ops_health = (await ops.get("/health")).json()
        main_health = (await main.get("/health")).json()
        ops_metrics, main_metrics = await ops.get("/metrics"), await main.get("/metrics")
        ops_paths = ("/health", "/health/live", "/health/ready", "/metrics")
        heads = {path: await ops.head(path) for path in ops_paths}
        refused = [
            await ops.get("/token", params={"client": "checkout"}, headers=_orders_key()),
            await ops.post("/token/invalidate", json={}, headers=_orders_key()),
            await ops.post("/budget/acquire", params={"client": "checkout"}),
            await ops.get("/openapi.json"),
            await ops.get("/healthz"),
        ]
        assert_token(await main.get("/token", params={"client": "checkout"}))
    # One process, one set of services: both listeners report the same instance.
    assert ops_health["instance"] == main_health["instance"]
    assert ops_metrics.status_code == main_metrics.status_code == 200
    assert ops_metrics.headers["content-type"].startswith("text/plain")
    assert "# TYPE " in ops_metrics.text
    for response in refused:
        assert_error(response, 404, "not_found")
    for path, head in heads.items():  # uptime checkers use HEAD
        assert (head.status_code, head.content) == (200, b""), path
    assert heads["/metrics"].headers["content-type"] == ops_metrics.headers["content-type"]


def _orders_key() -> dict[str, str]:
    return {"X-API-Key": API_KEYS["orders"]}


async def test_serve_process_uses_mtls_ops_port_and_stops_on_sigterm(
    emulator: Emulator, tmp_path: Path
) -> None:
    """`token-broker serve` (uvloop) takes certificates, serves ops, and exits 0 on SIGTERM."""
    server_ca, client_ca = trustme.CA(), trustme.CA()
    files = server_files(tmp_path, server_ca, client_ca)
    cert = issue_client_cert(client_ca, tmp_path / "orders.pem", common_name="orders")
    ops_port = free_port()
    server = {
        "tls_cert_file": str(files.cert),
        "tls_key_file": str(files.key),
        "tls_client_ca_file": str(files.client_ca),
        "ops_port": ops_port,
    }
    config = broker_config(emulator, {}, server=server, callers=CALLERS)
    broker = spawn_broker(config, tmp_path, "broker")
    port = broker.port
    try:
        wait_until_live(broker)  # on the ops port: the main one wants a client certificate
        async with plain_http(f"http://{LOOPBACK}:{ops_port}") as ops:
            async with httpx.AsyncClient(verify=client_context(server_ca, cert), timeout=5) as http:
                assert_token(await http.get(f"https://{LOOPBACK}:{port}/token"))
            assert_error(await ops.get("/token"), 404, "not_found")
        broker.process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(broker.process.wait, 15) == 0, broker.log()
    finally:
        broker.stop()
    async with plain_http(f"http://{LOOPBACK}") as http:
        for closed in (port, ops_port):
            with pytest.raises(httpx.ConnectError):
                await http.get(f"http://{LOOPBACK}:{closed}/health/live")
