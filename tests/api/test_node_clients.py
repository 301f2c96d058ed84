"""Node's openid-client (RFC 8414 discovery, RFC 7009) and simple-oauth2 against a real broker.

The clients are installed from tests/node/package-lock.json into .tools/node-oauth by
`make test`; tests/node/oauth_clients.mjs runs them, unmodified, over HTTPS.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.api.test_oauth import ORDERS_KEY, cached_token
from tests.conftest import Emulator
from tests.support.tls import mtls_config, new_pki, serve_broker

ROOT = Path(__file__).resolve().parents[2]
NODE_CLIENTS = ROOT / ".tools" / "node-oauth"
SCRIPT = ROOT / "tests" / "node" / "oauth_clients.mjs"


def node_clients() -> Path:
    """The folder with the installed Node clients; fails clearly when they are missing."""
    node = shutil.which("node")
    if node is None or not (NODE_CLIENTS / "node_modules" / "openid-client").is_dir():
        pytest.fail(
            "the Node OAuth clients are missing: `make test` installs them into "
            ".tools/node-oauth (needs node and npm: apt-get install -y npm)"
        )
    # ESM resolves packages from the script's folder: run a copy beside node_modules.
    shutil.copy(SCRIPT, NODE_CLIENTS / SCRIPT.name)
    return NODE_CLIENTS


async def run_clients(base_url: str, ca_file: Path) -> dict[str, Any]:
    """Run oauth_clients.mjs as caller `orders`; its JSON report."""
    folder = node_clients()
    env = {**os.environ, "NODE_EXTRA_CA_CERTS": str(ca_file)}
    process = await asyncio.create_subprocess_exec(
        "node",
        SCRIPT.name,
        base_url,
        "orders",
        ORDERS_KEY,
        cwd=folder,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stderr.decode()
    report: dict[str, Any] = json.loads(stdout)
    return report


@pytest.mark.parametrize("store_config", [{}], ids=["memory"])
async def test_openid_client_and_simple_oauth2(
    emulator: Emulator, store_config: dict[str, Any], tmp_path: Path
) -> None:
    """openid-client discovers both issuers by RFC 8414 (and fails OIDC discovery, which the
    broker does not pretend to offer); it and simple-oauth2 each get a token, revoke it, and get
    a new one; the last is the broker's cached token."""
    pki = new_pki(tmp_path)
    ca_file = tmp_path / "broker-ca.pem"
    pki.server_ca.cert_pem.write_to_path(str(ca_file))
    config = mtls_config(emulator, pki, required=False)
    config["clients"]["checkout"]["min_forced_refresh_interval_seconds"] = 1  # the floor
    async with serve_broker(config, with_ops=False) as running:
        report = await run_clients(running.url, ca_file)
        async with pki.http(running.url) as http:
            cached = await cached_token(http)
    base = running.url
    per_client = report["openid_client_per_client"]
    assert (per_client["issuer"], per_client["token_endpoint"]) == (
        f"{base}/oauth2/checkout",
        f"{base}/oauth2/checkout/token",
    )
    assert per_client["revocation_endpoint"] == f"{base}/oauth2/checkout/revoke"
    paysera = report["openid_client_paysera_path"]
    assert paysera["issuer"] == base
    assert paysera["token_endpoint"] == f"{base}/auth/realms/Paysera/protocol/openid-connect/token"
    assert report["openid_client_oidc_discovery"].endswith("(HTTP 404)")
    simple = report["simple_oauth2"]
    # Each client's second token is new, and the next client starts from it.
    assert per_client["first"] != per_client["second"] == paysera["first"]
    assert paysera["second"] not in (paysera["first"], simple["second"])
    assert simple["first"] == paysera["second"] != simple["second"] == cached
    assert (await emulator.stats())["token_requests"] == 4
