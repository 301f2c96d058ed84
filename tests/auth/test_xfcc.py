"""X-Forwarded-Client-Cert: the parser table, and the header end to end through the broker."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme

from app.auth.xfcc import common_names, nearest_identities, parse_xfcc
from app.errors import MalformedXfcc
from tests.conftest import API_KEYS, Emulator, broker_config
from tests.contract import assert_error, assert_token
from tests.support.tls import (
    CALLERS,
    NO_TLS,
    ORDERS_URI,
    SHOP_URI,
    client_context,
    issue_client_cert,
    serve_broker,
    server_files,
)

PROXY_ADDRESS = "127.0.0.2"  # the trusted "sidecar": a second loopback address
HASH = "468ed33be74eee6556d90c0149c1309e9ba61d6425303443c0748a02dd8de688"
ENVOY_BY = "By=http://frontend.lyft.com"

PARSE_CASES = [
    pytest.param(  # Envoy's documentation, example 1 (OpenSSL one-line Subject)
        f'{ENVOY_BY};Hash={HASH};Subject="/C=US/ST=CA/L=San Francisco/OU=Lyft/CN=Test Client";'
        "URI=http://testclient.lyft.com",
        ["URI:http://testclient.lyft.com", "CN=Test Client"],
        id="envoy-doc-one-element",
    ),
    pytest.param(  # Envoy's documentation, example 2: the nearest proxy's element is the last
        f"{ENVOY_BY};Hash={HASH};URI=http://testclient.lyft.com,"
        f"By=http://backend.lyft.com;Hash={HASH[::-1]};URI=http://frontend.lyft.com",
        ["URI:http://frontend.lyft.com"],
        id="envoy-doc-two-elements",
    ),
    pytest.param(  # Envoy's documentation, example 3: repeated DNS pairs
        f'{ENVOY_BY};Hash={HASH};Subject="/C=US/ST=CA/L=San Francisco/OU=Lyft/CN=Test Client";'
        "URI=http://testclient.lyft.com;DNS=lyft.com;DNS=www.lyft.com",
        ["URI:http://testclient.lyft.com", "DNS:lyft.com", "DNS:www.lyft.com", "CN=Test Client"],
        id="envoy-doc-dns",
    ),
    pytest.param(  # what Istio sends for a workload certificate: empty Subject, SPIFFE URI
        f'By=spiffe://cluster.local/ns/tb/sa/broker;Hash={HASH};Subject="";URI={SHOP_URI}',
        [f"URI:{SHOP_URI}"],
        id="istio",
    ),
    pytest.param(
        'Hash=ab;Subject="CN=orders,OU=shop,O=corp"',
        ["CN=orders"],
        id="rfc4514-subject",
    ),
    pytest.param(
        r'Subject="CN=orders\, inc.,O=corp"', ["CN=orders, inc."], id="rfc4514-escaped-comma"
    ),
    pytest.param(r'Subject="CN=caf\C3\A9"', ["CN=café"], id="rfc4514-hex-utf8"),
    pytest.param('Subject="CN=orders+UID=7,O=corp"', ["CN=orders"], id="multi-valued-rdn"),
    pytest.param('Subject="2.5.4.3=orders"', ["CN=orders"], id="cn-by-oid"),
    pytest.param(r'Subject="CN=say \"hi\""', ['CN=say "hi"'], id="escaped-double-quote"),
    pytest.param(
        'URI="spiffe://corp/a,b;c=d"', ["URI:spiffe://corp/a,b;c=d"], id="quoted-separators"
    ),
    pytest.param(
        'uri=spiffe://x;dns=a.example;SUBJECT="cn=orders"',
        ["URI:spiffe://x", "DNS:a.example", "CN=orders"],
        id="keys-case-insensitive",
    ),
    pytest.param(
        "By=a;URI=spiffe://first, By=b;URI=spiffe://second",
        ["URI:spiffe://second"],
        id="space-after-comma",
    ),
    pytest.param(f"{ENVOY_BY};Hash={HASH}", [], id="no-identity"),
    pytest.param('URI=;DNS=;Subject=""', [], id="empty-values"),
]

MALFORMED = [
    pytest.param("", id="empty"),
    pytest.param("URI", id="no-equals"),
    pytest.param("=spiffe://x", id="no-key"),
    pytest.param('Subject="CN=orders', id="unterminated-quote"),
    pytest.param('Subject="CN=orders\\"', id="escaped-closing-quote"),
    pytest.param('Subject="CN=orders"x', id="junk-after-quote"),
    pytest.param("URI=spiffe://a=b", id="unquoted-equals"),
    pytest.param('URI=spiffe://a"b', id="unquoted-quote"),
    pytest.param("URI=a,,URI=b", id="empty-element"),
    pytest.param("URI=a,", id="trailing-comma"),
    pytest.param("URI=a;", id="trailing-semicolon"),
    pytest.param('Subject="orders"', id="subject-attribute-without-type"),
    pytest.param(r'Subject="CN=\FF"', id="subject-not-utf8"),
    pytest.param(f"URI=a=b,URI={SHOP_URI}", id="bad-earlier-element"),
]


@pytest.mark.parametrize(("header", "identities"), PARSE_CASES)
def test_nearest_identities(header: str, identities: list[str]) -> None:
    """The identities come from the last element: its URI and DNS SANs and its Subject's CN."""
    assert nearest_identities(header) == identities


