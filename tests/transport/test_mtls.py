"""Mutual TLS on the main listener over real handshakes: the certificate names the caller."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import trustme

from tests.conftest import API_KEYS, Emulator
from tests.contract import assert_error, assert_token
from tests.support.tls import SHOP_URI, Pki, mtls_config, serve_broker


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
