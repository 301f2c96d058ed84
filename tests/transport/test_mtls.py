"""Mutual TLS on the main listener, the ops listener, and certificate reload: real handshakes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from cryptography.x509.oid import NameOID
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from app.config import Settings
from app.transport.server import BrokerServer
from tests.conftest import API_KEYS, Emulator, broker_config
from tests.contract import assert_error, assert_token
from tests.support.servers import bound_socket, free_port
from tests.support.tls import (
    CALLERS,
    LOOPBACK,
    ORDERS_URI,
    SHOP_URI,
    ServerFiles,
    client_context,
    issue_client_cert,
    plain_http,
    presented_certificate,
    serve_broker,
    server_files,
)
from tests.tomlfile import write_toml


@dataclass
class Pki:
    """The CAs, the broker's TLS files and the client certificates of one test."""

    server_ca: trustme.CA
    client_ca: trustme.CA
    files: ServerFiles
    directory: Path

    def client(self, name: str, *, ca: trustme.CA | None = None, **names: Any) -> Path:
        """A client key + certificate signed by the client CA (or `ca`) with the given names."""
        return issue_client_cert(ca or self.client_ca, self.directory / f"{name}.pem", **names)

    def http(self, base_url: str, cert: Path | None = None, **kwargs: Any) -> httpx.AsyncClient:
        """An HTTPS client trusting the broker, presenting `cert` when given."""
        return httpx.AsyncClient(
            base_url=base_url, verify=client_context(self.server_ca, cert), timeout=5, **kwargs
        )


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    """A server CA, a separate CA for client certificates, and the broker's files."""
    server_ca, client_ca = trustme.CA(), trustme.CA()
    return Pki(server_ca, client_ca, server_files(tmp_path, server_ca, client_ca), tmp_path)


def mtls_config(emulator: Emulator, pki: Pki, *, required: bool = True) -> dict[str, Any]:
    """The shared test config over HTTPS, verifying client certificates."""
    server = {
        "tls_cert_file": str(pki.files.cert),
        "tls_key_file": str(pki.files.key),
        "tls_client_ca_file": str(pki.files.client_ca),
        "tls_client_cert_required": required,
    }
    return broker_config(emulator, {}, server=server, callers=CALLERS)


async def test_common_name_gets_its_client_and_403_for_another(
    emulator: Emulator, pki: Pki
) -> None:
    """A certificate with CN=orders gets orders' client (200) and is refused another one (403)."""
    cert = pki.client("orders", common_name="orders")
    async with (
        serve_broker(mtls_config(emulator, pki)) as broker,
        pki.http(broker.url, cert) as http,
    ):
        assert_token(await http.get("/token", params={"client": "checkout"}))
        body = assert_error(
            await http.get("/token", params={"client": "payouts"}), 403, "forbidden"
        )
    assert "orders" in body["error_description"]


@pytest.mark.parametrize(
    "names",
    [{"uris": (SHOP_URI,)}, {"dns": ("shop.internal",)}],
    ids=["spiffe-uri-only", "dns-only"],
)
async def test_subject_alternative_name_alone_identifies_the_caller(
    emulator: Emulator, pki: Pki, names: dict[str, Any]
) -> None:
    """A certificate with an empty subject and one URI (SPIFFE) or DNS SAN matches `URI:`/`DNS:`."""
    cert = pki.client("shop", **names)
    async with (
        serve_broker(mtls_config(emulator, pki)) as broker,
        pki.http(broker.url, cert) as http,
    ):
        assert_token(await http.get("/token"))  # shop's only client, payouts
        assert_error(await http.get("/token", params={"client": "checkout"}), 403, "forbidden")


async def test_certificate_naming_no_caller_is_401(emulator: Emulator, pki: Pki) -> None:
    """A valid certificate whose identities no caller lists is 401 with a challenge."""
    cert = pki.client("nobody", common_name="nobody", uris=("spiffe://corp/ns/x/sa/nobody",))
    async with (
        serve_broker(mtls_config(emulator, pki)) as broker,
        pki.http(broker.url, cert) as http,
    ):
        response = await http.get("/token", params={"client": "checkout"})
    assert_error(response, 401, "unauthorized")
    assert response.headers["www-authenticate"]


@pytest.mark.parametrize("required", [True, False], ids=["required", "optional"])
async def test_certificate_from_another_ca_is_refused_in_the_handshake(
    emulator: Emulator, pki: Pki, required: bool
) -> None:
    """A client certificate from an unknown CA ends the connection before any HTTP response."""
    stranger = pki.client("stranger", ca=trustme.CA(), common_name="orders")
    good = pki.client("orders", common_name="orders")
    config = mtls_config(emulator, pki, required=required)
    async with serve_broker(config) as broker:
        async with pki.http(broker.url, stranger) as http:
            with pytest.raises(httpx.TransportError):
                await http.get("/token", params={"client": "checkout"})
        async with pki.http(broker.url, good) as http:  # the listener is unharmed
            assert_token(await http.get("/token", params={"client": "checkout"}))