@pytest.mark.parametrize("header", MALFORMED)
def test_malformed_headers_are_rejected_whole(header: str) -> None:
    """A header that breaks the grammar anywhere is MalformedXfcc, never a partial identity."""
    with pytest.raises(MalformedXfcc):
        nearest_identities(header)


def test_elements_keep_every_pair_in_order() -> None:
    """Parsing keeps every element and every pair, repeated keys included."""
    elements = parse_xfcc(f'By=p1;URI=u1,By=p2;Hash={HASH};DNS=a;DNS=b;Subject="CN=x,O=y"')
    assert [e.values("By") for e in elements] == [["p1"], ["p2"]]
    assert elements[1].values("dns") == ["a", "b"]
    assert elements[1].values("Subject") == ["CN=x,O=y"]


def test_common_names_of_both_subject_forms() -> None:
    """CNs are read from RFC 4514 and from OpenSSL one-line subjects; a lone backslash is bad."""
    assert common_names("CN=a,CN=b,O=c") == ["a", "b"]
    assert common_names("/O=c/CN=a") == ["a"]
    assert common_names("O=corp") == []
    with pytest.raises(MalformedXfcc):
        common_names("CN=abc\\")


# -- end to end: the broker on plain HTTP behind a "sidecar" on 127.0.0.2 --------------------


def xfcc(**pairs: str) -> dict[str, str]:
    """An X-Forwarded-Client-Cert header with one element, as Envoy writes it."""
    element = f"By=spiffe://cluster.local/ns/tb/sa/broker;Hash={HASH}"
    for key, value in pairs.items():
        element += f';{key}="{value}"' if key == "Subject" else f";{key}={value}"
    return {"X-Forwarded-Client-Cert": element}


@asynccontextmanager
async def mesh_broker(
    emulator: Emulator, trusted: list[str]
) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    """A plain-HTTP broker trusting `trusted`; clients from the proxy address and from 127.0.0.1."""
    config = broker_config(emulator, {}, server={"xfcc_trusted_proxies": trusted}, callers=CALLERS)
    async with serve_broker(config, with_ops=False) as broker:
        proxy_transport = httpx.AsyncHTTPTransport(local_address=PROXY_ADDRESS, verify=NO_TLS)
        async with (
            httpx.AsyncClient(base_url=broker.url, transport=proxy_transport) as proxy,
            httpx.AsyncClient(base_url=broker.url, verify=NO_TLS) as direct,
        ):
            yield proxy, direct


async def test_xfcc_from_a_trusted_proxy_identifies_the_caller(emulator: Emulator) -> None:
    """From a trusted proxy, the header's URI, DNS or Subject CN is the caller's identity."""
    async with mesh_broker(emulator, [f"{PROXY_ADDRESS}/32"]) as (proxy, _direct):
        by_uri = await proxy.get("/token", headers=xfcc(Subject="", URI=SHOP_URI))
        by_dns = await proxy.get("/token", headers=xfcc(DNS="shop.internal"))
        by_cn = await proxy.get("/token", headers=xfcc(Subject="CN=orders,O=corp"))
        forbidden = await proxy.get(
            "/token", params={"client": "payouts"}, headers=xfcc(URI=ORDERS_URI)
        )
        unknown = await proxy.get("/token", headers=xfcc(URI="spiffe://corp/ns/x/sa/nobody"))
    assert_token(by_uri)
    assert_token(by_dns)
    assert_token(by_cn)
    assert_error(forbidden, 403, "forbidden")
    assert_error(unknown, 401, "unauthorized")


@pytest.mark.parametrize("trusted", [["127.0.0.2/32"], []], ids=["other-address", "none"])
async def test_xfcc_from_an_untrusted_peer_is_ignored(
    emulator: Emulator, trusted: list[str]
) -> None:
    """The same header from a peer outside xfcc_trusted_proxies counts for nothing: 401."""
    async with mesh_broker(emulator, trusted) as (proxy, direct):
        response = await direct.get("/token", headers=xfcc(URI=SHOP_URI))
        if not trusted:  # with no trusted proxies, not even the "proxy" address is believed
            assert_error(await proxy.get("/token", headers=xfcc(URI=SHOP_URI)), 401, "unauthorized")
        with_key = await direct.get(
            "/token", headers={**xfcc(URI=SHOP_URI), "X-API-Key": API_KEYS["orders"]}
        )
    assert_error(response, 401, "unauthorized")
    assert_token(with_key)  # ignored means ignored: it does not conflict with orders' key


