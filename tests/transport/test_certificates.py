"""The verified client certificate reaches the app: the ASGI TLS extension, over real handshakes."""

from __future__ import annotations

import asyncio
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from app.config import Settings
from app.transport.server import BrokerServer
from tests.support.servers import bound_socket
from tests.support.tls import LOOPBACK, ORDERS_URI, Pki


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