async def test_no_certificate_is_refused_when_required(emulator: Emulator, pki: Pki) -> None:
    """With tls_client_cert_required = true a client without a certificate gets no response."""
    headers = {"X-API-Key": API_KEYS["orders"]}
    async with serve_broker(mtls_config(emulator, pki)) as broker, pki.http(broker.url) as http:
        with pytest.raises(httpx.TransportError):
            await http.get("/token", params={"client": "checkout"}, headers=headers)
        with pytest.raises(httpx.TransportError):
            await http.get("/health/live")  # credential-free paths too: it is the TLS layer


async def test_no_certificate_with_api_key_is_served_when_optional(
    emulator: Emulator, pki: Pki
) -> None:
    """With tls_client_cert_required = false a caller without a certificate uses its API key."""
    config = mtls_config(emulator, pki, required=False)
    async with serve_broker(config) as broker, pki.http(broker.url) as http:
        ok = await http.get("/token", headers={"X-API-Key": API_KEYS["orders"]})
        anonymous = await http.get("/token", params={"client": "checkout"})
        health = await http.get("/health/live")
    assert_token(ok)
    assert_error(anonymous, 401, "unauthorized")
    assert health.status_code == 200


@pytest.mark.parametrize(
    ("api_key", "status"),
    [
        (API_KEYS["billing"], 401),  # a key of another caller: never resolved silently
        ("tbk_wrong_key_000000000000000000000", 401),  # a bad key beside a good certificate
        (API_KEYS["orders"], 200),  # both name orders
    ],
    ids=["other-callers-key", "wrong-key", "same-caller"],
)
async def test_key_and_certificate_must_name_the_same_caller(
    emulator: Emulator, pki: Pki, api_key: str, status: int
) -> None:
    """A certificate and an API key together pass only when both are valid for one caller."""
    cert = pki.client("orders", common_name="orders")
    async with (
        serve_broker(mtls_config(emulator, pki)) as broker,
        pki.http(broker.url, cert) as http,
    ):
        response = await http.get(
            "/token", params={"client": "checkout"}, headers={"X-API-Key": api_key}
        )
    if status == 200:
        assert_token(response)
    else:
        assert_error(response, 401, "unauthorized", hidden=(api_key,))


async def _echo_tls(request: Request) -> JSONResponse:
    tls = request.scope.get("extensions", {}).get("tls")
    if tls is None:
        return JSONResponse({"tls": None})
    return JSONResponse(
        {
            "tls": sorted(tls),
            "client_cert_name": tls["client_cert_name"],
            "chain": len(tls["client_cert_chain"]),
            "pem": tls["client_cert_chain"][0][:27] if tls["client_cert_chain"] else None,
            "tls_version": tls["tls_version"],
            "san": tls["peer_cert"]["subjectAltName"] if tls["peer_cert"] else None,
        }
    )


async def test_uvicorn_hands_the_verified_certificate_to_the_app(pki: Pki, tmp_path: Path) -> None:
    """Each request's scope carries the ASGI TLS extension with the verified peer certificate.

    This is the test that fails if a uvicorn upgrade stops `ClientCertProtocol` from working.
    """
    settings = Settings(
        server={
            "host": LOOPBACK,
            "port": 1,  # the socket below is used instead
            "tls_cert_file": pki.files.cert,
            "tls_key_file": pki.files.key,
            "tls_client_ca_file": pki.files.client_ca,
            "tls_client_cert_required": False,
        },
        clients={"checkout": {"client_id": "id", "client_secret": "secret"}},
    )
    echo = Starlette(routes=[Route("/tls", _echo_tls)])
    server = BrokerServer(settings, app=echo)
    sock = bound_socket()
    url = f"https://{LOOPBACK}:{sock.getsockname()[1]}"
    task = asyncio.create_task(server.serve(sock))
    cert = pki.client("orders", common_name="orders", uris=(ORDERS_URI,), dns=("orders.internal",))
    try:
        while not server.main.started:
            await asyncio.sleep(0.005)
        async with pki.http(url, cert) as http:
            with_cert = (await http.get("/tls")).json()
            again = (await http.get("/tls")).json()  # a second request on the same connection
        async with pki.http(url) as http:
            without_cert = (await http.get("/tls")).json()
    finally:
        server.stop()
        await task
    assert with_cert == again
    assert with_cert["client_cert_name"] == "CN=orders"
    assert with_cert["chain"] == 1 and with_cert["pem"] == "-----BEGIN CERTIFICATE-----"
    assert with_cert["tls_version"] in (0x0303, 0x0304)
    assert with_cert["san"] == [["URI", ORDERS_URI], ["DNS", "orders.internal"]]
    assert {"client_cert_chain", "client_cert_name", "tls_version", "peer_cert"} <= set(
        with_cert["tls"]
    )
    assert without_cert["chain"] == 0 and without_cert["client_cert_name"] is None


