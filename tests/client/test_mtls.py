"""BrokerAuth with a client certificate over real mTLS (no API key)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from token_broker_client import BrokerAuth, BrokerUnavailable, Unauthorized

from tests.conftest import API_KEYS, Emulator
from tests.support.tls import Pki, mtls_config, new_pki, serve_broker


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    """A server CA, a CA for client certificates, and the broker's TLS files."""
    return new_pki(tmp_path)


def split_pem(bundle: Path) -> tuple[Path, Path]:
    """Write the certificate and the key of a key + certificate PEM to two files."""
    data = bundle.read_bytes()
    cert = x509.load_pem_x509_certificate(data)
    key = serialization.load_pem_private_key(data, password=None)
    cert_path, key_path = bundle.with_suffix(".crt"), bundle.with_suffix(".key")
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_client_certificate_authenticates_the_sdk(
    emulator: Emulator, pki: Pki, make_auth: Callable[..., BrokerAuth]
) -> None:
    """A certificate naming `orders` gets its token (one PEM or cert + key); a certificate of
    another caller beside orders' key is Unauthorized; a broker the CA did not sign is refused."""
    ca_file = pki.directory / "broker-ca.pem"
    pki.server_ca.cert_pem.write_to_path(str(ca_file))
    orders = pki.client("orders", common_name="orders")
    billing = pki.client("billing", common_name="billing")
    async with serve_broker(mtls_config(emulator, pki), with_ops=False) as running:
        one_pem = make_auth(running.url, api_key=None, cert=orders, verify=ca_file)
        pair = make_auth(running.url, api_key=None, cert=split_pem(orders), verify=str(ca_file))
        token = await one_pem.atoken()
        assert await pair.atoken() == token
        mixed = make_auth(running.url, api_key=API_KEYS["orders"], cert=billing, verify=ca_file)
        with pytest.raises(Unauthorized):
            await mixed.atoken()
        untrusted = make_auth(running.url, api_key=None, cert=orders, verify=True)
        with pytest.raises(BrokerUnavailable, match="ConnectError"):
            await untrusted.atoken()
        for auth in (one_pem, pair, mixed):
            auth.close()  # else the server's graceful stop waits for their idle connections
    assert (await emulator.stats())["token_requests"] == 1
