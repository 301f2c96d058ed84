"""The main listener's TLS context: rotated certificate files are served without a restart."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from cryptography.x509.oid import NameOID

from tests.conftest import Emulator
from tests.contract import assert_token
from tests.support.tls import Pki, client_context, mtls_config, presented_certificate, serve_broker


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