async def test_ops_port_serves_only_health_and_metrics_over_plain_http(
    emulator: Emulator, pki: Pki
) -> None:
    """With client certificates required, ops_port answers /health* and /metrics, 404 otherwise."""
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


def _orders_key() -> dict[str, str]:
    return {"X-API-Key": API_KEYS["orders"]}


async def _wait_for_common_name(port: int, pki: Pki, cert: Path, expected: str) -> str:
    context = client_context(pki.server_ca, cert)
    deadline = time.monotonic() + 5
    while True:
        presented = await presented_certificate(port, context)
        name = presented.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        if name == expected or time.monotonic() > deadline:
            return str(name)
        await asyncio.sleep(0.02)


async def test_rotated_server_certificate_is_served_without_a_restart(
    emulator: Emulator, pki: Pki
) -> None:
    """New handshakes present a rotated certificate; a bad rotation keeps the last good one."""
    cert = pki.client("orders", common_name="orders")
    config = mtls_config(emulator, pki)
    async with (
        serve_broker(config, reload_interval=0.02) as broker,
        pki.http(broker.url, cert) as http,
    ):
        assert await _wait_for_common_name(broker.port, pki, cert, "broker-1") == "broker-1"
        assert_token(await http.get("/token", params={"client": "checkout"}))  # keep-alive open

        pki.files.write_server_cert(pki.server_ca, "broker-2")
        assert await _wait_for_common_name(broker.port, pki, cert, "broker-2") == "broker-2"
        assert_token(await http.get("/token", params={"client": "checkout"}))
        assert broker.server.tls is not None and broker.server.tls.reloads == 1

        # A certificate whose key has not arrived yet: refused, the old pair keeps serving.
        good_key = pki.files.key.read_bytes()
        pki.files.write_server_cert(pki.server_ca, "broker-3")
        new_key = pki.files.key.read_bytes()
        pki.files.key.write_bytes(good_key)
        await asyncio.sleep(0.2)
        assert await _wait_for_common_name(broker.port, pki, cert, "broker-2") == "broker-2"
        assert broker.server.tls.reloads == 1

        pki.files.key.write_bytes(new_key)  # the rest of the rotation arrives
        assert await _wait_for_common_name(broker.port, pki, cert, "broker-3") == "broker-3"
        async with pki.http(broker.url, cert) as fresh:
            assert_token(await fresh.get("/token", params={"client": "checkout"}))


async def test_serve_process_uses_mtls_ops_port_and_stops_on_sigterm(
    emulator: Emulator, tmp_path: Path
) -> None:
    """`token-broker serve` (uvloop) takes certificates, serves ops, and exits 0 on SIGTERM."""
    server_ca, client_ca = trustme.CA(), trustme.CA()
    files = server_files(tmp_path, server_ca, client_ca)
    cert = issue_client_cert(client_ca, tmp_path / "orders.pem", common_name="orders")
    port, ops_port = free_port(), free_port()
    server = {
        "tls_cert_file": str(files.cert),
        "tls_key_file": str(files.key),
        "tls_client_ca_file": str(files.client_ca),
        "ops_port": ops_port,
    }
    config_path = write_toml(
        tmp_path / "broker.toml", broker_config(emulator, {}, server=server, callers=CALLERS)
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKEN_BROKER_")}
    command = [sys.executable, "-m", "app", "serve", "--config", str(config_path)]
    log_path = tmp_path / "broker.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*command, "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env
        )
    try:
        async with plain_http(f"http://{LOOPBACK}:{ops_port}") as ops:
            await _wait_live(ops, process, log_path)
            async with httpx.AsyncClient(verify=client_context(server_ca, cert), timeout=5) as http:
                assert_token(await http.get(f"https://{LOOPBACK}:{port}/token"))
            assert_error(await ops.get("/token"), 404, "not_found")
        process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.wait, 15) == 0, log_path.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=5)
    async with plain_http(f"http://{LOOPBACK}") as http:
        for closed in (port, ops_port):
            with pytest.raises(httpx.ConnectError):
                await http.get(f"http://{LOOPBACK}:{closed}/health/live")


async def _wait_live(ops: httpx.AsyncClient, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the broker exited:\n{log.read_text()}")
        try:
            if (await ops.get("/health/live")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.05)
    raise AssertionError(f"the broker never answered on its ops port:\n{log.read_text()}")
