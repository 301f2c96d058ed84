"""Certificates for real TLS handshakes, and the broker served the way `token-broker serve` does.

trustme makes the CAs and the server certificate; client certificates are signed here with
`cryptography` using the trustme CA's key, because trustme cannot put a URI SAN (a SPIFFE ID)
into a certificate or leave the subject empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from starlette.applications import Starlette

from app.auth.callers import hash_api_key
from app.config import Settings
from app.main import create_app
from app.transport.server import BrokerServer
from tests.conftest import API_KEYS, Emulator, broker_config
from tests.support.servers import bound_socket

LOOPBACK = "127.0.0.1"
ORDERS_URI = "spiffe://corp/ns/shop/sa/orders"
SHOP_URI = "spiffe://corp/ns/shop/sa/shop"
CALLERS = {  # [callers] for certificate tests; orders and billing also have their API_KEYS
    "orders": {
        "api_key_sha256": hash_api_key(API_KEYS["orders"]),
        "mtls_identities": ["CN=orders", f"URI:{ORDERS_URI}"],
        "clients": ["checkout"],
    },
    "billing": {
        "api_key_sha256": hash_api_key(API_KEYS["billing"]),
        "mtls_identities": ["CN=billing"],
        "clients": ["checkout", "payouts"],
    },
    "shop": {"mtls_identities": [f"URI:{SHOP_URI}", "DNS:shop.internal"], "clients": ["payouts"]},
}
NO_TLS = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # for http:// clients: never used


def issue_client_cert(
    ca: trustme.CA,
    path: Path,
    *,
    common_name: str | None = None,
    uris: tuple[str, ...] = (),
    dns: tuple[str, ...] = (),
) -> Path:
    """Write key + certificate (signed by `ca`) to `path` as one PEM file; return `path`."""
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    ca_key = serialization.load_pem_private_key(ca.private_key_pem.bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)] if common_name else []
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(subject))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    )
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    names += [x509.DNSName(d) for d in dns]
    if names:
        # RFC 5280: with an empty subject the SAN extension must be critical.
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=not subject)
    cert = builder.sign(ca_key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.write_bytes(key_pem + cert.public_bytes(serialization.Encoding.PEM))
    return path


@dataclass
class ServerFiles:
    """The broker's TLS files: server certificate, its key, and the CA for client certificates."""

    cert: Path
    key: Path
    client_ca: Path

    def write_server_cert(self, ca: trustme.CA, common_name: str) -> None:
        """Issue a server certificate for 127.0.0.1 and swap both files in atomically."""
        leaf = ca.issue_cert(LOOPBACK, "localhost", common_name=common_name)
        for target, blob in ((self.cert, leaf.cert_chain_pems), (self.key, [leaf.private_key_pem])):
            staged = target.with_suffix(".new")
            staged.write_bytes(b"".join(pem.bytes() for pem in blob))
            staged.replace(target)  # a new inode, as Kubernetes' ..data symlink swap gives


def server_files(directory: Path, server_ca: trustme.CA, client_ca: trustme.CA) -> ServerFiles:
    """A server certificate from `server_ca` and trust in `client_ca`, written to `directory`."""
    files = ServerFiles(directory / "server.pem", directory / "server.key", directory / "ca.pem")
    files.write_server_cert(server_ca, "broker-1")
    client_ca.cert_pem.write_to_path(str(files.client_ca))
    return files


def client_context(server_ca: trustme.CA, cert: Path | None = None) -> ssl.SSLContext:
    """A client context trusting `server_ca`, presenting the key + certificate in `cert`."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies name and chain; no system CAs
    server_ca.configure_trust(context)
    if cert is not None:
        context.load_cert_chain(cert)
    return context


def plain_http(base_url: str) -> httpx.AsyncClient:
    """A client for plain-HTTP listeners (skips building a default TLS context: ~0.1 s each)."""
    return httpx.AsyncClient(base_url=base_url, verify=NO_TLS, timeout=5)


async def presented_certificate(port: int, context: ssl.SSLContext) -> x509.Certificate:
    """Do one fresh handshake with 127.0.0.1:`port`; the certificate the server presented."""
    _reader, writer = await asyncio.open_connection(LOOPBACK, port, ssl=context)
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return x509.load_der_x509_certificate(der)


@dataclass
class RunningBroker:
    """A `BrokerServer` serving in the test's loop, and where to reach it."""

    server: BrokerServer
    port: int
    ops_port: int

    @property
    def url(self) -> str:
        """Base URL of the main listener."""
        scheme = "https" if self.server.tls is not None else "http"
        return f"{scheme}://{LOOPBACK}:{self.port}"

    @property
    def ops_url(self) -> str:
        """Base URL of the ops listener."""
        return f"http://{LOOPBACK}:{self.ops_port}"


@contextlib.asynccontextmanager
async def serve_broker(
    config: dict[str, Any],
    *,
    with_ops: bool = True,
    reload_interval: float = 5.0,
    app: Starlette | None = None,
) -> AsyncIterator[RunningBroker]:
    """Serve a broker built from `config` on free loopback ports, as `token-broker serve` does.

    `config["server"]` gets `host`, `port` (and `ops_port` when `with_ops`) filled in; `app`
    replaces the app built from `config` (a test that watches part of it).
    """
    main_socket, ops_socket = bound_socket(), bound_socket()
    port, ops_port = main_socket.getsockname()[1], ops_socket.getsockname()[1]
    server_table = dict(config.get("server") or {})
    server_table |= {"host": LOOPBACK, "port": port}
    if with_ops:
        server_table["ops_port"] = ops_port
    settings = Settings(**{**config, "server": server_table})
    app = create_app(settings) if app is None else app
    broker = BrokerServer(settings, app, reload_interval=reload_interval)
    task = asyncio.create_task(broker.serve(main_socket, ops_socket if with_ops else None))
    try:
        while not (broker.main.started and (broker.ops is None or broker.ops.started)):
            if task.done():
                task.result()
                raise RuntimeError("the broker exited before it started")
            await asyncio.sleep(0.005)
        yield RunningBroker(broker, port, ops_port)
    finally:
        broker.stop()
        await task
        ops_socket.close()


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


def new_pki(directory: Path) -> Pki:
    """A server CA, a separate CA for client certificates, and the broker's files in `directory`."""
    server_ca, client_ca = trustme.CA(), trustme.CA()
    return Pki(server_ca, client_ca, server_files(directory, server_ca, client_ca), directory)


def mtls_config(emulator: Emulator, pki: Pki, *, required: bool = True) -> dict[str, Any]:
    """The shared test config over HTTPS, verifying client certificates."""
    server = {
        "tls_cert_file": str(pki.files.cert),
        "tls_key_file": str(pki.files.key),
        "tls_client_ca_file": str(pki.files.client_ca),
        "tls_client_cert_required": required,
    }
    return broker_config(emulator, {}, server=server, callers=CALLERS)