async def test_malformed_xfcc_from_a_trusted_proxy_is_no_credentials(emulator: Emulator) -> None:
    """A malformed header from a trusted proxy names nobody: 401, and it adds nothing to a key."""
    bad = {"X-Forwarded-Client-Cert": f'URI={SHOP_URI};Subject="CN=orders'}
    async with mesh_broker(emulator, [f"{PROXY_ADDRESS}/32"]) as (proxy, _direct):
        alone = await proxy.get("/token", headers=bad)
        with_key = await proxy.get("/token", headers={**bad, "X-API-Key": API_KEYS["orders"]})
    assert_error(alone, 401, "unauthorized")
    assert_token(with_key)


async def test_xfcc_without_identity_fields_leaves_the_key_to_decide(emulator: Emulator) -> None:
    """An element with only By/Hash (no identity forwarded) names nobody: the key decides."""
    bare = xfcc()
    async with mesh_broker(emulator, [f"{PROXY_ADDRESS}/32"]) as (proxy, _direct):
        alone = await proxy.get("/token", headers=bare)
        with_key = await proxy.get("/token", headers={**bare, "X-API-Key": API_KEYS["orders"]})
        unknown = await proxy.get(
            "/token",
            headers={**xfcc(URI="spiffe://corp/ns/x/sa/nobody"), "X-API-Key": API_KEYS["orders"]},
        )
    assert_error(alone, 401, "unauthorized")
    assert_token(with_key)
    assert_error(unknown, 401, "unauthorized")  # an identity that matches no caller is invalid


async def test_xfcc_uses_the_nearest_proxys_element(emulator: Emulator) -> None:
    """An element a client smuggled in earlier, or an earlier header line, is not the identity."""
    smuggled = f'By=x;URI={SHOP_URI},By=spiffe://sidecar;Subject="CN=orders"'
    lines = [
        ("X-Forwarded-Client-Cert", f"By=x;URI={SHOP_URI}"),
        ("X-Forwarded-Client-Cert", 'By=spiffe://sidecar;Subject="CN=orders"'),
    ]
    async with mesh_broker(emulator, [f"{PROXY_ADDRESS}/32"]) as (proxy, _direct):
        for headers in ({"X-Forwarded-Client-Cert": smuggled}, lines):
            # orders may use checkout only; shop (the earlier element) only payouts.
            assert_token(await proxy.get("/token", headers=headers))
            forbidden = await proxy.get("/token", params={"client": "payouts"}, headers=headers)
            assert_error(forbidden, 403, "forbidden")


@pytest.mark.parametrize(
    ("api_key", "status"),
    [
        (API_KEYS["billing"], 401),
        ("tbk_wrong_key_000000000000000000000", 401),
        (API_KEYS["orders"], 200),
    ],
    ids=["other-callers-key", "wrong-key", "same-caller"],
)
async def test_xfcc_and_api_key_must_name_the_same_caller(
    emulator: Emulator, api_key: str, status: int
) -> None:
    """A forwarded certificate and an API key pass together only when both name one caller."""
    headers = {**xfcc(URI=ORDERS_URI), "X-API-Key": api_key}
    async with mesh_broker(emulator, [f"{PROXY_ADDRESS}/32"]) as (proxy, _direct):
        response = await proxy.get("/token", headers=headers)
    if status == 200:
        assert_token(response)
    else:
        assert_error(response, 401, "unauthorized", hidden=(api_key,))


async def test_trusted_proxy_over_mtls_forwards_the_callers_certificate(
    emulator: Emulator, tmp_path: Path
) -> None:
    """Over mTLS, a trusted proxy's XFCC names the caller; from others only the TLS peer counts."""
    server_ca, client_ca = trustme.CA(), trustme.CA()
    files = server_files(tmp_path, server_ca, client_ca)
    # The sidecar's own certificate happens to be billing's; the header says orders.
    cert = issue_client_cert(client_ca, tmp_path / "sidecar.pem", common_name="billing")
    server: dict[str, Any] = {
        "tls_cert_file": str(files.cert),
        "tls_key_file": str(files.key),
        "tls_client_ca_file": str(files.client_ca),
        "xfcc_trusted_proxies": [f"{PROXY_ADDRESS}/32"],
    }
    config = broker_config(emulator, {}, server=server, callers=CALLERS)
    headers = xfcc(URI=ORDERS_URI)
    params = {"client": "payouts"}  # billing may use it, orders may not
    async with serve_broker(config, with_ops=False) as broker:
        context = client_context(server_ca, cert)
        transport = httpx.AsyncHTTPTransport(local_address=PROXY_ADDRESS, verify=context)
        async with (
            httpx.AsyncClient(base_url=broker.url, transport=transport) as proxy,
            httpx.AsyncClient(base_url=broker.url, verify=context) as direct,
        ):
            via_proxy = await proxy.get("/token", params=params, headers=headers)
            from_other_peer = await direct.get("/token", params=params, headers=headers)
    assert_error(via_proxy, 403, "forbidden")  # judged as orders
    assert_token(from_other_peer)  # judged as billing: the header was ignored
